#!/usr/bin/env bash
# Benchmark direct PostgreSQL vs PgBouncer vs Concierge on this machine, in one command.
#
#   bench/run.sh                                   # builds concierge (release) first
#   CONCIERGE_BIN=.build-release/release/concierge bench/run.sh
#   CONCIERGE_BASE_BIN=/path/to/older/concierge bench/run.sh   # also benchmark a second binary
#
# This script only sets things up and tears them down; bench/bench.py runs the scenarios and
# writes bench/results/<UTC date>-<commit>.md and .json. See bench/README.md.
#
# Everything listens on 127.0.0.1 and lives in $BENCH_DIR (default /tmp/concierge-bench):
#   - a throwaway PostgreSQL (scripts/pg.sh), max_connections=200, users `bench` (SCRAM) and
#     `bench_md5` (md5-stored, md5 in pg_hba.conf), database `bench` (`pgbench -i -s 10`);
#   - PgBouncer in transaction mode, pool 20: one instance with auth_type=scram-sha-256 and a
#     second, identical one with auth_type=md5 (for the md5 connection storm and idle clients);
#   - Concierge with a cap of 20 backends (10% of max_connections=200);
#   - with CONCIERGE_BASE_BIN, a second Concierge ("concierge_base": that binary, the same
#     configuration and --threads, its own port, directory and log), benchmarked as a fourth
#     target interleaved with the others: "before and after" on the same machine.
# The cap is 20 for both proxies; max_connections=200 (instead of 100 and 20%) leaves room for
# the direct runs at 100 clients. A trap stops everything and removes $BENCH_DIR on exit,
# failure or Ctrl-C (BENCH_KEEP=1 keeps the directory, with logs, for inspection).
#
# Environment: CONCIERGE_BIN, CONCIERGE_BASE_BIN, BENCH_DIR, BENCH_KEEP=1; for bench.py:
# BENCH_DURATION (seconds per pgbench run, default 5), BENCH_REPEAT (default 3),
# BENCH_IDLE_CLIENTS (default 10000), BENCH_THREADS (Concierge's --threads, for both binaries;
# default: its own, one per core), BENCH_GUARD (default 20), BENCH_SCENARIOS (comma-separated key
# prefixes, e.g. select_,latency).
# BENCH_HOLD=1 sets everything up and waits (for profiling by hand) instead of running bench.py.
# BENCH_FLOOR=1 runs bench/floor/floor.py instead: bare servers that show what any proxy here can reach.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
# Under /tmp/concierge-* so that `scripts/pg.sh sql PORT` finds the superuser password.
WORK=${BENCH_DIR:-/tmp/concierge-bench}
PG_SH="$REPO/scripts/pg.sh"
PG_OS_USER=concierge-pg     # scripts/pg.sh runs PostgreSQL as this user when we are root
MAX_CONNECTIONS=200
POOL=20                     # backends per proxy: PgBouncer's pool size, Concierge's cap
# Concierge's event loops: its default (one per core) unless BENCH_THREADS sets --threads.
THREADS=${BENCH_THREADS:-}
START=$(date +%s)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)   # other work on the machine skews the numbers

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# -- prerequisites (before anything is started) -------------------------------------------------

bash "$PG_SH" install
PG_BIN=$(bash "$PG_SH" bindir)
if ! command -v pgbouncer >/dev/null; then
    log "installing pgbouncer (apt-get)"
    apt-get update -qq
    # Debian's package enables a system service; there is no systemd here, and we run our own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
command -v python3 >/dev/null || die "python3 is required"

if [[ -z "${CONCIERGE_BIN:-}" ]]; then
    log "scripts/build-release.sh (swift build -c release, the project's release flags)"
    CONCIERGE_BIN=$(bash "$REPO/scripts/build-release.sh")
