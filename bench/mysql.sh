#!/usr/bin/env bash
# Benchmark direct MariaDB vs Concierge (engine_family MYSQL) on this machine, in one command.
#
#   bench/mysql.sh                                   # builds concierge (release) first
#   CONCIERGE_BIN=.build-release/release/concierge bench/mysql.sh
#   BENCH_DURATION=3 BENCH_REPEAT=1 bench/mysql.sh   # a smoke run
#
# The MySQL side of bench/run.sh: this script only sets things up and tears them down;
# bench/mysql_bench.py runs the scenarios (sysbench) and writes
# bench/results/<UTC date>-<commit>-mysql.md and .json. See bench/README.md.
#
# Everything listens on 127.0.0.1 and lives in $BENCH_DIR (default /tmp/concierge-bench-mysql):
#   - a throwaway MariaDB (scripts/mysql.sh) with max_connections=2000, so that 1,000 sysbench
#     threads can connect directly and 1% of it is the proxy's cap; user `bench`
#     (mysql_native_password), database `bench` filled by `sysbench oltp_common prepare`;
#   - Concierge, engine_family MYSQL, a cap of 20 backends (max_connections_percent 1 of 2000).
# No other MySQL proxy: ProxySQL and MaxScale are not in Debian's packages (the results say so),
# and PgBouncer has no MySQL side. A trap stops everything and removes $BENCH_DIR on exit,
# failure or Ctrl-C (BENCH_KEEP=1 keeps the directory, with logs, for inspection).
#
# Environment: CONCIERGE_BIN, BENCH_DIR, BENCH_KEEP=1, BENCH_HOLD=1 (set up and wait); for
# mysql_bench.py: BENCH_DURATION (seconds per sysbench run, default 5), BENCH_REPEAT (default 3),
# BENCH_IDLE_CLIENTS (default 10000), BENCH_GUARD (default 20), BENCH_SCENARIOS (comma-separated
# key prefixes, e.g. read_only,latency), BENCH_THREADS (Concierge's --threads).
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
# Under /tmp/concierge-* so that `scripts/mysql.sh sql PORT` finds the admin password.
WORK=${BENCH_DIR:-/tmp/concierge-bench-mysql}
MY_SH="$REPO/scripts/mysql.sh"
# 1,000 direct sysbench threads, plus the proxy's 20 backends and its health check, plus room.
MAX_CONNECTIONS=2000
POOL=20                     # Concierge's cap: 1% of max_connections
THREADS=${BENCH_THREADS:-}
TABLES=4
TABLE_SIZE=${BENCH_TABLE_SIZE:-25000}   # sysbench's tables (as tests/integration/test_mysql_clients.py)
START=$(date +%s)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# -- prerequisites (before anything is started) -------------------------------------------------

bash "$MY_SH" install
if ! command -v sysbench >/dev/null; then
    log "installing sysbench (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysbench >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required"
CLIENT=$(command -v mariadb || command -v mysql) || die "no mariadb client"

if [[ -z "${CONCIERGE_BIN:-}" ]]; then
    log "scripts/build-release.sh (swift build -c release, the project's release flags)"
    CONCIERGE_BIN=$(bash "$REPO/scripts/build-release.sh")
fi
CONCIERGE_BIN=$(realpath "$CONCIERGE_BIN")
[[ -x "$CONCIERGE_BIN" ]] || die "no concierge binary at $CONCIERGE_BIN"

# 1,000 sysbench threads (direct: 1,000 server threads) and 10,000 idle clients need file
# descriptors. Every process started below (MariaDB, Concierge, sysbench, Python) inherits it.
ulimit -n "$(ulimit -Hn)"

# -- teardown ------------------------------------------------------------------------------------

PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    trap '' PIPE
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    bash "$MY_SH" stop "$WORK/data" >/dev/null 2>&1 || true
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/concierge/concierge.log "$WORK"/mysqld.log; do
            [[ -s "$f" ]] && { log "--- tail of $f"; tail -n 15 "$f" >&2; }
        done
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    log "done in $(( $(date +%s) - START )) s (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- MariaDB ---------------------------------------------------------------------------------------

bash "$MY_SH" stop "$WORK/data" >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK"

read -r MY_PORT CONCIERGE_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

random_password() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
export CONCIERGE_MYSQL_PASSWORD; CONCIERGE_MYSQL_PASSWORD=$(random_password)
# thread_cache_size: the connection storm reuses server threads (as a production server would);
# the buffer pool holds the sysbench tables (about 25 MB) many times over; 1,000 threads with
# server-side prepared statements (about 40 each for oltp_read_write) exceed the default
# max_prepared_stmt_count (16382: ERROR 1461 at sysbench's thread_init).
bash "$MY_SH" start "$WORK/data" "$MY_PORT" max_connections=$MAX_CONNECTIONS \
    thread_cache_size=256 innodb_buffer_pool_size=512M max_prepared_stmt_count=1048576
sql() { bash "$MY_SH" sql "$MY_PORT" "$@"; }

BENCH_PASSWORD=$(random_password)
sql "CREATE USER 'bench'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('$BENCH_PASSWORD');
     CREATE DATABASE bench; GRANT ALL PRIVILEGES ON bench.* TO 'bench'@'%'" >/dev/null
