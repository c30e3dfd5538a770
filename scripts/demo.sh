#!/usr/bin/env bash
# Run Concierge in front of a local, throwaway PostgreSQL (or MariaDB).
#
#   scripts/demo.sh            PostgreSQL (scripts/pg.sh)
#   scripts/demo.sh mysql      MariaDB from Debian's packages (scripts/mysql.sh), engine_family MYSQL
#
# Installs PostgreSQL if missing, starts a cluster on 127.0.0.1:$CONCIERGE_DEMO_PG_PORT, creates
# the database user `app` (random password, kept in a mode-600 secret file) and database `app`,
# builds concierge, writes its config and runs `concierge serve` in the foreground. It prints the
# psql command to connect through the proxy. Ctrl-C stops the proxy (it drains) and the cluster.
#
# Environment:
#   CONCIERGE_DEMO_DIR=/tmp/concierge-demo  where the cluster, secret and config live
#                                           (/tmp/concierge-demo-mysql for mysql)
#   CONCIERGE_DEMO_PG_PORT=5499             the database's port (mysql: CONCIERGE_DEMO_MYSQL_PORT=3399)
#   CONCIERGE_DEMO_PORT=6432                the proxy's port (mysql: 3406)
#   CONCIERGE_DEMO_ADMIN_PORT=9187          the admin API's and /metrics' port
#   CONCIERGE_DEBUG=1                       build and run the debug build (default: release)
#   CONCIERGE_BIN=path                      run this binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${1:-postgresql}
case "$ENGINE" in
    postgresql|postgres|pg) ENGINE=postgresql ;;
    mysql|mariadb) ENGINE=mysql ;;
    *) echo "demo: unknown engine '$ENGINE' (postgresql or mysql)" >&2; exit 2 ;;
esac

