# Upgrading: a database that installed version 1.0 or 1.1 is refused with a
# clear error until ALTER EXTENSION UPDATE, after which its queued tasks run
# and its schema is the same as that of a fresh installation.  One at 1.2,
# whose tables are those of 1.3 and 1.4, works before and after each
# update.  Since 1.4 a task's start is a HOT update.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use TaskFdwNode;

my $node = TaskFdwNode::new_node('upgrade');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('postgres', 'CREATE DATABASE mid');
$node->safe_psql('postgres', 'CREATE DATABASE recent');
$node->safe_psql('fresh', 'CREATE EXTENSION task_fdw');
$node->safe_psql('old', q{
CREATE EXTENSION task_fdw VERSION '1.0';
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text) SERVER loopback;
});
is($node->safe_psql('old', "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'"),
	'1.0', 'version 1.0 can still be installed');

my ($rc, $out, $err) = $node->psql('old', "INSERT INTO tasks(sql) VALUES ('SELECT 1')");
like($err, qr/extension "task_fdw" must be updated before it can be used.*ALTER EXTENSION task_fdw UPDATE/s,
	'an outdated installation is refused with a clear error and hint');

$node->safe_psql('old', 'ALTER EXTENSION task_fdw UPDATE');
is($node->safe_psql('old', "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'"),
	'1.4', 'ALTER EXTENSION UPDATE goes from 1.0 through 1.1, 1.2 and 1.3 to 1.4');
my $id = $node->safe_psql('old', "INSERT INTO tasks(sql) VALUES ('SELECT 42 AS answer') RETURNING id");
is($node->safe_psql('old', "SELECT task_fdw.wait($id, '60s')"), 'done', 'after the update, tasks run');

# --- Version 1.1, with a task queued before the library was replaced (it
# is written to the store directly: the foreign tables refuse to work).
$node->safe_psql('mid', q{
CREATE EXTENSION task_fdw VERSION '1.1';
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text) SERVER loopback;
INSERT INTO task_fdw.task(server_id, userid, sql, submitted_by, submitted_at)
SELECT oid, (SELECT oid FROM pg_roles WHERE rolname = current_user), 'SELECT 1', current_user, now()
  FROM pg_foreign_server WHERE srvname = 'loopback';
});
($rc, $out, $err) = $node->psql('mid', 'SELECT count(*) FROM tasks');
like($err, qr/extension "task_fdw" must be updated before it can be used/,
	'an installation of 1.1 is refused too');
$node->safe_psql('mid', 'ALTER EXTENSION task_fdw UPDATE');
is($node->safe_psql('mid', "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'"),
	'1.4', 'ALTER EXTENSION UPDATE goes from 1.1 through 1.2 and 1.3 to 1.4');
is($node->safe_psql('mid', 'SELECT count(*) FROM task_fdw.task WHERE origin_server_id = server_id'),
	'1', 'a task submitted before the update counts as submitted through the server it runs on');
$id = $node->safe_psql('mid', 'SELECT min(id) FROM tasks');
is($node->safe_psql('mid', "SELECT task_fdw.wait($id, '60s')"), 'done',
	'the task queued before the update runs after it');

# --- Version 1.2: its task store has the columns of 1.3 and 1.4 and an
# index on state that also covers done tasks, so it works without an
# update, and lookups by state find the same tasks before and after each
# update: through that index, through those of 1.3, and through those of
# 1.4, which leave the state out (a running task among them).
$node->safe_psql('recent', q{
CREATE EXTENSION task_fdw VERSION '1.2';
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text, run_at timestamptz,
                            sqlstate text) SERVER loopback;
});
my $gate = $node->background_psql('recent');
$gate->query_safe('SELECT pg_advisory_lock(6)');
$id = $node->safe_psql('recent', q{
INSERT INTO tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour');
INSERT INTO tasks(sql) VALUES ('SELECT 1/0');
INSERT INTO tasks(sql) VALUES ('SELECT pg_advisory_lock(6)');
INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING id});
is($node->safe_psql('recent', "SELECT task_fdw.wait($id, '60s')"), 'done', 'version 1.2 runs tasks without an update');
is($node->safe_psql('recent', "SELECT task_fdw.wait($id - 2, '60s')"), 'failed', 'and records failures');
my $blocker = $id - 1;
$node->poll_query_until('recent', "SELECT state = 'running' FROM tasks WHERE id = $blocker")
  or die 'the blocker did not start';
my $by_state = q{
SELECT string_agg(format('%s %s', s, (SELECT count(*) FROM tasks WHERE state = s)), ', ' ORDER BY s)
  FROM unnest('{queued,running,done,failed,cancelled}'::text[]) s};
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 1, failed 1, queued 1, running 1',
	'with the index of 1.2, lookups by state find each task');
$node->safe_psql('recent', "ALTER EXTENSION task_fdw UPDATE TO '1.3'");
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 1, failed 1, queued 1, running 1',
	'with the indexes of 1.3, which leave out done tasks, they find the same tasks');
# A failure recorded without a sqlstate, as earlier versions could.
$node->safe_psql('recent', "UPDATE task_fdw.task SET sqlstate = NULL WHERE id = $id - 2");
$node->safe_psql('recent', 'ALTER EXTENSION task_fdw UPDATE');
is($node->safe_psql('recent', "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'"),
	'1.4', 'ALTER EXTENSION UPDATE goes from 1.3 to 1.4');
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 1, failed 1, queued 1, running 1',
	'with the indexes of 1.4, which leave out the state, they find the same tasks');