fi
CONCIERGE_BIN=$(realpath "$CONCIERGE_BIN")
[[ -x "$CONCIERGE_BIN" ]] || die "no concierge binary at $CONCIERGE_BIN"
# Optional: a second (e.g. older) concierge binary, benchmarked beside CONCIERGE_BIN.
CONCIERGE_BASE_BIN=${CONCIERGE_BASE_BIN:-}
if [[ -n "$CONCIERGE_BASE_BIN" ]]; then
    CONCIERGE_BASE_BIN=$(realpath "$CONCIERGE_BASE_BIN")
    [[ -x "$CONCIERGE_BASE_BIN" ]] || die "no concierge binary at $CONCIERGE_BASE_BIN (CONCIERGE_BASE_BIN)"
fi

# 1,000 pgbench clients and 10,000 idle clients need file descriptors: raise the soft limit to
# the hard limit. Every process started below (PgBouncer, Concierge, pgbench, Python) inherits it.
ulimit -n "$(ulimit -Hn)"

# -- teardown ------------------------------------------------------------------------------------

PIDS=()   # the proxies we started
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
    bash "$PG_SH" stop "$WORK/data" >/dev/null 2>&1 || true
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/concierge/concierge.log "$WORK"/concierge_base/concierge_base.log \
                 "$WORK"/pgbouncer*/pgbouncer.log "$WORK"/postgres.log; do
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

# -- PostgreSQL ----------------------------------------------------------------------------------

# Start from nothing: a previous, interrupted run may have left a cluster behind.
bash "$PG_SH" stop "$WORK/data" >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK"

# Five free ports, held open together so they differ (the last for CONCIERGE_BASE_BIN, if set).
read -r PG_PORT PGB_PORT PGB_MD5_PORT CONCIERGE_PORT CONCIERGE_BASE_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

bash "$PG_SH" start "$WORK/data" "$PG_PORT" max_connections=$MAX_CONNECTIONS
export CONCIERGE_PG_PASSWORD; CONCIERGE_PG_PASSWORD=$(cat "$WORK/superuser.password")
sql() { bash "$PG_SH" sql "$PG_PORT" "$@"; }
random_password() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }

BENCH_PASSWORD=$(random_password)
BENCH_MD5_PASSWORD=$(random_password)
sql "CREATE ROLE bench LOGIN PASSWORD '$BENCH_PASSWORD'" >/dev/null
sql "SET password_encryption = 'md5'; CREATE ROLE bench_md5 LOGIN PASSWORD '$BENCH_MD5_PASSWORD'" >/dev/null
sql "CREATE DATABASE bench OWNER bench" >/dev/null
# md5 for bench_md5, before the generic `host ... scram-sha-256` line; then reload.
HBA="$WORK/data/pg_hba.conf"
awk '!done && /^host/ { print "host all bench_md5 127.0.0.1/32 md5"; done = 1 } { print }' "$HBA" >"$WORK/hba.tmp"
cat "$WORK/hba.tmp" >"$HBA" && rm "$WORK/hba.tmp"   # cat keeps the file's owner and mode
sql "SELECT pg_reload_conf()" >/dev/null

log "pgbench -i -s 10"
PGPASSWORD=$BENCH_PASSWORD "$PG_BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench bench 2>&1 |
    tail -n 1 >&2
sql "GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench_md5" bench >/dev/null
sql "VACUUM ANALYZE" bench >/dev/null

# Start a proxy in the background, in a subshell that waits for it and records how it ended in
# $WORK/NAME.exit (exit status or signal): bench.py reports that if a proxy dies mid-run.
spawn() {   # NAME LOGFILE COMMAND... -> sets SPAWNED_PID (the command's own pid)
    local name=$1 logfile=$2; shift 2
    rm -f "$WORK/$name.pid"
    (
        "$@" >>"$logfile" 2>&1 &
        echo $! >"$WORK/$name.pid"
        rc=0; wait $! || rc=$?   # (not `wait; rc=$?`: set -e would end the subshell first)
        if (( rc > 128 )); then echo "killed by signal $(kill -l $((rc - 128)))"; else echo "exited with status $rc"; fi >"$WORK/$name.exit"
    ) 2>/dev/null &
    for _ in $(seq 100); do [[ -s "$WORK/$name.pid" ]] && break; sleep 0.05; done
    SPAWNED_PID=$(cat "$WORK/$name.pid")
    PIDS+=("$SPAWNED_PID")
}

