# Reliability with injected faults: a dispatcher killed with SIGKILL and an
# immediate restart in the middle of 1,000 side-effecting tasks, a fast
# shutdown with remote statements running, a remote server that goes down
# and comes back, a pooled connection killed on the remote, a huge result,
# a dispatcher stopped while a submitter's open transaction locks a running
# task, DROP EXTENSION (also committed while a new dispatcher waits for
# its lock) and DROP DATABASE with a dispatcher running.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $remote = TaskFdwNode::new_plain_node('remote');
$remote->safe_psql('postgres', 'CREATE TABLE r_effects (n int)');

my $node = TaskFdwNode::new_node('local', "restart_after_crash = on\n");
TaskFdwNode::setup_loopback($node, 4);
$node->safe_psql('postgres', qq{
CREATE TABLE effects (n int);
CREATE FOREIGN TABLE retry_tasks (id bigint, sql text, state text, sqlstate text, error text)
    SERVER loopback OPTIONS (on_interrupt 'retry');
CREATE SERVER remote FOREIGN DATA WRAPPER task_fdw
    OPTIONS (host '@{[ $remote->host ]}', port '@{[ $remote->port ]}', dbname 'postgres',
             pool_size '4');
CREATE USER MAPPING FOR CURRENT_USER SERVER remote;
CREATE FOREIGN TABLE remote_tasks (id bigint, sql text, state text, sqlstate text,
                                   error text, remote_pid int, started_at timestamptz)
    SERVER remote;
CREATE SERVER probe FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE USER MAPPING FOR CURRENT_USER SERVER probe;
CREATE FOREIGN TABLE probe_tasks (id bigint, sql text, state text, sqlstate text, attempts int,
                                  notices text[], result jsonb)
    SERVER probe OPTIONS (max_attempts '2', retry_delay '0');
CREATE SEQUENCE probe_attempt;
});

# Submits tasks 1..$n through $table, each inserting its number into effects.
sub submit_effects
{
	my ($table, $from, $to) = @_;
	$node->safe_psql('postgres', qq{
INSERT INTO $table(sql)
SELECT format('INSERT INTO effects VALUES (%s); SELECT pg_sleep(0.004)', g)
  FROM generate_series($from, $to) g;
});
}

# Waits until every task of $table is final, reconnecting as needed.
sub wait_all
{
	my ($table) = @_;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM $table WHERE state IN ('queued', 'running')")
	  or die "tasks of $table did not finish";
}

# The pid of the dispatcher of database postgres.
sub dispatcher_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'");
}

