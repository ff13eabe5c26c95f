# Fan-out and observability with three clusters on loopback ports: one
# INSERT submits 300 tasks spread over three servers with pool_size 2 each.
# Every task leaves its side effect on its own node only, no node runs more
# than 2 tasks at once, and the views task_fdw.pools and task_fdw.task_stats,
# pg_stat_activity and the log show the right things while and after they
# run.  With one node stopped, the other two nodes' tasks finish while the
# stopped node's wait, and run once it is back; and so do they while node3
# is frozen (SIGSTOP), so that connections to it hang; and node1 stops while
# node2 is frozen with a task running there.  node1's dispatcher
# looks at the queue on its own only once an hour (task_fdw.recheck_interval),
# so every task must run because something woke the dispatcher for it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $tcp = "listen_addresses = '127.0.0.1'\n";
my $node1 = TaskFdwNode::new_node('node1', $tcp . "task_fdw.recheck_interval = '1h'\n");
my $node2 = TaskFdwNode::new_plain_node('node2', $tcp);
my $node3 = TaskFdwNode::new_plain_node('node3', $tcp);
my %nodes = (s1 => $node1, s2 => $node2, s3 => $node3);

# Each node logs the tasks it ran: the task's number, how many task sessions
# were active on the node near its end, and when it started and ended.
for my $node ($node1, $node2, $node3)
{
	$node->safe_psql('postgres',
		'CREATE TABLE fan_log (n int, active int, started timestamptz, ended timestamptz)');
}
$node1->safe_psql('postgres', 'CREATE EXTENSION task_fdw');
for my $s (sort keys %nodes)
{
	$node1->safe_psql('postgres', qq{
CREATE SERVER $s FOREIGN DATA WRAPPER task_fdw
    OPTIONS (hostaddr '127.0.0.1', port '@{[ $nodes{$s}->port ]}', dbname 'postgres',
             pool_size '2');
CREATE USER MAPPING FOR CURRENT_USER SERVER $s;
});
}
$node1->safe_psql('postgres', 'IMPORT FOREIGN SCHEMA task_fdw FROM SERVER s1 INTO public');

# Submits tasks $from..$to in one INSERT: task n runs on server s(n % 3 + 1),
# in batch "$prefix-s(n % 3 + 1)".  Each waits for a shared advisory lock
# (a gate the test can close), sleeps 20 ms so that tasks really overlap,
# then logs itself on its node.
sub submit
{
	my ($from, $to, $prefix) = @_;
	$node1->safe_psql('postgres', qq{
INSERT INTO tasks(sql, server, batch)
SELECT format(\$f\$SELECT pg_advisory_xact_lock_shared(7); SELECT pg_sleep(0.02);
INSERT INTO fan_log SELECT %s,
  (SELECT count(*) FROM pg_stat_activity
    WHERE application_name LIKE 'task_fdw task %%' AND state = 'active'),
  statement_timestamp(), clock_timestamp()\$f\$, n),
       's' || (n % 3 + 1), '$prefix-s' || (n % 3 + 1)
  FROM generate_series($from, $to) n;
});
	return;
}

# Waits at most 60 s for the tasks of batch $batch, and returns how many
# are done then.
sub wait_batch
{
	my ($batch) = @_;
	return $node1->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE state = 'done') FROM task_fdw.wait_batch('$batch', '60s')");
}

# The most tasks that ran at once on $node, from the intervals they logged.
sub max_overlap
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
SELECT max((SELECT count(*) FROM fan_log b WHERE b.started <= a.started AND b.ended > a.started))
  FROM fan_log a});
}

# --- 300 tasks in one INSERT, with the gate closed on every node.
my %gates;
for my $s (sort keys %nodes)
{
	$gates{$s} = $nodes{$s}->background_psql('postgres');
	$gates{$s}->query_safe('SELECT pg_advisory_lock(7)');
}
my $log_offset = -s $node1->logfile;
submit(1, 300, 'b1');
is($node1->safe_psql('postgres', q{SELECT string_agg(server || ' ' || n, ',' ORDER BY server)
  FROM (SELECT server, count(*) AS n FROM tasks GROUP BY server) s}),
	's1 100,s2 100,s3 100', 'one SELECT shows the 300 tasks with their servers, 100 each');

# Two tasks of each server run (blocked at the gate), the others wait.
ok($node1->poll_query_until('postgres', q{
SELECT count(*) = 3 FROM task_fdw.pools WHERE busy = 2 AND running = 2 AND queued = 98}),
	'the pools view shows each server with 2 tasks running and 98 queued');
