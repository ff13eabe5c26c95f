#!/bin/sh
# make bench: the same workloads through task_fdw (loopback server), through
# dblink written as well as PL/pgSQL allows (a warm pool of P connections
# driven with dblink_send_query / dblink_is_busy / dblink_get_result), and
# through pgbench over P connections (the ceiling), on one throwaway
# cluster in one run.  Prints the table on standard output (make bench
# writes it to bench/results.txt) and its progress on standard error.
#
# Workloads (see the README's Performance section):
#   W1 throughput: 20,000 x SELECT 1 at P = 1, 2, 4 and 8, and at P = 4 and 8
#      with the server option reset_session 'false', and with the shallower
#      pipeline of version 1.4.0 (pipeline_depth '8', task_fdw.claim_ahead = 48)
#   W2 latency: 200 single tasks one after another
#   W3 parallelism: 16 x pg_sleep(0.5) at P = 8 (ideal 1.0 s)
#   W4 status lookup with 1,000,000 finished tasks in history
#   W5 submission of 100,000 tasks vs an INSERT into an ordinary table
#   W6 dispatcher footprint during W1 at P = 4 and 8
set -eu
N=${BENCH_TASKS:-20000}
RUNS=3		# runs of W1 per figure, which is their median
. "$(dirname "$0")/../test/cluster.sh"
start_cluster bench "max_connections = 100" "shared_buffers = 256MB" \
	"task_fdw.idle_timeout = '10min'" "task_fdw.max_result_rows = 100"

q() { "$bindir/psql" -X -q -A -t -h "$dir" -p "$port" -d postgres -v ON_ERROR_STOP=1 "$@"; }

q >/dev/null <<'SQL'
CREATE EXTENSION task_fdw;
CREATE EXTENSION dblink;
CREATE SERVER p1 FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE SERVER p2 FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '2');
CREATE SERVER p4 FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '4');
CREATE SERVER p8 FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '8');
CREATE USER MAPPING FOR CURRENT_USER SERVER p1;
CREATE USER MAPPING FOR CURRENT_USER SERVER p2;
CREATE USER MAPPING FOR CURRENT_USER SERVER p4;
CREATE USER MAPPING FOR CURRENT_USER SERVER p8;
CREATE FOREIGN TABLE tasks1 (id bigint, sql text, state text, finished_at timestamptz) SERVER p1;
CREATE FOREIGN TABLE tasks2 (id bigint, sql text, state text, finished_at timestamptz) SERVER p2;
CREATE FOREIGN TABLE tasks4 (id bigint, sql text, state text, submitted_at timestamptz,
    started_at timestamptz, finished_at timestamptz, result jsonb, run_at timestamptz) SERVER p4;
CREATE FOREIGN TABLE tasks8 (id bigint, sql text, state text, submitted_at timestamptz,
    started_at timestamptz, finished_at timestamptz, result jsonb, run_at timestamptz) SERVER p8;

-- dblink with a warm pool of p connections: n statements, kept busy.
CREATE FUNCTION dblink_pool(n int, p int, stmt text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    sent int := 0;
    done int := 0;
    t0 timestamptz;
    busy boolean[] := array_fill(false, ARRAY[p]);
    c int;
BEGIN
    FOR c IN 1 .. p LOOP
        PERFORM dblink_connect('c' || c, format('host=%s port=%s dbname=postgres',
            current_setting('unix_socket_directories'), current_setting('port')));
    END LOOP;
    t0 := clock_timestamp();
    WHILE done < n LOOP
        FOR c IN 1 .. p LOOP
            IF busy[c] THEN
                IF dblink_is_busy('c' || c) = 0 THEN
                    PERFORM * FROM dblink_get_result('c' || c) AS r(x text);
                    PERFORM * FROM dblink_get_result('c' || c) AS r(x text);
                    busy[c] := false;
                    done := done + 1;
                END IF;
            END IF;
            IF NOT busy[c] AND sent < n THEN
                PERFORM dblink_send_query('c' || c, stmt);
                busy[c] := true;
                sent := sent + 1;
            END IF;
        END LOOP;
    END LOOP;
    FOR c IN 1 .. p LOOP
        PERFORM dblink_disconnect('c' || c);
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0);
END $$;

-- one task at a time: submit, commit, wait.  A task's submitted_at is the
-- start of the transaction that inserted it, which inside a procedure is
-- the previous COMMIT, before the wait for the previous task: so the clock
-- is read right after each COMMIT instead, and again once wait() returned.
CREATE TABLE w2_times (id bigint, committed_at timestamptz, seen_at timestamptz);
CREATE PROCEDURE one_by_one(n int) LANGUAGE plpgsql AS $$
DECLARE
    task_id bigint;
    committed timestamptz;
    ids bigint[] := '{}';
    commits timestamptz[] := '{}';
    seen timestamptz[] := '{}';
