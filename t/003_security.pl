# Security with real authentication: a remote cluster that requires SCRAM
# passwords, roles that are not superusers submitting through their user
# mappings, what they may and may not do, and no password in any log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $alice_pw = 'alice-Secret-7f3a';
my $bob_pw = 'bob-Secret-91c2';
my $wrong_pw = 'not-bobs-Secret-55e0';

# --- The remote: SCRAM for everyone but the test harness's superuser.
# The test's own statements hold passwords: keep them out of the logs.
my $remote = TaskFdwNode::new_plain_node('remote',
	"password_encryption = 'scram-sha-256'\nlog_statement = 'none'\n");
my $admin = $remote->safe_psql('postgres', 'SELECT current_user');
$remote->safe_psql('postgres', qq{
CREATE ROLE alice LOGIN PASSWORD '$alice_pw';
CREATE ROLE bob LOGIN PASSWORD '$bob_pw';
CREATE TABLE remote_log (who text, note text);
GRANT INSERT, SELECT ON remote_log TO alice, bob;
});
unlink($remote->data_dir . '/pg_hba.conf');
$remote->append_conf('pg_hba.conf', qq{
local all $admin trust
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
});
$remote->reload;

# --- The local cluster, logging everything it can.
my $node = TaskFdwNode::new_node('local', qq{
log_min_messages = debug5
log_connections = on
log_statement = 'none'
});
$node->safe_psql('postgres', qq{
CREATE EXTENSION task_fdw;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE SERVER remote FOREIGN DATA WRAPPER task_fdw
    OPTIONS (host '@{[ $remote->host ]}', port '@{[ $remote->port ]}', dbname 'postgres', pool_size '2');
GRANT USAGE ON FOREIGN SERVER remote TO alice, bob, carol;
CREATE USER MAPPING FOR alice SERVER remote OPTIONS (user 'alice', password '$alice_pw');
CREATE USER MAPPING FOR bob SERVER remote OPTIONS (user 'bob', password '$wrong_pw');
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER remote INTO public;
GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO alice, bob, carol;
});

# Runs $sql in the local database as $role; returns (exit code, stdout, stderr).
sub as_role
{
	my ($role, $sql) = @_;
	my ($stdout, $stderr);
	my $rc = $node->psql('postgres', $sql, extra_params => [ '-U', $role ],
		stdout => \$stdout, stderr => \$stderr);
	return ($rc, $stdout, $stderr);
}

# --- The right password: the task runs as the mapping's remote user.
my ($rc, $out, $err) = as_role('alice', q{
INSERT INTO tasks(sql) VALUES ($$INSERT INTO remote_log VALUES (current_user, 'hello');
                                 SELECT current_user AS who$$) RETURNING id \gset
SELECT task_fdw.wait(:id, '60s');
SELECT result->0->>'who' FROM tasks WHERE id = :id;
});
is($out, "done\nalice", 'with the right password the task runs as the remote user alice');
is($remote->safe_psql('postgres', 'SELECT who FROM remote_log'), 'alice',
	'the remote recorded the task as alice');

# --- A wrong password: the task fails with the server's authentication error.
($rc, $out, $err) = as_role('bob', q{
INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING id \gset
SELECT task_fdw.wait(:id, '60s');
SELECT sqlstate, error FROM tasks WHERE id = :id;
});
like($out, qr/^failed\n28P01\|.*password authentication failed for user "bob"/s,
	'a wrong password fails the task with the SQLSTATE and message of the server');

# --- After the mapping is fixed, the next task works.
$node->safe_psql('postgres',
	"ALTER USER MAPPING FOR bob SERVER remote OPTIONS (SET password '$bob_pw')");
($rc, $out, $err) = as_role('bob', q{
INSERT INTO tasks(sql) VALUES ('SELECT current_user AS who') RETURNING id \gset
SELECT task_fdw.wait(:id, '60s');
SELECT result->0->>'who' FROM tasks WHERE id = :id;
});
is($out, "done\nbob", 'ALTER USER MAPPING applies to the next task');

# --- No password at all: refused at INSERT.
$node->safe_psql('postgres', "CREATE USER MAPPING FOR carol SERVER remote OPTIONS (user 'carol')");
($rc, $out, $err) = as_role('carol', "INSERT INTO tasks(sql) VALUES ('SELECT 1')");
like($err, qr/user mapping for role "carol" on server "remote" has no password/,
	'a mapping without a password is refused for a role that is not a superuser');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE submitted_by = 'carol'"), '0',
	'and no task is left behind');

# --- password_required 'false' is for superusers to set.
($rc, $out, $err) = as_role('carol',
	"ALTER USER MAPPING FOR carol SERVER remote OPTIONS (ADD password_required 'false')");
like($err, qr/only superusers may set option "password_required" to false/,
	'a role cannot exempt its own mapping from passwords');

# --- Loopback with trust: a password in the mapping is not enough, it must be used.
$node->safe_psql('postgres', qq{
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
GRANT USAGE ON FOREIGN SERVER loopback TO alice, bob;
CREATE USER MAPPING FOR alice SERVER loopback OPTIONS (user '$admin', password 'guess');
CREATE FOREIGN TABLE loop_tasks (id bigint, sql text, state text, sqlstate text,
                                 error text, result jsonb, remote_pid int)
    SERVER loopback;
GRANT SELECT, INSERT ON loop_tasks TO alice, bob;
});
($rc, $out, $err) = as_role('alice', q{
INSERT INTO loop_tasks(sql) VALUES ('SELECT current_user') RETURNING id \gset
SELECT task_fdw.wait(:id, '60s');
SELECT sqlstate, error FROM loop_tasks WHERE id = :id;
});
like($out, qr/^failed\n2F003\|the server accepted the connection of the task without the password/,
	'a role cannot run tasks as the superuser through a trusting loopback');

