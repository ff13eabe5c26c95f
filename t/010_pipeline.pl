# Pipelining: while a pool's tasks are short, a connection sends up to
# pipeline_depth of the tasks it claimed ahead right behind the one it runs,
# each after a session reset of its own, and the remote runs them one after
# another without waiting for the dispatcher.  Each still runs in a clean
# session named after it; a task sent behind one that blocks waits for it
# (those claimed but not sent go back to the queue); cancelling the task in
# front stops only that task; a lost connection fails the tasks sent on it;
# pipeline_depth '0' turns pipelining off.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $node = TaskFdwNode::new_node('pipeline');
TaskFdwNode::setup_loopback($node, 2);
$node->safe_psql('postgres', 'CREATE TABLE effects (k int)');

# warm_up(): short tasks, so that the pool knows its tasks to be short and
# has both its connections open (tasks that blocked made the average long).
sub warm_up
{
	is( $node->safe_psql('postgres', q{
INSERT INTO tasks(sql, batch) SELECT 'SELECT 1', 'warm' FROM generate_series(1, 300);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks WHERE batch = 'warm'), '60s');
SELECT count(*) FROM tasks WHERE batch = 'warm' AND state <> 'done';
}),
		"300\n0", 'short tasks warm the pool up');
	$node->safe_psql('postgres', "DELETE FROM tasks WHERE batch = 'warm'");
	return;
}

warm_up();

# Tasks that change their session, among tasks that look at it, all in one
# stream: every task that looks finds the defaults and its own name, so each
# ran after a reset of its own, also those sent in a pipeline.
is( $node->safe_psql('postgres', q{
INSERT INTO tasks(sql, batch)
SELECT CASE WHEN i % 3 = 0 THEN 'SET work_mem = ''1MB'''
            WHEN i % 3 = 1 THEN 'SELECT set_config(''search_path'', ''nowhere'', false)'
            ELSE 'SELECT current_setting(''application_name'') AS app, current_setting(''work_mem'') AS wm, current_setting(''search_path'') AS sp' END,
       'looks'
  FROM generate_series(1, 600) i;
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM tasks WHERE batch = 'looks'), '60s');
SELECT count(*) FILTER (WHERE state = 'done') || ' done, '
    || count(*) FILTER (WHERE result->0->>'app' = 'task_fdw task ' || id) || ' named after themselves, '
    || count(*) FILTER (WHERE result->0->>'wm' = current_setting('work_mem')
                          AND result->0->>'sp' = '"$user", public') || ' with the defaults'
  FROM tasks WHERE batch = 'looks';
SELECT count(*) FILTER (WHERE result->0 ? 'app') FROM tasks WHERE batch = 'looks';
}),
	"600\n600 done, 200 named after themselves, 200 with the defaults\n200",
	'tasks in a pipeline each run in a session reset for them and named after them');

# run_behind_blocker($tag, $lock): in one transaction, 10 short tasks, one
# task that waits for advisory lock $lock (held by the test), then 10 with a
# side effect, claimed in that order (priority), all in one turn, and
# spread over both connections.  The connection that runs the blocker has
# sent the ones it claimed behind it by the time it blocks.  Returns the
# blocker's id and the 10 ids.
sub run_behind_blocker
{
	my ($tag, $lock) = @_;
	my $ids = $node->safe_psql('postgres', qq{
BEGIN;
INSERT INTO tasks(sql, priority, batch) SELECT 'SELECT 1', 2, '$tag-short' FROM generate_series(1, 10);
INSERT INTO tasks(sql, priority, batch) VALUES ('SELECT pg_advisory_xact_lock($lock)', 1, '$tag-blocker');
INSERT INTO tasks(sql, batch)
  SELECT format('INSERT INTO effects VALUES (%s)', k), '$tag' FROM generate_series(1, 10) k;
COMMIT;
SELECT (SELECT id FROM tasks WHERE batch = '$tag-blocker') || ' '
    || (SELECT string_agg(id::text, ',' ORDER BY id) FROM tasks WHERE batch = '$tag');
});
	return split / /, $ids;
}

# waiting_behind($blocker, $others): once the blocker has waited for its
# lock a while (tasks claimed behind it but not sent went back to the
# queue), and every task of $others that was not sent behind it has
# finished, how many of $others are still running, and how many of those
# were sent on the blocker's connection and have left no side effect.
sub waiting_behind
{
	my ($blocker, $others) = @_;
	$node->poll_query_until('postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'
   AND application_name = 'task_fdw task $blocker'
   AND clock_timestamp() - query_start > interval '200 ms'})
	  or die 'the blocker does not wait for its lock';
	# Those behind it on its connection stay running; the others end.
	$node->poll_query_until('postgres', qq{
SELECT count(*) FILTER (WHERE state = 'running') = count(*) FILTER (WHERE state <> 'done')
   AND count(*) FILTER (WHERE state = 'running') = count(*) FILTER (WHERE state = 'running' AND t.remote_pid = b.remote_pid)
  FROM tasks t, (SELECT remote_pid FROM tasks WHERE id = $blocker) b
 WHERE t.id = ANY ('{$others}'::bigint[])})
	  or die 'tasks neither run behind the blocker nor end';
	return $node->safe_psql('postgres', qq{
SELECT count(*) || ' ' || count(*) FILTER (WHERE t.remote_pid = b.remote_pid AND e.k IS NULL)
  FROM tasks t CROSS JOIN (SELECT remote_pid FROM tasks WHERE id = $blocker) b
  LEFT JOIN effects e ON t.sql = format('INSERT INTO effects VALUES (%s)', e.k)
 WHERE t.id = ANY ('{$others}'::bigint[]) AND t.state = 'running'});
}