[[ "$(sql "SELECT @@max_connections")" == "$MAX_CONNECTIONS" ]] ||
    die "MariaDB runs with max_connections=$(sql "SELECT @@max_connections"), not $MAX_CONNECTIONS (open_files_limit?)"

log "sysbench oltp_common prepare (--tables=$TABLES --table-size=$TABLE_SIZE)"
sysbench oltp_common --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$MY_PORT" \
    --mysql-user=bench --mysql-password="$BENCH_PASSWORD" --mysql-db=bench --mysql-ssl=off \
    --tables=$TABLES --table-size="$TABLE_SIZE" --threads=$TABLES prepare >"$WORK/prepare.log" 2>&1 ||
    { tail -n 20 "$WORK/prepare.log" >&2; die "sysbench prepare failed"; }
sql "ANALYZE TABLE $(seq -s, -f 'sbtest%g' 1 $TABLES)" bench >/dev/null

# -- Concierge -------------------------------------------------------------------------------------

spawn() {   # NAME LOGFILE COMMAND... -> sets SPAWNED_PID (the command's own pid)
    local name=$1 logfile=$2; shift 2
    rm -f "$WORK/$name.pid"
    (
        "$@" >>"$logfile" 2>&1 &
        echo $! >"$WORK/$name.pid"
        rc=0; wait $! || rc=$?
        if (( rc > 128 )); then echo "killed by signal $(kill -l $((rc - 128)))"; else echo "exited with status $rc"; fi >"$WORK/$name.exit"
    ) 2>/dev/null &
    for _ in $(seq 100); do [[ -s "$WORK/$name.pid" ]] && break; sleep 0.05; done
    SPAWNED_PID=$(cat "$WORK/$name.pid")
    PIDS+=("$SPAWNED_PID")
}

PERCENT=$(( POOL * 100 / MAX_CONNECTIONS ))
DIR="$WORK/concierge"
mkdir -p "$DIR"
(umask 077; printf '{"username":"bench","password":"%s"}\n' "$BENCH_PASSWORD" >"$DIR/bench.json")
cat >"$DIR/concierge.yaml" <<EOF
# written by bench/mysql.sh: a cap of $PERCENT% of max_connections=$MAX_CONNECTIONS = $POOL backends
drain_timeout: 5
proxies:
  - name: bench
    engine_family: MYSQL
    listen: "127.0.0.1:$CONCIERGE_PORT"
    require_tls: false
    idle_client_timeout: 1800
    max_client_connections: 20000
    debug_logging: false
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:bench.json"
        iam_auth: DISABLED
        client_password_auth_type: MYSQL_NATIVE_PASSWORD
    target_group:
      connection_pool_config:
        max_connections_percent: $PERCENT
        max_idle_connections_percent: $PERCENT
        connection_borrow_timeout: 120
        session_pinning_filters: []
        init_query: ""
      targets:
        - endpoint: "127.0.0.1:$MY_PORT"
EOF
spawn concierge "$DIR/concierge.log" "$CONCIERGE_BIN" serve --config "$DIR/concierge.yaml" ${THREADS:+--threads "$THREADS"}
CONCIERGE_PID=$SPAWNED_PID

wait_ready() {   # NAME PORT PID
    local i
    for i in $(seq 60); do
        kill -0 "$3" 2>/dev/null || die "$1 exited at startup"
        if MYSQL_PWD=$BENCH_PASSWORD "$CLIENT" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$2" \
            -u bench --connect-timeout=2 -N -e 'SELECT 1' bench >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$1 on port $2 did not answer SELECT 1 within 30 s"
}
wait_ready concierge "$CONCIERGE_PORT" "$CONCIERGE_PID"
log "ready after $(( $(date +%s) - START )) s: MariaDB :$MY_PORT, Concierge :$CONCIERGE_PORT"

# -- the scenarios ----------------------------------------------------------------------------------

# Everything mysql_bench.py needs, as one JSON file (passwords stay out of argv and the logs).
python3 - "$WORK/setup.json" <<EOF
import json, sys
json.dump({
    "work": "$WORK", "repo": "$REPO", "results": "$BENCH/results", "client": "$CLIENT",
    "max_connections": $MAX_CONNECTIONS, "pool": $POOL, "started": $START, "loadavg": "$LOADAVG",
    "tables": $TABLES, "table_size": $TABLE_SIZE,
    "password": "$BENCH_PASSWORD",
    "direct": {"port": $MY_PORT},
    "concierge": {"port": $CONCIERGE_PORT, "pid": $CONCIERGE_PID, "bin": "$CONCIERGE_BIN", "threads": "${THREADS:-one per core}"},
}, open(sys.argv[1], "w"), indent=2)
EOF
chmod 600 "$WORK/setup.json"
if [[ "${BENCH_HOLD:-0}" == 1 ]]; then
    log "holding (BENCH_HOLD=1): see $WORK/setup.json; Ctrl-C stops everything"
    while true; do sleep 3600 & wait $!; done
fi
python3 "$BENCH/mysql_bench.py" "$WORK/setup.json"