# --- A PUBLIC mapping does not make two roles share connections or identities.
$node->safe_psql('postgres', qq{
DROP USER MAPPING FOR alice SERVER loopback;
CREATE USER MAPPING FOR PUBLIC SERVER loopback OPTIONS (password_required 'false');
});
my %pids;
for my $role ('alice', 'bob')
{
	($rc, $out, $err) = as_role($role, q{
INSERT INTO loop_tasks(sql) SELECT 'SELECT current_user AS who' FROM generate_series(1, 4);
SELECT count(*) FROM task_fdw.wait(ARRAY(SELECT id FROM loop_tasks), '60s') \gset
SELECT string_agg(DISTINCT result->0->>'who', ',') || ' ' || string_agg(DISTINCT remote_pid::text, ',')
  FROM loop_tasks WHERE result IS NOT NULL;
});
	diag($err) if $err;
	my ($who, $pids) = split / /, $out;
	is($who, $role, "through a PUBLIC mapping, the tasks of ${role} run as ${role}");
	$pids{$role} = { map { $_ => 1 } split /,/, ($pids // '') };
}
ok(%{ $pids{alice} } && %{ $pids{bob} }
	  && !grep({ $pids{alice}{$_} } keys %{ $pids{bob} }),
	'alice and bob never shared a connection');

# --- Users see, cancel, delete and wait for their own tasks only.
my $bob_task = $node->safe_psql('postgres', q{
SELECT max(id) FROM tasks WHERE submitted_by = 'bob'});
($rc, $out, $err) = as_role('alice', qq{
SELECT count(*) FROM tasks WHERE submitted_by <> 'alice';
UPDATE tasks SET state = 'cancelled' WHERE id = $bob_task;
DELETE FROM tasks WHERE id = $bob_task;
});
like($out, qr/^0$/, 'alice sees none of the tasks of others');
is($node->safe_psql('postgres', "SELECT count(*) FROM tasks WHERE id = $bob_task"), '1',
	'nor can she cancel or delete them');
($rc, $out, $err) = as_role('alice', "SELECT task_fdw.wait($bob_task, '1s')");
like($err, qr/task $bob_task does not exist/, 'nor wait for them');
($rc, $out, $err) = as_role('alice', 'SELECT count(*) FROM task_fdw.task');
like($err, qr/permission denied for table task/, 'nor read the task store');
($rc, $out, $err) = as_role('alice', "SELECT task_fdw.check_table('tasks')");
like($err, qr/permission denied for function check_table/, 'nor call its internal functions');

# --- A role's own objects first on its search_path are not used by task_fdw.
$node->safe_psql('postgres', q{
CREATE SCHEMA trap AUTHORIZATION alice;
ALTER ROLE alice SET search_path = trap, pg_catalog, public;
});
($rc, $out, $err) = as_role('alice', q{
CREATE TABLE trap.sprung (what text);
CREATE FUNCTION trap.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO trap.sprung VALUES ('='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = trap.texteq);
CREATE FUNCTION trap.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN INSERT INTO trap.sprung VALUES ('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
INSERT INTO public.tasks(sql, batch) VALUES ('SELECT pg_sleep(30)', 'trap'), ('SELECT 1', 'trap');
UPDATE public.tasks SET state = 'cancelled' WHERE sql OPERATOR(pg_catalog.=) 'SELECT pg_sleep(30)';
SELECT count(*) FROM task_fdw.wait_batch('trap', '60s');
SELECT count(*) FROM trap.sprung;
});
is($out, "2\n0", 'objects of a role shadowing pg_catalog were never called');

# --- No password anywhere: task rows, EXPLAIN, pg_stat_activity, both logs.
my $rows = $node->safe_psql('postgres', q{SELECT string_agg(t::text, E'\n') FROM task_fdw.task t});
my $explain = $node->safe_psql('postgres', 'EXPLAIN (VERBOSE) SELECT * FROM tasks');
my $activity = $node->safe_psql('postgres',
	'SELECT string_agg(pg_stat_activity::text, E\'\n\') FROM pg_stat_activity');
$activity .= $remote->safe_psql('postgres',
	'SELECT string_agg(pg_stat_activity::text, E\'\n\') FROM pg_stat_activity');
my $logs = slurp_file($node->logfile) . slurp_file($remote->logfile);
for my $pw ($alice_pw, $bob_pw, $wrong_pw, 'guess')
{
	unlike($rows, qr/\Q$pw\E/, "no task row holds the password $pw");
	unlike($explain . $activity, qr/\Q$pw\E/, "neither EXPLAIN nor pg_stat_activity shows $pw");
}
like($logs, qr/DEBUG/, 'the local log was written at DEBUG levels');
my @leaks = grep { $logs =~ /\Q$_\E/ } ($alice_pw, $bob_pw, $wrong_pw, 'guess');
is_deeply(\@leaks, [], 'no password appears in either server log');

$node->stop;
$remote->stop;
done_testing();
