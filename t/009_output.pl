# What a task's output may hold that the task store cannot: text that is
# not valid in the database's encoding (from a task that sets another
# client_encoding), and json values that jsonb cannot hold.  Such output must neither end the dispatcher, which
# would interrupt every running task, nor be stored as it came: invalid
# bytes become "?", a result jsonb cannot hold is not kept, and the task's
# notices say so.  The database is UTF8 whatever the cluster's default.
# Last, results stay within task_fdw.max_result_bytes (1kB here) however
# large one row is, and a task whose role was dropped while it ran cannot be
# cancelled, which the dispatcher logs instead of failing on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

$ENV{PGCLIENTENCODING} = 'UTF8';
my $node = TaskFdwNode::new_node('output', "task_fdw.max_result_bytes = '1kB'\n");
$node->safe_psql('postgres', q{
CREATE DATABASE u8 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
});
$node->safe_psql('u8', q{
CREATE EXTENSION task_fdw;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw OPTIONS (dbname 'u8');
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER loopback INTO public;
});

# Runs the tasks of SQL texts @sqls from one INSERT, and returns their rows
# as "state|rows|result|error|detail|hint|notices", one line per task, in
# order.
sub run_tasks
{
	my @sqls = @_;
	my $values = join(', ', map { "(\$sql\$$_\$sql\$)" } @sqls);
	my $ids = $node->safe_psql('u8', "INSERT INTO tasks(sql) VALUES $values RETURNING id");
	$ids =~ s/\n/,/g;
	$node->safe_psql('u8', "SELECT count(*) FROM task_fdw.wait(ARRAY[$ids], '60s')");
	return split /\n/, $node->safe_psql('u8', qq{
SELECT concat_ws('|', state, coalesce(rows::text, ''), coalesce(result::text, ''),
                 coalesce(error, ''), coalesce(error_detail, ''), coalesce(error_hint, ''),
                 coalesce(array_to_string(notices, ' / '), ''))
  FROM tasks WHERE id IN ($ids) ORDER BY id});
}

# The dispatcher starts with the first task; the others must run on it.
my $log_offset = -s $node->logfile;
is(join(',', run_tasks(q{SELECT 1 AS one})), 'done|1|[{"one": 1}]||||', 'a first task runs');
my $dispatcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher' AND datname = 'u8'");

# --- Text in another client encoding.
my @rows = run_tasks(
	q{SET client_encoding = 'LATIN1'; SELECT 'é' AS x, 'aéb' AS "cé"},
	q{SET client_encoding = 'LATIN1'; DO $d$ BEGIN RAISE NOTICE 'né'; RAISE EXCEPTION 'bad é' USING DETAIL = 'dé', HINT = 'hé'; END $d$},
	q{SELECT 'é' AS x});
is($rows[0],
	'done|1|[{"x": "?", "c?": "a?b"}]||||task_fdw: 3 bytes of the task\'s output were not valid in encoding UTF8 and were stored as "?"',
	'a row set in LATIN1 is stored with "?" for each invalid byte, and a notice says so');
is($rows[1],
	'failed|||bad ?|d?|h?|NOTICE:  n? / task_fdw: 4 bytes of the task\'s output were not valid in encoding UTF8 and were stored as "?"',
	'so are an error and a notice in LATIN1');
is($rows[2], 'done|1|[{"x": "é"}]||||', 'valid text is stored as it is, without a notice');

# The encoding set and set back: the change is never reported, and the
# output in between is still checked.
@rows = run_tasks(
	q{SET client_encoding = 'LATIN1'; DO $d$ BEGIN RAISE NOTICE 'né'; END $d$; SET client_encoding = 'UTF8'});
is($rows[0], 'done||||||NOTICE:  n? / task_fdw: 1 byte of the task\'s output was not valid in encoding UTF8 and was stored as "?"',
	'output in another encoding is found even when the task sets the encoding back');

# --- json values that jsonb cannot hold.
@rows = run_tasks(
	q{SELECT '"\u0000"'::json AS j},
	q{SELECT '1e999999'::json AS j},
	q{SELECT '"\ud800"'::json AS j, 1 AS n},
	q{SELECT '{"a": "\u00e9", "b": [1, 2.50]}'::json AS j, '{"k": null}'::jsonb AS b});
is($rows[0], 'done|1|||||task_fdw: the result was not kept: unsupported Unicode escape sequence',
	'a json \u0000 escape: the task is done, its result is not kept, and a notice says why');
is($rows[1], 'done|1|||||task_fdw: the result was not kept: value overflows numeric format',
	'a json number beyond numeric: likewise');
is($rows[2], 'done|1|||||task_fdw: the result was not kept: invalid input syntax for type json',
	'a json lone surrogate: likewise');
is($rows[3], 'done|1|[{"b": {"k": null}, "j": {"a": "é", "b": [1, 2.50]}}]||||',
	'json and jsonb values jsonb can hold are embedded as they are');
@rows = run_tasks(q{SELECT 1.5e300::float8 AS f, 1e-06::float8 AS e, (10::numeric ^ 60) AS n});
is($rows[0], 'done|1|[{"e": 0.000001, "f": 15' . ('0' x 299)
	  . ', "n": 1' . ('0' x 60) . '.' . ('0' x 16) . '}]||||',
	'numbers with exponents and long numerics stay numbers (jsonb writes them out)');