is($node->safe_psql('recent', "SELECT sqlstate FROM tasks WHERE id = $id - 2"), '08006',
	'the update gives a failure recorded without a sqlstate the one 1.4 records');
$gate->query_safe('SELECT pg_advisory_unlock(6)');
is($node->safe_psql('recent', "SELECT task_fdw.wait($blocker, '60s')"), 'done',
	'the task that ran through the update ends');
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 2, failed 1, queued 1, running 0',
	'and is found done');

# --- A start is a HOT update: the running version of a task's row is a
# heap-only tuple (no index entry) next to the queued one.
$node->safe_psql('fresh', q{
CREATE EXTENSION pageinspect;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text) SERVER loopback;
});
$gate->quit;
$gate = $node->background_psql('fresh');
$gate->query_safe('SELECT pg_advisory_lock(6)');
$blocker = $node->safe_psql('fresh',
	"INSERT INTO tasks(sql) VALUES ('SELECT pg_advisory_lock(6)') RETURNING id");
$node->poll_query_until('fresh', "SELECT state = 'running' FROM tasks WHERE id = $blocker")
  or die 'the task did not start';
is($node->safe_psql('fresh', qq{
SELECT (t_infomask2 & 32768) <> 0 AS heap_only
  FROM task_fdw.task t,
       heap_page_items(get_raw_page('task_fdw.task', (t.ctid::text::point)[0]::int)) p
 WHERE t.id = $blocker AND p.lp = (t.ctid::text::point)[1]::int}),
	't', 'the row version of a running task is heap-only: its start was a HOT update');
$gate->query_safe('SELECT pg_advisory_unlock(6)');
is($node->safe_psql('fresh', "SELECT task_fdw.wait($blocker, '60s')"), 'done', 'and the task ends');
$gate->quit;
$node->safe_psql('fresh', q{
DROP FOREIGN TABLE tasks;
DROP SERVER loopback CASCADE;
DROP EXTENSION pageinspect;
});

# The updated schema is the one a fresh installation creates: columns,
# constraints, indexes, functions (with their settings and privileges),
# views, comments, the event trigger and the extension's members.  A fresh
# installation runs task_fdw--1.0.sql and the same update scripts, so this
# checks that updating a store that holds tasks, from each version, ends
# the same.
my $describe = q{
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
  SELECT format('column %s %s %s %s', attnum, attname, format_type(atttypid, atttypmod),
                pg_get_expr(d.adbin, d.adrelid)) || CASE WHEN attnotnull THEN ' not null' ELSE '' END
    FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE attrelid = 'task_fdw.task'::regclass AND attnum > 0 AND NOT attisdropped
  UNION ALL
  SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE conrelid = 'task_fdw.task'::regclass
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'task_fdw.task'::regclass
  UNION ALL
  SELECT format('function %s %s %s %s %s %s', p.oid::regprocedure, p.prosecdef, p.proconfig,
                p.proacl, p.prorows, obj_description(p.oid, 'pg_proc'))
    FROM pg_proc p WHERE pronamespace = 'task_fdw'::regnamespace
  UNION ALL
  SELECT format('relation %s %s %s %s', relname, relkind, relacl, reloptions)
    FROM pg_class WHERE relnamespace = 'task_fdw'::regnamespace
  UNION ALL
  SELECT format('view %s %s', relname, pg_get_viewdef(oid))
    FROM pg_class WHERE relnamespace = 'task_fdw'::regnamespace AND relkind = 'v'
  UNION ALL
  SELECT format('view column %s %s %s %s', c.relname, a.attnum, a.attname,
                format_type(a.atttypid, a.atttypmod))
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
   WHERE c.relnamespace = 'task_fdw'::regnamespace AND c.relkind = 'v'
  UNION ALL
  SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
    FROM pg_depend
   WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'task_fdw')
  UNION ALL
  SELECT format('event trigger %s %s %s', evtname, evtevent, evttags) FROM pg_event_trigger
  UNION ALL
  SELECT 'role ' || rolname FROM pg_roles WHERE rolname = 'task_fdw_monitor'
) s(line);
};
my $fresh = $node->safe_psql('fresh', $describe);
like($fresh, qr/column 31 origin_server_id oid +not null/, 'a fresh 1.4 has the column origin_server_id');
like($fresh, qr/relation task r .* \{fillfactor=50\}/, 'a fresh 1.4 leaves half of each page of the store free');
like($fresh, qr/task_unfinished_idx .* WHERE \(finished_at IS NULL\)/,
	'a fresh 1.4 indexes unfinished tasks by their finish, not their state');
unlike($fresh, qr/^index .*\bstate\b/m, 'no index of a fresh 1.4 mentions the state');
is($node->safe_psql('old', $describe), $fresh,
	'the schema after 1.0 -> 1.1 -> 1.2 -> 1.3 -> 1.4 is the same as a fresh 1.4');
is($node->safe_psql('mid', $describe), $fresh,
	'the schema after 1.1 -> 1.2 -> 1.3 -> 1.4 is the same as a fresh 1.4');
is($node->safe_psql('recent', $describe), $fresh,
	'the schema after 1.2 -> 1.3 -> 1.4 is the same as a fresh 1.4');

$node->stop;
done_testing();
