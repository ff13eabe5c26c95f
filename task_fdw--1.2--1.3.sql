/* task_fdw--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION task_fdw UPDATE TO '1.3'" to load this file. \quit

-- There is one installation script, task_fdw--1.0.sql: CREATE EXTENSION
-- runs it and then the update scripts up to the version asked for.
--
-- task_state_idx covers running, failed and cancelled tasks only.  Queued
-- tasks are found through task_queued_idx.  Done tasks, the bulk of the
-- store, have no entry: one would cost each task an index insertion more
-- when it ends.  The library reads the store the same way with either
-- version of the index, so a database still at 1.2 works until updated.
DROP INDEX task_fdw.task_state_idx;
CREATE INDEX task_state_idx ON task_fdw.task (state, id)
    WHERE state OPERATOR(pg_catalog.=) ANY ('{running,failed,cancelled}'::pg_catalog.text[]);
