# Core behaviour of task_fdw that needs whole clusters: pool limits and
# timing, tasks surviving their submitter and a server restart, and the
# error when the library is not preloaded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $node = TaskFdwNode::new_node('main');
TaskFdwNode::setup_loopback($node, 4);
$node->safe_psql('postgres', q{
CREATE TABLE side (note text);
});

# --- 40 sleeping tasks, pool_size 4: at most 4 at once, about 2.5 s in all.
# Each task records how many task_fdw sessions the remote has running.
$node->safe_psql('postgres', q{
INSERT INTO tasks(sql)
SELECT $$SELECT (SELECT count(*) FROM pg_stat_activity
                  WHERE application_name LIKE 'task_fdw task %' AND state = 'active') AS running,
               pg_sleep(0.25)$$
  FROM generate_series(1, 40);
});
my $states = $node->safe_psql('postgres', q{
SELECT string_agg(state || ':' || n, ',') FROM (
  SELECT state, count(*) AS n FROM task_fdw.wait(ARRAY(SELECT id FROM tasks), '120s')
   GROUP BY state) s;
});
is($states, 'done:40', '40 sleeping tasks all finish done');
my ($max_running, $elapsed, $apps) = split /\|/, $node->safe_psql('postgres', q{
SELECT max((result->0->>'running')::int),
       round(extract(epoch FROM max(finished_at) - min(submitted_at))::numeric, 3),
       count(DISTINCT remote_pid)
  FROM tasks;
});
cmp_ok($max_running, '<=', 4, "no more than 4 tasks ran at once on the remote (saw $max_running)");
cmp_ok($max_running, '>=', 3, "tasks ran in parallel (saw $max_running at once)");
cmp_ok($apps, '<=', 4, "the pool used at most 4 connections ($apps)");
cmp_ok($elapsed, '>=', 2.25, "wall time $elapsed s is at least 90% of 2.5 s");
# How close to 2.5 s it comes is for make bench (W3) to measure: the
# tasks seen running side by side on the remote are the proof of parallelism.
diag("the 40 tasks took $elapsed s");

# --- The submitting session disconnects right after COMMIT; the task still runs.
my $id = $node->safe_psql('postgres', q{
INSERT INTO tasks(sql) VALUES ($$SELECT pg_sleep(0.3); INSERT INTO side VALUES ('after disconnect'); SELECT 'finished' AS outcome$$)
RETURNING id;
});
is($node->safe_psql('postgres', "SELECT task_fdw.wait($id, '60s')"), 'done',
	'a task whose submitter disconnected finishes done');
is($node->safe_psql('postgres', "SELECT result->0->>'outcome' FROM tasks WHERE id = $id"),
	'finished', 'a new session sees its result');
is($node->safe_psql('postgres', "SELECT count(*) FROM side WHERE note = 'after disconnect'"),
	'1', 'and its side effect');

# --- Queued tasks survive a restart and run without anyone waking them.
$node->safe_psql('postgres', q{
CREATE SERVER slow FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '1');
CREATE USER MAPPING FOR CURRENT_USER SERVER slow;
CREATE FOREIGN TABLE slow_tasks (id bigint, sql text, state text, sqlstate text) SERVER slow;
INSERT INTO slow_tasks(sql) SELECT $$SELECT pg_sleep(0.5); INSERT INTO side VALUES ('restart')$$
  FROM generate_series(1, 4);
});
$node->restart('fast');
my $after = $node->safe_psql('postgres', q{
SELECT string_agg(state, ',' ORDER BY id)
  FROM task_fdw.wait(ARRAY(SELECT id FROM slow_tasks), '120s');
});
unlike($after, qr/queued|running/, "after a restart every task reaches a final state ($after)");
like($after, qr/done$/, 'tasks still queued at the restart ran afterwards');
# A task running at the shutdown is interrupted: the dispatcher records it as
# such (57P01, or 57P02 when found at the next start), or, when the shutdown
# closed its loopback session first, it failed as a lost connection (class 08).
my $outcomes = $node->safe_psql('postgres', q{
SELECT string_agg(state || coalesce(':' || sqlstate, ''), ',' ORDER BY id) FROM slow_tasks;
});
like($outcomes, qr/^((done|failed:(57P01|57P02|08...)),){3}(done|failed:(57P01|57P02|08...))$/,
	"tasks are done, or failed as interrupted ($outcomes)");
my ($done, $effects) = split /\|/, $node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE state = 'done'),
       (SELECT count(*) FROM side WHERE note = 'restart')
  FROM slow_tasks;
});
is($effects, $done, 'each done task ran exactly once; interrupted ones left no effect');

# --- Without shared_preload_libraries the wrapper says what to do.
my $plain = TaskFdwNode::new_plain_node('plain');
$plain->safe_psql('postgres', q{
CREATE EXTENSION task_fdw;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text) SERVER loopback;
});
my ($ret, $stdout, $stderr) = $plain->psql('postgres', "INSERT INTO tasks(sql) VALUES ('SELECT 1')");
isnt($ret, 0, 'using the wrapper without preloading fails');
like($stderr, qr/task_fdw must be loaded via shared_preload_libraries/, 'with a clear error');
like($stderr, qr/HINT:  Add task_fdw to shared_preload_libraries/, 'and a hint');
$plain->stop;

$node->stop;
done_testing();