if [[ "$ENGINE" == mysql ]]; then
    DIR=${CONCIERGE_DEMO_DIR:-/tmp/concierge-demo-mysql}
    MY_PORT=${CONCIERGE_DEMO_MYSQL_PORT:-3399}
    PROXY_PORT=${CONCIERGE_DEMO_PORT:-3406}
    ADMIN_PORT=${CONCIERGE_DEMO_ADMIN_PORT:-9188}
    DATADIR=$DIR/data
    CONFIG=$DIR/concierge.yaml
    SECRET=$DIR/app.json
    bash scripts/mysql.sh install
    if [[ -z "${CONCIERGE_BIN:-}" ]]; then
        if [[ "${CONCIERGE_DEBUG:-0}" == 1 ]]; then
            swift build -c debug --product concierge
            CONCIERGE_BIN=$(swift build -c debug --show-bin-path)/concierge
        else
            echo "demo: scripts/build-release.sh (swift build -c release with the release flags)"
            CONCIERGE_BIN=$(bash scripts/build-release.sh)
        fi
    fi
    PROXY_PID=""
    cleanup() {
        trap - EXIT INT TERM
        trap '' PIPE
        if [[ -n "$PROXY_PID" ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
            echo "demo: stopping concierge (it lets open transactions finish first)"
            kill -TERM "$PROXY_PID"
            wait "$PROXY_PID" || true
        fi
        bash scripts/mysql.sh stop "$DATADIR" || true
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    bash scripts/mysql.sh start "$DATADIR" "$MY_PORT" max_connections=100
    # The application's user (mysql_native_password, a fresh random password each run) and schema.
    APP_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    bash scripts/mysql.sh sql "$MY_PORT" "CREATE USER IF NOT EXISTS 'app'@'%';
        ALTER USER 'app'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('$APP_PASSWORD');
        CREATE DATABASE IF NOT EXISTS app; GRANT ALL ON app.* TO 'app'@'%'" >/dev/null
    (umask 077; printf '{"username":"app","password":"%s"}\n' "$APP_PASSWORD" >"$SECRET")
    cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh mysql
drain_timeout: 30
admin:
  listen: "127.0.0.1:$ADMIN_PORT"    # admin API and /metrics (loopback: no token needed)
proxies:
  - name: app
    engine_family: MYSQL
    listen: "127.0.0.1:$PROXY_PORT"
    idle_client_timeout: 1800
    max_client_connections: 10000
    debug_logging: false
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:$SECRET"
        iam_auth: DISABLED
        client_password_auth_type: MYSQL_NATIVE_PASSWORD
    target_group:
      connection_pool_config:
        max_connections_percent: 10        # at most 10 backends (max_connections is 100)
        max_idle_connections_percent: 5
        connection_borrow_timeout: 120
        session_pinning_filters: []
        init_query: ""
      targets:
        - endpoint: "127.0.0.1:$MY_PORT"
EOF
    cat <<EOF

Concierge: 127.0.0.1:$PROXY_PORT  ->  MariaDB: 127.0.0.1:$MY_PORT   (config: $CONFIG)

Connect through the proxy:
  mariadb -h 127.0.0.1 -P $PROXY_PORT -u app -p'$APP_PASSWORD' app
Watch the proxy (admin API and Prometheus metrics on 127.0.0.1:$ADMIN_PORT):
  $CONCIERGE_BIN describe-db-proxy-targets --db-proxy-name app --endpoint-url http://127.0.0.1:$ADMIN_PORT --output table
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep -E '^concierge_(client_connections|database_connections_currently)'
Watch the database's side:
  scripts/mysql.sh sql $MY_PORT "select count(*) from information_schema.processlist where user = 'app'"

Ctrl-C stops the proxy and the database.

EOF
    "$CONCIERGE_BIN" serve --config "$CONFIG" &
    PROXY_PID=$!
    rc=0
    wait "$PROXY_PID" || rc=$?
    PROXY_PID=""
    exit "$rc"
fi

DIR=${CONCIERGE_DEMO_DIR:-/tmp/concierge-demo}
PG_PORT=${CONCIERGE_DEMO_PG_PORT:-5499}
PROXY_PORT=${CONCIERGE_DEMO_PORT:-6432}
ADMIN_PORT=${CONCIERGE_DEMO_ADMIN_PORT:-9187}
DATADIR=$DIR/data
CONFIG=$DIR/concierge.yaml
SECRET=$DIR/app.json

bash scripts/pg.sh install

# Build first: nothing is started yet if the build fails.
if [[ -z "${CONCIERGE_BIN:-}" ]]; then
    if [[ "${CONCIERGE_DEBUG:-0}" == 1 ]]; then
        echo "demo: swift build -c debug --product concierge"
        swift build -c debug --product concierge
        CONCIERGE_BIN=$(swift build -c debug --show-bin-path)/concierge
    else
        echo "demo: scripts/build-release.sh (swift build -c release with the release flags)"
        CONCIERGE_BIN=$(bash scripts/build-release.sh)
    fi
fi

PROXY_PID=""
cleanup() {
    trap - EXIT INT TERM
    trap '' PIPE  # keep cleaning up even if our stdout (e.g. a pipe to tee) is gone
    if [[ -n "$PROXY_PID" ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        echo "demo: stopping concierge (it lets open transactions finish first)"
        kill -TERM "$PROXY_PID"
        wait "$PROXY_PID" || true
    fi
    bash scripts/pg.sh stop "$DATADIR" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/pg.sh start "$DATADIR" "$PG_PORT"
CONCIERGE_PG_PASSWORD=$(cat "$DIR/superuser.password")
export CONCIERGE_PG_PASSWORD
sql() { bash scripts/pg.sh sql "$PG_PORT" "$@"; }

# The application's database user, with a fresh random password each run, and its database.
APP_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
sql "DO \$\$ BEGIN
       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN; END IF;
     END \$\$;
     ALTER ROLE app LOGIN PASSWORD '$APP_PASSWORD'" >/dev/null
if [[ -z "$(sql "SELECT 1 FROM pg_database WHERE datname = 'app'")" ]]; then
    sql "CREATE DATABASE app OWNER app" >/dev/null
fi

# The secret (the shape of a Secrets Manager SecretString) and the proxy's configuration.
(umask 077; printf '{"username":"app","password":"%s"}\n' "$APP_PASSWORD" >"$SECRET")
cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh
drain_timeout: 30
admin:
  listen: "127.0.0.1:$ADMIN_PORT"    # admin API and /metrics (loopback: no token needed)
proxies:
  - name: app
    engine_family: POSTGRESQL
    listen: "127.0.0.1:$PROXY_PORT"
    idle_client_timeout: 1800
    max_client_connections: 10000
    debug_logging: false
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:$SECRET"
        iam_auth: DISABLED
        client_password_auth_type: POSTGRES_SCRAM_SHA_256
    target_group:
      connection_pool_config:
        max_connections_percent: 10        # at most 10 backends (max_connections is 100)
        max_idle_connections_percent: 5
        connection_borrow_timeout: 120
        session_pinning_filters: []
        init_query: ""
      targets:
        - endpoint: "127.0.0.1:$PG_PORT"
EOF

cat <<EOF

Concierge: 127.0.0.1:$PROXY_PORT  ->  PostgreSQL: 127.0.0.1:$PG_PORT   (config: $CONFIG)

Connect through the proxy:
  PGPASSWORD='$APP_PASSWORD' psql "host=127.0.0.1 port=$PROXY_PORT user=app dbname=app"

Load it (100 clients, at most 10 database connections):
  PGPASSWORD='$APP_PASSWORD' pgbench -h 127.0.0.1 -p $PG_PORT -U app -i app
  PGPASSWORD='$APP_PASSWORD' pgbench -h 127.0.0.1 -p $PROXY_PORT -U app -S -c 100 -j 2 -T 10 app
Watch the proxy (admin API and Prometheus metrics on 127.0.0.1:$ADMIN_PORT):
  $CONCIERGE_BIN describe-db-proxy-targets --db-proxy-name app --endpoint-url http://127.0.0.1:$ADMIN_PORT --output table
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep -E '^concierge_(client_connections|database_connections_currently)'
Watch the database's side:
  scripts/pg.sh sql $PG_PORT "select count(*) from pg_stat_activity where usename = 'app'"

Ctrl-C stops the proxy and the database.

EOF

"$CONCIERGE_BIN" serve --config "$CONFIG" &
PROXY_PID=$!
rc=0
wait "$PROXY_PID" || rc=$?
PROXY_PID=""
exit "$rc"