# -- PgBouncer (two instances: auth_type scram-sha-256 and md5) ------------------------------------

# PgBouncer checks client passwords against the verifiers PostgreSQL stores, and logs in to the
# database with them (SCRAM pass-through / the md5 hash): no plaintext password on its side.
start_pgbouncer() {   # NAME PORT AUTH_TYPE -> sets PGB_PID
    local dir="$WORK/$1" port=$2 auth=$3
    mkdir -p "$dir"
    # auth_file lines: "user" "SCRAM-SHA-256$..." or "user" "md5...".
    sql "SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid
         WHERE rolname IN ('bench', 'bench_md5') ORDER BY 1" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
;; written by bench/run.sh
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = $auth
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_db_connections = $POOL
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 20000
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    chown -R "$PG_OS_USER": "$dir"; chmod 600 "$dir/userlist.txt"
    # PgBouncer refuses to run as root; setpriv execs it (so the pid is PgBouncer's own), and the
    # raised fd limit is inherited.
    spawn "$1" "$dir/stderr.log" setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups \
        pgbouncer "$dir/pgbouncer.ini"
    PGB_PID=$SPAWNED_PID
}
start_pgbouncer pgbouncer "$PGB_PORT" scram-sha-256; PGBOUNCER_PID=$PGB_PID
start_pgbouncer pgbouncer-md5 "$PGB_MD5_PORT" md5; PGBOUNCER_MD5_PID=$PGB_PID

# -- Concierge -------------------------------------------------------------------------------------

PERCENT=$(( POOL * 100 / MAX_CONNECTIONS ))
start_concierge() {   # NAME PORT BINARY -> sets SPAWNED_PID; directory $WORK/NAME, log NAME.log
    local dir="$WORK/$1" port=$2 bin=$3
    mkdir -p "$dir"
    (umask 077
     printf '{"username":"bench","password":"%s"}\n' "$BENCH_PASSWORD" >"$dir/bench.json"
     printf '{"username":"bench_md5","password":"%s"}\n' "$BENCH_MD5_PASSWORD" >"$dir/bench_md5.json")
    cat >"$dir/concierge.yaml" <<EOF
# written by bench/run.sh: a cap of $PERCENT% of max_connections=$MAX_CONNECTIONS = $POOL backends
drain_timeout: 5
proxies:
  - name: bench
    engine_family: POSTGRESQL
    listen: "127.0.0.1:$port"
    require_tls: false
    idle_client_timeout: 1800
    max_client_connections: 20000
    debug_logging: false
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:bench.json"
        iam_auth: DISABLED
        client_password_auth_type: POSTGRES_SCRAM_SHA_256
      - auth_scheme: SECRETS
        secret_arn: "file:bench_md5.json"
        iam_auth: DISABLED
        client_password_auth_type: POSTGRES_MD5
    target_group:
      connection_pool_config:
        max_connections_percent: $PERCENT
        max_idle_connections_percent: $PERCENT
        connection_borrow_timeout: 120
        session_pinning_filters: []
        init_query: ""
      targets:
        - endpoint: "127.0.0.1:$PG_PORT"
EOF
    spawn "$1" "$dir/$1.log" "$bin" serve --config "$dir/concierge.yaml" ${THREADS:+--threads "$THREADS"}
}
# The base (CONCIERGE_BASE_BIN): the same configuration and --threads; its own port, directory, log.
if [[ -n "$CONCIERGE_BASE_BIN" ]]; then
    start_concierge concierge_base "$CONCIERGE_BASE_PORT" "$CONCIERGE_BASE_BIN"
    CONCIERGE_BASE_PID=$SPAWNED_PID
fi
start_concierge concierge "$CONCIERGE_PORT" "$CONCIERGE_BIN"
CONCIERGE_PID=$SPAWNED_PID

# -- wait until `select 1` works through each proxy ---------------------------------------------

