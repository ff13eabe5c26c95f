-- ===================================================================
-- bad input: every kind a user can give gets a clear error, or a task
-- that fails cleanly with a meaningful message
-- ===================================================================
SELECT setval('task_fdw.task_id_seq', 300000, false);
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '2');
CREATE USER MAPPING FOR CURRENT_USER SERVER bad;
CREATE FOREIGN TABLE bad_tasks (id bigint, sql text, state text, command_tag text, rows bigint,
                                result jsonb, error text, sqlstate text, error_detail text,
                                error_hint text, notices text[], priority int, run_at timestamptz,
                                timeout interval, max_attempts int)
    SERVER bad;
-- submits one task, commits, and waits for it
CREATE PROCEDURE run_bad(sql text, timeout interval DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    task_id bigint;
BEGIN
    INSERT INTO bad_tasks(sql, timeout) VALUES (sql, timeout) RETURNING id INTO task_id;
    COMMIT;
    PERFORM task_fdw.wait(task_id, '60s');
END $$;
CREATE TABLE bad_side (i int);

-- options: unknown, of the wrong type, out of range, in the wrong place
ALTER SERVER bad OPTIONS (ADD poolsize '2');
ALTER SERVER bad OPTIONS (SET pool_size 'two');
ALTER SERVER bad OPTIONS (SET pool_size '0');
ALTER SERVER bad OPTIONS (SET pool_size '-3');
ALTER SERVER bad OPTIONS (SET pool_size '99999999999');
ALTER SERVER bad OPTIONS (ADD port '70000');
ALTER SERVER bad OPTIONS (ADD connect_timeout 'soon');
ALTER SERVER bad OPTIONS (ADD connect_retry_timeout '-1 minute');
ALTER SERVER bad OPTIONS (ADD on_interrupt 'sometimes');
ALTER SERVER bad OPTIONS (ADD password 'secret');
ALTER SERVER bad OPTIONS (ADD user 'someone');
ALTER USER MAPPING FOR CURRENT_USER SERVER bad OPTIONS (ADD pool_size '3');
ALTER USER MAPPING FOR CURRENT_USER SERVER bad OPTIONS (ADD password_required 'maybe');
ALTER FOREIGN TABLE bad_tasks OPTIONS (ADD dbname 'other');
ALTER FOREIGN TABLE bad_tasks OPTIONS (ADD priority '1.5');
ALTER FOREIGN TABLE bad_tasks ALTER COLUMN sql OPTIONS (ADD column_name 'query');
ALTER FOREIGN DATA WRAPPER task_fdw OPTIONS (ADD pool_size '2');

-- column definitions
CREATE FOREIGN TABLE bad_cols (id bigint, query text) SERVER bad;
CREATE FOREIGN TABLE bad_cols (id int, sql text) SERVER bad;
CREATE FOREIGN TABLE bad_cols (id bigint, sql varchar) SERVER bad;
ALTER FOREIGN TABLE bad_tasks ADD COLUMN extra int;
ALTER FOREIGN TABLE bad_tasks ALTER COLUMN priority TYPE bigint;

-- INSERT values
INSERT INTO bad_tasks(sql) VALUES (NULL);
INSERT INTO bad_tasks(sql) VALUES ('');
INSERT INTO bad_tasks(sql) VALUES (E' \n\t ');
INSERT INTO bad_tasks(sql, priority) VALUES ('SELECT 1', 'high');
INSERT INTO bad_tasks(sql, priority) VALUES ('SELECT 1', 3000000000);
INSERT INTO bad_tasks(sql, timeout) VALUES ('SELECT 1', '-1 second');
INSERT INTO bad_tasks(sql, timeout) VALUES ('SELECT 1', 'forever');
INSERT INTO bad_tasks(sql, run_at) VALUES ('SELECT 1', 'next tuesday-ish');
INSERT INTO bad_tasks(sql, run_at) VALUES ('SELECT 1', 'infinity');
INSERT INTO bad_tasks(sql, max_attempts) VALUES ('SELECT 1', -1);
INSERT INTO bad_tasks(sql, state) VALUES ('SELECT 1', 'done');
-- none of these left a task behind
SELECT count(*) FROM bad_tasks;
-- a huge statement (5 MB) is accepted and runs
CALL run_bad('SELECT ' || repeat(' ', 5 * 1024 * 1024) || '42 AS answer');
SELECT state, result, octet_length(sql) FROM bad_tasks WHERE id = currval('task_fdw.task_id_seq');

-- forbidden UPDATEs
UPDATE bad_tasks SET sql = 'SELECT 2';
UPDATE bad_tasks SET state = 'queued';
UPDATE bad_tasks SET state = 'cancelled', sql = 'SELECT 2';
UPDATE bad_tasks SET priority = 1;
UPDATE bad_tasks SET run_at = 'infinity';
UPDATE bad_tasks SET id = id + 1;

-- DELETE edge cases: nothing matching, a finished task, a rolled-back delete
DELETE FROM bad_tasks WHERE id = -1 RETURNING id;
BEGIN;
DELETE FROM bad_tasks RETURNING state;
ROLLBACK;
SELECT count(*) FROM bad_tasks;

-- wait arguments
SELECT task_fdw.wait(NULL::bigint);
SELECT task_fdw.wait(currval('task_fdw.task_id_seq'), '-1s');
SELECT task_fdw.wait(-5);
SELECT * FROM task_fdw.wait(ARRAY[NULL]::bigint[]);
SELECT * FROM task_fdw.wait('{}'::bigint[]);
SELECT count(*) FROM task_fdw.wait(ARRAY[currval('task_fdw.task_id_seq'), currval('task_fdw.task_id_seq')]);
SELECT * FROM task_fdw.wait_batch(NULL);
SELECT * FROM task_fdw.wait_batch('x', '-1 hour');

-- tasks whose SQL is unusual: each ends failed with a clear message, or done
CALL run_bad('COPY bad_side FROM STDIN');
CALL run_bad('COPY bad_side TO STDOUT');
CALL run_bad('LISTEN some_channel');
CALL run_bad('BEGIN; INSERT INTO bad_side VALUES (1)');
CALL run_bad('BEGIN; SELECT 1/0');
CALL run_bad('COMMIT');
CALL run_bad('BEGIN');
CALL run_bad('VACUUM bad_side');
CALL run_bad('-- only a comment' || E'\n' || '/* and another */');
CALL run_bad('SELECT pg_sleep(3600)', '100ms');
CALL run_bad($q$DO $d$ BEGIN RAISE EXCEPTION 'custom failure'
    USING DETAIL = 'what went wrong', HINT = 'what to do', ERRCODE = 'P0001'; END $d$$q$);
CALL run_bad('INSERT INTO bad_side VALUES (2); SELECT * FROM no_such_table');
CALL run_bad('SELEC 1');
CALL run_bad('VACUUM bad_side; VACUUM bad_side');
SELECT id - 300000 AS n, state, command_tag, sqlstate, error, error_detail, error_hint, notices
  FROM bad_tasks WHERE sql NOT LIKE 'SELECT    %' ORDER BY id;
-- none of the failed tasks' work was kept
SELECT count(*) AS rows_kept FROM bad_side;
-- and the pool still works
CALL run_bad('SELECT 1 AS still_fine');
SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) AS unfinished FROM bad_tasks;

