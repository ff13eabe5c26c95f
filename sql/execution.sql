-- ===================================================================
-- what tasks do and what they report
-- ===================================================================
-- submit one task, commit, and wait for it; currval() then names it
CREATE PROCEDURE submit(sql text) LANGUAGE plpgsql AS $$
DECLARE
    task_id bigint;
BEGIN
    INSERT INTO tasks(sql) VALUES (sql) RETURNING id INTO task_id;
    COMMIT;
    PERFORM task_fdw.wait(task_id, '60s');
END $$;

-- a 3-row SELECT: rows in result, numbers and booleans as JSON
CALL submit($$SELECT g AS n, g % 2 = 0 AS even, 'row ' || g AS label FROM generate_series(1, 3) g$$);
SELECT state, command_tag, rows, result, result_truncated, error, sqlstate,
       started_at <= finished_at AS ordered, remote_pid IS NOT NULL AS had_pid
  FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- a command: command tag and rows affected, no result
CALL submit('INSERT INTO side SELECT generate_series(1, 5)');
SELECT state, command_tag, rows, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- a failure: sqlstate and the remote message; the pool goes on
CALL submit('SELECT * FROM missing_table');
SELECT state, error, sqlstate, command_tag, rows FROM tasks WHERE id = currval('task_fdw.task_id_seq');
CALL submit('SELECT 42 AS answer');
SELECT state, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- detail, hint and context of a remote error
CALL submit($q$DO $b$ BEGIN RAISE EXCEPTION 'custom failure' USING DETAIL = 'the detail',
    HINT = 'the hint', ERRCODE = '22012'; END $b$$q$);
SELECT state, error, sqlstate, error_detail, error_hint, error_context
  FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- a large result is capped at task_fdw.max_result_rows, and says so
CALL submit('SELECT g FROM generate_series(1, 5000) g');
SELECT state, command_tag, rows, jsonb_array_length(result) AS kept, result_truncated,
       result->0 AS first, result->999 AS last
  FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- several statements: the last result is reported
CALL submit('SELECT 1 AS one; SELECT 2 AS two');
SELECT state, command_tag, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');
CALL submit('SELECT 1 AS one; INSERT INTO side VALUES (100)');
SELECT state, command_tag, rows, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');
-- a failure part way: the first statements' work is rolled back, as in a simple query
CALL submit('INSERT INTO side VALUES (200); SELECT 1/0');
SELECT state, error, sqlstate FROM tasks WHERE id = currval('task_fdw.task_id_seq');
SELECT count(*) FROM side WHERE i = 200;

-- value types in result
CALL submit($$SELECT 1.50::numeric AS num, 'NaN'::float8 AS nan, NULL::int AS nothing,
    '{"a": [1, 2]}'::jsonb AS doc, 'say "hi"' AS quoted, 12345678901234::bigint AS big$$);
SELECT result FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- a string of only comments, a SELECT of no rows
CALL submit('-- nothing to do');
SELECT state, command_tag, rows, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');
CALL submit('SELECT 1 AS x WHERE false');
SELECT state, command_tag, rows, result FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- COPY to or from the client has no client: the task fails cleanly
CALL submit('COPY side TO STDOUT');
SELECT state, error, sqlstate FROM tasks WHERE id = currval('task_fdw.task_id_seq');
CALL submit('COPY side FROM STDIN');
SELECT state, error, sqlstate FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- the remote session names the task it runs
CALL submit($$SELECT current_setting('application_name') AS app$$);
SELECT result->0->>'app' = 'task_fdw task ' || id AS names_task
  FROM tasks WHERE id = currval('task_fdw.task_id_seq');

-- submits, through foreign table tasks, a task that changes its session and
-- one that reports what it finds of those changes, and waits for both
CREATE PROCEDURE probe_session(tasks regclass) LANGUAGE plpgsql AS $proc$
BEGIN
    EXECUTE format($sql$INSERT INTO %s(sql) VALUES
        ('SET work_mem = ''77MB''; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1'),
        ($$SELECT current_setting('work_mem') AS work_mem,
                  (SELECT count(*) FROM pg_class WHERE relname = 'scratch') AS temp_tables,
                  (SELECT count(*) FROM pg_prepared_statements) AS prepared,
                  current_setting('application_name') LIKE 'task_fdw task %%' AS named_after_task$$)$sql$,
        tasks);
    COMMIT;
    EXECUTE format($sql$SELECT task_fdw.wait(ARRAY(SELECT id FROM %s), '60s')$sql$, tasks);
