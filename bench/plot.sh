#!/bin/sh
# Plots W1 throughput against pool size, for task_fdw (with and without the
# session reset, and with the pipeline of 1.4.0), dblink and pgbench, from the
# rows "W1 tasks/s, P=n" of a make bench result file.
# Usage: plot.sh results.txt out.png
set -eu
command -v gnuplot >/dev/null || { echo "gnuplot is missing: no plot" >&2; exit 0; }
data=$(mktemp)
kept=$(mktemp)
shallow=$(mktemp)
trap 'rm -f "$data" "$kept" "$shallow"' EXIT
cores=$(sed -n '1s/.* \([0-9][0-9]*\) cores,.*/\1/p' "$1")
sed -n 's/^W1 tasks\/s, P=\([0-9][0-9]*\)  *\([0-9][0-9]*\)  *\([0-9][0-9]*\)  *\([0-9][0-9]*\).*/\1 \2 \3 \4/p' "$1" > "$data"
sed -n 's/^W1 tasks\/s, P=\([0-9][0-9]*\), reset_session off  *\([0-9][0-9]*\).*/\1 \2/p' "$1" > "$kept"
sed -n 's/^W1 tasks\/s, P=\([0-9][0-9]*\), 1.4.0 pipeline  *\([0-9][0-9]*\).*/\1 \2/p' "$1" > "$shallow"
gnuplot <<PLOT
set terminal png size 800,500 noenhanced
set output '$2'
set title 'Trivial statements per second against pool size${cores:+ ($cores cores)}'
set xlabel 'connections (pool size P)'
set ylabel 'statements per second'
set logscale y
set key left top
set xtics (1, 2, 4, 8)
plot '$data' using 1:2 with linespoints title 'task_fdw (durable), session reset per task', \\
     '$kept' using 1:2 with linespoints title 'task_fdw (durable), reset_session off', \\
     '$shallow' using 1:2 with linespoints title 'task_fdw (durable), 1.4.0 pipeline (depth 8, claim_ahead 48)', \\
     '$data' using 1:3 with linespoints title 'dblink, warm pool in one session', \\
     '$data' using 1:4 with linespoints title 'pgbench SELECT 1 (ceiling)'
PLOT