-- a server dropped while a task of it is queued: the task fails clearly, and
-- is not retried, although it may be (its SQL was never sent); its failure
-- counts as its one attempt
CREATE SERVER doomed FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER doomed;
CREATE FOREIGN TABLE doomed_tasks (id bigint, sql text, run_at timestamptz) SERVER doomed
    OPTIONS (on_interrupt 'retry', max_attempts '3');
INSERT INTO doomed_tasks(sql, run_at) VALUES ('SELECT 1', clock_timestamp() + interval '1s')
RETURNING id - 300000 AS doomed_id \gset
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER doomed CASCADE;
RESET client_min_messages;
SELECT task_fdw.wait(300000 + :doomed_id, '30s');
SELECT id - 300000 AS n, state, attempts, sqlstate, error FROM task_fdw.task WHERE id = 300000 + :doomed_id;

-- a role dropped while its task is queued (nothing ties a task to its role,
-- and a PUBLIC mapping does not stop DROP ROLE): the task fails clearly, and
-- the dispatcher goes on
SELECT pid AS dispatcher_pid FROM pg_stat_activity
 WHERE backend_type = 'task_fdw dispatcher' AND datname = current_database() \gset
CREATE ROLE regress_gone SUPERUSER;
CREATE SERVER orphaned FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR PUBLIC SERVER orphaned;
CREATE FOREIGN TABLE orphaned_tasks (id bigint, sql text) SERVER orphaned;
BEGIN;
SET LOCAL ROLE regress_gone;
INSERT INTO orphaned_tasks(sql) VALUES ('SELECT 1') RETURNING id - 300000 AS orphan_id \gset
RESET ROLE;
DROP ROLE regress_gone;
COMMIT;
SELECT task_fdw.wait(300000 + :orphan_id, '60s');
SELECT state, attempts, sqlstate, error FROM task_fdw.task WHERE id = 300000 + :orphan_id;
CALL run_bad('SELECT 1 AS after_orphan');
SELECT state FROM task_fdw.task WHERE sql = 'SELECT 1 AS after_orphan';
SELECT count(*) AS same_dispatcher FROM pg_stat_activity
 WHERE backend_type = 'task_fdw dispatcher' AND pid = :dispatcher_pid;
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER orphaned CASCADE;
RESET client_min_messages;

-- a connect_timeout of more than 24 days (in seconds) does not overflow into
-- a deadline already past
CREATE SERVER patient FOREIGN DATA WRAPPER task_fdw OPTIONS (connect_timeout '3000000');
CREATE USER MAPPING FOR CURRENT_USER SERVER patient;
CREATE FOREIGN TABLE patient_tasks (id bigint, sql text) SERVER patient;
INSERT INTO patient_tasks(sql) VALUES ('SELECT 1') RETURNING id - 300000 AS patient_id \gset
SELECT task_fdw.wait(300000 + :patient_id, '60s');
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER patient CASCADE;
RESET client_min_messages;

-- a statement that ends its own session, with on_interrupt 'retry': queued
-- again at once after each interruption, but only until it has made 3
-- attempts (task_fdw.max_interrupted_attempts), or max_attempts if higher;
-- then it fails, with a hint saying why, rather than running forever
CREATE FOREIGN TABLE retried_tasks (id bigint, sql text, max_attempts int) SERVER bad
    OPTIONS (on_interrupt 'retry');
INSERT INTO retried_tasks(sql) VALUES ('SELECT pg_terminate_backend(pg_backend_pid())')
RETURNING id AS retried_default \gset
INSERT INTO retried_tasks(sql, max_attempts) VALUES ('SELECT pg_terminate_backend(pg_backend_pid())', 5)
RETURNING id AS retried_5 \gset
SELECT state FROM task_fdw.wait(ARRAY[:retried_default, :retried_5]::bigint[], '60s');
SELECT id - 300000 AS n, state, attempts, sqlstate, error, error_hint
  FROM task_fdw.task WHERE id IN (:retried_default, :retried_5) ORDER BY id;
DROP FOREIGN TABLE retried_tasks;

DROP PROCEDURE run_bad;
DROP TABLE bad_side;
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER bad CASCADE;
RESET client_min_messages;