END $proc$;

-- a pooled connection is reused, with its session reset between tasks
CREATE SERVER single FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE USER MAPPING FOR CURRENT_USER SERVER single;
CREATE FOREIGN TABLE single_tasks (id bigint, sql text, state text, remote_pid int, result jsonb,
                                   sqlstate text, error text)
    SERVER single;
CALL probe_session('single_tasks');
SELECT state, count(*) FROM single_tasks GROUP BY state;
SELECT count(DISTINCT remote_pid) AS connections FROM single_tasks;
SELECT result FROM single_tasks WHERE result IS NOT NULL;
-- a task that leaves a transaction open fails, and its connection is closed,
-- not reused, so the next task on this one-connection pool runs in a new
-- session and the open transaction's row was never committed
INSERT INTO single_tasks(sql) VALUES ('BEGIN; INSERT INTO side VALUES (300)')
    RETURNING id AS open_id \gset
SELECT task_fdw.wait(:open_id, '60s');
SELECT sqlstate, error FROM single_tasks WHERE id = :open_id;
INSERT INTO single_tasks(sql) VALUES ($$SELECT count(*) AS n, now() = statement_timestamp() AS own_xact
    FROM side WHERE i = 300$$) RETURNING id AS after_id \gset
SELECT task_fdw.wait(:after_id, '60s');
SELECT (SELECT remote_pid FROM single_tasks WHERE id = :open_id) <>
       (SELECT remote_pid FROM single_tasks WHERE id = :after_id) AS new_connection,
       (SELECT result FROM single_tasks WHERE id = :after_id) AS result;

-- with reset_session 'false' the session is kept as the task before left it
-- (same settings, temporary tables and prepared statements), and is named
-- task_fdw rather than after each task
CREATE SERVER kept FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', reset_session 'false');
CREATE USER MAPPING FOR CURRENT_USER SERVER kept;
CREATE FOREIGN TABLE kept_tasks (id bigint, sql text, state text, remote_pid int, result jsonb,
                                 sqlstate text, error text)
    SERVER kept;
CALL probe_session('kept_tasks');
SELECT state, count(*) FROM kept_tasks GROUP BY state;
SELECT count(DISTINCT remote_pid) AS connections FROM kept_tasks;
SELECT result FROM kept_tasks WHERE result IS NOT NULL;
-- a task that changes the client encoding leaves a session that is not
-- reused: the next task's results would arrive in that encoding
INSERT INTO kept_tasks(sql) VALUES ($$SELECT set_config('client_encoding',
    CASE WHEN getdatabaseencoding() = 'LATIN1' THEN 'UTF8' ELSE 'LATIN1' END, false)$$)
    RETURNING id AS enc_id \gset
SELECT task_fdw.wait(:enc_id, '60s');
INSERT INTO kept_tasks(sql) VALUES ($$SELECT current_setting('client_encoding') = getdatabaseencoding() AS database_encoding$$)
    RETURNING id AS enc_after_id \gset
SELECT task_fdw.wait(:enc_after_id, '60s');
SELECT (SELECT remote_pid FROM kept_tasks WHERE id = :enc_id) <>
       (SELECT remote_pid FROM kept_tasks WHERE id = :enc_after_id) AS new_connection,
       (SELECT result FROM kept_tasks WHERE id = :enc_after_id) AS result;
-- a task that leaves a transaction open still closes the kept session: the
-- setting made before it is gone afterwards; the kept session is named
-- task_fdw, not after a task
INSERT INTO kept_tasks(sql) VALUES ('SET work_mem = ''88MB''') RETURNING id AS set88_id \gset
SELECT task_fdw.wait(:set88_id, '60s');
INSERT INTO kept_tasks(sql) VALUES ('BEGIN; SELECT 1') RETURNING id AS open_id \gset
SELECT task_fdw.wait(:open_id, '60s');
SELECT sqlstate, remote_pid = (SELECT remote_pid FROM kept_tasks WHERE id = :set88_id) AS same_session
  FROM kept_tasks WHERE id = :open_id;
INSERT INTO kept_tasks(sql) VALUES ($$SELECT current_setting('work_mem') AS work_mem,
    now() = statement_timestamp() AS own_xact, current_setting('application_name') AS app$$)
    RETURNING id AS after_id \gset