is($node1->safe_psql('postgres', q{
SELECT string_agg(concat_ws(' ', server, username = current_user, pool_size, open, busy, idle,
                            connecting, queued, running, down_since IS NULL, last_error IS NULL),
                  ',' ORDER BY server)
  FROM task_fdw.pools}),
	's1 t 2 2 2 0 0 98 2 t t,s2 t 2 2 2 0 0 98 2 t t,s3 t 2 2 2 0 0 98 2 t t',
	'each pool has its size 2 open and busy, none idle or connecting, 98 queued, 2 running');
is($node1->safe_psql('postgres', q{
SELECT string_agg(p.server || ' ' || (p.queued = t.queued AND p.running = t.running), ',' ORDER BY p.server)
  FROM task_fdw.pools p JOIN (SELECT server, count(*) FILTER (WHERE state = 'queued') AS queued,
                                     count(*) FILTER (WHERE state = 'running') AS running
                                FROM tasks GROUP BY server) t USING (server)}),
	's1 true,s2 true,s3 true', 'the queued and running counts are those of the task store');
is($node1->safe_psql('postgres', q{
SELECT string_agg(concat_ws(' ', server, state, count, finished_last_minute), ',' ORDER BY server, state)
  FROM task_fdw.task_stats}),
	's1 queued 98,s1 running 2,s2 queued 98,s2 running 2,s3 queued 98,s3 running 2',
	'task_stats counts the tasks of each server by state');
for my $s (sort keys %nodes)
{
	is($nodes{$s}->safe_psql('postgres', q{
SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'task_fdw task %'}),
		'2', "$s has exactly 2 task sessions");
}
ok($node1->poll_query_until('postgres', q{
SELECT wait_event_type = 'Extension' AND wait_event = 'Extension'
       AND query = '6 running, 0 waiting for a connection; 3 pools, 0 unreachable'
  FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'}),
	'pg_stat_activity shows the dispatcher, its activity and the wait event PostgreSQL 15 has');
my $dispatcher_pid = $node1->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'");

# Open the gates: all tasks run.
for my $s (sort keys %nodes)
{
	$gates{$s}->query_safe('SELECT pg_advisory_unlock(7)');
	$gates{$s}->quit;
}
for my $s (sort keys %nodes)
{
	is(wait_batch("b1-$s"), '100', "the 100 tasks of $s are done");
}

for my $k (1 .. 3)
{
	my $node = $nodes{"s$k"};
	is($node->safe_psql('postgres', qq{
SELECT count(*) || ' ' || count(DISTINCT n) || ' ' || bool_and(n % 3 + 1 = $k) FROM fan_log}),
		'100 100 true', "node$k ran exactly its own 100 tasks, each once");
	my ($active, $overlap) = ($node->safe_psql('postgres', 'SELECT max(active) FROM fan_log'),
		max_overlap($node));
	diag("node$k: at most $active task sessions active, $overlap tasks overlapping");
	is($active, '2', "node$k never had more than 2 task sessions active, and had 2");
	is($overlap, '2', "node$k never ran more than 2 tasks at once, and ran 2");
}
# The dispatcher publishes right after it recorded the last outcomes.
ok($node1->poll_query_until('postgres', q{
SELECT string_agg(concat_ws(' ', server, busy, queued, running, started, finished), ',' ORDER BY server)
  FROM task_fdw.pools}, 's1 0 0 0 100 100,s2 0 0 0 100 100,s3 0 0 0 100 100'),
	'afterwards each pool is idle, and started and finished 100 tasks');
is($node1->safe_psql('postgres', q{
SELECT string_agg(concat_ws(' ', server, state, count, finished_last_minute, per_second), ','
                  ORDER BY server)
  FROM task_fdw.task_stats}),
	's1 done 100 100 1.67,s2 done 100 100 1.67,s3 done 100 100 1.67',
	'task_stats shows 100 done per server, all in the last minute');
my @dispatcher_lines = grep { /\[$dispatcher_pid\]/ && !/dispatcher started/ }
  split /\n/, substr(slurp_file($node1->logfile), $log_offset);
is(scalar(@dispatcher_lines), 0, 'the dispatcher logged nothing about the 300 tasks')
  or diag(join("\n", @dispatcher_lines));

# --- node3 stopped: the tasks of node1 and node2 still run.
$node3->stop('fast');
$log_offset = -s $node1->logfile;
submit(301, 600, 'b2');
is(wait_batch('b2-s1'), '100', 'with node3 stopped, the 100 new tasks of s1 are done');
is(wait_batch('b2-s2'), '100', 'and so are those of s2');
is($node1->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE batch = 'b2-s3' AND state = 'queued'"),
	'100', "node3's 100 tasks stay queued");
ok($node1->poll_query_until('postgres', q{
SELECT down_since IS NOT NULL AND last_error LIKE '%Connection refused%' AND last_error_at IS NOT NULL
       AND open = 0 AND busy = 0 AND queued = 100 AND running = 0
  FROM task_fdw.pools WHERE server = 's3'}),
	'the pools view shows s3 down, with the connection error, and its 100 tasks queued');
is($node1->safe_psql('postgres', q{
SELECT string_agg(server || ' ' || (down_since IS NULL), ',' ORDER BY server) FROM task_fdw.pools}),
	's1 true,s2 true,s3 false', 'only s3 is down');
ok($node1->poll_query_until('postgres', q{
SELECT query LIKE '%; 3 pools, 1 unreachable' FROM pg_stat_activity
 WHERE backend_type = 'task_fdw dispatcher'}),
	"the dispatcher's activity counts one unreachable pool");
my $log = substr(slurp_file($node1->logfile), $log_offset);
my @down = $log =~ /task_fdw cannot reach server "s3" for the tasks of role "[^"]+"; they stay queued/g;
is(scalar(@down), 1, 'the log says once that s3 cannot be reached, not for every attempt');
like($log, qr/cannot reach server "s3".*\n.*DETAIL:.*Connection refused/,
	"with libpq's message");

# --- node3 back: its tasks run.
$node3->start;
is(wait_batch('b2-s3'), '100', 'once node3 is back, its 100 tasks are done');
ok($node1->poll_query_until('postgres',
		"SELECT down_since IS NULL FROM task_fdw.pools WHERE server = 's3'"),
	'the pools view shows s3 up again');
$log = substr(slurp_file($node1->logfile), $log_offset);
my @up = $log =~ /task_fdw reached server "s3" again for the tasks of role "[^"]+", after [\d.]+ s/g;
is(scalar(@up), 1, 'the log says once that s3 is reachable again');

