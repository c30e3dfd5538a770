#!/usr/bin/env bash
# Throwaway MariaDB servers for the MySQL demo and the integration tests.
#
#   scripts/mysql.sh install                          install MariaDB (Debian apt) if missing
#   scripts/mysql.sh start DATADIR PORT [OPTS...]     mariadb-install-db if needed, then start (idempotent)
#   scripts/mysql.sh stop DATADIR                     stop if running (idempotent)
#   scripts/mysql.sh sql PORT "SQL" [DBNAME]          run SQL as the admin user `concierge_admin` over TCP
#   scripts/mysql.sh replica DATADIR PORT PRIMARY_PORT [OPTS...]   start a read-only replica of PRIMARY_PORT
#
# Layout: DATADIR's parent is the server's own directory (e.g. /tmp/concierge-mysql/data ->
# /tmp/concierge-mysql). It is chown'd to the MariaDB OS user and holds:
#   admin.password  the password of the admin user `concierge_admin`@`%` (mode 600)
#   port            the port the server was last started on (used by `sql` and `replica`)
#   my.cnf          the server's option file (rewritten on every start)
#   mysqld.log      the server log (and install-db.log, the output of mariadb-install-db)
#   socket/         the unix socket directory (mode 700: the socket logins of root are private)
#   tmp/            the server's tmpdir (mode 700)
#
# The server listens on 127.0.0.1 only, with local_infile=1, server_id=PORT, utf8mb4 and
# max_allowed_packet=64M. OPTS are server options given as `name=value` (or `--name=value`, e.g.
# max_connections=50); they override the defaults. `log_bin=1` turns binary logging on (files
# DATADIR/mysql-bin.*), which a primary needs for `replica`; log_bin=0 (the default) leaves it off.
# The admin user `concierge_admin`@`%` has every privilege and logs in with mysql_native_password;
# its password comes from $CONCIERGE_MYSQL_PASSWORD, else the existing password file, else a new
# random one. The anonymous users mariadb-install-db creates (they shadow real users) are dropped;
# root@localhost keeps unix_socket authentication only. `sql` takes the password from
# $CONCIERGE_MYSQL_PASSWORD or from the password file of a /tmp/concierge-*/ (or
# /tmp/concierge-*/*/) server whose `port` file matches PORT.
#
# `replica` starts a server as `start` does, with read_only=1, the primary's admin password, and
# MariaDB replication from the primary on 127.0.0.1:PRIMARY_PORT (RESET SLAVE, CHANGE MASTER TO
# ... MASTER_USE_GTID=slave_pos, START SLAVE) as concierge_admin; it returns once the replica has
# caught up (MASTER_GTID_WAIT). The primary must run with log_bin=1 from its first start: a new replica replays the
# primary's binary log from its beginning. Running it again is a no-op when already replicating.
#
# As root, the server runs as the system user `concierge-mysql` (created if missing); otherwise it
# runs as the current user. $CONCIERGE_MYSQL_START_TIMEOUT (seconds, 30) bounds each start.
set -euo pipefail

MY_OS_USER=concierge-mysql
ADMIN_USER=concierge_admin
START_TIMEOUT=${CONCIERGE_MYSQL_START_TIMEOUT:-30}

die() { echo "mysql.sh: $*" >&2; exit 1; }

# The server binary (mariadbd, or mysqld on older packages), or nothing.
find_server() {
    local p
    for p in /usr/sbin/mariadbd /usr/sbin/mysqld /usr/bin/mariadbd /usr/libexec/mariadbd; do
        [[ -x "$p" ]] && { echo "$p"; return 0; }
    done
    command -v mariadbd 2>/dev/null || command -v mysqld 2>/dev/null || true
}

find_client() { command -v mariadb 2>/dev/null || command -v mysql 2>/dev/null || true; }
find_admin() { command -v mariadb-admin 2>/dev/null || command -v mysqladmin 2>/dev/null || true; }
find_install_db() { command -v mariadb-install-db 2>/dev/null || command -v mysql_install_db 2>/dev/null || true; }

