# Helpers shared by task_fdw's TAP tests: a cluster with task_fdw preloaded,
# and the extension with a loopback server and its "tasks" table.
package TaskFdwNode;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;

# new_plain_node($name, $extra_conf): a started cluster with any extra
# postgresql.conf lines, without task_fdw (a remote server, say).
sub new_plain_node
{
	my ($name, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf', $extra_conf) if defined $extra_conf;
	$node->start;
	return $node;
}

# new_node($name, $extra_conf): a started cluster with task_fdw preloaded,
# plus any extra postgresql.conf lines.
sub new_node
{
	my ($name, $extra_conf) = @_;

	return new_plain_node($name, qq{
shared_preload_libraries = 'task_fdw'
max_worker_processes = 16
} . ($extra_conf // ''));
}

# setup_loopback($node, $pool_size): the extension, a loopback server with
# that pool size, a user mapping for the current user, and table "tasks".
sub setup_loopback
{
	my ($node, $pool_size) = @_;

	$node->safe_psql('postgres', qq{
CREATE EXTENSION task_fdw;
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '$pool_size');
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER loopback INTO public;
});
	return;
}

1;
