# Upgrading: a database that installed version 1.0 or 1.1 is refused with a
# clear error until ALTER EXTENSION UPDATE, after which its queued tasks run
# and its schema is the same as that of a fresh installation.  One at 1.2,
# whose tables are those of 1.3, works before and after the update.
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
	'1.3', 'ALTER EXTENSION UPDATE goes from 1.0 through 1.1 and 1.2 to 1.3');
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
	'1.3', 'ALTER EXTENSION UPDATE goes from 1.1 through 1.2 to 1.3');
is($node->safe_psql('mid', 'SELECT count(*) FROM task_fdw.task WHERE origin_server_id = server_id'),
	'1', 'a task submitted before the update counts as submitted through the server it runs on');
$id = $node->safe_psql('mid', 'SELECT min(id) FROM tasks');
is($node->safe_psql('mid', "SELECT task_fdw.wait($id, '60s')"), 'done',
	'the task queued before the update runs after it');

# --- Version 1.2: its task store has the columns of 1.3 and an index on
# state that also covers done tasks, so it works without an update, and
# lookups by state find the same tasks before and after it.
$node->safe_psql('recent', q{
CREATE EXTENSION task_fdw VERSION '1.2';
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE FOREIGN TABLE tasks (id bigint, sql text, state text, run_at timestamptz) SERVER loopback;
});
$id = $node->safe_psql('recent', q{
INSERT INTO tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour');
INSERT INTO tasks(sql) VALUES ('SELECT 1/0');
INSERT INTO tasks(sql) VALUES ('SELECT 1') RETURNING id});
is($node->safe_psql('recent', "SELECT task_fdw.wait($id, '60s')"), 'done', 'version 1.2 runs tasks without an update');
$node->safe_psql('recent', "SELECT task_fdw.wait($id - 1, '60s')");
my $by_state = q{
SELECT string_agg(format('%s %s', s, (SELECT count(*) FROM tasks WHERE state = s)), ', ' ORDER BY s)
  FROM unnest('{queued,running,done,failed,cancelled}'::text[]) s};
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 1, failed 1, queued 1, running 0',
	'with the index of 1.2, lookups by state find each task');
$node->safe_psql('recent', 'ALTER EXTENSION task_fdw UPDATE');
is($node->safe_psql('recent', "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'"),
	'1.3', 'ALTER EXTENSION UPDATE goes from 1.2 to 1.3');
is($node->safe_psql('recent', $by_state), 'cancelled 0, done 1, failed 1, queued 1, running 0',
	'with the index of 1.3, which leaves out done tasks, they find the same tasks');

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
  SELECT format('relation %s %s %s', relname, relkind, relacl)
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
like($fresh, qr/column 31 origin_server_id oid +not null/, 'a fresh 1.3 has the column origin_server_id');
like($fresh, qr/task_state_idx .* WHERE \(state = ANY \('\{running,failed,cancelled\}'/,
	'a fresh 1.3 indexes the state of running, failed and cancelled tasks only');
is($node->safe_psql('old', $describe), $fresh,
	'the schema after 1.0 -> 1.1 -> 1.2 -> 1.3 is the same as a fresh 1.3');
is($node->safe_psql('mid', $describe), $fresh,
	'the schema after 1.1 -> 1.2 -> 1.3 is the same as a fresh 1.3');
is($node->safe_psql('recent', $describe), $fresh,
	'the schema after 1.2 -> 1.3 is the same as a fresh 1.3');

$node->stop;
done_testing();