SELECT task_fdw.wait(:after_id, '60s');
SELECT (SELECT remote_pid FROM kept_tasks WHERE id = :open_id) <>
       (SELECT remote_pid FROM kept_tasks WHERE id = :after_id) AS new_connection,
       (SELECT result FROM kept_tasks WHERE id = :after_id) AS result;
-- turning resets back on (which, as any ALTER SERVER, replaces the pool's
-- connections) names each task's session after the task again
INSERT INTO kept_tasks(sql) VALUES ('SET work_mem = ''99MB''') RETURNING id AS set_id \gset
SELECT task_fdw.wait(:set_id, '60s');
ALTER SERVER kept OPTIONS (SET reset_session 'true');
INSERT INTO kept_tasks(sql) VALUES ($$SELECT current_setting('work_mem') AS work_mem,
    current_setting('application_name') AS app$$) RETURNING id AS reset_id \gset
SELECT task_fdw.wait(:reset_id, '60s');
SELECT (SELECT remote_pid FROM kept_tasks WHERE id = :set_id) <>
       (SELECT remote_pid FROM kept_tasks WHERE id = :reset_id) AS new_connection,
       result->0->>'work_mem' AS work_mem, result->0->>'app' = 'task_fdw task ' || id AS names_task
  FROM kept_tasks WHERE id = :reset_id;

-- each foreign table shows only its own server's tasks
SELECT (SELECT count(*) FROM single_tasks) AS single, (SELECT count(*) FROM tasks WHERE sql LIKE 'SET work_mem%') AS loopback;

-- lookups by id and state use the task store's indexes
EXPLAIN (COSTS OFF) SELECT * FROM tasks WHERE id = 3;
EXPLAIN (COSTS OFF) SELECT id FROM tasks WHERE state = 'queued' AND sql LIKE 'x%';
EXPLAIN (COSTS OFF) SELECT id FROM tasks WHERE 3 = id AND state = 'done';
EXPLAIN (COSTS OFF) SELECT id FROM tasks;
SELECT max(id) AS last_id, max(id) FILTER (WHERE state = 'failed') AS failed_id FROM tasks \gset
SELECT id = :last_id AS found, state FROM tasks WHERE id = :last_id;
SELECT id FROM tasks WHERE id = NULL;
SELECT count(*) FROM tasks WHERE state = 'failed' AND id = :failed_id;
SELECT count(*) FROM tasks WHERE state = 'done' AND id = :failed_id;
SELECT (SELECT count(*) FROM tasks WHERE state = 'failed') =
       (SELECT count(*) FROM tasks WHERE state || '' = 'failed') AS index_matches_scan;
-- done tasks are in no index on state, so a constant 'done' is no key (the
-- plan scans the store) and a value known only at run time, as from unnest
-- below, is looked for in the table rather than an index; queued ones are
-- found through the queue's index.  Each way finds what a scan finds (with
-- a queued and a cancelled task added; no task is running here).
EXPLAIN (COSTS OFF) SELECT id FROM tasks WHERE state = 'done';
INSERT INTO tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour'),
                                      ('SELECT 2', now() + interval '1 hour');
UPDATE tasks SET state = 'cancelled' WHERE sql = 'SELECT 2' AND state = 'queued';
SELECT (SELECT count(*) FROM tasks WHERE state = 'done') > 0 AS done_present,
       (SELECT count(*) FROM tasks WHERE state = 'done') =
       (SELECT count(*) FROM tasks WHERE state || '' = 'done') AS done_constant_finds_all;
SELECT s AS state, (SELECT count(*) FROM tasks WHERE state || '' = s) > 0 AS present,
       (SELECT count(*) FROM tasks WHERE state || '' = s) =
       (SELECT count(*) FROM tasks WHERE state = s) AS lookup_finds_all
  FROM unnest('{queued,running,done,failed,cancelled}'::text[]) s;
DELETE FROM tasks WHERE sql IN ('SELECT 1', 'SELECT 2') AND run_at > now();
PREPARE by_id(bigint) AS SELECT state FROM tasks WHERE id = $1;
EXECUTE by_id(:failed_id);
SELECT count(t.id) FROM generate_series(:last_id - 2, :last_id) g
  JOIN LATERAL (SELECT id FROM tasks WHERE id = g) t ON true;