BEGIN
    FOR i IN 1 .. n LOOP
        INSERT INTO tasks4(sql) VALUES ('SELECT statement_timestamp() AS remote_start')
            RETURNING id INTO task_id;
        COMMIT;
        committed := clock_timestamp();
        PERFORM task_fdw.wait(task_id);
        ids := ids || task_id;
        commits := commits || committed;
        seen := seen || clock_timestamp();
    END LOOP;
    INSERT INTO w2_times SELECT * FROM unnest(ids, commits, seen);
END $$;

-- median and 95th percentile of n runs of a lookup, in ms
CREATE FUNCTION lookup_ms(query text, n int, OUT median float8, OUT p95 float8)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    ms float8[] := '{}';
BEGIN
    FOR i IN 1 .. n LOOP
        t0 := clock_timestamp();
        EXECUTE format(query, 1 + (i * 7919) % 1000000);
        ms := ms || extract(epoch FROM clock_timestamp() - t0) * 1000;
    END LOOP;
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.95) WITHIN GROUP (ORDER BY x)
      INTO median, p95 FROM unnest(ms) x;
END $$;
SQL

# pool_variant SERVER TABLE OPTION: servers SERVER4 and SERVER8, the pools
# of 4 and 8 again with OPTION as well, and their tables TABLE4 and TABLE8.
pool_variant() {
	for p in 4 8; do
		q >/dev/null <<SQL
CREATE SERVER $1$p FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '$p', $3);
CREATE USER MAPPING FOR CURRENT_USER SERVER $1$p;
CREATE FOREIGN TABLE $2$p (id bigint, sql text, state text, finished_at timestamptz) SERVER $1$p;
SQL
	done
}
# without the session reset before each task
pool_variant k kept "reset_session 'false'"
# with the pipeline of 1.4.0 (task_fdw.claim_ahead is lowered for them)
pool_variant s shallow "pipeline_depth '8'"

dispatcher_pid() { q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# /proc/<pid>/stat counts CPU time in clock ticks of this many per second
ticks_per_s=$(getconf CLK_TCK)
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
# VmHWM counts the pages of shared_buffers the dispatcher touched, shared
# with every backend.  Its private memory (RssAnon) has no high-water mark:
# sample_anon PID samples it every 50 ms, with shell built-ins only, and
# writes the largest value seen to $dir/anon_kb, until killed.
sample_anon() {
	peak=0
	while [ -r "/proc/$1/status" ]; do
		while read -r key kb _; do
			[ "$key" = RssAnon: ] && [ "$kb" -gt "$peak" ] && peak=$kb && echo "$peak" > "$dir/anon_kb"
		done < "/proc/$1/status"
		sleep 0.05
	done
}
echo 'SELECT 1;' > "$dir/select1.sql"

results=""
row() { results="$results$(printf '%-44s %14s %14s %14s %s' "$1" "$2" "$3" "$4" "$5")
"; }

# --- Warm-up, not measured: on a new cluster, task_fdw's WAL goes into new
# segments, each zero-filled first (about 6% of the dispatcher's time in
# W1).  One pass and a checkpoint leave recycled segments, as on a cluster
# that has been running for a while.
echo "warm-up: $N tasks at P = 4, then a checkpoint" >&2
q >/dev/null <<SQL
INSERT INTO tasks4(sql) SELECT 'SELECT 1' FROM generate_series(1, $N);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks4 WHERE state IN ('queued', 'running')));
TRUNCATE task_fdw.task;
CHECKPOINT;
SQL

# --- W1 throughput, and W6 footprint of the dispatcher during it.

# w1 TABLE P: runs W1 through foreign table TABLE (a pool of P), setting
# tasks_s to its tasks per second and cpu_ticks_used to the dispatcher's CPU.
w1() {
	q -c "TRUNCATE task_fdw.task" >/dev/null
	# wake the dispatcher and open the pool, outside the measurement
	q -c "INSERT INTO $1(sql) SELECT 'SELECT 1' FROM generate_series(1, $2)" >/dev/null
	q -c "SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM $1))" >/dev/null
	pid=$(dispatcher_pid)
	cpu0=$(cpu_ticks "$pid")
	echo 0 > "$dir/anon_kb"
	sample_anon "$pid" &
	sampler=$!
	t=$(q <<SQL
SELECT clock_timestamp() AS t0 \gset
INSERT INTO $1(sql) SELECT 'SELECT 1' FROM generate_series(1, $N);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM $1 WHERE state IN ('queued', 'running'))) \gset
SELECT round((extract(epoch FROM max(finished_at) - :'t0'::timestamptz))::numeric, 3) FROM $1;
SQL
)
	cpu_ticks_used=$(($(cpu_ticks "$pid") - cpu0))
	kill "$sampler"
	wait "$sampler" 2>/dev/null || true
	anon_kb=$(cat "$dir/anon_kb")
	tasks_s=$(per_second "$t")
}

