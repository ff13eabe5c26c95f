-- ===================================================================
-- task control: attributes and their defaults, priorities, run_at,
-- cancel, reschedule, delete, timeouts, retries, notices, wait_batch
-- ===================================================================

-- task ids in messages below do not depend on the tests before this one
SELECT setval('task_fdw.task_id_seq', 100000, false);

-- waits until query returns true, trying every 20 ms (each try reads its
-- tables afresh), or raises an error saying what did not happen in 60 s
CREATE PROCEDURE poll(query text, what text) LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. 3000 LOOP
        EXECUTE query INTO ok;
        IF ok THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    RAISE EXCEPTION '% within 60 s', what;
END $$;

-- options that set attribute defaults are validated
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', priority 'high');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', timeout '-5s');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', timeout 'soon');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', max_attempts '0');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', retry_sqlstates '40001, 4000');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1', retry_delay '-1s');
CREATE SERVER ctl FOREIGN DATA WRAPPER task_fdw
    OPTIONS (pool_size '1', priority '2', timeout '1 min', max_attempts '2', batch 'server');
CREATE USER MAPPING FOR CURRENT_USER SERVER ctl;
CREATE SCHEMA ctl;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER ctl INTO ctl;
ALTER FOREIGN TABLE ctl.tasks RENAME TO ctl_tasks;
ALTER FOREIGN TABLE ctl.ctl_tasks SET SCHEMA public;
-- a second table on the same server with its own defaults
CREATE FOREIGN TABLE ctl_retry (id bigint, sql text, state text, attempts int,
                                max_attempts int, sqlstate text, error text)
    SERVER ctl OPTIONS (max_attempts '3', retry_delay '10ms', retry_sqlstates 'P0001, 55P03');
ALTER FOREIGN TABLE ctl_retry OPTIONS (ADD pool_size '3');

-- defaults come from the table, then the server; given values beat both
INSERT INTO ctl_tasks(sql) VALUES ('SELECT 1')
RETURNING state, priority, timeout, max_attempts, attempts, batch, run_at;
INSERT INTO ctl_tasks(sql, priority, timeout, max_attempts, batch)
VALUES ('SELECT 2', -1, '5s', 1, 'mine')
RETURNING state, priority, timeout, max_attempts, attempts, batch;
INSERT INTO ctl_retry(sql) VALUES ('SELECT 3') RETURNING state, max_attempts;
-- bad values are refused
INSERT INTO ctl_tasks(sql, timeout) VALUES ('SELECT 1', '0s');
INSERT INTO ctl_tasks(sql, max_attempts) VALUES ('SELECT 1', 0);
INSERT INTO ctl_tasks(sql, timeout) VALUES ('SELECT 1', '-1 hour');
INSERT INTO ctl_tasks(sql, timeout) VALUES ('SELECT 1', '1 month -30 days');
INSERT INTO ctl_tasks(sql, attempts) VALUES ('SELECT 1', 2);
INSERT INTO ctl_tasks(sql, notices) VALUES ('SELECT 1', '{}');
-- ctl_tasks shows every task of server ctl, ctl_retry's too
SELECT state, count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM ctl_tasks), '60s') GROUP BY state;

-- ===================================================================
-- priorities: with one connection, higher priority runs first
-- ===================================================================
CREATE TABLE run_order (seq serial, label text);
GRANT ALL ON run_order, run_order_seq_seq TO PUBLIC;
-- The first task takes the only connection until this session lets go of
-- an advisory lock; it has the highest priority, so it is claimed first.
SELECT pg_advisory_lock(4242);
INSERT INTO ctl_tasks(sql, priority) VALUES
    ('SELECT pg_advisory_xact_lock(4242)', 100),
    ($$INSERT INTO run_order(label) VALUES ('p1')$$, 1),
    ($$INSERT INTO run_order(label) VALUES ('p5')$$, 5),
    ($$INSERT INTO run_order(label) VALUES ('p3')$$, 3);
-- The connection may claim the three ahead of the blocker, recorded as
-- running; they go back to the queue once the blocker has run for a while
-- (20 ms), and none is claimed ahead of it after that.  Wait for both.
CALL poll($$SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted)
              AND (SELECT count(*) FROM ctl_tasks WHERE state = 'queued') = 3$$,
          'the blocker did not start, or the other tasks did not go back to the queue,');
-- while the blocker holds the connection, queue one more and cancel it
INSERT INTO ctl_tasks(sql, priority) VALUES
    ($$INSERT INTO run_order(label) VALUES ('cancelled')$$, 50)
