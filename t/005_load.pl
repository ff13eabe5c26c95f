# Load: tasks submitted by 8 concurrent sessions, a mix of trivial, slow and
# failing statements, each with a side effect on a remote server.  All must
# reach the right final state, each side effect must happen exactly once,
# and looking up one task by id meanwhile must find it, through the primary
# key.  The number of tasks is TASK_FDW_LOAD_TASKS (10,000 by default; make
# test-load runs 100,000).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $ntasks = $ENV{TASK_FDW_LOAD_TASKS} || 10000;
my $sessions = 8;
my $per_session = int($ntasks / $sessions);
$ntasks = $per_session * $sessions;

my $remote = TaskFdwNode::new_plain_node('load_remote', "max_connections = 50\n");
$remote->safe_psql('postgres', 'CREATE TABLE effects (k int)');

my $node = TaskFdwNode::new_node('load');
$node->safe_psql('postgres', qq{
CREATE EXTENSION task_fdw;
CREATE SERVER remote FOREIGN DATA WRAPPER task_fdw
    OPTIONS (host '@{[ $remote->host ]}', port '@{[ $remote->port ]}', dbname 'postgres',
             pool_size '8');
CREATE USER MAPPING FOR CURRENT_USER SERVER remote;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER remote INTO public;
});

# Each session submits its share in chunks of 500: task k inserts k on the
# remote; every 20th one first sleeps 20 ms, and every 20th (offset by 10)
# fails after its insert, which is then rolled back.
my @harnesses;
for my $s (0 .. $sessions - 1)
{
	my $from = $s * $per_session + 1;
	my $to = $from + $per_session - 1;
	my $sql = qq{
DO \$\$
BEGIN
    FOR chunk IN 0 .. ($to - $from) / 500 LOOP
        INSERT INTO tasks(sql)
        SELECT CASE WHEN k % 20 = 0 THEN format('SELECT pg_sleep(0.02); INSERT INTO effects VALUES (%s)', k)
                    WHEN k % 20 = 10 THEN format('INSERT INTO effects VALUES (%s); SELECT 1/0', k)
                    ELSE format('INSERT INTO effects VALUES (%s)', k) END
          FROM generate_series($from + chunk * 500, least($from + chunk * 500 + 499, $to)) k;
        COMMIT;
    END LOOP;
END
\$\$;
};
	push @harnesses,
	  IPC::Run::start([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \my $out, '2>', \my $err);
}

# While the load runs: 50 lookups of one task by id, how many found their
# task, and the slowest of them in ms (the speed is make bench's W4).
$node->poll_query_until('postgres', "SELECT count(*) > 1000 FROM tasks WHERE state = 'done'")
  or die 'the load did not start';
my ($found, $slowest) = split / /, $node->safe_psql('postgres', q{
CREATE FUNCTION lookups() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n_found int := 0;
    slowest interval := '0';
    t0 timestamptz;
    s text;
BEGIN
    FOR i IN 1 .. 50 LOOP
        t0 := clock_timestamp();
        SELECT state INTO s FROM tasks WHERE id = 1 + (i * 97) % 1000;
        slowest := greatest(slowest, clock_timestamp() - t0);
        n_found := n_found + (s IS NOT NULL)::int;
    END LOOP;
    RETURN n_found || ' ' || round(extract(epoch FROM slowest) * 1000, 3);
END $$;
SELECT lookups();
});
$_->finish for @harnesses;
is(scalar(grep { $_->result != 0 } @harnesses), 0, "$sessions sessions submitted $ntasks tasks");
is($found, '50', 'the 50 lookups of a task by id during the load each found it');
diag("the slowest of them took $slowest ms");
like($node->safe_psql('postgres', 'EXPLAIN SELECT state FROM tasks WHERE id = 1'),
	qr/Task Index Cond: id = 1/, 'a lookup by id reads the primary key, not the whole store');

$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM tasks WHERE state IN ('queued', 'running')", 't')
  or die 'the load did not finish';
my $expected_failed = $ntasks / 20;
my ($total, $done, $failed, $wrong) = split /\|/, $node->safe_psql('postgres', q{
SELECT count(*), count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE (sql LIKE '%1/0') <> (state = 'failed'))
  FROM tasks;
});
is($total, $ntasks, "all $ntasks tasks are recorded");
is($failed, $expected_failed, 'the failing ones failed');
is($wrong, '0', 'and only those');
my ($effects, $distinct) = split /\|/, $remote->safe_psql('postgres',
	'SELECT count(*), count(DISTINCT k) FROM effects');
is($effects, $done, 'each done task left its side effect on the remote');
is($distinct, $effects, 'exactly once');

$node->stop;
$remote->stop;
done_testing();
