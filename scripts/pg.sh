#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for the demo and the integration tests.
#
#   scripts/pg.sh install                        install PostgreSQL (Debian apt) if missing
#   scripts/pg.sh bindir                         print the PostgreSQL bin directory
#   scripts/pg.sh start DATADIR PORT [OPTS...]   initdb if needed, then start (idempotent)
#   scripts/pg.sh stop DATADIR                   stop if running (idempotent)
#   scripts/pg.sh sql PORT "SQL" [DBNAME]        run SQL as the superuser `postgres` over TCP
#
# Layout: DATADIR's parent is the cluster's own directory (e.g. /tmp/concierge-demo/data ->
# /tmp/concierge-demo). It is chown'd to the PostgreSQL OS user and holds:
#   superuser.password  the password of the superuser `postgres` (mode 600)
#   port                the port the cluster was last started on (used by `sql`)
#   postgres.log        the server log
#   socket/             the unix socket directory (mode 700, so local `trust` is private)
#
# The server listens on 127.0.0.1 only; TCP logins use scram-sha-256. OPTS are server settings,
# given as `name=value` or `-c name=value` (e.g. max_connections=50); they override the defaults
# below. The superuser password comes from $CONCIERGE_PG_PASSWORD, else the existing password
# file, else a new random one. `sql` takes the password from $CONCIERGE_PG_PASSWORD or from the
# password file of a /tmp/concierge-*/ cluster whose `port` file matches PORT.
#
# PostgreSQL refuses to run as root: as root, the server runs as the system user `concierge-pg`
# (created if missing); otherwise it runs as the current user.
set -euo pipefail

PG_OS_USER=concierge-pg

die() { echo "pg.sh: $*" >&2; exit 1; }

# The newest installed PostgreSQL bin directory, or nothing.
find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; fi
}

install_pg() {
    [[ -n "$(find_bindir)" ]] && return 0
    echo "pg.sh: PostgreSQL not found; installing it with apt-get" >&2
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql postgresql-contrib
    [[ -n "$(find_bindir)" ]] || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb"
}

bindir() { install_pg; find_bindir; }

# Run a command as the PostgreSQL OS user (as root), or as ourselves (otherwise).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_os_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    # Under one lock shared with the other server script: the tests start several servers at once,
    # and on a fresh machine two useradds raced (the loser exited 9, "already exists", or saw a
    # half-made user, or could not lock /etc/passwd).
    (
        flock -w 60 9 || die "could not lock /tmp/.concierge-os-users.lock within 60 s"
        id "$PG_OS_USER" >/dev/null 2>&1 ||
            useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER"
    ) 9>>/tmp/.concierge-os-users.lock
}

random_password() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

