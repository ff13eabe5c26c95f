#!/bin/sh
# Runs a command from the source tree as a user PostgreSQL agrees to run as.
#
# initdb and postgres refuse to run as root.  As root, the tree is copied to
# a temporary directory owned by the postgres user, the command runs there as
# postgres, and the copy is removed afterwards.  Otherwise the command runs
# in place.  On failure, the test suites' diffs and logs are printed.
set -u

show_failures() {
	for f in regression.diffs output_iso/regression.diffs; do
		[ -f "$1/$f" ] && { echo "=== $f"; cat "$1/$f"; }
	done
	for f in "$1"/tmp_check/log/regress_log_* ; do
		[ -f "$f" ] && { echo "=== $f"; tail -n 60 "$f"; }
	done
}

if [ "$(id -u)" -ne 0 ]; then
	"$@"
	rc=$?
	[ $rc -eq 0 ] || show_failures .
	exit $rc
fi

id postgres >/dev/null 2>&1 || { echo "no postgres user: install postgresql-15" >&2; exit 1; }
work=$(mktemp -d /tmp/task_fdw.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
tar --exclude=.git -cf - . | tar -xf - -C "$work"
chown -R postgres: "$work"
cmd=""
for arg in "$@"; do
	cmd="$cmd '$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'"
done
runuser -u postgres -- sh -c "cd '$work' && exec $cmd"
rc=$?
[ $rc -eq 0 ] || show_failures "$work"
exit $rc
