/* task_fdw--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION task_fdw UPDATE TO '1.2'" to load this file. \quit

-- Fan-out: a task may run on another server than that of the foreign table
-- it was submitted through.  Tasks submitted before the update ran where
-- they were submitted.
ALTER TABLE task_fdw.task ADD COLUMN origin_server_id oid;
UPDATE task_fdw.task SET origin_server_id = server_id;
ALTER TABLE task_fdw.task ALTER COLUMN origin_server_id SET NOT NULL;

-- Observability: the connection pools of this database's dispatcher, and
-- task counts by server and state.  The functions show superusers and
-- members of task_fdw_monitor every pool and task, and other roles only
-- theirs (and those of roles whose privileges they have), as the foreign
-- tables do; nothing they return is secret.
CREATE FUNCTION task_fdw.pool_status(
    OUT server text, OUT username text, OUT pool_size int,
    OUT open int, OUT busy int, OUT idle int, OUT connecting int,
    OUT queued bigint, OUT running bigint, OUT down_since timestamptz,
    OUT last_error text, OUT last_error_at timestamptz,
    OUT started bigint, OUT finished bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'task_fdw_pool_status'
LANGUAGE C STRICT VOLATILE ROWS 10
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.pool_status() IS
    'returns the connection pools of this database''s dispatcher and their queued and running tasks';

CREATE VIEW task_fdw.pools AS
SELECT server, username, pool_size, open, busy, idle, connecting, queued, running,
       down_since, last_error, last_error_at, started, finished
  FROM task_fdw.pool_status();

COMMENT ON VIEW task_fdw.pools IS
    'connection pools of this database''s dispatcher, one per server and submitting role';

CREATE FUNCTION task_fdw.task_statistics(
    OUT server text, OUT state text, OUT count bigint, OUT finished_last_minute bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'task_fdw_task_statistics'
LANGUAGE C STRICT VOLATILE ROWS 20
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.task_statistics() IS
    'returns the number of tasks of each server in each state, and how many finished in the last minute';

CREATE VIEW task_fdw.task_stats AS
SELECT server, state, count, finished_last_minute,
       pg_catalog.round(finished_last_minute OPERATOR(pg_catalog./) 60.0, 2) AS per_second
  FROM task_fdw.task_statistics();

COMMENT ON VIEW task_fdw.task_stats IS
    'tasks by server and state, with the rate at which they finished over the last minute';

REVOKE ALL ON task_fdw.pools, task_fdw.task_stats FROM PUBLIC;
GRANT SELECT ON task_fdw.pools, task_fdw.task_stats TO PUBLIC;
