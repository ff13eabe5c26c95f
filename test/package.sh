#!/bin/sh
# make package: builds the Debian package postgresql-15-task-fdw (debian/)
# out of a temporary copy of the source tree, installs it, and checks the
# installed package: the files dpkg lists for it, and, on a throwaway cluster
# run as the postgres OS user with task_fdw preloaded, CREATE EXTENSION and
# one task run to 'done'.  The package stays installed; the copy, the build
# products and the cluster are removed.
#
#   sh test/package.sh           as root, from the top of the source tree:
#                                build, install, check
#   sh test/package.sh --check   the cluster check alone, as a user PostgreSQL
#                                agrees to run as (run-as-postgres.sh does this)
#
# DEB_OUT=DIR keeps a copy of the .deb in DIR (outside the source tree).
# The build packages themselves are installed by make package (make deps).
set -eu

pkg=postgresql-15-task-fdw

fail() { echo "make package: $*" >&2; exit 1; }

# The cluster check: runs as the postgres OS user, in the copy of the tree
# that run-as-postgres.sh made.
if [ "${1:-}" = "--check" ]; then
	. "$(dirname "$0")/cluster.sh"
	start_cluster package
	psql() { "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d postgres "$@"; }

	control=$("$bindir/pg_config" --sharedir)/extension/task_fdw.control
	want=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$control")
	version=$(psql -c "CREATE EXTENSION task_fdw" \
		-c "SELECT extversion FROM pg_extension WHERE extname = 'task_fdw'") ||
		fail "CREATE EXTENSION task_fdw failed (server log: $(tail -n 5 "$dir/log"))"
	[ "$version" = "$want" ] ||
		fail "CREATE EXTENSION installed version '$version', task_fdw.control says '$want'"
	echo "== CREATE EXTENSION task_fdw: version $version"

	state=$(psql <<-'SQL'
		CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw;
		CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
		IMPORT FOREIGN SCHEMA task_fdw FROM SERVER loopback INTO public;
		CREATE TABLE side (i int);
		INSERT INTO tasks(sql) VALUES ('INSERT INTO side VALUES (42)') RETURNING id \gset
		SELECT task_fdw.wait(:id, '60s');
		SELECT coalesce(sum(i), 0) FROM side;
	SQL
	) || fail "the task could not be submitted or waited for"
	# its state, then (in a statement of its own, to see the task's commit)
	# what the task inserted
	[ "$state" = "$(printf 'done\n42')" ] ||
		fail "expected the task 'done' and 42 in table side, got: $state"
	echo "== a task ran to 'done' and its INSERT is visible"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "installs a Debian package: run it as root"
[ -f debian/control ] && [ -f task_fdw.control ] ||
	fail "run it from the top of the task_fdw source tree"
for tool in dpkg-buildpackage dh pg_buildext; do
	command -v $tool >/dev/null ||
		fail "$tool is missing: run 'make package', which installs the build packages"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/task_fdw_package.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# Build from a copy, so that no build product lands in the source tree.
echo "== building $pkg in a temporary copy of the tree"
mkdir "$work/task-fdw"
tar --exclude=.git -cf - . | tar -xf - -C "$work/task-fdw"
start=$(date +%s)
if ! (cd "$work/task-fdw" && DEB_BUILD_OPTIONS="nocheck noddebs" \
		dpkg-buildpackage -b -us -uc) > "$work/build.log" 2>&1; then
	tail -n 40 "$work/build.log"
	fail "dpkg-buildpackage failed (last lines of its log above)"
fi
version=$(cd "$work/task-fdw" && dpkg-parsechangelog -S Version)
deb=$(ls "$work"/${pkg}_"$version"_*.deb 2>/dev/null) ||
	fail "dpkg-buildpackage made no ${pkg}_${version}_*.deb"
echo "== built $(basename "$deb") in $(($(date +%s) - start)) s"
if [ -n "${DEB_OUT:-}" ]; then
	mkdir -p "$DEB_OUT"
	cp "$deb" "$DEB_OUT/"
	echo "== copied it to $DEB_OUT"
fi

# META.json (PGXN) and debian/changelog give the same release version.
meta=$(sed -n '0,/"version"/s/^ *"version" *: *"\([^"]*\)".*/\1/p' META.json)
[ "$meta" = "$version" ] ||
	fail "META.json says version '$meta', debian/changelog '$version'"

echo "== installing it"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "$deb" > "$work/install.log" 2>&1 ||
	{ cat "$work/install.log"; fail "apt-get install $deb failed"; }
installed=$(dpkg-query -W -f='${Status} ${Version}' $pkg 2>/dev/null) || true
[ "$installed" = "install ok installed $version" ] ||
	fail "$pkg $version is not installed (dpkg says: '$installed')"

# dpkg owns the library and the control file, and the files on disk are the
# package's (dpkg --verify prints any whose checksum differs).
for f in /usr/lib/postgresql/15/lib/task_fdw.so /usr/share/postgresql/15/extension/task_fdw.control; do
	dpkg -L $pkg | grep -qx "$f" || fail "dpkg -L $pkg does not list $f"
done
changed=$(dpkg --verify $pkg 2>&1) || true
[ -z "$changed" ] || fail "installed files differ from the package: $changed"
echo "== dpkg -L $pkg lists task_fdw.so and task_fdw.control"

sh test/run-as-postgres.sh sh test/package.sh --check
echo "== $pkg $version is installed and works"