# Terminates the dispatcher of database postgres with pg_terminate_backend
# (in a session that first runs $prefix, if given), and returns whether
# another one started by itself.
sub terminate_dispatcher
{
	my ($prefix) = @_;
	my $old = dispatcher_pid();
	$node->safe_psql('postgres', ($prefix // '') . "SELECT pg_terminate_backend($old)");
	return $node->poll_query_until('postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE backend_type = 'task_fdw dispatcher' AND pid <> $old});
}

# --- SIGKILL of the dispatcher in the middle of 1,000 tasks (at most once).
# A probe task on a pool of its own fails its first attempt (retryable,
# after a notice) and is in its second when the dispatcher dies: recovered
# as interrupted, it must not keep the notices of the first.
my $probe = $node->safe_psql('postgres', q{
INSERT INTO probe_tasks(sql) VALUES ($sql$
DO $$BEGIN
  RAISE NOTICE 'attempt %', nextval('probe_attempt');
  IF currval('probe_attempt') = 1 THEN
    RAISE EXCEPTION 'the first attempt fails' USING ERRCODE = '40001';
  END IF;
  PERFORM pg_sleep(600);
END$$$sql$) RETURNING id});
$node->poll_query_until('postgres', qq{
SELECT state = 'running' AND attempts = 2 AND notices IS NOT NULL FROM probe_tasks WHERE id = $probe})
  or die 'the probe task did not start its second attempt';
submit_effects('tasks', 1, 1000);
$node->poll_query_until('postgres', 'SELECT count(*) >= 100 FROM effects')
  or die 'tasks did not start';
my $pid = dispatcher_pid();
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT true') or die 'the cluster did not come back';
wait_all('tasks');
my ($final, $dups, $done_missing, $missing_not_interrupted, $interrupted) =
  split /\|/, $node->safe_psql('postgres', q{
WITH t AS (SELECT state, sqlstate, error, substring(sql FROM 'VALUES \((\d+)\)')::int AS n FROM tasks),
     e AS (SELECT n, count(*) AS c FROM effects GROUP BY n)
SELECT (SELECT count(*) FROM t WHERE state IN ('done', 'failed')),
       (SELECT count(*) FROM e WHERE c > 1),
       (SELECT count(*) FROM t WHERE state = 'done' AND n NOT IN (SELECT n FROM e)),
       (SELECT count(*) FROM t WHERE n NOT IN (SELECT n FROM e)
           AND NOT (state = 'failed' AND error LIKE 'task was interrupted%')),
       (SELECT count(*) FROM t WHERE state = 'failed');
});
is($final, '1000', 'after SIGKILL of the dispatcher all 1,000 tasks reached a final state');
is($dups, '0', 'no task ran twice');
is($done_missing, '0', 'every done task left its side effect');
is($missing_not_interrupted, '0',
	"every task without its side effect failed as interrupted ($interrupted interrupted)");
isnt(dispatcher_pid(), $pid, 'the dispatcher came back by itself');
# The new dispatcher says how many tasks it found left running.
my $recovered_failed = $node->safe_psql('postgres',
	"SELECT count(*) FROM task_fdw.task WHERE sqlstate = '57P02'");
like(slurp_file($node->logfile),
	qr/task_fdw recorded $recovered_failed interrupted tasks as failed and queued 0 again/,
	"the log counts the $recovered_failed tasks recorded as interrupted");
is( $node->safe_psql('postgres', qq{
SELECT state || ' ' || sqlstate || ' ' || attempts || ' ' || (notices IS NULL) || ' ' || (result IS NULL)
  FROM task_fdw.wait('{$probe}'::bigint[], '60s') JOIN probe_tasks USING (id, state)}),
	'failed 57P02 2 true true',
	'a task recovered as interrupted keeps nothing of an earlier attempt\'s output');

# --- pg_ctl restart -m immediate, with on_interrupt 'retry'.
$node->safe_psql('postgres', 'DELETE FROM tasks; TRUNCATE effects');
submit_effects('retry_tasks', 1, 1000);
$node->poll_query_until('postgres', 'SELECT count(*) >= 100 FROM effects')
  or die 'tasks did not start';
$node->stop('immediate');
my $log_offset = -s $node->logfile;
$node->start;
wait_all('retry_tasks');
# The tasks the stop interrupted ran again: those the new dispatcher found
# left running, which it logs, and those whose connections the old one saw
# close as the server stopped, and queued again itself before it ended (it
# may even have sent one of those again, on a connection not closed yet, so
# that the new dispatcher finds it running and it makes a third attempt).
my ($requeued) = slurp_file($node->logfile, $log_offset) =~
  /task_fdw recorded 0 interrupted tasks as failed and queued (\d+) again/;
$requeued //= 0;
my $again = $node->safe_psql('postgres', q{
SELECT count(*) FROM task_fdw.task WHERE id IN (SELECT id FROM retry_tasks) AND attempts >= 2});
cmp_ok($again, '>', 0,
	"the tasks the restart interrupted made more attempts ($again, $requeued of them queued again by the new dispatcher)");
cmp_ok($again, '>=', $requeued, 'so did each task the new dispatcher queued again');
my ($all_done, $runs_missing, $overruns, $max_runs) = split /\|/, $node->safe_psql('postgres', q{
WITH t AS (SELECT r.state, k.attempts, substring(r.sql FROM 'VALUES \((\d+)\)')::int AS n
             FROM retry_tasks r JOIN task_fdw.task k USING (id)),
     e AS (SELECT n, count(*) AS c FROM effects GROUP BY n)
SELECT (SELECT count(*) FROM t WHERE state = 'done'),
       (SELECT count(*) FROM t WHERE n NOT IN (SELECT n FROM e)),
       (SELECT count(*) FROM t JOIN e USING (n) WHERE e.c > t.attempts),
       (SELECT coalesce(max(c), 0) FROM e);
});
is($all_done, '1000', "with on_interrupt 'retry' all 1,000 tasks end done after an immediate restart");
is($runs_missing, '0', 'each of them left its side effect');
is($overruns, '0',
	"none left more side effects than the attempts it counts (at most $max_runs side effects for one task)");

# --- A statement that crashes its server, with on_interrupt 'retry': here
# it kills the dispatcher with SIGKILL, so that the server restarts and each
# attempt is left running for the next dispatcher.  That one queues it again
# until it has made task_fdw.max_interrupted_attempts (3) attempts, and then
# fails it, so that the server does not crash again and again.
$node->safe_psql('postgres', 'DELETE FROM retry_tasks');
$log_offset = -s $node->logfile;
my $crasher = $node->safe_psql('postgres', q{
INSERT INTO retry_tasks(sql) VALUES ($t$DO $$ BEGIN
  EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'kill -9 ' ||
    (SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'));
END $$$t$) RETURNING id});
$node->poll_query_until('postgres',
	"SELECT state = 'failed' FROM task_fdw.task WHERE id = $crasher")
  or die 'the task that crashes its server did not end';
my ($crasher_attempts, $crasher_sqlstate, $crasher_hint) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT attempts, sqlstate, error_hint FROM task_fdw.task WHERE id = $crasher");
is($crasher_attempts, '3', 'a task that crashes its server made 3 attempts');
is($crasher_sqlstate, '57P02', 'and then failed as interrupted');
like($crasher_hint, qr/task_fdw\.max_interrupted_attempts/, 'with a hint naming the limit');
my $crashes = () = slurp_file($node->logfile, $log_offset) =~
  /"task_fdw dispatcher" \(PID \d+\) was terminated by signal 9/g;
is($crashes, 3, 'the server crashed 3 times, once for each attempt');
$node->safe_psql('postgres', 'DELETE FROM retry_tasks');

# --- pg_ctl stop -m fast with 4 remote statements running.
$node->safe_psql('postgres',
	"INSERT INTO remote_tasks(sql) SELECT 'SELECT pg_sleep(600)' FROM generate_series(1, 4)");
$remote->poll_query_until('postgres',
	"SELECT count(*) = 4 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'")
  or die 'remote statements did not start';
# stop() dies if pg_ctl gives up waiting (PGCTLTIMEOUT), as it would if the
# dispatcher waited for the 600 s statements.
$node->stop('fast');
ok($remote->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'"),
	'the fast shutdown did not wait for the remote statements, which were cancelled');
$node->start;
is($node->safe_psql('postgres', q{
SELECT string_agg(DISTINCT state || ' ' || sqlstate, ',') FROM remote_tasks}),
	'failed 57P01', 'the tasks were recorded as interrupted');

# --- The remote goes down with 50 tasks queued for it; they wait, and run once it is back.
$node->safe_psql('postgres', 'DELETE FROM remote_tasks');
$remote->stop('fast');
$node->safe_psql('postgres', q{
INSERT INTO remote_tasks(sql)
SELECT format('INSERT INTO r_effects VALUES (%s)', g) FROM generate_series(1, 50) g;
});
# That a server whose connections hang does not hold up the others is
# t/007's frozen-node test.
my $loop = $node->safe_psql('postgres', q{
INSERT INTO tasks(sql) SELECT 'SELECT 1' FROM generate_series(1, 20) RETURNING id});
$loop =~ s/\n/,/g;
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT state, ',') FROM task_fdw.wait(ARRAY[$loop], '30s')"),
	'done', 'tasks of another server run while the remote is down');
is($node->safe_psql('postgres', "SELECT count(*) FROM remote_tasks WHERE state = 'queued'"), '50',
	'the 50 tasks of the unreachable server stay queued');
$remote->start;
$node->poll_query_until('postgres', "SELECT count(*) = 50 FROM remote_tasks WHERE state = 'done'")
  or diag($node->safe_psql('postgres', 'SELECT state, error FROM remote_tasks LIMIT 3'));
is($remote->safe_psql('postgres', q{SELECT count(DISTINCT n) || ' ' || count(*) FROM r_effects}), '50 50',
	'once the remote is back, all 50 tasks ran, each once');

# --- Pooled connections killed on the remote are replaced.  All of them
# are killed, so that the next task cannot be given one that survived.
my $killed = $remote->safe_psql('postgres', q{
SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name LIKE 'task_fdw task %'});
isnt($killed, '', "the pool has connections open on the remote ($killed)");
is($remote->safe_psql('postgres', q{
SELECT bool_and(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
 WHERE application_name LIKE 'task_fdw task %'}), 't',
	'the pooled connections are terminated on the remote');
my $next = $node->safe_psql('postgres',
	"INSERT INTO remote_tasks(sql) VALUES ('SELECT 1') RETURNING id");
is($node->safe_psql('postgres', "SELECT task_fdw.wait($next, '30s')"), 'done',
	'the next task on that pool succeeds');
my $next_pid = $node->safe_psql('postgres', "SELECT remote_pid FROM remote_tasks WHERE id = $next");
ok(!grep({ $_ eq $next_pid } split /,/, $killed), "on a new connection ($next_pid)");

# --- A 10-million-row result does not grow the dispatcher's memory.
# Returns the peak resident set size of the dispatcher, in kB.
sub dispatcher_peak_kb
{
	my $status = slurp_file('/proc/' . dispatcher_pid() . '/status');
	return $status =~ /^VmHWM:\s+(\d+) kB/m ? $1 : die 'no VmHWM';
}
my $warm = $node->safe_psql('postgres',
	"INSERT INTO tasks(sql) VALUES ('SELECT g, md5(g::text) FROM generate_series(1, 100000) g') RETURNING id");
$node->safe_psql('postgres', "SELECT task_fdw.wait($warm, '60s')");
my $before = dispatcher_peak_kb();
my $big = $node->safe_psql('postgres',
	"INSERT INTO tasks(sql) VALUES ('SELECT g, md5(g::text) FROM generate_series(1, 10000000) g') RETURNING id");
is($node->safe_psql('postgres', "SELECT task_fdw.wait($big, '300s')"), 'done', 'a 10-million-row task finishes');
my $growth = dispatcher_peak_kb() - $before;
cmp_ok($growth, '<', 20 * 1024, "the dispatcher's peak memory grew by $growth kB");
is($node->safe_psql('postgres', "SELECT rows || ' ' || jsonb_array_length(result) || ' ' || result_truncated FROM tasks WHERE id = $big"),
	'10000000 1000 true', 'all rows were counted, the first 1,000 kept');

# --- A dispatcher terminated with pg_terminate_backend comes back by itself.
ok(terminate_dispatcher(), 'a dispatcher terminated with pg_terminate_backend comes back by itself');

# --- A task left running whose row a submitter's open transaction has
# locked (a cancel not committed yet) does not hold up the next dispatcher:
# it runs other tasks at once, and records that task as interrupted once
# the transaction ends, waking the sessions that wait for it.
my $left = $node->safe_psql('postgres',
	"INSERT INTO remote_tasks(sql) VALUES ('SELECT pg_sleep(601)') RETURNING id");
$remote->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(601)'")
  or die 'the task did not start';
my $locker = $node->background_psql('postgres');
$locker->query_safe("BEGIN; UPDATE remote_tasks SET state = 'cancelled' WHERE id = $left");
my $offset = -s $node->logfile;
terminate_dispatcher() or die 'the dispatcher did not come back';
my $other = $node->safe_psql('postgres', "INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING id");
is($node->safe_psql('postgres', "SELECT task_fdw.wait($other, '30s')"), 'done',
	'a new dispatcher runs tasks while a task left running is locked by a submitter');
is($node->safe_psql('postgres', "SELECT state FROM remote_tasks WHERE id = $left"), 'running',
	'the locked task is left as it is meanwhile');
like(slurp_file($node->logfile, $offset),
	qr/task_fdw found 1 task left running by an earlier dispatcher that another transaction has locked/,
	'the new dispatcher says it found the task locked');
# A session already waiting for the task, with no timeout of its own, must
# be woken when it is recorded (statement_timeout ends the wait otherwise).
my $waiter = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'),
	  '-c', "SET statement_timeout = '60s'", '-c', "SELECT task_fdw.wait($left)" ],
	'>', \my $waited, '2>', \my $waiter_err);
$node->poll_query_until('postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE query = 'SELECT task_fdw.wait($left)' AND wait_event_type = 'Extension'})
  or die 'the waiting session did not start waiting';
$locker->query_safe('COMMIT');
$locker->quit;
$waiter->finish;
is("$waited$waiter_err", "failed\n",
	'once the transaction ended, the task is recorded as interrupted, and its waiter woken');
is($node->safe_psql('postgres', "SELECT sqlstate FROM remote_tasks WHERE id = $left"), '57P02',
	'with 57P02');
like(slurp_file($node->logfile, $offset),
	qr/task_fdw recorded 1 interrupted tasks as failed and queued 0 again/,
	'and the log counts it');

# --- Settings of the database that would make the dispatcher's own
# transactions fail (it would exit, and fail again at each restart): it runs
# with its own.  The loopback's task sessions get them, and a SELECT runs
# read-only all the same.  The test's own sessions, which get them too,
# start with SET ROLE NONE where they need to be the superuser.
$node->safe_psql('postgres', q{
CREATE ROLE regress_db_owner NOLOGIN IN ROLE pg_read_all_stats;
ALTER DATABASE postgres SET role = 'regress_db_owner';
ALTER DATABASE postgres SET default_transaction_read_only = on;
ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
ALTER DATABASE postgres SET lock_timeout = '1ms';
});
terminate_dispatcher('SET ROLE NONE; ') or die 'the dispatcher did not come back';
my $restarted_pid = dispatcher_pid();
my $ro = $node->safe_psql('postgres', q{
SET ROLE NONE;
SET default_transaction_read_only = off;
INSERT INTO tasks(sql) SELECT 'SELECT current_setting(''transaction_read_only'') AS ro'
  FROM generate_series(1, 20) RETURNING id});
$ro =~ s/\n/,/g;
is($node->safe_psql('postgres', qq{
SET ROLE NONE;
SELECT string_agg(DISTINCT t.state || ' ' || (t.result->0->>'ro'), ',')
  FROM task_fdw.wait(ARRAY[$ro], '60s') w JOIN tasks t USING (id)}),
	'done on', 'with the database read-only, serializable, a 1 ms lock_timeout and a role set, tasks run and are recorded');
is(dispatcher_pid(), $restarted_pid, 'by the same dispatcher');
$node->safe_psql('postgres', q{
SET ROLE NONE;
SET default_transaction_read_only = off;
ALTER DATABASE postgres RESET role;
ALTER DATABASE postgres RESET default_transaction_read_only;
ALTER DATABASE postgres RESET default_transaction_isolation;
ALTER DATABASE postgres RESET lock_timeout;
});

# --- task_fdw.max_connections caps all pools together; tasks wait, they do not fail.
# With rechecks of the queue an hour apart, the tasks must run through the
# dispatcher's own bookkeeping: none may be left queued until a recheck.
$node->safe_psql('postgres', q{
ALTER SYSTEM SET task_fdw.max_connections = 2;
ALTER SYSTEM SET task_fdw.recheck_interval = '1h';
SELECT pg_reload_conf();
});
$node->poll_query_until('postgres', "SELECT current_setting('task_fdw.max_connections') = '2' AND current_setting('task_fdw.recheck_interval') = '1h'")
  or die 'task_fdw.max_connections = 2 did not take effect';
# Idle pooled connections from earlier tests count too: start from none.
$node->safe_psql('postgres', q{
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher';
});
my $capped = $node->safe_psql('postgres', q{
INSERT INTO tasks(sql)
SELECT $$SELECT (SELECT count(*) FROM pg_stat_activity
                  WHERE application_name LIKE 'task_fdw task %' AND state = 'active') AS running,
               pg_sleep(0.1)$$
  FROM generate_series(1, 12) RETURNING id});
$capped =~ s/\n/,/g;
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT state, ',') FROM task_fdw.wait(ARRAY[$capped], '60s')"),
	'done', 'with task_fdw.max_connections = 2 all 12 tasks of a pool of 4 finish');