RETURNING id AS cancelled_id \gset
UPDATE ctl_tasks SET state = 'cancelled' WHERE id = :cancelled_id
RETURNING state, error, sqlstate, finished_at IS NOT NULL AS finished;
-- a queued task can be rescheduled: p0 now goes before p1
INSERT INTO ctl_tasks(sql, priority) VALUES
    ($$INSERT INTO run_order(label) VALUES ('p0')$$, 0) RETURNING id AS p0_id \gset
UPDATE ctl_tasks SET priority = 2 WHERE id = :p0_id RETURNING priority, state;
SELECT pg_advisory_unlock(4242);
SELECT state, count(*)
  FROM task_fdw.wait(ARRAY(SELECT id FROM ctl_tasks WHERE batch = 'server'), '60s')
 GROUP BY state ORDER BY state;
SELECT string_agg(label, ' ' ORDER BY seq) AS ran_in_order FROM run_order;
-- the cancelled task never started
SELECT state, started_at, remote_pid, attempts FROM ctl_tasks WHERE id = :cancelled_id;

-- ===================================================================
-- cancelling a running task
-- ===================================================================
SELECT pg_advisory_lock(4242);
INSERT INTO ctl_tasks(sql) VALUES ('SELECT pg_advisory_xact_lock(4242)')
RETURNING id AS running_id \gset
-- wait until the task runs: its remote statement waits for the lock (pg_locks,
-- unlike pg_stat_activity, is read afresh within the procedure)
CALL poll($$SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted)$$,
          'the task did not start waiting for the advisory lock');
UPDATE ctl_tasks SET state = 'cancelled' WHERE id = :running_id;
SELECT task_fdw.wait(:running_id, '60s');
SELECT started_at IS NOT NULL AS started, sqlstate, error FROM ctl_tasks WHERE id = :running_id;
-- the remote statement is over once the task is cancelled
SELECT count(*) AS still_active FROM pg_stat_activity
 WHERE query = 'SELECT pg_advisory_xact_lock(4242)' AND state = 'active';
SELECT pg_advisory_unlock(4242);
-- a finished task keeps its real outcome: nothing is updated
INSERT INTO ctl_tasks(sql) VALUES ('SELECT 1') RETURNING id AS done_id \gset
SELECT task_fdw.wait(:done_id, '60s');
UPDATE ctl_tasks SET state = 'cancelled' WHERE id = :done_id RETURNING id;
SELECT state FROM ctl_tasks WHERE id = :done_id;

-- ===================================================================
-- what UPDATE may not do
-- ===================================================================
UPDATE ctl_tasks SET sql = 'SELECT 2' WHERE id = :done_id;
UPDATE ctl_tasks SET timeout = '1s' WHERE id = :done_id;
UPDATE ctl_tasks SET state = 'done' WHERE id = :done_id;
UPDATE ctl_tasks SET state = NULL WHERE id = :done_id;
UPDATE ctl_tasks SET priority = 1 WHERE id = :done_id;
UPDATE ctl_tasks SET priority = NULL WHERE id = :done_id;

-- ===================================================================
-- run_at: not before the given time
-- ===================================================================
INSERT INTO ctl_tasks(sql, run_at) VALUES ('SELECT 1', clock_timestamp() + interval '2s')
RETURNING id AS later_id \gset
SELECT task_fdw.wait(:later_id, '60s');
SELECT state, started_at >= run_at AS not_before_run_at FROM ctl_tasks WHERE id = :later_id;
-- a queued task can be postponed, then deleted before it ever runs
INSERT INTO ctl_tasks(sql, run_at)
VALUES ($$INSERT INTO run_order(label) VALUES ('deleted')$$, now() + interval '1 hour')
RETURNING id AS far_id \gset
UPDATE ctl_tasks SET run_at = now() + interval '2 hours' WHERE id = :far_id
RETURNING state, run_at - now() AS delay;
DELETE FROM ctl_tasks WHERE id = :far_id RETURNING state, sql;
SELECT count(*) FROM ctl_tasks WHERE id = :far_id;

-- ===================================================================
-- timeouts
-- ===================================================================
INSERT INTO ctl_tasks(sql, timeout) VALUES ('SELECT pg_sleep(5)', '200ms')
RETURNING id AS slow_id \gset
SELECT task_fdw.wait(:slow_id, '60s');
SELECT state, sqlstate, error, error_detail FROM ctl_tasks WHERE id = :slow_id;

