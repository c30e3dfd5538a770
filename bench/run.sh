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
# BENCH_DURATION (seconds per pgbench run, default 15), BENCH_REPEAT (default 5),
# BENCH_IDLE_CLIENTS (default 10000), BENCH_THREADS (Concierge's --threads, for both binaries;
# default: its own, one per core), BENCH_GUARD (default 20), BENCH_SCENARIOS (`all` or
# comma-separated key prefixes, e.g. select_,latency; default: the set issue 20's targets read),
# BENCH_QUICK=1 (a smoke run: 1 run of 5 s), BENCH_FULL=1 (every scenario, and direct PostgreSQL),
# BENCH_DIRECT=1 (direct PostgreSQL). See bench/README.md.
# TLS: a self-signed certificate in $BENCH_DIR/tls serves the clients of both proxies and of
# PostgreSQL (sslmode=require); the proxies' backends stay plain.
# The proxy-bound scenario: bench/fakepg.c (compiled here with gcc) is a PostgreSQL that answers
# at once; a third PgBouncer (md5) and one Concierge per loop count in BENCH_LOOPS (default: 1 and
# one per core) sit in front of it. Many-core runs: BENCH_LOOPS=1,2,4,8, BENCH_PROXY_CPUS (taskset
# for every proxy), BENCH_CLIENT_CPUS (pgbench), BENCH_SERVER_CPUS (fakepg; default the client's),
# BENCH_FAKE_THREADS (fakepg's epoll loops, default 1).
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
NPROC=$(nproc)
# The proxy-bound scenario's Concierge instances: one per loop count (--threads), sorted, unique.
LOOPS=$(tr ',' '\n' <<<"${BENCH_LOOPS:-1,$NPROC}" | grep -E '^[0-9]+$' | sort -n | uniq | paste -sd, -)
[[ -n "$LOOPS" ]] || { echo "bench: BENCH_LOOPS must list loop counts, e.g. 1,2,4" >&2; exit 1; }
PROXY_CPUS=${BENCH_PROXY_CPUS:-}
CLIENT_CPUS=${BENCH_CLIENT_CPUS:-}
SERVER_CPUS=${BENCH_SERVER_CPUS:-$CLIENT_CPUS}
FAKE_THREADS=${BENCH_FAKE_THREADS:-1}
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
command -v openssl >/dev/null || die "openssl is required (the TLS scenarios' certificate)"
command -v gcc >/dev/null || die "gcc is required (bench/fakepg.c, the proxy-bound scenario)"
# For spawn only (it execs, in spawn's background subshell); with no CPU set, nothing is wrapped.
pinned() {   # CPUS COMMAND... : COMMAND, on CPUS if set (taskset execs: the pid is the command's)
    local cpus=$1; shift
    if [[ -n "$cpus" ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

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
                 "$WORK"/concierge_fake_*/concierge_fake_*.log "$WORK"/fakepg.log \
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

# Free ports, held open together so they differ: PostgreSQL, the PgBouncers, Concierge (and its
# base, if any), fakepg, then one per proxy-bound Concierge (one per loop count).
N_LOOPS=$(tr ',' '\n' <<<"$LOOPS" | wc -l)
read -r PG_PORT PGB_PORT PGB_MD5_PORT CONCIERGE_PORT CONCIERGE_BASE_PORT FAKE_PORT PGB_FAKE_PORT \
    FAKE_PORTS < <(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(7 + int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$N_LOOPS")
read -r -a FAKE_PORTS <<<"$FAKE_PORTS"

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

# -- TLS: one self-signed certificate for the clients of both proxies and of PostgreSQL (RSA 2048) --

mkdir -p "$WORK/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -keyout "$WORK/tls/server.key" -out "$WORK/tls/server.crt" 2>/dev/null ||
    die "openssl could not make the certificate"
chown -R "$PG_OS_USER": "$WORK/tls"; chmod 600 "$WORK/tls/server.key"   # PgBouncer reads it too
# PostgreSQL too (the direct target of the TLS scenarios); its TLS settings take a reload.
sql "ALTER SYSTEM SET ssl_cert_file = '$WORK/tls/server.crt'" >/dev/null
sql "ALTER SYSTEM SET ssl_key_file = '$WORK/tls/server.key'" >/dev/null
sql "ALTER SYSTEM SET ssl = on" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null

# -- fakepg: a PostgreSQL that answers at once (the proxy-bound scenario) ----------------------------

gcc -O2 -pthread -o "$WORK/fakepg" "$BENCH/fakepg.c" || die "gcc could not build bench/fakepg.c"

# Start a proxy in the background, in a subshell that waits for it and records how it ended in
# $WORK/NAME.exit (exit status or signal): bench.py reports that if a proxy dies mid-run.
spawn() {   # NAME LOGFILE COMMAND... -> sets SPAWNED_PID (the command's own pid)
    local name=$1 logfile=$2; shift 2
    rm -f "$WORK/$name.pid"
    (
        "$@" >>"$logfile" 2>&1 </dev/null &
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
start_pgbouncer() {   # NAME PORT AUTH_TYPE [DATABASE_PORT] -> sets PGB_PID
    local dir="$WORK/$1" port=$2 auth=$3 db_port=${4:-$PG_PORT}
    mkdir -p "$dir"
    # auth_file lines: "user" "SCRAM-SHA-256$..." or "user" "md5...".
    sql "SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid
         WHERE rolname IN ('bench', 'bench_md5') ORDER BY 1" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
;; written by bench/run.sh
[databases]
bench = host=127.0.0.1 port=$db_port dbname=bench

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
;; TLS for clients that ask (sslmode=require), the same certificate as Concierge's
client_tls_sslmode = allow
client_tls_key_file = $WORK/tls/server.key
client_tls_cert_file = $WORK/tls/server.crt
EOF
    chown -R "$PG_OS_USER": "$dir"; chmod 600 "$dir/userlist.txt"
    # PgBouncer refuses to run as root; setpriv execs it (so the pid is PgBouncer's own), and the
    # raised fd limit is inherited.
    spawn "$1" "$dir/stderr.log" pinned "$PROXY_CPUS" setpriv --reuid="$PG_OS_USER" \
        --regid="$PG_OS_USER" --init-groups pgbouncer "$dir/pgbouncer.ini"
    PGB_PID=$SPAWNED_PID
}
start_pgbouncer pgbouncer "$PGB_PORT" scram-sha-256; PGBOUNCER_PID=$PGB_PID
start_pgbouncer pgbouncer-md5 "$PGB_MD5_PORT" md5; PGBOUNCER_MD5_PID=$PGB_PID
# The proxy-bound scenario's: md5, in front of fakepg.
spawn fakepg "$WORK/fakepg.log" pinned "$SERVER_CPUS" "$WORK/fakepg" "$FAKE_PORT" "$FAKE_THREADS"
FAKE_PID=$SPAWNED_PID
start_pgbouncer pgbouncer-fake "$PGB_FAKE_PORT" md5 "$FAKE_PORT"; PGBOUNCER_FAKE_PID=$PGB_PID

# -- Concierge -------------------------------------------------------------------------------------

PERCENT=$(( POOL * 100 / MAX_CONNECTIONS ))
start_concierge() {   # NAME PORT BINARY [DATABASE_PORT [THREADS]] -> sets SPAWNED_PID; dir $WORK/NAME
    local dir="$WORK/$1" port=$2 bin=$3 db_port=${4:-$PG_PORT} threads=${5:-$THREADS}
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
    tls:
      certificate_file: $WORK/tls/server.crt
      private_key_file: $WORK/tls/server.key
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
        - endpoint: "127.0.0.1:$db_port"
EOF
    spawn "$1" "$dir/$1.log" pinned "$PROXY_CPUS" "$bin" serve --config "$dir/concierge.yaml" \
        ${threads:+--threads "$threads"}
}
# The base (CONCIERGE_BASE_BIN): the same configuration and --threads; its own port, directory, log.
if [[ -n "$CONCIERGE_BASE_BIN" ]]; then
    start_concierge concierge_base "$CONCIERGE_BASE_PORT" "$CONCIERGE_BASE_BIN"
    CONCIERGE_BASE_PID=$SPAWNED_PID
fi
start_concierge concierge "$CONCIERGE_PORT" "$CONCIERGE_BIN"
CONCIERGE_PID=$SPAWNED_PID
# The proxy-bound scenario's: one per loop count, in front of fakepg (which says max_connections
# is 200, so the cap is 20 here too). "loops:port:pid" each, for setup.json.
FAKE_CONCIERGES=()
i=0
for loops in ${LOOPS//,/ }; do
    start_concierge "concierge_fake_$loops" "${FAKE_PORTS[$i]}" "$CONCIERGE_BIN" "$FAKE_PORT" "$loops"
    FAKE_CONCIERGES+=("$loops:${FAKE_PORTS[$i]}:$SPAWNED_PID")
    i=$((i + 1))
done

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
wait_ready pgbouncer-fake "$PGB_FAKE_PORT" bench_md5 "$BENCH_MD5_PASSWORD" "$PGBOUNCER_FAKE_PID"
for entry in "${FAKE_CONCIERGES[@]}"; do
    IFS=: read -r loops port pid <<<"$entry"
    wait_ready "concierge_fake_$loops" "$port" bench_md5 "$BENCH_MD5_PASSWORD" "$pid"
done
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
    "tls": {"cert": "$WORK/tls/server.crt", "key": "rsa:2048"},
    "fakepg": {"port": $FAKE_PORT, "pid": $FAKE_PID, "threads": $FAKE_THREADS},
    "pgbouncer_fake": {"port": $PGB_FAKE_PORT, "pid": $PGBOUNCER_FAKE_PID},
    "concierge_fake": [{"loops": int(l), "port": int(p), "pid": int(q)} for l, p, q in
                       (e.split(":") for e in "${FAKE_CONCIERGES[*]}".split())],
    "cpus": {"nproc": $NPROC, "proxy": "$PROXY_CPUS", "client": "$CLIENT_CPUS",
             "server": "$SERVER_CPUS"},
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
