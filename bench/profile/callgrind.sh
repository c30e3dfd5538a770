#!/usr/bin/env bash
# Instructions per transaction of a concierge binary, counted by valgrind's callgrind: unlike CPU
# time they repeat from run to run (within about 1%) and do not move with other work on the
# machine, so a change of a few per cent shows. Against a held benchmark setup:
#
#   BENCH_HOLD=1 bench/run.sh &
#   bench/profile/callgrind.sh BIN [CLIENTS] [TRANSACTIONS_PER_CLIENT] [MODE] [-C]
#
# Prints instructions per transaction (per connection with -C) and leaves callgrind's file in
# $BENCH_DIR/callgrind-NAME/ (callgrind_annotate reads it). Needs the release build of
# scripts/build-release.sh: valgrind 3.19 cannot read the DWARF 5 of the Swift toolchain's shared
# libraries, which a statically linked binary does not load; debug info is stripped from a copy.
# Under valgrind the proxy runs one thread at a time, about 50 times slower: keep CLIENTS at or
# below the cap of 20 backends for the idle-pool path, above it for the waiting path.
set -euo pipefail
BIN=$(realpath "$1"); CLIENTS=${2:-20}; TX=${3:-500}; MODE=${4:-simple}; CONNECT=${5:-}
WORK=${BENCH_DIR:-/tmp/concierge-bench}
D="$WORK/callgrind-$(basename "$BIN")-$MODE$CONNECT"
source "$(dirname "$0")/callgrind-start.sh"
start_under_callgrind "$BIN" "$WORK" "$D"
read -r PG_BIN PASSWORD < <(python3 -c "import json; s = json.load(open('$WORK/setup.json')); print(s['pg_bin'], s['passwords']['bench_md5'])")
export PGSSLMODE=disable  # the held setup accepts TLS: measure the plain data path
PGBENCH=("$PG_BIN/pgbench" -n -S -M "$MODE" -j 2 -h 127.0.0.1 -p "$PORT" -U bench_md5 $CONNECT)
PGPASSWORD=$PASSWORD "${PGBENCH[@]}" -c "$CLIENTS" -t 20 bench >/dev/null 2>&1   # warm up: logins, pool, caches
callgrind_control -z "$VG" >/dev/null 2>&1
PGPASSWORD=$PASSWORD "${PGBENCH[@]}" -c "$CLIENTS" -t "$TX" bench > "$D/pgbench.out" 2>&1
callgrind_control -d "$VG" >/dev/null 2>&1
N=$(grep -oP "processed: \K\d+" "$D/pgbench.out")
IR=$(callgrind_annotate "$D/callgrind.out.1" 2>/dev/null | grep "PROGRAM TOTALS" | tr -d , | awk '{print $1}')
echo "$(basename "$BIN") $MODE $CONNECT: $N transactions, $IR instructions, $((IR / N)) per transaction"