# per_second SECONDS prints how many of the N statements ran per second.
per_second() { echo "$N $1" | awk '{ printf "%.0f", $1 / $2 }'; }

# median X...: prints the median of an odd number of numbers.
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }

# w1_median TABLE P: runs w1 RUNS times, and sets tasks_s to the median
# tasks per second, cpu_ticks_used to the dispatcher's CPU over all runs
# and anon_kb to the highest private memory seen.  One run of W1 takes
# about a second, and varies by up to 15% from the next on this machine.
w1_median() {
	rates="" cpu_all=0 anon_max=0
	for run in $(seq "$RUNS"); do
		w1 "$1" "$2"
		rates="$rates $tasks_s"
		cpu_all=$((cpu_all + cpu_ticks_used))
		[ "$anon_kb" -gt "$anon_max" ] && anon_max=$anon_kb
	done
	tasks_s=$(median $rates)
	cpu_ticks_used=$cpu_all
	anon_kb=$anon_max
}

# dblink_median P: the median statements per second of RUNS runs of W1
# through dblink_pool.
dblink_median() {
	rates=""
	for run in $(seq "$RUNS"); do
		rates="$rates $(per_second "$(q -c "SELECT dblink_pool($N, $1, 'SELECT 1')")")"
	done
	median $rates
}

ratios() { echo "$1 $2 $3" | awk '{ printf "x%.2f of dblink, x%.3f of ceiling", $1 / $2, $1 / $3 }'; }

echo "W1 and W6: $N tasks at P = 1, 2, 4 and 8" >&2
for p in 1 2 4 8; do
	w1_median "tasks$p" "$p"
	tfdw=$tasks_s
	cpu=$cpu_ticks_used
	anon=$anon_kb
	if [ "$p" -ge 4 ]; then
		w1_median "kept$p" "$p"
		kept=$tasks_s
		q -c "ALTER SYSTEM SET task_fdw.claim_ahead = 48" -c "SELECT pg_reload_conf()" >/dev/null
		w1_median "shallow$p" "$p"
		shallow=$tasks_s
		q -c "ALTER SYSTEM RESET task_fdw.claim_ahead" -c "SELECT pg_reload_conf()" >/dev/null
	fi
	dbl=$(dblink_median "$p")
	pgb=$("$bindir/pgbench" -n -h "$dir" -p "$port" -c "$p" -j "$p" -T 3 -f "$dir/select1.sql" postgres 2>/dev/null |
		awk '/^tps/ { printf "%.0f", $3; exit }')
	row "W1 tasks/s, P=$p" "$tfdw" "$dbl" "$pgb" "$(ratios "$tfdw" "$dbl" "$pgb")"
	[ "$p" -lt 4 ] && continue
	row "W1 tasks/s, P=$p, reset_session off" "$kept" "$dbl" "$pgb" "$(ratios "$kept" "$dbl" "$pgb")"
	row "W1 tasks/s, P=$p, 1.4.0 pipeline" "$shallow" "$dbl" "$pgb" "$(ratios "$shallow" "$dbl" "$pgb")"
	row "W6 dispatcher CPU s per 1,000 tasks, P=$p" "$(echo "$cpu $N" | awk -v runs="$RUNS" -v hz="$ticks_per_s" '{ printf "%.3f", $1 / hz / (runs * $2 / 1000) }')" "" "" ""
	row "W6 dispatcher peak RSS MB, P=$p" "$(echo "$(hwm_kb "$pid")" | awk '{ printf "%.1f", $1 / 1024 }')" "" "" "target < 64"
	row "W6 of which private, peak MB, P=$p" "$(echo "$anon" | awk '{ printf "%.1f", $1 / 1024 }')" "" "" ""
done

# --- W2 latency: 200 single tasks one after another.
echo "W2: 200 single tasks" >&2
q -c "TRUNCATE task_fdw.task" >/dev/null
q -c "CALL one_by_one(200)" >/dev/null
# finished: the dispatcher read the last result (finished_at); seen: the
# submitter's wait() returned, the outcome committed; dispatch: the remote
# statement started.  All from the INSERT's commit.
lat=$(q -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3) || ' ' ||
                  round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 3) || ' ' ||
                  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY dms)::numeric, 3) || ' ' ||
                  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY sms)::numeric, 3) || ' ' ||
                  round(percentile_cont(0.95) WITHIN GROUP (ORDER BY sms)::numeric, 3)
             FROM (SELECT extract(epoch FROM t.finished_at - w.committed_at) * 1000 AS ms,
                          extract(epoch FROM (t.result->0->>'remote_start')::timestamptz - w.committed_at) * 1000 AS dms,
                          extract(epoch FROM w.seen_at - w.committed_at) * 1000 AS sms
                     FROM tasks4 t JOIN w2_times w USING (id)) s")
