# Claiming ahead: once a pool's tasks are known to be short, each connection
# claims several queued tasks at once (recorded as running) and sends the
# next as soon as the last one ends.  A task claimed behind one that runs
# long must go back to the queue, run once on another connection, and not
# count as an attempt; task_fdw.claim_ahead = 0 turns claiming ahead off.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

# No periodic recheck of the queue during the test: a task only runs if its
# submitter's commit told the dispatcher where to look.
my $node = TaskFdwNode::new_node('ahead', "log_min_messages = debug1\ntask_fdw.recheck_interval = '1h'\n");
TaskFdwNode::setup_loopback($node, 2);
$node->safe_psql('postgres', 'CREATE TABLE effects (k int)');

# Short tasks first: the pool learns how long its tasks take, and opens both
# of its connections.
is( $node->safe_psql('postgres', q{
INSERT INTO tasks(sql) SELECT 'SELECT 1' FROM generate_series(1, 200);
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait(ARRAY(SELECT id FROM tasks), '60s')
   GROUP BY state) s;
}),
	'done 200',
	'200 short tasks finish');
is($node->safe_psql('postgres', 'SELECT max(attempts) FROM tasks'),
	'1', 'each of them ran once');

# On a busy pool, a task of one statement follows its session reset in the
# same pipeline: it must still run as the first statement of a transaction
# of its own, or VACUUM would fail.  Tasks of several statements still go
# as simple queries, and their last result is the one reported.
is( $node->safe_psql('postgres', q{
INSERT INTO tasks(sql, batch)
SELECT CASE WHEN i % 10 = 0 THEN 'VACUUM effects'
            WHEN i % 10 = 5 THEN 'SELECT 1; SELECT 2 AS two'
            ELSE 'SELECT 1' END, 'mixed'
  FROM generate_series(1, 200) i;
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks WHERE batch = 'mixed'), '60s');
SELECT count(*) FILTER (WHERE command_tag = 'VACUUM') || ' vacuums, '
    || count(*) FILTER (WHERE result = '[{"two": 2}]') || ' multi-statement, '
    || count(*) FILTER (WHERE state <> 'done') || ' not done'
  FROM tasks WHERE batch = 'mixed';
}),
	"200\n20 vacuums, 20 multi-statement, 0 not done",
	'one-statement tasks (VACUUM too) and multi-statement tasks run on a busy pool');

# run_behind_blocker($label): one task that waits for an advisory lock this
# test holds, then 40 tasks with a side effect, committed together; returns
# the blocker's id and the ids of the 40.  The blocker is claimed first
# (higher priority).  The first turn gives the blocker to one connection,
# the next task to the other, and claims the rest ahead on both.
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(8)');

sub run_behind_blocker
{
	my ($from) = @_;
	my $ids = $node->safe_psql('postgres', qq{
BEGIN;
INSERT INTO tasks(sql, priority, batch) VALUES ('SELECT pg_advisory_xact_lock(8)', 1, 'behind$from');
INSERT INTO tasks(sql, batch)
  SELECT format('INSERT INTO effects VALUES (%s)', k), 'behind$from' FROM generate_series($from, $from + 39) k;
COMMIT;
SELECT string_agg(id::text, ',' ORDER BY id) FROM tasks WHERE batch = 'behind$from';
});
	my ($blocker, @rest) = split /,/, $ids;
	return ($blocker, join(',', @rest));
}

my $log_offset = -s $node->logfile;
my ($blocker, $others) = run_behind_blocker(1);

# All 40 finish while the blocker still runs: those claimed behind it went
# back to the queue and ran on the other connection.
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others}'::bigint[], '60s') GROUP BY state) s;
}),
	'done 40',
	'the tasks behind a blocked one all finish while it runs');
is($node->safe_psql('postgres', "SELECT state FROM tasks WHERE id = $blocker"),
	'running', 'the blocker still runs');
is( $node->safe_psql('postgres', q{
SELECT count(*) || ' ' || count(DISTINCT k) || ' ' || min(k) || ' ' || max(k) FROM effects;
}),
	'40 40 1 40',
	'each of the 40 side effects happened exactly once');
is( $node->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE attempts = 1 AND started_at >= submitted_at
                          AND finished_at >= started_at)
  FROM tasks WHERE id = ANY ('{$others}'::bigint[]);
}),
	'40',
	'a task handed back counts one attempt, and its times are those of its run');