install_my() {
    if [[ -n "$(find_server)" && -n "$(find_client)" && -n "$(find_install_db)" ]]; then return 0; fi
    echo "mysql.sh: MariaDB not found; installing it with apt-get" >&2
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y mariadb-server mariadb-client
    [[ -n "$(find_server)" ]] || die "MariaDB installed but no mariadbd or mysqld found"
    [[ -n "$(find_client)" ]] || die "MariaDB installed but no mariadb client found"
    [[ -n "$(find_install_db)" ]] || die "MariaDB installed but no mariadb-install-db found"
}

# Run a command as the MariaDB OS user (as root), or as ourselves (otherwise).
as_my() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$MY_OS_USER" -- "$@"
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
        id "$MY_OS_USER" >/dev/null 2>&1 ||
            useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$MY_OS_USER"
    ) 9>>/tmp/.concierge-os-users.lock
}

# The OS user the server runs as, which is also the name of the second unix_socket account
# mariadb-install-db creates.
server_os_user() { if [[ $(id -u) -eq 0 ]]; then echo "$MY_OS_USER"; else id -un; fi; }

random_password() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

# A string as a single-quoted SQL literal.
sql_quote() {
    local s=${1//\\/\\\\}
    printf "'%s'" "${s//\'/\'\'}"
}

# The root of a DATADIR, refusing parents that must not become a server's own directory.
server_root() {
    local root
    root=$(dirname "$1")
    case "$root" in
        / | /tmp | /var/tmp | /root | /home | /usr | /var | /etc | "$HOME")
            die "DATADIR's parent ($root) becomes the server's own directory; use e.g. /tmp/concierge-mysql/data" ;;
    esac
    echo "$root"
}

