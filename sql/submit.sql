-- ===================================================================
-- INSERT submits tasks: in the caller's transaction, bad input refused
-- ===================================================================
SELECT count(*) AS tasks_before FROM tasks \gset
-- bad INSERTs: each is an error and enqueues nothing
INSERT INTO tasks(sql) VALUES (NULL);
INSERT INTO tasks(sql) VALUES ('');
INSERT INTO tasks(sql) VALUES ('   ');
INSERT INTO tasks(sql) VALUES ('SELECT 1'), (NULL);
INSERT INTO tasks(sql, state) VALUES ('SELECT 1', 'done');
INSERT INTO tasks(sql, result) VALUES ('SELECT 1', '[]');
INSERT INTO tasks VALUES (1, 'SELECT 1');
INSERT INTO tasks DEFAULT VALUES;
SELECT count(*) - :tasks_before AS tasks_added FROM tasks;

-- a rolled-back INSERT leaves no task and runs nothing
BEGIN;
INSERT INTO tasks(sql) VALUES ('INSERT INTO side VALUES (1)');
ROLLBACK;
-- so does a rolled-back savepoint, while the rest of the transaction submits
BEGIN;
SAVEPOINT s;
INSERT INTO tasks(sql) VALUES ('INSERT INTO side VALUES (2)');
ROLLBACK TO SAVEPOINT s;
INSERT INTO tasks(sql) VALUES ('INSERT INTO side VALUES (3)') RETURNING id AS kept \gset
COMMIT;
SELECT task_fdw.wait(:kept, '30s');
SELECT i FROM side ORDER BY i;
SELECT count(*) - :tasks_before AS tasks_added FROM tasks;

-- inside the submitting transaction the task is visible and queued
BEGIN;
INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING state, submitted_at = now() AS submitted_now,
    submitted_by = current_user AS by_me, started_at, result;
SELECT state FROM tasks WHERE id = currval('task_fdw.task_id_seq');
-- PREPARE TRANSACTION is refused, and the transaction is rolled back
PREPARE TRANSACTION 'tfdw';
SELECT count(*) FROM pg_prepared_xacts;

-- multi-row INSERT and INSERT ... SELECT
INSERT INTO tasks(sql) VALUES ('SELECT 1'), ('SELECT 2'), ('SELECT 3') RETURNING state;
INSERT INTO tasks(sql) SELECT 'SELECT ' || g FROM generate_series(1, 2000) g;
SELECT state, count(*)
  FROM task_fdw.wait(ARRAY(SELECT id FROM tasks WHERE sql ~ '^SELECT [0-9]+$'), '60s')
 GROUP BY state;

-- COPY into the foreign table submits tasks too
COPY tasks(sql) FROM stdin;
SELECT 'copied'
\.
SELECT task_fdw.wait(id, '30s') FROM tasks WHERE sql = 'SELECT ''copied''';
SELECT result FROM tasks WHERE sql = 'SELECT ''copied''';

-- a server without a user mapping for the submitter
CREATE SERVER nomap FOREIGN DATA WRAPPER task_fdw;
CREATE FOREIGN TABLE nomap_tasks (id bigint, sql text) SERVER nomap;
CREATE ROLE regress_nomap;
GRANT INSERT ON nomap_tasks TO regress_nomap;
GRANT USAGE ON FOREIGN SERVER nomap TO regress_nomap;
SET ROLE regress_nomap;
INSERT INTO nomap_tasks(sql) VALUES ('SELECT 1');
RESET ROLE;
DROP OWNED BY regress_nomap;
DROP ROLE regress_nomap;
DROP SERVER nomap CASCADE;

-- wait() arguments
SELECT task_fdw.wait(NULL::bigint);
SELECT task_fdw.wait(1, '-1s');
SELECT task_fdw.wait(999999999);
SELECT * FROM task_fdw.wait(ARRAY[1, NULL]::bigint[]);
SELECT * FROM task_fdw.wait(NULL::bigint[]);
SELECT * FROM task_fdw.wait('{}'::bigint[]);
-- a task of the current transaction cannot be waited for: it cannot run yet
-- (the error is shown with the task's id replaced, as ids depend on the
-- tests before)
CREATE FUNCTION wait_error(task bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    PERFORM task_fdw.wait(task, '10ms');
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN format('%s: %s HINT: %s', SQLSTATE, replace(SQLERRM, task::text, '<id>'), hint);
END $$;
BEGIN;
INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING id AS pending \gset
SELECT wait_error(:pending);
ROLLBACK;
DROP FUNCTION wait_error(bigint);

-- other roles see none of these tasks
CREATE ROLE regress_task_other;
GRANT SELECT ON tasks TO regress_task_other;
SET ROLE regress_task_other;
SELECT count(*) FROM tasks;
SELECT task_fdw.wait(:kept);
RESET ROLE;
DROP OWNED BY regress_task_other;
DROP ROLE regress_task_other;
