# Task control that needs a whole cluster: that a cancel and a timeout stop
# a remote statement, deleting a running task, completion
# notifications for a batch, a listener that does not read them, and
# retention of finished tasks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $node = TaskFdwNode::new_node('control');
TaskFdwNode::setup_loopback($node, 4);

# Number of remote backends running the statement $sql.
sub active_count
{
	my ($sql) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE query = '$sql' AND state = 'active'");
}

# --- Cancel a running pg_sleep(60): cancelled, remote statement gone.  The
# wait gives up after 30 s, half the sleep, so a cancel that did not reach
# the remote statement fails the test; how fast it is, is not measured here.
my $id = $node->safe_psql('postgres',
	"INSERT INTO tasks(sql) VALUES ('SELECT pg_sleep(60)') RETURNING id");
$node->poll_query_until('postgres', "SELECT state = 'running' FROM tasks WHERE id = $id")
  or die "task $id never started";
is(active_count('SELECT pg_sleep(60)'), '1', 'the remote runs the sleeping task');
$node->safe_psql('postgres', "UPDATE tasks SET state = 'cancelled' WHERE id = $id");
my $state = $node->safe_psql('postgres', "SELECT task_fdw.wait($id, '30s')");
is($state, 'cancelled', 'a running task cancelled through UPDATE ends cancelled');
is(active_count('SELECT pg_sleep(60)'), '0', 'the remote no longer runs the task');
is($node->safe_psql('postgres', "SELECT sqlstate || ' ' || error FROM tasks WHERE id = $id"),
	'57014 canceling statement due to user request', 'the remote error of the cancel is kept');

# --- A timeout of 200 ms ends pg_sleep(5) as failed 57014; without it the
# task would end done after 5 s.
$id = $node->safe_psql('postgres',
	"INSERT INTO tasks(sql, timeout) VALUES ('SELECT pg_sleep(5)', '200ms') RETURNING id");
$state = $node->safe_psql('postgres', "SELECT task_fdw.wait($id, '30s')");
is($state, 'failed', 'a task over its timeout fails');
is($node->safe_psql('postgres', "SELECT finished_at - started_at >= '200ms' FROM tasks WHERE id = $id"),
	't', 'not before its timeout');
is($node->safe_psql('postgres', "SELECT sqlstate || ' ' || error FROM tasks WHERE id = $id"),
	'57014 task timed out after 200 ms', 'the error says the task timed out, and after how long');
is(active_count('SELECT pg_sleep(5)'), '0', 'the remote no longer runs the timed-out task');

# --- DELETE of a running task cancels it on the remote.
$id = $node->safe_psql('postgres',
	"INSERT INTO tasks(sql) VALUES ('SELECT pg_sleep(61)') RETURNING id");
$node->poll_query_until('postgres', "SELECT state = 'running' FROM tasks WHERE id = $id")
  or die "task $id never started";
is($node->safe_psql('postgres', "DELETE FROM tasks WHERE id = $id RETURNING state"),
	'running', 'DELETE ... RETURNING shows the running task it removes');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(61)'"),
	'the remote statement of a deleted task is cancelled');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE id = $id"), '0',
	'the deleted task stays deleted');

# --- wait_batch and LISTEN: one notification per finished task, with its state.
$node->safe_psql('postgres', 'CREATE TABLE batch_side (n int)');
my ($stdout, $stderr);
$node->psql('postgres', undef,
	extra_params => [
		'-c', 'LISTEN task_fdw',
		'-c', q{INSERT INTO tasks(sql, batch)
		        SELECT CASE WHEN g = 20 THEN 'SELECT 1/0'
		                    ELSE format('INSERT INTO batch_side VALUES (%s)', g) END, 'b20'
		          FROM generate_series(1, 20) g},
		'-c', q{SELECT string_agg(state, ',' ORDER BY id) FROM task_fdw.wait_batch('b20')},
		'-c', q{SELECT count(*) FROM batch_side},
		'-c', 'SELECT 1 AS last'],
	stdout => \$stdout, stderr => \$stderr);
