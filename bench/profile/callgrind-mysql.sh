#!/usr/bin/env bash
# Instructions per sysbench event of a concierge binary in front of MariaDB, counted by
# valgrind's callgrind: the MySQL side of callgrind.sh (read it first). Against a held setup of
# bench/mysql.sh:
#
#   BENCH_HOLD=1 BENCH_DIR=/tmp/my bench/mysql.sh &
#   BENCH_DIR=/tmp/my bench/profile/callgrind-mysql.sh BIN [THREADS] [EVENTS] [SCRIPT] [PS_MODE]
#
# SCRIPT is a sysbench script (default oltp_point_select; oltp_read_only counts per read-only
# transaction of 16 statements), PS_MODE sysbench's --db-ps-mode (default disable: the text
# protocol, which the classifier reads). Prints instructions per event and leaves callgrind's
# file in $BENCH_DIR/callgrind-NAME-SCRIPT/.
set -euo pipefail
BIN=$(realpath "$1"); THREADS=${2:-20}; EVENTS=${3:-4000}; SCRIPT=${4:-oltp_point_select}; PS=${5:-disable}
WORK=${BENCH_DIR:-/tmp/concierge-bench-mysql}
D="$WORK/callgrind-$(basename "$BIN")-$SCRIPT-$PS"
source "$(dirname "$0")/callgrind-start.sh"
start_under_callgrind "$BIN" "$WORK" "$D"
read -r TABLES SIZE < <(python3 -c "import json; s = json.load(open('$WORK/setup.json')); print(s['tables'], s['table_size'])")
# The password goes in a mode-600 file, not argv (as mysql_bench.py does).
install -m 600 /dev/null "$D/sysbench.cfg"
python3 - "$WORK/setup.json" "$PORT" > "$D/sysbench.cfg" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("\n".join(["db-driver=mysql", "mysql-host=127.0.0.1", f"mysql-port={sys.argv[2]}", "mysql-user=bench",
                 f"mysql-password={s['password']}", "mysql-db=bench", "mysql-ssl=off"]))
PY
SB=(sysbench "$SCRIPT" --config-file="$D/sysbench.cfg" --tables="$TABLES" --table-size="$SIZE" --threads="$THREADS"
    --db-ps-mode="$PS" --time=0)
"${SB[@]}" --events=$((THREADS * 20)) run >/dev/null 2>&1   # warm up: logins, pool, caches
callgrind_control -z "$VG" >/dev/null 2>&1
"${SB[@]}" --events="$EVENTS" run > "$D/sysbench.out" 2>&1
callgrind_control -d "$VG" >/dev/null 2>&1
N=$(grep -oP "total number of events:\s+\K\d+" "$D/sysbench.out")
IR=$(callgrind_annotate "$D/callgrind.out.1" 2>/dev/null | grep "PROGRAM TOTALS" | tr -d , | awk '{print $1}')
echo "$(basename "$BIN") $SCRIPT $PS $THREADS threads: $N events, $IR instructions, $((IR / N)) per event"
