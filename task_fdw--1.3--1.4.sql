/* task_fdw--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION task_fdw UPDATE TO '1.4'" to load this file. \quit

-- The dispatcher writes each task's row twice: when the task starts and
-- when it ends.  No index mentions the columns a start changes (state,
-- started_at, remote_pid, attempts), and half of each page is left free
-- for those new row versions, so that a start is a HOT update: it writes
-- the row's new version next to the old one and no index entry at all.
-- Unfinished (queued and running) tasks are found through
-- task_unfinished_idx, failed and cancelled ones through task_failed_idx
-- (each of them has a sqlstate; a done task has none), finished ones
-- through task_finished_idx.  The state itself is checked on the row.
ALTER TABLE task_fdw.task SET (fillfactor = 50);

DROP INDEX task_fdw.task_queued_idx;
DROP INDEX task_fdw.task_run_at_idx;
DROP INDEX task_fdw.task_finished_idx;
DROP INDEX task_fdw.task_state_idx;

CREATE INDEX task_unfinished_idx ON task_fdw.task (server_id, userid, priority DESC, id)
    WHERE finished_at IS NULL;
CREATE INDEX task_run_at_idx ON task_fdw.task (run_at)
    WHERE finished_at IS NULL AND run_at IS NOT NULL;
CREATE INDEX task_finished_idx ON task_fdw.task (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX task_failed_idx ON task_fdw.task (id)
    WHERE finished_at IS NOT NULL AND sqlstate IS NOT NULL;

-- Failed and cancelled tasks recorded by earlier versions without a
-- sqlstate get the one this version records for them.
UPDATE task_fdw.task
   SET sqlstate = CASE state WHEN 'cancelled' THEN '57014' ELSE '08006' END
 WHERE state OPERATOR(pg_catalog.=) ANY ('{failed,cancelled}'::pg_catalog.text[])
   AND sqlstate IS NULL;