my ($batch_states) = $stdout =~ /^((?:done,){19}failed)$/m;
ok(defined $batch_states, 'wait_batch returned all 20 tasks, finished');
my @rows_line = $stdout =~ /^(\d+)$/mg;
is($rows_line[0], '19', 'when wait_batch returned, all 19 writing tasks had written');
my %notified;
while ($stdout =~ /Asynchronous notification "task_fdw" with payload "\{"id": (\d+), "state": "(\w+)"\}"/g)
{
	$notified{$1} .= $2;
}
my %expected = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	"SELECT id, state FROM tasks WHERE batch = 'b20'");
is(scalar(keys %notified), 20, 'one notification for each of the 20 tasks');
is_deeply(\%notified, \%expected, 'each notification has the id and final state of its task');

# --- A session that listens but does not read (here, one idle in a
# transaction) holds back PostgreSQL's notification queue, which fails every
# commit that notifies once it is full.  Past task_fdw.notify_queue_limit
# (0 here: any page the session has not read), the dispatcher stops
# notifying, rather than failing its commits, and says so once; it notifies
# again once the session has read.
$node->safe_psql('postgres', q{
ALTER SYSTEM SET task_fdw.notify_queue_limit = 0;
SELECT pg_reload_conf();
});
my $dispatcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'");
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN task_fdw');
$listener->query_safe('BEGIN');
my $notify_offset = -s $node->logfile;
$node->safe_psql('postgres',
	"INSERT INTO tasks(sql, batch) SELECT 'SELECT 1', 'unread' FROM generate_series(1, 400)");
is($node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT state, ',') FROM task_fdw.wait_batch('unread', '60s')"),
	'done', 'with a listener that does not read, all 400 tasks are recorded done');
my $not_sending = qr/task_fdw is not sending completion notifications: the notification queue is [0-9.e-]+% full/;
my @said = substr(slurp_file($node->logfile), $notify_offset) =~ /$not_sending/g;
is(scalar(@said), 1, 'the dispatcher logs once that it stopped notifying');
$node->safe_psql('postgres',
	"INSERT INTO tasks(sql, run_at) SELECT 'SELECT 1', now() + interval '1 hour' FROM generate_series(1, 3)");
my ($cancel_out, $cancel_err) = ('', '');
$node->psql('postgres', "UPDATE tasks SET state = 'cancelled' WHERE state = 'queued'",
	stdout => \$cancel_out, stderr => \$cancel_err);
my @warned = $cancel_err =~ /WARNING:  $not_sending/g;
is(scalar(@warned), 1,
	'a session cancelling three tasks is warned once that it sends no notification');
my $received = $listener->query_safe('COMMIT');
my @unread_ids = $received =~ /payload "\{"id": (\d+), "state": "done"\}"/g;
ok(@unread_ids > 0 && @unread_ids < 400,
	'the listener got the notifications sent before the limit, not the others (' . scalar(@unread_ids) . ')');
my $again = $node->safe_psql('postgres', "INSERT INTO tasks(sql) VALUES ('SELECT 2') RETURNING id");
$node->safe_psql('postgres', "SELECT task_fdw.wait($again, '60s')");
ok($node->wait_for_log(qr/task_fdw is sending completion notifications again/, $notify_offset),
	'once the listener has read, the dispatcher notifies again');
# The listener's backend sends it when it is signalled, which can be just
# after the wait returned: ask again until it shows, as poll_query_until would.
my $heard = '';
foreach (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	$heard .= $listener->query_safe('SELECT 1');
	last if $heard =~ /payload "\{"id": $again, /;
	usleep(100_000);
}
like($heard, qr/payload "\{"id": $again, "state": "done"\}"/, 'and the listener gets the next task\'s notification');
$listener->quit;
is($node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher'"),
	$dispatcher, 'the same dispatcher ran all the tasks');
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET task_fdw.notify_queue_limit;
SELECT pg_reload_conf();
});

# --- Retention: finished tasks older than task_fdw.retention go, queued ones stay.
$node->safe_psql('postgres', q{
INSERT INTO tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour');
ALTER SYSTEM SET task_fdw.retention = '1s';
SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM tasks WHERE state <> 'queued'"),
	'finished tasks older than task_fdw.retention are removed');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE state = 'queued'"), '1',
	'queued tasks are kept');
$node->safe_psql('postgres', q{
ALTER SYSTEM RESET task_fdw.retention;
SELECT pg_reload_conf();
});

$node->stop;
done_testing();