for my $k (1 .. 3)
{
	my $node = $nodes{"s$k"};
	is($node->safe_psql('postgres', qq{
SELECT count(*) || ' ' || count(DISTINCT n) || ' ' || bool_and(n % 3 + 1 = $k) FROM fan_log}),
		'200 200 true', "in all, node$k ran exactly its own 200 tasks, each once");
	cmp_ok(max_overlap($node), '<=', 2, "node$k never ran more than 2 tasks at once");
}
is($node1->safe_psql('postgres', q{
SELECT string_agg(concat_ws(' ', server, state, count), ',' ORDER BY server) FROM task_fdw.task_stats}),
	's1 done 200,s2 done 200,s3 done 200', 'all 600 tasks are done');

# --- node3 frozen: connections to it hang instead of being refused.  A
# change of server options closes the idle pooled connections, so the next
# tasks need new ones; connect_timeout bounds how long an attempt may take.
# That the hanging attempts hold up no other server, however long they
# last, is shown by the next test, which has no connect_timeout.
my $frozen = $node3->{_pid};
END { kill 'CONT', $frozen if $frozen; }
$node1->safe_psql('postgres', "ALTER SERVER s3 OPTIONS (ADD connect_timeout '2')");
kill 'STOP', $frozen;
$log_offset = -s $node1->logfile;
submit(601, 690, 'b3');
ok($node1->poll_query_until('postgres', q{
SELECT connecting = 2 AND open = 0 AND queued = 30 FROM task_fdw.pools WHERE server = 's3'}),
	'with node3 frozen, the pools view shows its 2 connections hanging and its 30 tasks queued');
is(wait_batch('b3-s1'), '30', 'with node3 frozen, the 30 tasks of s1 are done');
is(wait_batch('b3-s2'), '30', 'and so are those of s2');
ok($node1->poll_query_until('postgres', q{
SELECT down_since IS NOT NULL AND last_error LIKE '%timeout expired after 2 seconds%' AND queued = 30
  FROM task_fdw.pools WHERE server = 's3'}),
	'after connect_timeout, the pools view shows s3 down with the timeout as its error');
