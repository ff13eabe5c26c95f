/* task_fdw--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION task_fdw UPDATE TO '1.2'" to load this file. \quit

-- Fan-out: a task may run on another server than that of the foreign table
-- it was submitted through.  Tasks submitted before the update ran where
-- they were submitted.
ALTER TABLE task_fdw.task ADD COLUMN origin_server_id oid;
UPDATE task_fdw.task SET origin_server_id = server_id;
ALTER TABLE task_fdw.task ALTER COLUMN origin_server_id SET NOT NULL;
