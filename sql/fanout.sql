-- ===================================================================
-- fan-out: one foreign table submits tasks to several servers through
-- the "server" attribute; which tasks a table shows and acts on
-- ===================================================================
-- task ids: SELECT n runs as task 400000 + n
SELECT setval('task_fdw.task_id_seq', 400001, false);
CREATE SERVER fan_a FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '2');
CREATE SERVER fan_b FOREIGN DATA WRAPPER task_fdw
    OPTIONS (pool_size '2', priority '7', batch 'from fan_b');
CREATE SERVER fan_c FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE USER MAPPING FOR CURRENT_USER SERVER fan_a;
CREATE USER MAPPING FOR CURRENT_USER SERVER fan_b;
CREATE USER MAPPING FOR CURRENT_USER SERVER fan_c;
CREATE FOREIGN TABLE fan_a_tasks (id bigint, sql text, server text, state text,
                                  priority int, batch text, run_at timestamptz)
    SERVER fan_a;
CREATE FOREIGN TABLE fan_b_tasks (id bigint, sql text, server text, state text) SERVER fan_b;
CREATE FOREIGN TABLE fan_c_tasks (id bigint, sql text, server text, state text) SERVER fan_c;
-- "server" is a task attribute of type text
CREATE FOREIGN TABLE fan_bad (id bigint, server name) SERVER fan_a;
-- runs sql and returns 'ok', or the SQLSTATE and message of its error
CREATE FUNCTION fan_try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- a task runs on the server that "server" names; NULL, or the column left
-- out, means the table's own server.  A named server's options give the
-- defaults of its tasks (fan_b: priority 7 and a batch).
INSERT INTO fan_a_tasks(sql, server) VALUES
    ('SELECT 1', NULL), ('SELECT 2', 'fan_a'), ('SELECT 3', 'fan_b'), ('SELECT 4', 'fan_c')
RETURNING id - 400000 AS n, sql, server, state, priority, batch;
INSERT INTO fan_a_tasks(sql) VALUES ('SELECT 5') RETURNING id - 400000 AS n, server;
-- through fan_b's table to fan_c, and to fan_b itself
INSERT INTO fan_b_tasks(sql, server) VALUES ('SELECT 6', 'fan_c'), ('SELECT 7', NULL)
RETURNING id - 400000 AS n, server;
-- COPY takes the column too
COPY fan_c_tasks(sql, server) FROM stdin;
SELECT 8	fan_a
SELECT 9	\N
\.
SELECT state, count(*)
  FROM task_fdw.wait(ARRAY(SELECT id FROM task_fdw.task WHERE id >= 400000), '60s')
 GROUP BY state;
-- the dispatcher ran each task on its server, in a pool of that server
SELECT id - 400000 AS n, s.srvname AS runs_on, o.srvname AS submitted_through
  FROM task_fdw.task t JOIN pg_foreign_server s ON s.oid = t.server_id
  JOIN pg_foreign_server o ON o.oid = t.origin_server_id
 WHERE id >= 400000 ORDER BY id;

-- a table shows the tasks submitted through its server, wherever they run,
-- and the tasks that run on its server, wherever they were submitted
SELECT id - 400000 AS n, sql, server, state FROM fan_a_tasks ORDER BY id;
SELECT id - 400000 AS n, sql, server, state FROM fan_b_tasks ORDER BY id;
SELECT id - 400000 AS n, sql, server, state FROM fan_c_tasks ORDER BY id;
SELECT server, count(*) FROM fan_a_tasks GROUP BY server ORDER BY server;
-- an index condition on id still applies the server filter
SELECT id - 400000 AS n FROM fan_c_tasks WHERE id = 400001;
SELECT id - 400000 AS n FROM fan_c_tasks WHERE id = 400004;

-- UPDATE and DELETE act on exactly the tasks the table shows
INSERT INTO fan_a_tasks(sql, server, run_at) VALUES
    ('SELECT 10', 'fan_b', now() + interval '1 hour'),
    ('SELECT 11', 'fan_c', now() + interval '1 hour'),
    ('SELECT 12', NULL, now() + interval '1 hour');
UPDATE fan_c_tasks SET state = 'cancelled' WHERE state = 'queued'
RETURNING id - 400000 AS n, sql, server, state;
DELETE FROM fan_b_tasks WHERE state = 'queued' RETURNING id - 400000 AS n, sql, server;
UPDATE fan_a_tasks SET run_at = NULL WHERE state = 'queued' RETURNING id - 400000 AS n, sql, server;
SELECT task_fdw.wait(400012, '60s');
SELECT id - 400000 AS n, sql, server, state FROM fan_a_tasks WHERE id >= 400010 ORDER BY id;
-- the server of a task cannot be changed
UPDATE fan_a_tasks SET server = 'fan_b';

-- errors, each for the whole statement: a server that does not exist (names
-- are exact, as stored), or that is not a task_fdw server
CREATE FOREIGN DATA WRAPPER fan_other;
CREATE SERVER fan_not_tasks FOREIGN DATA WRAPPER fan_other;
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_nowhere')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'FAN_B')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_not_tasks')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server)
                 VALUES ('SELECT 1', 'fan_b'), ('SELECT 1', 'fan_nowhere')$$);