cmp_ok($node->safe_psql('postgres', "SELECT max((result->0->>'running')::int) FROM tasks WHERE id IN ($capped)"),
	'<=', 2, 'and no more than 2 ran at once');
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET task_fdw.max_connections;
ALTER SYSTEM RESET task_fdw.recheck_interval;
SELECT pg_reload_conf();
});

# --- DROP EXTENSION is refused while tasks are unfinished; DROP DATABASE is not blocked.

# Installs task_fdw in database victim, with a task queued for an hour from now.
sub install_with_queued_task
{
	$node->safe_psql('victim', q{
CREATE EXTENSION task_fdw;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text, run_at timestamptz) SERVER loopback;
INSERT INTO tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour');
});
	return;
}
# Waits until database victim has $n dispatchers; false if it never has.
sub victim_dispatchers_are
{
	my ($n) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT count(*) = $n FROM pg_stat_activity
 WHERE backend_type = 'task_fdw dispatcher' AND datname = 'victim'});
}
$node->safe_psql('postgres', 'CREATE DATABASE victim');
install_with_queued_task();
my ($rc, $out, $err) = $node->psql('victim', 'DROP EXTENSION task_fdw CASCADE');
like($err, qr/cannot drop extension task_fdw while tasks are queued or running/,
	'DROP EXTENSION is refused while a task is queued');
