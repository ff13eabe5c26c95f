/* task_fdw--1.3.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION task_fdw" to load this file. \quit

-- The durable task store.  Only the extension's C code reads and writes it:
-- users see tasks through foreign tables of the task_fdw wrapper, which
-- filter by submitter.  PUBLIC has no privilege on it.
CREATE TABLE task_fdw.task (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_id       oid NOT NULL,
    userid          oid NOT NULL,
    sql             text NOT NULL,
    state           text COLLATE "C" NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    submitted_by    text NOT NULL,
    submitted_at    timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    remote_pid      int,
    command_tag     text,
    rows            bigint,
    result          jsonb,
    result_truncated boolean,
    error           text,
    sqlstate        text,
    error_detail    text,
    error_hint      text,
    error_context   text,
    priority        int NOT NULL DEFAULT 0,
    run_at          timestamptz,
    timeout         interval,
    max_attempts    int NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    attempts        int NOT NULL DEFAULT 0,
    batch           text,
    notices         text[],
    retry_sqlstates text[],
    retry_delay     interval,
    cancel_requested_at timestamptz,
    retry_interrupted boolean NOT NULL DEFAULT false,
    -- The server of the foreign table the task was submitted through;
    -- server_id is the server it runs on.
    origin_server_id oid NOT NULL
);

-- SELECT ... WHERE state = ... on a foreign table, and dispatcher recovery,
-- for running, failed and cancelled tasks.  Queued tasks are found through
-- task_queued_idx.  Done tasks, the bulk of the store, have no entry: one
-- would cost each task an index insertion more when it ends.
CREATE INDEX task_state_idx ON task_fdw.task (state, id)
    WHERE state OPERATOR(pg_catalog.=) ANY ('{running,failed,cancelled}'::pg_catalog.text[]);

-- The dispatcher's queue: queued tasks of one pool, highest priority first,
-- then oldest first.
CREATE INDEX task_queued_idx ON task_fdw.task (server_id, userid, priority DESC, id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';

-- When the next task scheduled for later (run_at, or a retry) is due.
CREATE INDEX task_run_at_idx ON task_fdw.task (run_at)
    WHERE state OPERATOR(pg_catalog.=) 'queued' AND run_at IS NOT NULL;

-- task_fdw.wait_batch(): one role's tasks of a batch.
CREATE INDEX task_batch_idx ON task_fdw.task (userid, batch)
    WHERE batch IS NOT NULL;

-- Retention: finished tasks, oldest first.
CREATE INDEX task_finished_idx ON task_fdw.task (finished_at)
    WHERE state OPERATOR(pg_catalog.=) ANY ('{done,failed,cancelled}'::pg_catalog.text[]);

REVOKE ALL ON TABLE task_fdw.task FROM PUBLIC;

-- Members of task_fdw_monitor see every task through the foreign tables, but
-- not the results, notices or error details of other roles' tasks.  Roles
-- belong to the cluster, so another database may have created it already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                    WHERE rolname OPERATOR(pg_catalog.=) 'task_fdw_monitor') THEN
        CREATE ROLE task_fdw_monitor NOLOGIN;
    END IF;
END
$$;

-- Every function pins its search_path, so that objects a user creates in
-- other schemas cannot stand in for the ones these functions use.
CREATE FUNCTION task_fdw.task_fdw_handler()
RETURNS fdw_handler
AS 'MODULE_PATHNAME', 'task_fdw_handler'
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION task_fdw.task_fdw_validator(text[], oid)
RETURNS void
AS 'MODULE_PATHNAME', 'task_fdw_validator'
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp;

CREATE FOREIGN DATA WRAPPER task_fdw
    HANDLER task_fdw.task_fdw_handler
    VALIDATOR task_fdw.task_fdw_validator;

COMMENT ON FOREIGN DATA WRAPPER task_fdw IS
    'runs SQL statements as background tasks: INSERT submits, SELECT reports';

CREATE FUNCTION task_fdw.wait(id bigint, timeout interval DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'task_fdw_wait'
LANGUAGE C CALLED ON NULL INPUT VOLATILE
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.wait(bigint, interval) IS
    'waits until the task is finished or the timeout passes, and returns its state';

CREATE FUNCTION task_fdw.wait(ids bigint[], timeout interval DEFAULT NULL)
RETURNS TABLE (id bigint, state text)
AS 'MODULE_PATHNAME', 'task_fdw_wait_many'
LANGUAGE C CALLED ON NULL INPUT VOLATILE ROWS 10
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.wait(bigint[], interval) IS
    'waits until all the tasks are finished or the timeout passes, and returns their states';

CREATE FUNCTION task_fdw.wait_batch(batch text, timeout interval DEFAULT NULL)
RETURNS TABLE (id bigint, state text)
AS 'MODULE_PATHNAME', 'task_fdw_wait_batch'
LANGUAGE C CALLED ON NULL INPUT VOLATILE ROWS 100
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.wait_batch(text, interval) IS
    'waits until all of the caller''s tasks of the batch are finished or the timeout passes, and returns their states';

-- Column checks for foreign tables of the wrapper, run when one is created or
-- altered.  The C function ignores tables of other wrappers.
CREATE FUNCTION task_fdw.check_table(regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'task_fdw_check_table'
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.check_table(regclass) IS
    'raises an error if a foreign table of task_fdw has a column that is not a task attribute';

-- SECURITY DEFINER so that check_table, an internal helper, need not be
-- granted to PUBLIC: it runs for everyone's DDL, only reads the catalogs,
-- and can do nothing but raise an error about a badly declared table.
CREATE FUNCTION task_fdw.check_tables_trigger()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT c.objid
               FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
              WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
    LOOP
        PERFORM task_fdw.check_table(r.objid::pg_catalog.regclass);
    END LOOP;
END
$$;

COMMENT ON FUNCTION task_fdw.check_tables_trigger() IS
    'event trigger that checks the columns of new and altered foreign tables';

CREATE EVENT TRIGGER task_fdw_check_tables ON ddl_command_end
    WHEN TAG IN ('CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA')
    EXECUTE FUNCTION task_fdw.check_tables_trigger();

REVOKE ALL ON FUNCTION task_fdw.check_table(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION task_fdw.check_tables_trigger() FROM PUBLIC;
GRANT USAGE ON SCHEMA task_fdw TO PUBLIC;

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