-- ===================================================================
-- retries
-- ===================================================================
CREATE SEQUENCE runs;
GRANT ALL ON runs TO PUBLIC;
-- a serialization failure is retried up to max_attempts
INSERT INTO ctl_retry(sql) VALUES ($q$SELECT nextval('runs');
  DO $d$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $d$$q$)
RETURNING id AS retry_id \gset
SELECT task_fdw.wait(:retry_id, '60s');
SELECT state, attempts, max_attempts, sqlstate, error, (SELECT last_value FROM runs) AS runs
  FROM ctl_retry WHERE id = :retry_id;
-- an undefined table is not
INSERT INTO ctl_retry(sql) VALUES ('SELECT * FROM no_such_table') RETURNING id AS noretry_id \gset
SELECT task_fdw.wait(:noretry_id, '60s');
SELECT state, attempts, sqlstate FROM ctl_retry WHERE id = :noretry_id;
-- codes listed in retry_sqlstates are; success ends the retries
ALTER SEQUENCE runs RESTART;
INSERT INTO ctl_retry(sql) VALUES ($q$DO $d$ BEGIN
  IF nextval('runs') < 2 THEN RAISE EXCEPTION 'not yet'; END IF; END $d$$q$)
RETURNING id AS listed_id \gset
SELECT task_fdw.wait(:listed_id, '60s');
SELECT state, attempts, sqlstate, error FROM ctl_retry WHERE id = :listed_id;
-- a task submitted with max_attempts 1 is not retried
INSERT INTO ctl_retry(sql, max_attempts) VALUES ($q$DO $d$ BEGIN
  RAISE EXCEPTION 'once' USING ERRCODE = '40P01'; END $d$$q$, 1)
RETURNING id AS once_id \gset
SELECT task_fdw.wait(:once_id, '60s');
SELECT state, attempts, sqlstate FROM ctl_retry WHERE id = :once_id;

-- ===================================================================
-- notices
-- ===================================================================
CREATE TABLE vacuumed (i int);
INSERT INTO vacuumed VALUES (1);
INSERT INTO ctl_tasks(sql) VALUES ($q$DO $d$ BEGIN
  RAISE NOTICE 'hello %', 1; RAISE WARNING 'careful'; RAISE INFO 'fyi'; END $d$$q$)
RETURNING id AS notice_id \gset
SELECT task_fdw.wait(:notice_id, '60s');
SELECT notices FROM ctl_tasks WHERE id = :notice_id;
INSERT INTO ctl_tasks(sql) VALUES ('VACUUM (VERBOSE) vacuumed') RETURNING id AS vacuum_id \gset
SELECT task_fdw.wait(:vacuum_id, '60s');
SELECT notices[1] AS first_notice, cardinality(notices) >= 2 AS more
  FROM ctl_tasks WHERE id = :vacuum_id;
-- only task_fdw.max_notices messages are kept
INSERT INTO ctl_tasks(sql) VALUES ($q$DO $d$ BEGIN
  FOR i IN 1..150 LOOP RAISE NOTICE 'n%', i; END LOOP; END $d$$q$)
RETURNING id AS many_id \gset
SELECT task_fdw.wait(:many_id, '60s');
SELECT cardinality(notices), notices[100], notices[101] FROM ctl_tasks WHERE id = :many_id;
-- a task without notices has none
SELECT notices FROM ctl_tasks WHERE id = :done_id;

-- ===================================================================
-- wait_batch
-- ===================================================================
INSERT INTO ctl_tasks(sql, batch)
SELECT format('INSERT INTO run_order(label) VALUES (%L)', 'batch ' || g), 'b20'
  FROM generate_series(1, 20) g;
SELECT state, count(*) FROM task_fdw.wait_batch('b20', '60s') GROUP BY state;
SELECT count(*) AS rows_written FROM run_order WHERE label LIKE 'batch %';
-- from a procedure that submits, commits and waits, and from a function
CREATE PROCEDURE run_batch(label text, n int) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ctl_tasks(sql, batch) SELECT 'SELECT 1', label FROM generate_series(1, n);
    COMMIT;
    RAISE NOTICE 'batch %: % tasks finished', label,
        (SELECT count(*) FROM task_fdw.wait_batch(label, '60s'));
END $$;
CALL run_batch('proc', 5);
CREATE FUNCTION batch_done(label text) RETURNS bigint LANGUAGE sql
    AS $$ SELECT count(*) FROM task_fdw.wait_batch(label, '60s') WHERE state = 'done' $$;
