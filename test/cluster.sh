# Sourced by test/demo.sh and bench/bench.sh: starts a throwaway cluster with
# task_fdw preloaded, in a temporary directory removed at exit.
#
#   start_cluster NAME [postgresql.conf lines...]
#
# sets bindir, dir (the cluster's directory, also its socket directory) and
# port, and runs the cluster until the calling script exits.
start_cluster() {
	name=$1
	shift
	bindir=$(pg_config --bindir 2>/dev/null || true)
	[ -x "$bindir/initdb" ] || bindir=/usr/lib/postgresql/15/bin
	dir=$(mktemp -d "${TMPDIR:-/tmp}/task_fdw_$name.XXXXXX")
	port=$((20000 + $$ % 20000))
	trap 'stop_cluster' EXIT INT TERM
	"$bindir/initdb" -D "$dir/data" -A trust >/dev/null
	{
		echo "shared_preload_libraries = 'task_fdw'"
		echo "port = $port"
		echo "unix_socket_directories = '$dir'"
		echo "listen_addresses = ''"
		for line in "$@"; do echo "$line"; done
	} >> "$dir/data/postgresql.conf"
	"$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
}

# stop_cluster stops and removes the cluster start_cluster made.
stop_cluster() {
	"$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
