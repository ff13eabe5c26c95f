/* task_fdw--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION task_fdw UPDATE TO '1.1'" to load this file. \quit

-- Task control, security and reliability: new task attributes and internal
-- columns, appended to the table.
ALTER TABLE task_fdw.task
    ADD COLUMN priority        int NOT NULL DEFAULT 0,
    ADD COLUMN run_at          timestamptz,
    ADD COLUMN timeout         interval,
    ADD COLUMN max_attempts    int NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    ADD COLUMN attempts        int NOT NULL DEFAULT 0,
    ADD COLUMN batch           text,
    ADD COLUMN notices         text[],
    ADD COLUMN retry_sqlstates text[],
    ADD COLUMN retry_delay     interval,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN retry_interrupted boolean NOT NULL DEFAULT false;

-- The queue is claimed by priority, then age.
DROP INDEX task_fdw.task_queued_idx;
CREATE INDEX task_queued_idx ON task_fdw.task (server_id, userid, priority DESC, id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX task_run_at_idx ON task_fdw.task (run_at)
    WHERE state OPERATOR(pg_catalog.=) 'queued' AND run_at IS NOT NULL;
CREATE INDEX task_batch_idx ON task_fdw.task (userid, batch)
    WHERE batch IS NOT NULL;
CREATE INDEX task_finished_idx ON task_fdw.task (finished_at)
    WHERE state OPERATOR(pg_catalog.=) ANY ('{done,failed,cancelled}'::pg_catalog.text[]);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                    WHERE rolname OPERATOR(pg_catalog.=) 'task_fdw_monitor') THEN
        CREATE ROLE task_fdw_monitor NOLOGIN;
    END IF;
END
$$;

ALTER FUNCTION task_fdw.task_fdw_handler() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION task_fdw.task_fdw_validator(text[], oid) SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION task_fdw.wait_batch(batch text, timeout interval DEFAULT NULL)
RETURNS TABLE (id bigint, state text)
AS 'MODULE_PATHNAME', 'task_fdw_wait_batch'
LANGUAGE C CALLED ON NULL INPUT VOLATILE ROWS 100
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION task_fdw.wait_batch(text, interval) IS
    'waits until all of the caller''s tasks of the batch are finished or the timeout passes, and returns their states';

-- SECURITY DEFINER so that check_table, an internal helper, need not be
-- granted to PUBLIC: it runs for everyone's DDL, only reads the catalogs,
-- and can do nothing but raise an error about a badly declared table.
ALTER FUNCTION task_fdw.check_tables_trigger() SECURITY DEFINER;
REVOKE ALL ON FUNCTION task_fdw.check_table(regclass) FROM PUBLIC;