set -- $lat
row "W2 finished latency median ms" "$1" "" "" "target <= 1"
row "W2 finished latency p95 ms" "$2" "" "" "target <= 2"
row "W2 dispatch latency median ms" "$3" "" "" "target <= 0.5"
row "W2 seen by wait() median / p95 ms" "$4 / $5" "" "" ""

# --- W3 parallelism: 16 x pg_sleep(0.5) at P = 8.
echo "W3: 16 sleeping tasks" >&2
q -c "TRUNCATE task_fdw.task" >/dev/null
w3=$(q <<'SQL'
SELECT clock_timestamp() AS t0 \gset
INSERT INTO tasks8(sql) SELECT 'SELECT pg_sleep(0.5)' FROM generate_series(1, 16);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks8)) \gset
SELECT round(extract(epoch FROM max(finished_at) - :'t0'::timestamptz)::numeric, 3) FROM tasks8;
SQL
)
row "W3 16 x pg_sleep(0.5) at P=8, s" "$w3" "" "" "target <= 1.02"

# --- W5 submission of 100,000 tasks vs an ordinary table with the same columns.
echo "W5: submitting 100,000 tasks" >&2
q -c "TRUNCATE task_fdw.task" >/dev/null
w5=$(q <<'SQL'
CREATE TABLE plain (LIKE task_fdw.task INCLUDING ALL);
SELECT clock_timestamp() AS t0 \gset
INSERT INTO tasks4(sql, run_at) SELECT 'SELECT 1', now() + interval '1 year' FROM generate_series(1, 100000);
SELECT clock_timestamp() AS t1 \gset
INSERT INTO plain(server_id, origin_server_id, userid, sql, submitted_by, submitted_at, run_at)
SELECT 0, 0, 10, 'SELECT 1', current_user, now(), now() + interval '1 year' FROM generate_series(1, 100000);
SELECT clock_timestamp() AS t2 \gset
SELECT round(extract(epoch FROM :'t1'::timestamptz - :'t0'::timestamptz)::numeric, 3) || ' ' ||
       round(extract(epoch FROM :'t2'::timestamptz - :'t1'::timestamptz)::numeric, 3);
DROP TABLE plain;
SQL
)
set -- $w5
row "W5 INSERT 100,000 tasks, s (vs plain table)" "$1" "$2" "" "$(echo "$1 $2" | awk '{ printf "x%.2f of plain, target <= 2", $1 / $2 }')"

# --- W4 lookups with 1,000,000 finished tasks and 10 queued ones.
echo "W4: lookups among 1,000,000 finished tasks" >&2
# ids from 1, so that the ids looked up (1 to 1,000,000) are those of tasks
q -c "TRUNCATE task_fdw.task RESTART IDENTITY" >/dev/null
q >/dev/null <<'SQL'
INSERT INTO task_fdw.task(server_id, origin_server_id, userid, sql, state, submitted_by, submitted_at, finished_at)
SELECT s.oid, s.oid, (SELECT oid FROM pg_roles WHERE rolname = current_user),
       'SELECT 1', 'done', current_user, now(), now()
  FROM (SELECT oid FROM pg_foreign_server WHERE srvname = 'p4') s, generate_series(1, 1000000);
INSERT INTO tasks4(sql, run_at) SELECT 'SELECT 1', now() + interval '1 year' FROM generate_series(1, 10);
VACUUM ANALYZE task_fdw.task;
SQL
w4a=$(q -c "SELECT round(median::numeric, 3) FROM lookup_ms('SELECT * FROM tasks4 WHERE id = %s', 500)")
w4b=$(q -c "SELECT round(median::numeric, 3) FROM lookup_ms('SELECT * FROM tasks4 WHERE state = ''queued'' AND %s > 0', 500)")
row "W4 lookup by id, median ms (1M finished)" "$w4a" "" "" "target <= 1"
row "W4 state = 'queued', median ms (10 of 1M)" "$w4b" "" "" "target <= 1"

{
	echo "task_fdw benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, N = $N"
	printf '%-44s %14s %14s %14s %s\n' "workload" "task_fdw" "dblink/plain" "pgbench" "ratio / target"
	printf '%s' "$results"
}