SELECT fan_try($$COPY fan_a_tasks(sql, server) FROM PROGRAM 'printf "SELECT 1\tfan_nowhere\n"'$$);
-- none of them left a task behind
SELECT count(*) FROM task_fdw.task WHERE id > 400012;

-- a role that is not a superuser needs USAGE on a server it names, except
-- the table's own, and a user mapping with its password as usual
CREATE SERVER fan_d FOREIGN DATA WRAPPER task_fdw;
CREATE ROLE regress_fan LOGIN;
GRANT SELECT, INSERT ON fan_a_tasks TO regress_fan;
GRANT EXECUTE ON FUNCTION fan_try(text) TO regress_fan;
GRANT USAGE ON FOREIGN SERVER fan_b, fan_c, fan_d TO regress_fan;
REVOKE USAGE ON FOREIGN SERVER fan_c FROM regress_fan;
CREATE USER MAPPING FOR regress_fan SERVER fan_a OPTIONS (password_required 'false');
CREATE USER MAPPING FOR regress_fan SERVER fan_b;
CREATE USER MAPPING FOR regress_fan SERVER fan_c OPTIONS (password_required 'false');
SET ROLE regress_fan;
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_c')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_b')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_d')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 1', 'fan_a')$$);
SELECT fan_try($$INSERT INTO fan_a_tasks(sql) VALUES ('SELECT 1')$$);
RESET ROLE;
GRANT USAGE ON FOREIGN SERVER fan_c TO regress_fan;
SET ROLE regress_fan;
INSERT INTO fan_a_tasks(sql, server) VALUES ('SELECT 13', 'fan_c') RETURNING server, state;
-- the role sees its own tasks only, on whichever server
SELECT sql, server FROM fan_a_tasks ORDER BY id;
RESET ROLE;
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM task_fdw.task WHERE id > 400012), '60s')
 WHERE state = 'done';

-- a dropped server shows no name
CREATE USER MAPPING FOR CURRENT_USER SERVER fan_d;
INSERT INTO fan_a_tasks(sql, server, run_at) VALUES ('SELECT 14', 'fan_d', now() + interval '1 hour');
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER fan_d CASCADE;
RESET client_min_messages;
SELECT sql, server, state FROM fan_a_tasks WHERE sql = 'SELECT 14';
DELETE FROM fan_a_tasks WHERE sql = 'SELECT 14';

-- ===================================================================
-- observability: task_fdw.pools and task_fdw.task_stats
-- ===================================================================
-- queued tasks (due in an hour) keep pools in the view whether or not the
-- dispatcher runs; its connection counts depend on timing, so they are not
-- shown here (t/007_fanout.pl checks them)
INSERT INTO fan_a_tasks(sql, server, run_at)
SELECT 'SELECT 1', s, now() + interval '1 hour'
  FROM unnest(ARRAY['fan_a', 'fan_b', 'fan_b', 'fan_c', 'fan_c', 'fan_c']) s;
SET ROLE regress_fan;
INSERT INTO fan_a_tasks(sql, server, run_at) VALUES ('SELECT 1', 'fan_c', now() + interval '1 hour');
RESET ROLE;
SELECT server, username = current_user AS mine, pool_size, queued, running
  FROM task_fdw.pools WHERE server LIKE 'fan%' AND queued + running > 0 ORDER BY server, mine;
SELECT server, state, count, finished_last_minute > 0 AS finished_recently
  FROM task_fdw.task_stats WHERE server LIKE 'fan%';
-- other roles see their own pools and tasks only, monitors all of them
SET ROLE regress_fan;
SELECT server, username, queued FROM task_fdw.pools WHERE queued > 0;
SELECT server, state, count FROM task_fdw.task_stats;
RESET ROLE;
GRANT task_fdw_monitor TO regress_fan;
SET ROLE regress_fan;
SELECT server, username = 'regress_fan' AS mine, queued
  FROM task_fdw.pools WHERE server LIKE 'fan%' AND queued > 0 ORDER BY server, mine;
SELECT server, state, count FROM task_fdw.task_stats WHERE server LIKE 'fan%' AND state = 'queued';
RESET ROLE;
REVOKE task_fdw_monitor FROM regress_fan;
-- anyone may read the views; the task store stays private
SELECT has_table_privilege('public', 'task_fdw.pools', 'SELECT') AS pools,
       has_table_privilege('public', 'task_fdw.task_stats', 'SELECT') AS task_stats;
-- the launcher is in pg_stat_activity with its own backend type (the
-- dispatcher's, its activity and wait events are checked by t/007_fanout.pl)
SELECT backend_type FROM pg_stat_activity WHERE backend_type = 'task_fdw launcher';

DELETE FROM fan_a_tasks WHERE state = 'queued';
SET client_min_messages = warning;  -- the notices would name the superuser
DROP SERVER fan_a, fan_b, fan_c, fan_not_tasks CASCADE;
DROP FOREIGN DATA WRAPPER fan_other;
RESET client_min_messages;
DROP FUNCTION fan_try(text);
DROP ROLE regress_fan;
