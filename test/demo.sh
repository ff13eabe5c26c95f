#!/bin/sh
# make demo: a throwaway cluster with task_fdw preloaded, a loopback server,
# a few tasks running in parallel (one of them failing), shown as they move
# from queued to done; then the cluster is stopped and removed.
set -eu
. "$(dirname "$0")/cluster.sh"

echo "== starting a throwaway cluster with task_fdw preloaded"
start_cluster demo

psql() { "$bindir/psql" -X -q -h "$dir" -p "$port" -d postgres "$@"; }

psql <<'SQL'
\echo == a loopback server with a pool of 4 connections, and its task table
CREATE EXTENSION task_fdw;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '4');
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER loopback INTO public;
CREATE TABLE big AS SELECT g AS id, md5(g::text) AS label FROM generate_series(1, 200000) g;

\echo == submitting six tasks in one transaction: four index builds, a report, and a mistake
BEGIN;
INSERT INTO tasks(sql) VALUES
  ('CREATE INDEX big_id ON big (id)'),
  ('CREATE INDEX big_label ON big (label)'),
  ('CREATE INDEX big_label_id ON big (label, id)'),
  ('CREATE INDEX big_expr ON big (lower(label))'),
  ('SELECT count(*) AS rows, min(label) AS first_label FROM big'),
  ('SELECT * FROM no_such_table')
RETURNING id, state;
\echo == before COMMIT nothing runs: the tasks are part of this transaction
SELECT id, state FROM tasks ORDER BY id;
COMMIT;

\echo == right after COMMIT
SELECT id, state, left(sql, 40) AS sql FROM tasks ORDER BY id;
\echo == 0.2 s later (task_fdw.wait with a timeout returns the states as they are)
SELECT * FROM task_fdw.wait(ARRAY(SELECT id FROM tasks), '200ms') ORDER BY id;
\echo == waiting until all are finished
SELECT * FROM task_fdw.wait(ARRAY(SELECT id FROM tasks)) ORDER BY id;
\echo == results and errors, readable from any session
SELECT id, state, command_tag, rows, result, sqlstate, error,
       round(extract(epoch FROM finished_at - started_at)::numeric, 3) AS seconds
  FROM tasks ORDER BY id;
\echo == the indexes the tasks built
SELECT indexname FROM pg_indexes WHERE tablename = 'big' ORDER BY 1;

\echo == a runaway task, a timeout, and a cancel through UPDATE
INSERT INTO tasks(sql, batch) VALUES ('SELECT pg_sleep(600)', 'runaway');
INSERT INTO tasks(sql, timeout, batch) VALUES ('SELECT pg_sleep(600)', '300ms', 'runaway');
SELECT * FROM task_fdw.wait_batch('runaway', '100ms') ORDER BY id;
UPDATE tasks SET state = 'cancelled' WHERE batch = 'runaway' AND timeout IS NULL RETURNING id, state;
SELECT * FROM task_fdw.wait_batch('runaway') ORDER BY id;
SELECT id, state, sqlstate, error, round(extract(epoch FROM finished_at - started_at)::numeric, 3) AS seconds
  FROM tasks WHERE batch = 'runaway' ORDER BY id;
SQL
echo "== stopping and removing the cluster"