wait_ready() {   # NAME PORT USER PASSWORD PID
    local i
    for i in $(seq 60); do
        kill -0 "$5" 2>/dev/null || die "$1 exited at startup"
        if PGPASSWORD=$4 PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$2" -U "$3" \
            -d bench -c 'select 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$1 on port $2 did not answer select 1 within 30 s"
}
wait_ready pgbouncer "$PGB_PORT" bench "$BENCH_PASSWORD" "$PGBOUNCER_PID"
wait_ready pgbouncer-md5 "$PGB_MD5_PORT" bench_md5 "$BENCH_MD5_PASSWORD" "$PGBOUNCER_MD5_PID"
wait_ready concierge "$CONCIERGE_PORT" bench "$BENCH_PASSWORD" "$CONCIERGE_PID"
wait_ready concierge "$CONCIERGE_PORT" bench_md5 "$BENCH_MD5_PASSWORD" "$CONCIERGE_PID"
if [[ -n "$CONCIERGE_BASE_BIN" ]]; then
    wait_ready concierge_base "$CONCIERGE_BASE_PORT" bench "$BENCH_PASSWORD" "$CONCIERGE_BASE_PID"
    wait_ready concierge_base "$CONCIERGE_BASE_PORT" bench_md5 "$BENCH_MD5_PASSWORD" \
        "$CONCIERGE_BASE_PID"
fi
log "ready after $(( $(date +%s) - START )) s: PostgreSQL :$PG_PORT, PgBouncer :$PGB_PORT (md5 :$PGB_MD5_PORT), Concierge :$CONCIERGE_PORT${CONCIERGE_BASE_BIN:+ (base :$CONCIERGE_BASE_PORT)}"

# -- the scenarios ----------------------------------------------------------------------------------

# Everything bench.py needs to know, as one JSON file (passwords stay out of argv).
python3 - "$WORK/setup.json" <<EOF
import json, sys
json.dump({
    "work": "$WORK", "repo": "$REPO", "results": "$BENCH/results", "pg_bin": "$PG_BIN",
    "max_connections": $MAX_CONNECTIONS, "pool": $POOL, "started": $START, "loadavg": "$LOADAVG",
    "passwords": {"bench": "$BENCH_PASSWORD", "bench_md5": "$BENCH_MD5_PASSWORD"},
    "direct": {"port": $PG_PORT},
    "pgbouncer": {"port": $PGB_PORT, "pid": $PGBOUNCER_PID},
    "pgbouncer_md5": {"port": $PGB_MD5_PORT, "pid": $PGBOUNCER_MD5_PID},
    "concierge": {"port": $CONCIERGE_PORT, "pid": $CONCIERGE_PID, "bin": "$CONCIERGE_BIN", "threads": "${THREADS:-one per core}"},
    # Only with CONCIERGE_BASE_BIN: bench.py adds it as a target when the key is there.
    **({"concierge_base": {"port": $CONCIERGE_BASE_PORT, "pid": ${CONCIERGE_BASE_PID:-0},
                           "bin": "$CONCIERGE_BASE_BIN", "threads": "${THREADS:-one per core}"}}
       if "$CONCIERGE_BASE_BIN" else {}),
}, open(sys.argv[1], "w"), indent=2)
EOF
if [[ "${BENCH_HOLD:-0}" == 1 ]]; then
    # For profiling: everything stays up (ports and passwords in setup.json) until Ctrl-C.
    log "holding (BENCH_HOLD=1): see $WORK/setup.json; Ctrl-C stops everything"
    # (wait, not a foreground sleep, so that a signal runs the cleanup trap at once)
    while true; do sleep 3600 & wait $!; done
fi
if [[ "${BENCH_FLOOR:-0}" == 1 ]]; then
    # The floor (bench/floor/floor.py): bare handshake servers and a minimal pooler beside them.
    python3 "$BENCH/floor/floor.py" "$WORK/setup.json"
    exit 0
fi
python3 "$BENCH/bench.py" "$WORK/setup.json"