my $log = substr(slurp_file($node->logfile), $log_offset);
like($log,
	qr/\d+ tasks claimed ahead on a connection to server "loopback" go back to the queue, as task $blocker before them runs long/,
	'the tasks claimed behind the blocker went back to the queue');

$gate->query_safe('SELECT pg_advisory_unlock(8)');
is($node->safe_psql('postgres', "SELECT task_fdw.wait($blocker, '60s')"),
	'done', 'the blocker finishes once the lock is free');

# A commit tells the dispatcher which pools got tasks, up to 8 of them; with
# more, or a task scheduled for later, it searches the whole queue and
# learns when the next scheduled task is due.  One INSERT to 1 server, one
# to 10 servers, one due in a second: all run without a recheck.
$node->safe_psql('postgres',
	join('', map { qq{
CREATE SERVER hint$_ FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE USER MAPPING FOR CURRENT_USER SERVER hint$_;
} } 1 .. 10));
for my $case (
	[ 'one pool', q{SELECT 'SELECT 1', 'hint1', NULL::timestamptz, 'one'} ],
	[ 'ten pools', q{SELECT 'SELECT 1', 'hint' || n, NULL, 'ten' FROM generate_series(1, 10) n} ],
	[ 'run_at in 1 s', q{SELECT 'SELECT 1', 'hint2', now() + interval '1 second', 'run_at'} ])
{
	my ($label, $rows) = @$case;
	my $batch = $label =~ s/ .*//r;
	is( $node->safe_psql('postgres', qq{
INSERT INTO tasks(sql, server, run_at, batch) $rows;
SELECT string_agg(state || ' ' || n, ',') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait_batch('$batch', '30s') GROUP BY state) s;
}),
		$label eq 'ten pools' ? 'done 10' : 'done 1',
		"tasks submitted to $label run without a recheck");
}

# Tasks claimed ahead are recorded as running but not sent.  With
# task_fdw.claim_ahead_stall at an hour they stay claimed behind blocked
# tasks, so that what happens to them then can be checked: cancelled or
# deleted ones are never sent, the others run once the blockers end, and a
# restart hands them back to the queue rather than recording them as
# interrupted.  A restart makes sure the dispatcher runs with the setting.
$gate->quit;
$node->append_conf('postgresql.conf', "task_fdw.claim_ahead_stall = '1h'\n");
$node->restart;

# claim_behind_blockers($blocker_sql, $from, $n): first 200 short tasks, so
# that the pool knows its tasks to be short again (blocked ones made the
# average long) and claims ahead; then two tasks of $blocker_sql, which must
# block (one per connection, claimed first), and $n with a side effect,
# committed together.  Waits until all $n are claimed ahead (running, with
# no side effect yet) and returns the blockers' ids and the others'.
sub claim_behind_blockers
{
	my ($blocker_sql, $from, $n) = @_;
	$node->safe_psql('postgres', q{
INSERT INTO tasks(sql) SELECT 'SELECT 1' FROM generate_series(1, 200);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks WHERE state IN ('queued', 'running')), '60s');
});
	my $ids = $node->safe_psql('postgres', qq{
BEGIN;
INSERT INTO tasks(sql, priority, batch)
  SELECT '$blocker_sql', 1, 'claimed$from' FROM generate_series(1, 2);
INSERT INTO tasks(sql, batch)
  SELECT format('INSERT INTO effects VALUES (%s)', k), 'claimed$from' FROM generate_series($from, $from + $n - 1) k;
COMMIT;
SELECT string_agg(id::text, ',' ORDER BY id) FROM tasks WHERE batch = 'claimed$from';
});
	my @ids = split /,/, $ids;
	$node->poll_query_until('postgres', qq{
SELECT count(*) = $n + 2 FROM tasks WHERE batch = 'claimed$from' AND state = 'running'})
	  or die 'the tasks were not all claimed';
	return (join(',', @ids[0, 1]), @ids[2 .. $#ids]);
}

# outcomes($ids): waits for the tasks $ids and returns "state attempts" of
# each, in id order.
sub outcomes
{
	my ($ids) = @_;
	return $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || attempts, ',' ORDER BY id)
  FROM task_fdw.wait('{$ids}'::bigint[], '60s') JOIN tasks USING (id, state)});
}

$gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(9)');
my ($blockers, @claimed) = claim_behind_blockers('SELECT pg_advisory_xact_lock(9)', 101, 10);
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects WHERE k > 100'),
	'0', 'tasks claimed ahead show as running, and none has run');
my $cancelled = join(',', @claimed[0 .. 2]);
my $deleted = join(',', @claimed[3, 4]);
my $kept = join(',', @claimed[5 .. 9]);
$node->safe_psql('postgres', "UPDATE tasks SET state = 'cancelled' WHERE id IN ($cancelled)");
$node->safe_psql('postgres', "DELETE FROM tasks WHERE id IN ($deleted)");
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || attempts || ' ' || (started_at IS NULL), ',')
  FROM task_fdw.wait('{$cancelled}'::bigint[], '60s') JOIN tasks USING (id, state)}),
	'cancelled 0 true,cancelled 0 true,cancelled 0 true',
	'claimed tasks that are cancelled end at once, never started, while the blockers run');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE id IN ($blockers) AND state = 'running'"),
	'2', 'the blockers still run');
my $unlocked_at = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$gate->query_safe('SELECT pg_advisory_unlock(9)');
is(outcomes("$kept,$blockers"), join(',', ('done 1') x 7),
	'the other claimed tasks run once the blockers end');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE id IN ($kept) AND started_at >= '$unlocked_at'"),
	'5', 'their started_at is when they were sent, after the blockers, not when they were claimed');
is( $node->safe_psql('postgres', q{
SELECT string_agg(k::text, ',' ORDER BY k) FROM effects WHERE k > 100}),
	join(',', map { $_ + 101 } 5 .. 9),
	'only they left their side effect, once each; the cancelled and deleted ones none');
is($node->safe_psql('postgres', "SELECT count(*) FROM task_fdw.task WHERE id IN ($deleted)"),
	'0', 'the deleted ones are gone');

# A restart: the tasks claimed ahead were never sent, so they go back to
# the queue and run after it; only the blockers, which were running, are
# interrupted.
$gate->quit;
($blockers, @claimed) = claim_behind_blockers('SELECT pg_sleep(600)', 201, 6);
$node->restart;
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || coalesce(sqlstate, '-'), ',' ORDER BY id)
  FROM task_fdw.wait('{$blockers}'::bigint[], '60s') JOIN tasks USING (id, state)}),
	'failed 57P01,failed 57P01', 'the blockers were interrupted by the restart');
my $all_claimed = join(',', @claimed);
is(outcomes($all_claimed), join(',', ('done 1') x 6),
	'the tasks claimed ahead went back to the queue and ran once after it');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE id IN ($all_claimed) AND started_at >= pg_postmaster_start_time()"),
	'6', 'and were started by the new dispatcher');
is( $node->safe_psql('postgres', q{
SELECT count(*) || ' ' || count(DISTINCT k) FROM effects WHERE k > 200}),
	'6 6', 'each left its side effect once');

# With task_fdw.claim_ahead = 0, no task is claimed ahead: none goes back.
# A restart makes sure the dispatcher runs with the setting.
$node->append_conf('postgresql.conf', "task_fdw.claim_ahead = 0\n");
$node->restart;
is($node->safe_psql('postgres', q{
INSERT INTO tasks(sql, batch) SELECT 'SELECT 1', 'short' FROM generate_series(1, 200);
SELECT count(*) FROM task_fdw.wait_batch('short', '60s') WHERE state = 'done';
}),
	'200', 'short tasks run without claiming ahead');
$gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(8)');
$log_offset = -s $node->logfile;
($blocker, $others) = run_behind_blocker(41);
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others}'::bigint[], '60s') GROUP BY state) s;
}),
	'done 40',
	'without claiming ahead, the 40 run on the free connection');
$gate->query_safe('SELECT pg_advisory_unlock(8)');
is($node->safe_psql('postgres', "SELECT task_fdw.wait($blocker, '60s')"),
	'done', 'the blocker finishes');
unlike(substr(slurp_file($node->logfile), $log_offset),
	qr/tasks claimed ahead/, 'no task was claimed ahead');
is($node->safe_psql('postgres', 'SELECT count(*) || \' \' || count(DISTINCT k) FROM effects WHERE k <= 80'),
	'80 80', 'each side effect happened once');

$gate->quit;
$node->stop;
done_testing();