# --- task_fdw.max_result_bytes: a row that would take the result past it is
# not kept, nor are the rows after it, and they are all counted.  kept()
# runs one task and returns "state rows kept truncated within-the-limit".
sub kept
{
	my ($sql) = @_;
	my $id = $node->safe_psql('u8', "INSERT INTO tasks(sql) VALUES (\$sql\$$sql\$sql\$) RETURNING id");
	$node->safe_psql('u8', "SELECT task_fdw.wait($id, '60s')");
	return $node->safe_psql('u8', qq{
SELECT concat_ws(' ', state, rows, jsonb_array_length(result), result_truncated,
                 octet_length(result::text) <= 1024)
  FROM tasks WHERE id = $id});
}
my @sizes = map { kept($_) } (
	q{SELECT repeat('x', 2000) AS big},
	q{SELECT g, repeat('y', 300) AS pad FROM generate_series(1, 10) g},
	q{SELECT repeat(chr(1), 200) AS c},
	q{SELECT repeat(chr(1), 150) AS c},
	q{SELECT 1 AS a UNION ALL SELECT 2 UNION ALL SELECT 3});
is($sizes[0], 'done 1 0 t t', 'a row larger than the limit is counted, not kept');
is($sizes[1], 'done 10 3 t t', 'of ten rows of 300 bytes, the three that fit are kept');
is($sizes[2], 'done 1 0 t t', 'a row whose escapes would take it past the limit is not kept');
is($sizes[3], 'done 1 1 f t', 'one whose escapes fit is');
is($sizes[4], 'done 3 3 f t', 'small results are kept whole');

# --- An error that quotes a 100,000-byte value is kept clipped to 64 kB.
my $long = $node->safe_psql('u8',
	q{INSERT INTO tasks(sql) VALUES ($$SELECT repeat('x', 100000)::int$$) RETURNING id});
$node->safe_psql('u8', "SELECT task_fdw.wait($long, '60s')");
is($node->safe_psql('u8', qq{
SELECT concat_ws(' ', state, sqlstate, octet_length(error), left(error, 42)) FROM tasks WHERE id = $long}),
	'failed 22P02 65536 invalid input syntax for type integer: "xx',
	'an error quoting a 100,000-byte value is kept, clipped to 64 kB');

# --- A server option stored with a value the options no longer accept (as
# an older version might have): the server's tasks fail with the error.
$node->safe_psql('u8', q{
CREATE SERVER badopt FOREIGN DATA WRAPPER task_fdw OPTIONS (dbname 'u8', pool_size '2');
CREATE USER MAPPING FOR CURRENT_USER SERVER badopt;
UPDATE pg_foreign_server SET srvoptions = '{dbname=u8,pool_size=two}' WHERE srvname = 'badopt';
});
my $badopt = $node->safe_psql('u8',
	"INSERT INTO tasks(sql, server) VALUES ('SELECT 1', 'badopt') RETURNING id");
$node->safe_psql('u8', "SELECT task_fdw.wait($badopt, '60s')");
is($node->safe_psql('u8', "SELECT concat_ws(' | ', state, sqlstate, error, error_hint) FROM tasks WHERE id = $badopt"),
	'failed | HV024 | server "badopt": invalid value for option "pool_size": "two" | Correct the option with ALTER SERVER.',
	'a task of a server with an option no longer valid fails with the option error');
is(join(',', run_tasks(q{SELECT 2 AS two})), 'done|1|[{"two": 2}]||||', 'and the other servers\' tasks still run');

# --- A running task whose role was dropped cannot be cancelled: no
# canceller can log in for it.  The dispatcher tries again every second,
# but says so once (the later tries only at debug1); the task is held
# until two more tries were made, then runs until it ends.
$node->safe_psql('u8', q{
CREATE ROLE regress_leaving SUPERUSER LOGIN;
CREATE USER MAPPING FOR PUBLIC SERVER loopback;
ALTER SYSTEM SET log_min_messages = debug1;
SELECT pg_reload_conf();
});
my $gate = $node->background_psql('u8');
$gate->query_safe('SELECT pg_advisory_lock(77)');
my $leaving = $node->safe_psql('u8', q{
SET ROLE regress_leaving;
INSERT INTO tasks(sql) VALUES ('SELECT pg_advisory_xact_lock(77)') RETURNING id});
$node->poll_query_until('u8', q{
SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 77 AND NOT granted})
  or die 'the task did not start';
my $cancel_offset = -s $node->logfile;
$node->safe_psql('u8', "DROP ROLE regress_leaving; UPDATE tasks SET state = 'cancelled' WHERE id = $leaving");
my $cannot = qr/task_fdw cannot cancel task $leaving: the role that submitted the task was dropped; it runs until it ends/;
ok($node->wait_for_log($cannot, $cancel_offset), 'the dispatcher says it cannot cancel the task');
my $still = qr/DEBUG:  task_fdw still cannot cancel task $leaving: the role that submitted the task was dropped/;
my $tried = $cancel_offset;
$tried = $node->wait_for_log($still, $tried) for 1 .. 2;
$gate->query_safe('SELECT pg_advisory_unlock(77)');
$gate->quit;
is($node->safe_psql('u8', "SELECT task_fdw.wait($leaving, '60s')"), 'done', 'the task ran until it ended');
my @cannot = substr(slurp_file($node->logfile), $cancel_offset) =~ /$cannot/g;
is(scalar(@cannot), 1, 'and the dispatcher said it once, not at each attempt');
$node->safe_psql('u8', 'ALTER SYSTEM RESET log_min_messages; SELECT pg_reload_conf()');

# --- None of it ended the dispatcher.
is($node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'task_fdw dispatcher' AND datname = 'u8'"),
	$dispatcher, 'the same dispatcher ran all the tasks');
unlike(substr(slurp_file($node->logfile), $log_offset),
	qr/\[$dispatcher\] ERROR|exited with exit code/, 'which logged no error');

$node->stop;
done_testing();