SELECT batch_done('proc');
DROP PROCEDURE run_batch;
DROP FUNCTION batch_done;
-- an unknown batch has no tasks to wait for
SELECT * FROM task_fdw.wait_batch('no such batch');
SELECT * FROM task_fdw.wait_batch(NULL);
-- tasks of this transaction cannot be waited for
BEGIN;
INSERT INTO ctl_tasks(sql, batch) VALUES ('SELECT 1', 'uncommitted');
SELECT * FROM task_fdw.wait_batch('uncommitted', '1s');
ROLLBACK;
-- a timeout returns the states as they are
SELECT pg_advisory_lock(4242);
INSERT INTO ctl_tasks(sql, batch) VALUES ('SELECT pg_advisory_xact_lock(4242)', 'slow');
SELECT state IN ('queued', 'running') AS unfinished FROM task_fdw.wait_batch('slow', '100ms');
-- waiting responds to query cancel, here from statement_timeout
SET statement_timeout = '200ms';
SELECT * FROM task_fdw.wait_batch('slow');
RESET statement_timeout;
-- A wait re-reads only the first unfinished task it meets at each wake-up,
-- but a timeout reports every task as it is then: here the 0.3 s task,
-- unfinished when the wait began, behind (or older than) a blocked one.
-- They run on a server of their own, as the slow task fills ctl's pool.
CREATE SERVER ctl_wait FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '4');
CREATE USER MAPPING FOR CURRENT_USER SERVER ctl_wait;
-- waits until task runs, so that the blocked task of each pair is running,
-- not still waiting for a connection
CREATE PROCEDURE wait_running(task bigint) LANGUAGE sql AS $$
CALL poll(format('SELECT EXISTS (SELECT FROM ctl_tasks WHERE id = %s AND state = %L)', task, 'running'),
          format('task %s did not start', task))
$$;
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_advisory_xact_lock(4242)', 'pair', 'ctl_wait')
RETURNING id AS blocked_id \gset
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_sleep(0.3)', 'pair', 'ctl_wait')
RETURNING id AS sleeper_id \gset
CALL wait_running(:blocked_id);
SELECT id = :blocked_id AS blocked, state
  FROM task_fdw.wait(ARRAY[:blocked_id, :sleeper_id], '3s') ORDER BY id;
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_sleep(0.3)', 'pair2', 'ctl_wait')
RETURNING id AS sleeper_id \gset
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_advisory_xact_lock(4242)', 'pair2', 'ctl_wait')
RETURNING id AS blocked_id \gset
CALL wait_running(:blocked_id);
SELECT id = :blocked_id AS blocked, state
  FROM task_fdw.wait_batch('pair2', '3s') ORDER BY id;
-- wait_batch reads the whole batch again once the newest unfinished task
-- ends: here the older one still waits for the lock when the 0.3 s one ends,
-- so the wait goes on until its timeout rather than returning then.
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_advisory_xact_lock(4242)', 'pair3', 'ctl_wait')
RETURNING id AS blocked_id \gset
CALL wait_running(:blocked_id);
INSERT INTO ctl_tasks(sql, batch, server) VALUES ('SELECT pg_sleep(0.3)', 'pair3', 'ctl_wait');
SELECT clock_timestamp() AS pair3_start \gset
SELECT id = :blocked_id AS blocked, state
  FROM task_fdw.wait_batch('pair3', '3s') ORDER BY id;
SELECT clock_timestamp() - :'pair3_start'::timestamptz >= interval '3s' AS waited_until_timeout;
SELECT pg_advisory_unlock(4242);
SELECT state FROM task_fdw.wait_batch('slow', '60s');
SELECT state, count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM ctl_tasks WHERE batch LIKE 'pair%'), '60s')
 GROUP BY state;
DELETE FROM ctl_tasks WHERE batch LIKE 'pair%';
DROP USER MAPPING FOR CURRENT_USER SERVER ctl_wait;
DROP SERVER ctl_wait;
DROP PROCEDURE wait_running;

-- ===================================================================
-- DELETE
-- ===================================================================
DELETE FROM ctl_retry WHERE state = 'failed' RETURNING attempts, sqlstate;
SELECT count(*) FROM ctl_retry WHERE state = 'failed';
DELETE FROM ctl_tasks WHERE batch = 'b20';
SELECT count(*) FROM ctl_tasks WHERE batch = 'b20';

DROP FOREIGN TABLE ctl_tasks, ctl_retry;
DROP SCHEMA ctl;
DROP TABLE run_order, vacuumed;
DROP SEQUENCE runs;
DROP PROCEDURE poll;