kill 'CONT', $frozen;
$frozen = undef;
is(wait_batch('b3-s3'), '30', 'once node3 runs again, its 30 tasks are done');
$log = substr(slurp_file($node1->logfile), $log_offset);
@down = $log =~ /task_fdw cannot reach server "s3"/g;
@up = $log =~ /task_fdw reached server "s3" again/g;
is(scalar(@down) . ' ' . scalar(@up), '1 1', 'the log says once that s3 is down, and once that it is back');

# --- A catalog change while connections are being opened.  Once open,
# they are out of date and closed; the tasks waiting for them must get new
# ones at once, not at the dispatcher's next periodic look at the queue
# (an hour away).  node3 is frozen, without connect_timeout, so that the
# connections stay being opened until the dispatcher has taken the change
# in, and a task of s1 must run meanwhile.
$node1->safe_psql('postgres', 'ALTER SERVER s3 OPTIONS (DROP connect_timeout)');
$node3->safe_psql('postgres', q{
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'task_fdw task %'});
ok($node1->poll_query_until('postgres', "SELECT open = 0 FROM task_fdw.pools WHERE server = 's3'"),
	"node3's pooled connections are gone");
$frozen = $node3->{_pid};
kill 'STOP', $frozen;
$node1->safe_psql('postgres',
	"INSERT INTO tasks(sql, server, batch) SELECT 'SELECT 1', 's3', 'b4' FROM generate_series(1, 10)");
ok($node1->poll_query_until('postgres', q{
SELECT connecting = 2 AND open = 0 AND queued = 10 FROM task_fdw.pools WHERE server = 's3'}),
	'with node3 frozen, its 2 connections are being opened');
$node1->safe_psql('postgres', "ALTER SERVER s3 OPTIONS (ADD keepalives '1')");
# A task on s1 makes the dispatcher take the change in.
my $s1_task = $node1->safe_psql('postgres',
	"INSERT INTO tasks(sql, server) VALUES ('SELECT 1', 's1') RETURNING id");
is($node1->safe_psql('postgres', "SELECT task_fdw.wait($s1_task, '60s')"), 'done',
	'after the catalog change, the dispatcher ran a task on s1');
kill 'CONT', $frozen;
$frozen = undef;
is(wait_batch('b4'), '10',
	'once node3 runs again, its 10 tasks run on new connections without waiting for a recheck');

# --- A server that does not answer must not hold up node1's shutdown.  With
# node2's postmaster frozen, the backend running a task there goes on, but
# a cancel request reaches no one.  A fast shutdown of node1 asks for the
# cancel and waits a few seconds for it at most; libpq's PQcancel would wait
# until node2 runs again, and pg_ctl would give up after 60 s.  A task runs
# on s1 as well, node1 itself over TCP: its canceller is refused, as node1
# is shutting down, and its session ends with node1's other sessions while
# the dispatcher waits for node2.
my $long2 = $node1->safe_psql('postgres',
	"INSERT INTO tasks(sql, server) VALUES ('SELECT pg_sleep(600)', 's2') RETURNING id");
my $long1 = $node1->safe_psql('postgres',
	"INSERT INTO tasks(sql, server) VALUES ('SELECT pg_sleep(601)', 's1') RETURNING id");
$node2->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'")
  or die 'the long task did not start on node2';
$node1->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(601)'")
  or die 'the long task did not start on node1';
my $remote_pid = $node2->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'");
$log_offset = -s $node1->logfile;
$frozen = $node2->{_pid};
kill 'STOP', $frozen;
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 60;
	$stopped = $node1->stop('fast', fail_ok => 1);
}
kill 'CONT', $frozen;
$frozen = undef;
ok($stopped, 'node1 stops while node2, where a task runs, does not answer');
$log = substr(slurp_file($node1->logfile), $log_offset);
like($log,
	qr/task_fdw could not cancel remote backend $remote_pid before exiting: its server did not answer within 5000 ms/,
	'the dispatcher logs that it could not cancel the task on node2');
unlike($log, qr/terminated by signal|"task_fdw dispatcher[^"]*" \(PID \d+\) exited with exit code/,
	'and exits cleanly');
$node1->start;
is($node1->safe_psql('postgres',
		"SELECT string_agg(state || ' ' || sqlstate, ',' ORDER BY id) FROM tasks WHERE id IN ($long2, $long1)"),
	'failed 57P01,failed 57P01', 'both tasks are recorded as interrupted');
$node1->stop;
$node2->stop;
$node3->stop;
done_testing();