$node->safe_psql('victim', 'DELETE FROM tasks; DROP EXTENSION task_fdw CASCADE');
ok(victim_dispatchers_are(0), 'after DROP EXTENSION the dispatcher exits');
install_with_queued_task();
victim_dispatchers_are(1) or die 'no dispatcher in victim';

# A dispatcher that starts while an uncommitted DROP EXTENSION holds the task
# store's lock waits for it, and once the drop commits exits as for any
# database without task_fdw: it does not fail on the store it had found.
my $dropper = $node->background_psql('victim');
$dropper->query_safe(
	'SET client_min_messages = warning; BEGIN; DELETE FROM tasks; DROP EXTENSION task_fdw CASCADE');
my $drop_offset = -s $node->logfile;
my $victim_pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher' AND datname = 'victim'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($victim_pid)");
ok( $node->poll_query_until('victim', qq{
SELECT count(*) = 1 FROM pg_stat_activity a JOIN pg_locks l USING (pid)
 WHERE a.backend_type = 'task_fdw dispatcher' AND a.datname = 'victim'
   AND a.pid <> $victim_pid AND l.relation = 'task_fdw.task'::regclass AND NOT l.granted}),
	'a new dispatcher waits for the lock of the store being dropped');
$dropper->query_safe('COMMIT');
$dropper->quit;
ok(victim_dispatchers_are(0), 'and exits once the drop commits');
unlike(substr(slurp_file($node->logfile), $drop_offset),
	qr/exited with exit code 1|\bERROR:.*task_fdw|could not open relation/,
	'without an error');
install_with_queued_task();
victim_dispatchers_are(1) or die 'no dispatcher in victim';
# DROP DATABASE waits 5 s at most for the database's sessions to go, then
# fails: success means the dispatcher left in time.
($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE victim');
is($rc, 0, 'DROP DATABASE succeeds while its dispatcher runs') or diag($err);
unlike(slurp_file($node->logfile), qr/task_fdw dispatcher" \(PID \d+\) exited with exit code 1/,
	'no dispatcher exited with an error');

$node->stop;
$remote->stop;
done_testing();
