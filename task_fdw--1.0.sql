/* task_fdw--1.0.sql */

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
    error_context   text
);

-- SELECT ... WHERE state = ... on a foreign table, and dispatcher recovery.
CREATE INDEX task_state_idx ON task_fdw.task (state, id);

-- The dispatcher's queue: queued tasks of one pool, oldest first.
CREATE INDEX task_queued_idx ON task_fdw.task (server_id, userid, id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';

REVOKE ALL ON TABLE task_fdw.task FROM PUBLIC;

CREATE FUNCTION task_fdw.task_fdw_handler()
RETURNS fdw_handler
AS 'MODULE_PATHNAME', 'task_fdw_handler'
LANGUAGE C STRICT;

CREATE FUNCTION task_fdw.task_fdw_validator(text[], oid)
RETURNS void
AS 'MODULE_PATHNAME', 'task_fdw_validator'
LANGUAGE C STRICT;

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

-- Column checks for foreign tables of the wrapper, run when one is created or
-- altered.  The C function ignores tables of other wrappers.
CREATE FUNCTION task_fdw.check_table(regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'task_fdw_check_table'
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.check_table(regclass) IS
    'raises an error if a foreign table of task_fdw has a column that is not a task attribute';

CREATE FUNCTION task_fdw.check_tables_trigger()
RETURNS event_trigger
LANGUAGE plpgsql
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

REVOKE ALL ON FUNCTION task_fdw.check_tables_trigger() FROM PUBLIC;
GRANT USAGE ON SCHEMA task_fdw TO PUBLIC;