cmd_start() {
    [[ $# -ge 2 ]] || die "usage: pg.sh start DATADIR PORT [name=value | -c name=value ...]"
    local datadir port root bin
    datadir=$(realpath -m "$1"); port=$2; shift 2
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    root=$(dirname "$datadir")
    case "$root" in
        / | /tmp | /var/tmp | /root | /home | /usr | /var | /etc | "$HOME")
            die "DATADIR's parent ($root) becomes the cluster's own directory; use e.g. /tmp/concierge-x/data" ;;
    esac
    bin=$(bindir)
    ensure_os_user

    # The cluster directory: ours, owned by the server's OS user.
    mkdir -p "$root" "$root/socket"
    if [[ $(id -u) -eq 0 ]]; then
        chown "$PG_OS_USER": "$root" "$root/socket"
        [[ -d "$datadir" ]] && chown -R "$PG_OS_USER": "$datadir"
    fi
    chmod 700 "$root/socket"
    chmod 755 "$root"   # others may read the log; secrets inside are mode 600

    # Superuser password: env, else the existing file, else a new random one.
    local pwfile="$root/superuser.password" password
    if [[ -n "${CONCIERGE_PG_PASSWORD:-}" ]]; then password=$CONCIERGE_PG_PASSWORD
    elif [[ -s "$pwfile" ]]; then password=$(cat "$pwfile")
    else password=$(random_password)
    fi
    (umask 077; printf '%s' "$password" >"$pwfile")
    echo "$port" >"$root/port"

    if [[ ! -f "$datadir/PG_VERSION" ]]; then
        echo "pg.sh: initdb $datadir" >&2
        as_pg "$bin/initdb" -D "$datadir" -U postgres -E UTF8 --locale=C \
            --auth-host=scram-sha-256 --auth-local=trust >"$root/initdb.log" 2>&1 ||
            { cat "$root/initdb.log" >&2; die "initdb failed"; }
        echo "include_if_exists = 'concierge.conf'" | as_pg tee -a "$datadir/postgresql.conf" >/dev/null
    fi

    # Settings: defaults first, then the caller's (later lines win).
    local conf
    conf=$(
        echo "# written by scripts/pg.sh start; rewritten on every start"
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$root/socket'"
        echo "unix_socket_permissions = 0700"
        echo "max_connections = 100"
        echo "password_encryption = 'scram-sha-256'"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
        while [[ $# -gt 0 ]]; do
            local opt=$1; shift
            if [[ "$opt" == "-c" ]]; then opt=${1:?"-c needs name=value"}; shift; fi
            [[ "$opt" == *=* ]] || die "server option must be name=value, got '$opt'"
            local value=${opt#*=}
            echo "${opt%%=*} = '${value//\'/\'\'}'"
        done
    )

    local running=0 changed=1
    as_pg "$bin/pg_ctl" -D "$datadir" status >/dev/null 2>&1 && running=1
    if [[ -f "$datadir/concierge.conf" ]] && [[ "$(cat "$datadir/concierge.conf")" == "$conf" ]]; then changed=0; fi
    [[ $changed -eq 1 ]] && printf '%s\n' "$conf" | as_pg tee "$datadir/concierge.conf" >/dev/null

    if [[ $running -eq 1 && $changed -eq 0 ]]; then
        echo "pg.sh: already running on port $port" >&2
    else
        local action=start
        [[ $running -eq 1 ]] && action=restart
        as_pg "$bin/pg_ctl" -D "$datadir" -l "$root/postgres.log" -w -t 60 "$action" >/dev/null ||
            { tail -n 30 "$root/postgres.log" >&2; die "pg_ctl $action failed"; }
        echo "pg.sh: PostgreSQL $(basename "$(dirname "$bin")") on 127.0.0.1:$port (data $datadir)" >&2
    fi

    # (Re)set the superuser password over the private unix socket (trust), so TCP logins work.
    as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$root/socket" -p "$port" -U postgres -d postgres \
        -v pw="$password" >/dev/null <<'SQL'
ALTER ROLE postgres PASSWORD :'pw';
SQL
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: pg.sh stop DATADIR"
    local datadir bin
    datadir=$(realpath -m "$1")
    if [[ ! -f "$datadir/PG_VERSION" ]]; then echo "pg.sh: no cluster at $datadir" >&2; return 0; fi
    bin=$(find_bindir); [[ -n "$bin" ]] || die "PostgreSQL is not installed"
    if as_pg "$bin/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$datadir" -m fast -w -t 60 stop >/dev/null
        echo "pg.sh: stopped $datadir" >&2
    else
        echo "pg.sh: not running: $datadir" >&2
    fi
}

cmd_sql() {
    [[ $# -eq 2 || $# -eq 3 ]] || die "usage: pg.sh sql PORT \"SQL\" [DBNAME]"
    local port=$1 sql=$2 db=${3:-postgres} password=${CONCIERGE_PG_PASSWORD:-} f dir
    if [[ -z "$password" ]]; then
        for f in /tmp/concierge-*/port; do
            [[ -f "$f" && "$(cat "$f")" == "$port" ]] || continue
            dir=$(dirname "$f")
            [[ -r "$dir/superuser.password" ]] && password=$(cat "$dir/superuser.password") && break
        done
    fi
    [[ -n "$password" ]] || die "no superuser password for port $port: set CONCIERGE_PG_PASSWORD"
    PGPASSWORD=$password "$(bindir)/psql" -X -v ON_ERROR_STOP=1 -At \
        -h 127.0.0.1 -p "$port" -U postgres -d "$db" -c "$sql"
}

case "${1:-}" in
    install) install_pg ;;
    bindir) bindir ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    sql) shift; cmd_sql "$@" ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