# The pid of the server of DATADIR if it is running, else nothing.
running_pid() {
    local pidfile="$1/mariadbd.pid" pid
    [[ -s "$pidfile" ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -e 'mariadbd' -e 'mysqld' || return 0
    echo "$pid"
}

# Local administration over the private unix socket, as root (unix_socket auth) or, when not
# root, as the current user's own unix_socket account. A failed statement is not echoed (ours
# carry passwords).
local_sql() {
    local root=$1; shift
    local user=root
    [[ $(id -u) -eq 0 ]] || user=$(id -un)
    "$(find_client)" --no-defaults --protocol=socket --socket="$root/socket/mysqld.sock" -u "$user" \
        --batch --skip-column-names --skip-print-query-on-error "$@"
}

# The password of the admin user for a server on PORT: $CONCIERGE_MYSQL_PASSWORD or the password
# file of the /tmp/concierge-*/ (or /tmp/concierge-*/*/) server whose `port` file holds PORT.
password_for_port() {
    local port=$1 f dir
    if [[ -n "${CONCIERGE_MYSQL_PASSWORD:-}" ]]; then echo "$CONCIERGE_MYSQL_PASSWORD"; return 0; fi
    for f in /tmp/concierge-*/port /tmp/concierge-*/*/port; do
        [[ -f "$f" && "$(cat "$f")" == "$port" ]] || continue
        dir=$(dirname "$f")
        [[ -r "$dir/admin.password" ]] && { cat "$dir/admin.password"; return 0; }
    done
    return 0
}

# Stops the server of DATADIR (SIGTERM: a clean shutdown) and waits for it to exit.
stop_server() {
    local datadir=$1 pid i
    pid=$(running_pid "$datadir")
    [[ -n "$pid" ]] || return 1
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.1
    done
    die "the server of $datadir (pid $pid) did not stop within 60 s; see $(dirname "$datadir")/mysqld.log"
}

cmd_start() {
    [[ $# -ge 2 ]] || die "usage: mysql.sh start DATADIR PORT [name=value ...]"
    local datadir port root server
    datadir=$(realpath -m "$1"); port=$2; shift 2
    [[ "$port" =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || die "PORT must be a number in 1...65535, got '$port'"
    root=$(server_root "$datadir")
    install_my
    server=$(find_server)
    ensure_os_user

    # The server directory: ours, owned by the server's OS user.
    local log="$root/mysqld.log"
    mkdir -p "$root" "$root/socket" "$root/tmp"
    touch "$log"
    if [[ $(id -u) -eq 0 ]]; then
        chown "$MY_OS_USER": "$root" "$root/socket" "$root/tmp" "$log"
        [[ -d "$datadir" ]] && chown -R "$MY_OS_USER": "$datadir"
    fi
    chmod 700 "$root/socket" "$root/tmp"
    chmod 755 "$root"   # others may read the log; secrets inside are mode 600
    chmod 644 "$log"

    # Admin password: env, else the existing file, else a new random one.
    local pwfile="$root/admin.password" password
    if [[ -n "${CONCIERGE_MYSQL_PASSWORD:-}" ]]; then password=$CONCIERGE_MYSQL_PASSWORD
    elif [[ -s "$pwfile" ]]; then password=$(cat "$pwfile")
    else password=$(random_password)
    fi
    (umask 077; printf '%s' "$password" >"$pwfile")

    # Options: defaults first, then the caller's (later lines win).
    local conf
    conf=$(
        echo "# written by scripts/mysql.sh start; rewritten on every start"
        echo "[mysqld]"
        echo "datadir = $datadir"
        echo "port = $port"
        echo "bind_address = 127.0.0.1"
        echo "socket = $root/socket/mysqld.sock"
        echo "pid_file = $datadir/mariadbd.pid"
        echo "log_error = $log"
        # A private tmpdir: servers bootstrapped at once in the shared /tmp collided on their
        # temporary tables' names ("Unknown table 'mysql.tmp_user_sys'", install-db failed).
        echo "tmpdir = $root/tmp"
        echo "server_id = $port"
        echo "report_host = 127.0.0.1"
        echo "report_port = $port"
        echo "local_infile = 1"
        echo "skip_name_resolve = 1"
        echo "max_connections = 100"
        echo "max_allowed_packet = 64M"
        echo "character_set_server = utf8mb4"
        echo "collation_server = utf8mb4_general_ci"
        echo "innodb_buffer_pool_size = 64M"
        echo "innodb_log_file_size = 16M"
        echo "innodb_flush_log_at_trx_commit = 0"
        echo "innodb_doublewrite = 0"
        echo "sync_binlog = 0"
        echo "relay_log = relay-bin"
        local log_bin=0
        while [[ $# -gt 0 ]]; do
            local opt=${1#--}; shift
            [[ "$opt" == *=* ]] || die "server option must be name=value, got '$opt'"
            local name=${opt%%=*} value=${opt#*=}
            [[ "$name" =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] || die "not an option name: '$name'"
            [[ "$value" != *$'\n'* ]] || die "option $name: the value contains a newline"
            name=${name//-/_}
            if [[ "$name" == log_bin ]]; then
                case "${value,,}" in
                    1 | on | true) log_bin=1 ;;
                    0 | off | false) log_bin=0 ;;
                    *) die "log_bin must be 1 or 0 (binary logs go to DATADIR/mysql-bin.*), got '$value'" ;;
                esac
            else
                echo "$name = $value"
            fi
        done
        if [[ $log_bin -eq 1 ]]; then echo "log_bin = mysql-bin"; fi
    )

    local pid changed=1
    pid=$(running_pid "$datadir")
    if [[ -f "$root/my.cnf" ]] && [[ "$(cat "$root/my.cnf")" == "$conf" ]]; then changed=0; fi
    if [[ $changed -eq 1 ]]; then
        printf '%s\n' "$conf" >"$root/my.cnf"
        chmod 644 "$root/my.cnf"
    fi

    # A new data directory gets the same options (some, like innodb_page_size, are fixed there).
    local fresh=0
    if [[ ! -d "$datadir/mysql" ]]; then
        fresh=1
        echo "mysql.sh: mariadb-install-db $datadir" >&2
        mkdir -p "$datadir"
        [[ $(id -u) -eq 0 ]] && chown "$MY_OS_USER": "$datadir"
        as_my "$(find_install_db)" --defaults-file="$root/my.cnf" --user="$(server_os_user)" \
            --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
            >"$root/install-db.log" 2>&1 ||
            {
                # The bootstrap server's own errors go to log_error (mysqld.log), not to install-db.log.
                tail -n 30 "$root/install-db.log" >&2
                echo "mysql.sh: the end of $log:" >&2
                tail -n 40 "$log" >&2
                die "mariadb-install-db failed (see $root/install-db.log and $log)"
            }
    fi

    if [[ -n "$pid" && $changed -eq 0 ]]; then
        echo "mysql.sh: already running on port $port" >&2
    else
        if [[ -n "$pid" ]]; then
            echo "mysql.sh: options changed; restarting $datadir" >&2
            stop_server "$datadir"
        fi
        local offset
        offset=$(stat -c %s "$log")
        # Detached from this shell (its own session), in the background, as the OS user; its
        # early errors go to the log too. setpriv execs, so the launched pid is the server's.
        local cmd=("$server" --defaults-file="$root/my.cnf")
        [[ $(id -u) -eq 0 ]] && cmd=(setpriv --reuid="$MY_OS_USER" --regid="$MY_OS_USER" --init-groups -- "${cmd[@]}")
        setsid "${cmd[@]}" </dev/null >>"$log" 2>&1 &
        local launcher=$! i ready=0
        for ((i = 0; i < START_TIMEOUT * 5; i++)); do
            if "$(find_admin)" --no-defaults --protocol=socket \
                --socket="$root/socket/mysqld.sock" --connect-timeout=1 ping >/dev/null 2>&1 &&
                [[ -n "$(running_pid "$datadir")" ]]; then
                ready=1; break
            fi
            if ! kill -0 "$launcher" 2>/dev/null && [[ -z "$(running_pid "$datadir")" ]]; then break; fi
            sleep 0.2
        done
        if [[ $ready -eq 0 ]]; then
            tail -c +$((offset + 1)) "$log" | tail -n 30 >&2
            pid=$(running_pid "$datadir")
            if [[ -n "$pid" ]]; then
                kill -TERM "$pid" 2>/dev/null || true
                die "the server on port $port did not accept connections within ${START_TIMEOUT} s (stopped it); see $log"
            fi
            die "the server on port $port did not start; see $log"
        fi
        local version
        version=$("$server" --version | sed -n 's/^.*Ver \([0-9.]*\).*$/\1/p')
        echo "mysql.sh: MariaDB $version on 127.0.0.1:$port (data $datadir)" >&2
    fi

    echo "$port" >"$root/port"

    # Accounts, over the private unix socket, not binary-logged (a replica keeps its own): no
    # anonymous users (they shadow real users), root with unix_socket only, and the admin user
    # with the password from the file, mysql_native_password.
    local anonymous other_roots drops="" host
    anonymous=$(local_sql "$root" -e "SELECT Host FROM mysql.user WHERE User = ''") ||
        die "cannot log in over $root/socket/mysqld.sock; see $log"
    other_roots=$(local_sql "$root" -e "SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")
    while IFS= read -r host; do
        [[ -n "$host" ]] && drops+="DROP USER IF EXISTS ''@$(sql_quote "$host");"$'\n'
    done <<<"$anonymous"
    while IFS= read -r host; do
        [[ -n "$host" ]] && drops+="DROP USER IF EXISTS 'root'@$(sql_quote "$host");"$'\n'
    done <<<"$other_roots"
    local pw
    pw=$(sql_quote "$password")
    local_sql "$root" >/dev/null <<SQL || die "could not set up the accounts; see $log"
SET SESSION sql_log_bin = 0;
$drops
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;
CREATE USER IF NOT EXISTS '$ADMIN_USER'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD($pw);
ALTER USER '$ADMIN_USER'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD($pw);
GRANT ALL PRIVILEGES ON *.* TO '$ADMIN_USER'@'%' WITH GRANT OPTION;
SQL
    [[ $fresh -eq 1 ]] && echo "mysql.sh: admin user $ADMIN_USER (password in $pwfile)" >&2
    return 0
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: mysql.sh stop DATADIR"
    local datadir
    datadir=$(realpath -m "$1")
    if [[ ! -d "$datadir/mysql" ]]; then echo "mysql.sh: no server at $datadir" >&2; return 0; fi
    if stop_server "$datadir"; then
        echo "mysql.sh: stopped $datadir" >&2
    else
        echo "mysql.sh: not running: $datadir" >&2
    fi
}

cmd_sql() {
    [[ $# -eq 2 || $# -eq 3 ]] || die "usage: mysql.sh sql PORT \"SQL\" [DBNAME]"
    local port=$1 sql=$2 db=${3:-} password client
    password=$(password_for_port "$port")
    [[ -n "$password" ]] || die "no admin password for port $port: set CONCIERGE_MYSQL_PASSWORD"
    client=$(find_client); [[ -n "$client" ]] || die "MariaDB is not installed (scripts/mysql.sh install)"
    local args=(--no-defaults --protocol=tcp -h 127.0.0.1 -P "$port" -u "$ADMIN_USER"
        --batch --skip-column-names --local-infile=1 --max-allowed-packet=1G --default-character-set=utf8mb4)
    [[ -n "$db" ]] && args+=(--database="$db")
    MYSQL_PWD=$password "$client" "${args[@]}" -e "$sql"
}

# Replication status of the server in ROOT: "Master_Port Slave_IO_Running Slave_SQL_Running".
replica_status() {
    local_sql "$1" --column-names -e "SHOW SLAVE STATUS" |
        awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
            NR == 2 { print $col["Master_Port"], $col["Slave_IO_Running"], $col["Slave_SQL_Running"] }'
}

cmd_replica() {
    [[ $# -ge 3 ]] || die "usage: mysql.sh replica DATADIR PORT PRIMARY_PORT [name=value ...]"
    local datadir=$1 port=$2 primary=$3; shift 3
    [[ "$primary" =~ ^[0-9]+$ ]] || die "PRIMARY_PORT must be a number, got '$primary'"
    [[ "$primary" != "$port" ]] || die "PORT and PRIMARY_PORT are the same ($port)"
    local password
    password=$(password_for_port "$primary")
    [[ -n "$password" ]] || die "no admin password for the primary on port $primary: start it with scripts/mysql.sh, or set CONCIERGE_MYSQL_PASSWORD"
    local log_bin
    log_bin=$(CONCIERGE_MYSQL_PASSWORD=$password cmd_sql "$primary" "SELECT @@log_bin") ||
        die "cannot reach the primary on 127.0.0.1:$primary"
    [[ "$log_bin" == 1 ]] || die "the primary on port $primary has no binary log: start it with log_bin=1"

    CONCIERGE_MYSQL_PASSWORD=$password cmd_start "$datadir" "$port" read_only=1 "$@"
    local root status
    root=$(server_root "$(realpath -m "$datadir")")
    status=$(replica_status "$root")
    if [[ "$status" == "$primary Yes Yes" ]]; then
        echo "mysql.sh: already replicating from port $primary" >&2
    else
        local_sql "$root" >/dev/null <<SQL || die "CHANGE MASTER TO failed; see $root/mysqld.log"
STOP SLAVE;
RESET SLAVE;
CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $primary, MASTER_USER = '$ADMIN_USER',
    MASTER_PASSWORD = $(sql_quote "$password"), MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;
START SLAVE;
SQL
    fi
    # Caught up: the replica has applied everything the primary had logged by now.
    local position caught
    position=$(CONCIERGE_MYSQL_PASSWORD=$password cmd_sql "$primary" "SELECT @@global.gtid_binlog_pos")
    caught=$(local_sql "$root" -e "SELECT MASTER_GTID_WAIT($(sql_quote "$position"), $START_TIMEOUT)")
    if [[ "$caught" != 0 ]]; then
        CONCIERGE_MYSQL_PASSWORD=$password cmd_sql "$port" "SHOW SLAVE STATUS\G" >&2 || true
        die "the replica on port $port did not catch up with the primary on port $primary within ${START_TIMEOUT} s; see $root/mysqld.log"
    fi
    echo "mysql.sh: replica on 127.0.0.1:$port of 127.0.0.1:$primary (read_only, position $position)" >&2
}

case "${1:-}" in
    install) install_my ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    sql) shift; cmd_sql "$@" ;;
    replica) shift; cmd_replica "$@" ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
