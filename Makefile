# task_fdw: PGXS build, plus the commands of the README: make demo, make test,
# make package.

MODULE_big = task_fdw
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
EXTENSION = task_fdw
DATA = task_fdw--1.0.sql \
	task_fdw--1.0--1.1.sql task_fdw--1.1--1.2.sql task_fdw--1.2--1.3.sql \
	task_fdw--1.3--1.4.sql
PGFILEDESC = "task_fdw - run SQL statements as background tasks"

REGRESS = setup options tables submit execution control security bad_input fanout
REGRESS_OPTS = --temp-instance=./tmp_regress --temp-config=$(srcdir)/test/task_fdw.conf
ISOLATION = visibility cancel monitor_lock drop_extension
ISOLATION_OPTS = --temp-instance=./tmp_iso --temp-config=$(srcdir)/test/task_fdw.conf
TAP_TESTS = 1
EXTRA_CLEAN = tmp_regress tmp_iso

# The PostgreSQL 15 of Debian's packages, when installed.
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

ifneq ($(PGXS),)
PG_CPPFLAGS = -I$(libpq_srcdir) -Wall -Wextra -Werror -Wno-unused-parameter \
	-Wno-missing-field-initializers -Wno-sign-compare
# PostgreSQL minor releases from 2025 on ask proxies to vet libpq options.
ifneq ($(shell grep -l libpqsrv_is_valid_proxy_option $(shell $(PG_CONFIG) --includedir-server)/libpq/libpq-be-fe-helpers.h 2>/dev/null),)
PG_CPPFLAGS += -DHAVE_LIBPQSRV_PROXY_CHECK
endif
SHLIB_LINK_INTERNAL = $(libpq)
include $(PGXS)
$(OBJS): src/task_fdw.h src/compat.h src/dispatcher.h
else
all:
	@echo "PostgreSQL 15 server headers are missing: run 'make deps' as root (or 'make demo' / 'make test')."; exit 1
endif

.PHONY: deps demo test test-load bench package

# Debian packages the build, the demo and the tests need.
DEB_PACKAGES = postgresql-15 postgresql-server-dev-15 libpq-dev libipc-run-perl libkrb5-dev \
	postgresql-contrib make gcc
# and those building the Debian package needs on top (pg_buildext, dh).
PACKAGE_DEB_PACKAGES = dpkg-dev debhelper postgresql-server-dev-all

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "missing Debian packages:$$missing (install them as root, or run make as root)"; exit 1; \
		fi; \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi

# Build with warnings as errors, install, start a throwaway cluster and show tasks running.
demo: deps
	$(MAKE) -s clean
	$(MAKE) -s all
	$(MAKE) -s install
	sh test/run-as-postgres.sh test/demo.sh

# Build with warnings as errors, install, run the regress, isolation and TAP suites.
test: deps
	$(MAKE) -s clean
	$(MAKE) -s all
	$(MAKE) -s install
	sh test/run-as-postgres.sh $(MAKE) -s installcheck PROVE_FLAGS=--timer

# The load test with 100,000 tasks (make test runs it with 10,000).
test-load: deps
	$(MAKE) -s clean
	$(MAKE) -s all
	$(MAKE) -s install
	sh test/run-as-postgres.sh env TASK_FDW_LOAD_TASKS=100000 $(MAKE) -s installcheck \
		REGRESS= ISOLATION= PROVE_TESTS=t/005_load.pl PROVE_FLAGS=--timer

# Side-by-side benchmark of task_fdw, dblink and pgbench on a throwaway cluster,
# with a plot of throughput against pool size (gnuplot).
bench: deps
	@if ! command -v gnuplot >/dev/null && [ "$$(id -u)" -eq 0 ]; then \
		apt-get install -y -qq gnuplot-nox >/dev/null || true; \
	fi
	$(MAKE) -s all
	$(MAKE) -s install
	sh test/run-as-postgres.sh sh bench/bench.sh > bench/results.txt.new
	mv bench/results.txt.new bench/results.txt
	sh bench/plot.sh bench/results.txt bench/throughput.png
	cat bench/results.txt

# As root: build the Debian package postgresql-15-task-fdw (debian/) out of a
# temporary copy of the tree, install it, and check it on a throwaway cluster.
package:
	@[ "$$(id -u)" -eq 0 ] || { echo "make package installs a Debian package: run it as root"; exit 1; }
	$(MAKE) -s deps DEB_PACKAGES="$(DEB_PACKAGES) $(PACKAGE_DEB_PACKAGES)"
	sh test/package.sh