my $gate = $node->background_psql('postgres');

# A depth below the 5 or so tasks each connection claims of the 10 below,
# so that the limit is what stops more of them from going in the pipeline
# (the default, 32, would not stop any).
$node->safe_psql('postgres', "ALTER SERVER loopback OPTIONS (ADD pipeline_depth '4')");

# blocked_pipeline($tag): warms the pool up, empties effects, takes
# advisory lock 7 and runs tasks behind a blocker (run_behind_blocker);
# checks that 1 to pipeline_depth (4) of the tasks with a side effect wait
# behind it, on its connection, without having run, while the others have
# run on the other connection.  Returns the blocker's id, the 10 ids and
# how many wait.
sub blocked_pipeline
{
	my ($tag) = @_;
	warm_up();
	$node->safe_psql('postgres', 'TRUNCATE effects');
	$gate->query_safe('SELECT pg_advisory_lock(7)');
	my ($blocker, $others) = run_behind_blocker($tag, 7);
	my ($waiting, $unrun) = split / /, waiting_behind($blocker, $others);
	ok($waiting >= 1 && $waiting <= 4, "$tag: 1 to 4 tasks wait in the blocked task's pipeline ($waiting)");
	is($unrun, $waiting, "$tag: they are all on its connection, and none has run");
	return ($blocker, $others, $waiting);
}

# The tasks sent behind a blocked task wait for it; once it ends, they run.
my ($blocker, $others, $waiting) = blocked_pipeline('behind');
$gate->query_safe('SELECT pg_advisory_unlock(7)');
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others,$blocker}'::bigint[], '60s') GROUP BY state) s;
SELECT count(*) || ' ' || count(DISTINCT k) FROM effects;
SELECT count(*) FROM tasks
 WHERE id = ANY ('{$others}'::bigint[]) AND attempts = 1 AND started_at >= submitted_at
   AND finished_at >= started_at;
}),
	"done 11\n10 10\n10",
	'once the blocker ends, they run: each side effect once, one attempt each');

# Cancelling the blocked task stops it, and only it: the tasks behind it in
# its pipeline then run, each once.  The cancel request names the blocked
# task, so that it cannot stop the one after it.
($blocker, $others, $waiting) = blocked_pipeline('cancel');
$node->safe_psql('postgres', "UPDATE tasks SET state = 'cancelled' WHERE id = $blocker");
is( $node->safe_psql('postgres', qq{
SELECT state || ' ' || sqlstate FROM task_fdw.wait('{$blocker}'::bigint[], '60s') JOIN tasks USING (id, state);
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others}'::bigint[], '60s') GROUP BY state) s;
SELECT count(*) || ' ' || count(DISTINCT k) FROM effects;
}),
	"cancelled 57014\ndone 10\n10 10",
	'the cancelled task stops; those behind it run, each once');
$gate->query_safe('SELECT pg_advisory_unlock(7)');

# A connection lost with tasks in its pipeline: the blocked task and those
# behind it fail (they may or may not have run, as far as the dispatcher
# can tell), none stays running, and none of them ran.
($blocker, $others, $waiting) = blocked_pipeline('lost');
$node->safe_psql('postgres', "SELECT pg_terminate_backend(remote_pid) FROM tasks WHERE id = $blocker");
is( $node->safe_psql('postgres', qq{
SELECT state FROM task_fdw.wait('{$blocker}'::bigint[], '60s');
SELECT string_agg(state || ' ' || n, ', ' ORDER BY state) FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others}'::bigint[], '60s') GROUP BY state) s;
SELECT count(*) FROM tasks WHERE id = ANY ('{$others}'::bigint[]) AND state = 'failed'
   AND sqlstate IN ('57P01', '08006') AND error IS NOT NULL;
SELECT count(*) FROM effects;
}),
	"failed\ndone " . (10 - $waiting) . ", failed $waiting\n$waiting\n" . (10 - $waiting),
	'the lost connection fails the tasks in its pipeline, which did not run');
$gate->query_safe('SELECT pg_advisory_unlock(7)');

# pipeline_depth '0': a connection sends one task at a time, so every task
# claimed behind a blocked one goes back to the queue and runs on the other
# connection.
$node->safe_psql('postgres', "ALTER SERVER loopback OPTIONS (SET pipeline_depth '0')");
warm_up();
$node->safe_psql('postgres', 'TRUNCATE effects');
$gate->query_safe('SELECT pg_advisory_lock(7)');
($blocker, $others) = run_behind_blocker('off', 7);
is( $node->safe_psql('postgres', qq{
SELECT string_agg(state || ' ' || n, ', ') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait('{$others}'::bigint[], '60s') GROUP BY state) s;
SELECT state FROM tasks WHERE id = $blocker;
SELECT count(*) || ' ' || count(DISTINCT k) FROM effects;
}),
	"done 10\nrunning\n10 10",
	'without pipelining, all 10 run while the blocker waits');
$gate->query_safe('SELECT pg_advisory_unlock(7)');
is($node->safe_psql('postgres', "SELECT task_fdw.wait($blocker, '60s')"),
	'done', 'the blocker finishes once the lock is free');

$gate->quit;
$node->stop;
done_testing();
