"""More real MySQL clients through a MySQL proxy, each compared with the same run directly on the
MariaDB where that is cheap (the same program, the same results):

- mysqlclient (MySQLdb, the C-extension driver on MariaDB Connector/C): logins with both client
  plugins, with and without TLS; queries and their metadata, transactions, server-side streaming
  (SSCursor, mysql_use_result), multi-statements and nextset(), a parametrized executemany, and
  errors as the driver's exceptions with the server's codes, from several connections sharing
  fewer backends.
- MariaDB Connector/J (Debian's libmariadb-java) through a single-file Java program
  (java/MariaDbJdbcWorkload.java): autocommit and explicit transactions from several threads,
  PreparedStatement (client-side, the driver's default), batches, getGeneratedKeys and result
  metadata; with useServerPrepStmts=true (binary-protocol statements), 50 threads over 5 backends
  with no pin.
- sysbench (Debian's) oltp_read_write prepare/run/cleanup with 16 threads over the default cap of
  10 backends (--db-ps-mode=disable: text protocol, multiplexed) with no error and the server
  never seeing more than the cap; then the same with its default server-side prepared
  statements (--db-ps-mode=auto), multiplexed: no pin, no error.

scripts/test.sh installs them all (pip: mysqlclient, built from its source against Debian's
libmariadb-dev; apt: libmariadb-java, sysbench). A missing one fails the test under CI=true and
skips it elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import CACHING_SHA2, NATIVE, MyTarget, ProcesslistSampler, metric, mysql_env

try:
    import MySQLdb
    import MySQLdb.cursors
except ImportError:  # scripts/test.sh installs it
    MySQLdb = None

IN_CI = os.environ.get("CI") == "true"
AUTH_TYPES = [NATIVE, CACHING_SHA2]
PLUGIN = {NATIVE: "mysql_native_password", CACHING_SHA2: "caching_sha2_password"}
MARIADB_JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"
JAVA_DIR = Path(__file__).parent / "java"


def require(present: bool, what: str) -> None:
    """A missing client fails the test in CI (scripts/test.sh installs it) and skips it elsewhere."""
    if present:
        return
    message = f"{what} is not installed (scripts/test.sh installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_mysqlclient() -> None:
    require(MySQLdb is not None, "mysqlclient (the MySQLdb module; pip, built against libmariadb-dev)")


@pytest.fixture(scope="module")
def proxy_tls(mariadb):
    """The proxy's certificate (signed by the session's test CA, for localhost and 127.0.0.1)."""
    cert, key = mariadb.pki.issue("myproxy-clients", dns=["localhost"], ips=["127.0.0.1"])
    return {"certificate_file": str(cert), "private_key_file": str(key)}


# -- mysqlclient -----------------------------------------------------------------------------

def mysqlclient_connect(target: MyTarget, *, auth: str = NATIVE, tls_ca: Path | None = None,
                        user: str = "app", password: str | None = None, database: str = "app",
                        **kw: Any) -> "MySQLdb.Connection":
    """A MySQLdb connection (autocommit off, the DB-API default, unless `autocommit=True`).
    Plaintext unless `tls_ca` is given: then TLS with the server's certificate verified."""
    require_mysqlclient()
    if password is None:
        password = target.passwords[user]
    if tls_ca is not None:
        kw["ssl_mode"] = "VERIFY_IDENTITY"
        kw["ssl"] = {"ca": str(tls_ca)}
    else:
        kw["ssl_mode"] = "DISABLED"
    kw.setdefault("connect_timeout", 10)
    kw.setdefault("read_timeout", 60)
    kw.setdefault("write_timeout", 60)
    return MySQLdb.connect(host=target.host, port=target.port, user=user, password=password,
                           database=database, auth_plugin=PLUGIN[auth], charset="utf8mb4", **kw)


def served_over_tls(p: MyTarget, ca: Path) -> bool:
    try:
        mysqlclient_connect(p, tls_ca=ca).close()
        return True
    except MySQLdb.OperationalError:
        return False


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_mysqlclient_logs_in(mysql_proxy, mariadb, proxy_tls, auth, tls):
    # With TLS the proxy requires it, so a login that succeeds was over TLS; twice, for
    # caching_sha2's fast path after the first full authentication.
    require_mysqlclient()
    p = mysql_proxy(client_auth=auth, tls=proxy_tls, require_tls=tls, wait_ready=not tls)
    if tls:  # the fixture's readiness check is a plaintext login
        wait_for(lambda: served_over_tls(p, mariadb.pki.ca_cert), 20, "the proxy to serve TLS clients")
    for _ in range(2):
        conn = mysqlclient_connect(p, auth=auth, tls_ca=mariadb.pki.ca_cert if tls else None)
        try:
            cur = conn.cursor()
            cur.execute("SELECT CURRENT_USER(), DATABASE(), 6 * 7")
            assert cur.fetchone() == ("app@%", "app", 42)
            assert conn.get_host_info().startswith("127.0.0.1 via TCP/IP")
        finally:
            conn.close()
    if tls and not DIRECT:
        with pytest.raises(MySQLdb.OperationalError) as exc:
            mysqlclient_connect(p, auth=auth)
        assert exc.value.args[0] == 3159, exc.value.args
    # A wrong password: the server's 1045, as the driver's OperationalError.
    with pytest.raises(MySQLdb.OperationalError) as exc:
        mysqlclient_connect(p, auth=auth, password="not the password",
                            tls_ca=mariadb.pki.ca_cert if tls else None)
    assert exc.value.args[0] == 1045, exc.value.args
    assert "Access denied for user 'app'@" in exc.value.args[1]


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    """The driver's exception class, the server's error code and its message."""
    try:
        call()
    except MySQLdb.Error as e:
        return (type(e).__name__, e.args[0], e.args[1])
    raise AssertionError("no error")


def all_results(cur) -> list:
    """Every result of the statement just executed: its columns and rows, or the affected rows."""
    out = []
    while True:
        if cur.description:
            out.append(([d[0] for d in cur.description], list(cur.fetchall())))
        else:
            out.append(("affected", cur.rowcount))
        if not cur.nextset():
            return out


def mysqlclient_workload(target: MyTarget, n: int) -> list[tuple[str, Any]]:
    """One client's session (table `mc_rows_N`): what it saw, step by step, to compare a run
    through the proxy with the same run directly on the server."""
    seen: list[tuple[str, Any]] = []
    table = f"mc_rows_{n}"
    conn = mysqlclient_connect(target)
    try:
        cur = conn.cursor()
        seen.append(("server version", conn.get_server_info()))
        seen.append(("autocommit at login", conn.get_autocommit()))
        cur.execute("SELECT CURRENT_USER(), DATABASE(), @@autocommit, @@character_set_client, "
                    "@@collation_connection, @@sql_mode")
        seen.append(("session", cur.fetchall()))

        # Values of many types and their metadata.
        cur.execute("SELECT 1 AS i, -2 AS neg, 3.5 AS dec1, CAST(1.25 AS DECIMAL(10,3)) AS d, "
                    "'h\u00e9llo \u2603' AS s, NULL AS n, X'00FF' AS bin, DATE '2024-02-29' AS dt, "
                    "TIMESTAMP '2024-02-29 12:34:56.789' AS ts, 1e300 AS f, b'101' AS bits, "
                    "%s AS param, %s AS quoted", (n, "it's \"quoted\" \\ back"))
        seen.append(("types", cur.fetchall()))
        seen.append(("description", cur.description))

        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL UNIQUE, "
                    "v VARCHAR(10) NOT NULL, b BLOB)")
        conn.commit()

        # A parametrized executemany: INSERT becomes one multi-row statement, UPDATE a loop.
        cur.executemany(f"INSERT INTO {table} (k, v, b) VALUES (%s, %s, %s)",
                        [(k, f"v{k}", bytes([k % 256]) * k) for k in range(1, 51)])
        seen.append(("executemany insert", (cur.rowcount, cur.lastrowid, conn.info())))
        cur.executemany(f"UPDATE {table} SET v = %s WHERE k = %s", [(f"u{k}", k) for k in range(1, 51, 7)])
        seen.append(("executemany update", cur.rowcount))
        conn.commit()

        # Transactions (autocommit off): a rollback leaves nothing, a commit keeps its rows.
        cur.execute(f"INSERT INTO {table} (k, v) VALUES (100, 'rolled')")
        seen.append(("insert", (cur.rowcount, cur.lastrowid)))
        conn.rollback()
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE k >= 100")
        seen.append(("after rollback", cur.fetchone()))
        conn.commit()
        cur.execute(f"INSERT INTO {table} (k, v) VALUES (101, 'kept'), (102, 'kept')")
        # An error inside a transaction ends only the statement.
        seen.append(("duplicate in a transaction",
                     error_of(lambda: cur.execute(f"INSERT INTO {table} (k, v) VALUES (101, 'dup')"))))
        conn.commit()
        cur.execute(f"SELECT k, v FROM {table} WHERE k >= 100 ORDER BY k")
        seen.append(("after commit", cur.fetchall()))
        conn.commit()
        # Autocommit on, and an explicit BEGIN ... ROLLBACK.
        conn.autocommit(True)
        cur.execute("SELECT @@autocommit")
        seen.append(("autocommit on", cur.fetchone()))
        cur.execute("BEGIN")
        cur.execute(f"DELETE FROM {table} WHERE k < 10")
        seen.append(("delete in BEGIN", cur.rowcount))
        cur.execute("ROLLBACK")
        cur.execute(f"SELECT COUNT(*), SUM(k), SUM(LENGTH(b)) FROM {table}")
        seen.append(("after ROLLBACK", cur.fetchone()))

        # Warnings: INSERT IGNORE of a duplicate.
        cur.execute(f"INSERT IGNORE INTO {table} (k, v) VALUES (1, 'again')")
        seen.append(("insert ignore", (cur.rowcount, conn.warning_count())))
        cur.execute("SHOW WARNINGS")
        seen.append(("warnings", cur.fetchall()))

        # Streaming (SSCursor: mysql_use_result) all of a 20000-row result, then only part of one.
        ss = conn.cursor(MySQLdb.cursors.SSCursor)
        ss.execute("SELECT seq, REPEAT('x', seq % 50) FROM seq_1_to_20000")
        count = total = length = 0
        for value, text in ss:
            count += 1
            total += value
            length += len(text)
        seen.append(("streamed", (count, total, length)))
        ss.execute(f"SELECT k, v FROM {table} ORDER BY k")
        seen.append(("streamed first rows", ss.fetchmany(3)))
        ss.close()  # the rest is read and dropped
        cur.execute("SELECT 'after a partly read stream'")
        seen.append(("after stream", cur.fetchone()))

        # Multi-statements (mysqlclient negotiates CLIENT_MULTI_STATEMENTS) and nextset().
        cur.execute(f"SELECT 1; SELECT 2 AS two, 'two' AS word; UPDATE {table} SET v = 'm' WHERE k <= 3; "
                    f"SELECT COUNT(*) FROM {table} WHERE v = 'm'")
        seen.append(("multi", all_results(cur)))
        cur.execute(f"BEGIN; INSERT INTO {table} (k, v) VALUES (200, 'multi'); "
                    f"SELECT COUNT(*) FROM {table}; COMMIT")
        seen.append(("multi transaction", all_results(cur)))
        # An error in the second statement: the first result comes, nextset() raises it.
        cur.execute("SELECT 'first'; SELECT * FROM no_such_table; SELECT 'never'")
        seen.append(("multi before error", cur.fetchall()))
        seen.append(("multi error", error_of(cur.nextset)))
        cur.execute("SELECT 'after a failed multi-statement'")
        seen.append(("after multi error", cur.fetchone()))

        # Errors as the driver's exceptions, with the server's codes and messages.
        conn.query("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'")
        for sql in [f"INSERT INTO {table} (k, v) VALUES (1, 'dup')",
                    "SELEC 1",
                    "SELECT no_such_column FROM dual",
                    "SELECT * FROM no_such_table",
                    f"INSERT INTO {table} (k, v) VALUES (300, 'much too long')",
                    f"INSERT INTO {table} (k, v) VALUES (NULL, 'null')",
                    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'raised', MYSQL_ERRNO = 1644",
                    "SELECT * FROM mysql.user"]:
            seen.append((f"error of {sql}", error_of(lambda: cur.execute(sql))))
        cur.execute("SELECT @@sql_mode")
        seen.append(("sql_mode kept", cur.fetchone()))

        # COM_INIT_DB (select_db), COM_PING and the connection's own calls.
        conn.select_db("app2")
        cur.execute("SELECT DATABASE()")
        seen.append(("select_db", cur.fetchone()))
        conn.select_db("app")
        conn.ping()
        seen.append(("escape", conn.escape_string("a'b\\c")))
        cur.execute(f"SELECT COUNT(*), SUM(k), GROUP_CONCAT(v ORDER BY k SEPARATOR ',') FROM {table}")
        seen.append(("final rows", cur.fetchone()))
        cur.execute(f"DROP TABLE {table}")
    finally:
        conn.close()
    return seen


def run_clients(workload: Callable[[MyTarget, int], list], target: MyTarget, clients: int) -> list[list]:
    """`workload` in `clients` threads at once; each one's observations (errors are raised)."""
    results: list = [None] * clients
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            results[i] = workload(target, i)
        except Exception as e:
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, "\n".join(errors)
    return results


def compare(direct: list[tuple[str, Any]], proxied: list[tuple[str, Any]], who: str) -> None:
    assert [label for label, _ in proxied] == [label for label, _ in direct]
    for (label, want), (_, got) in zip(direct, proxied):
        assert got == want, f"{who}, {label}: {got!r} through the proxy, {want!r} directly"


def test_mysqlclient_workload_as_directly(mysql_proxy, mariadb):
    """Four mysqlclient sessions at once over two backends see exactly what they see directly."""
    require_mysqlclient()
    clients = 4
    direct = run_clients(mysqlclient_workload, mariadb, clients)
    # Spot checks that the workload tests what it says.
    steps = dict(direct[0])
    assert steps["executemany insert"][0] == 50
    assert steps["executemany insert"][2] == "Records: 50  Duplicates: 0  Warnings: 0"
    assert steps["executemany update"] == 8
    assert steps["after rollback"] == (0,)
    assert steps["after commit"] == ((101, "kept"), (102, "kept"))
    assert steps["duplicate in a transaction"][:2] == ("IntegrityError", 1062)
    assert steps["streamed"] == (20000, 20000 * 20001 // 2, sum(i % 50 for i in range(1, 20001)))
    assert steps["multi"] == [(["1"], [(1,)]), (["two", "word"], [(2, "two")]), ("affected", 3),
                              (["COUNT(*)"], [(3,)])]
    assert steps["multi error"][:2] == ("ProgrammingError", 1146)
    assert steps["error of SELEC 1"][:2] == ("ProgrammingError", 1064)
    assert steps["error of SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'raised', MYSQL_ERRNO = 1644"] == (
        "OperationalError", 1644, "raised")
    assert steps["types"][0][4] == "h\u00e9llo \u2603" and steps["types"][0][3] == Decimal("1.250")

    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=60)  # 2 backends
    proxied = run_clients(mysqlclient_workload, p, clients)
    for i in range(clients):
        compare(direct[i], proxied[i], f"client {i}")
    p.assert_serves()



def diagnostics_seen(target: MyTarget) -> list[tuple[str, Any]]:
    """Two clients in turn: SHOW WARNINGS after one's warning and after its error, then the other
    client's SHOW WARNINGS and @@warning_count (a new session's diagnostics area is empty)."""
    seen: list[tuple[str, Any]] = []
    a = mysqlclient_connect(target, autocommit=True)
    b = mysqlclient_connect(target, autocommit=True)
    try:
        ca, cb = a.cursor(), b.cursor()
        ca.execute("SELECT CAST('x' AS INT)")
        seen.append(("a warning", (ca.fetchall(), a.warning_count())))
        ca.execute("SHOW WARNINGS")
        seen.append(("a's SHOW WARNINGS", ca.fetchall()))
        seen.append(("a's error", error_of(lambda: ca.execute("SELECT * FROM no_such_table"))))
        ca.execute("SHOW WARNINGS")
        seen.append(("a's SHOW WARNINGS after its error", ca.fetchall()))
        ca.execute("SELECT 1")  # MariaDB keeps the error in the diagnostics area after this
        seen.append(("a's SELECT 1", ca.fetchall()))
        cb.execute("SHOW WARNINGS")
        seen.append(("b's SHOW WARNINGS", cb.fetchall()))
        cb.execute("SELECT @@warning_count, @@error_count")
        seen.append(("b's counts", cb.fetchall()))
    finally:
        a.close()
        b.close()
    return seen


def test_show_warnings_is_each_clients_own(mysql_proxy, mariadb):
    """One backend for two clients: each one's SHOW WARNINGS shows its own warnings and errors,
    never the other's, as directly."""
    require_mysqlclient()
    direct = diagnostics_seen(mariadb)
    assert dict(direct)["b's SHOW WARNINGS"] == ()
    assert dict(direct)["a's SHOW WARNINGS after its error"] == (
        ("Error", 1146, "Table 'app.no_such_table' doesn't exist"),)
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=5)  # 1 backend
    compare(direct, diagnostics_seen(p), "two clients")
    p.assert_serves()

# -- MariaDB Connector/J ---------------------------------------------------------------------

def run_jdbc(target: MyTarget, threads: int, iterations: int, options: str = "") -> list[str]:
    """java/MariaDbJdbcWorkload.java against `target`: its output lines (checked to end with "ok")."""
    require(os.path.exists(MARIADB_JDBC_JAR) and shutil.which("java") is not None,
            "java or MariaDB Connector/J (Debian's libmariadb-java)")
    url = f"jdbc:mariadb://{target.host}:{target.port}/app{options}"
    proc = subprocess.run(["java", "-cp", MARIADB_JDBC_JAR, str(JAVA_DIR / "MariaDbJdbcWorkload.java"), url,
                           "app", target.passwords["app"], str(threads), str(iterations)],
                          capture_output=True, text=True, timeout=240, env=mysql_env())
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[-1:] == [f"ok {threads}"], \
        f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return lines


def compare_lines(direct: list[str], proxied: list[str]) -> None:
    differences = [(d, p) for d, p in zip(direct, proxied) if d != p]
    assert not differences and len(direct) == len(proxied), (
        "through the proxy vs directly:\n" + "\n".join(f"- {d}\n+ {p}" for d, p in differences[:20]))


def test_mariadb_connector_j_as_directly(mysql_proxy, mariadb):
    """Connector/J's defaults (client-side prepared statements: text protocol), 6 threads over 2
    backends: the same lines as directly, and no session pinned."""
    threads, iterations = 6, 12
    direct = run_jdbc(mariadb, threads, iterations)
    # Spot checks that the program does what it says.
    assert "t0 0 inserted 1 key 1" in direct
    assert any(line.startswith("t5 batch counts [1, 1,") and "keys [" in line for line in direct)
    assert "t3 error SQLIntegrityConstraintViolationException 23000 1062 Duplicate entry '0' for key 'k'" in direct
    assert "t1 batch error 23000 1062 counts [1, 1, -3]" in direct
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=60, metrics=True)
    proxied = run_jdbc(p, threads, iterations)
    compare_lines(direct, proxied)
    if not DIRECT:
        samples = p.metrics()
        pins = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                if name == "concierge_session_pins_total" and v}
        assert pins == {}, f"Connector/J's defaults pinned: {pins}\n{p.log()}"
    p.assert_serves()


def test_mariadb_connector_j_server_prepared_statements_multiplex(mysql_proxy, mariadb):
    """useServerPrepStmts=true: binary-protocol prepared statements (COM_STMT_PREPARE, executes
    with and without parameter types, batches) of 50 threads over 5 backends: the same lines as
    directly, no error, and no session pinned (issue 19)."""
    threads, iterations = 50, 4
    options = "?useServerPrepStmts=true"
    direct = run_jdbc(mariadb, threads, iterations, options)
    p = mysql_proxy(max_connections_percent=5, connection_borrow_timeout=60, metrics=True)  # 5 backends
    proxied = run_jdbc(p, threads, iterations, options)
    compare_lines(direct, proxied)
    if not DIRECT:
        pins = {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
                if name == "concierge_session_pins_total" and v}
        assert pins == {}, f"server-side prepared statements pinned: {pins}\n{p.log()}"
    p.assert_serves()


# -- sysbench --------------------------------------------------------------------------------

# Big enough that 16 threads rarely meet a deadlock (sysbench ignores and counts 1213): 4 tables
# once gave one directly in a 5 s run.
SYSBENCH_TABLES = 8
SYSBENCH_TABLE_SIZE = 25000


def sysbench(target: MyTarget, command: str, *options: str, timeout: float = 120) -> dict[str, int]:
    """`sysbench oltp_read_write COMMAND` against `target` as `app` on database `app`; for `run`,
    its counts (transactions, queries, ignored errors, reconnects). Fails on a non-zero exit."""
    require(shutil.which("sysbench") is not None, "sysbench (Debian's sysbench)")
    cmd = ["sysbench", "oltp_read_write", "--db-driver=mysql", f"--mysql-host={target.host}",
           f"--mysql-port={target.port}", "--mysql-user=app", f"--mysql-password={target.passwords['app']}",
           "--mysql-db=app", "--mysql-ssl=off", f"--tables={SYSBENCH_TABLES}",
           f"--table-size={SYSBENCH_TABLE_SIZE}", *options, command]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mysql_env())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sysbench {command} exited {proc.returncode}:\n{output[-6000:]}"
    assert "FATAL" not in output, output[-6000:]
    if command != "run":
        return {}
    counts = {}
    for name in ("transactions", "queries", "ignored errors", "reconnects"):
        match = re.search(rf"^\s*{name}:\s+(\d+)", proc.stdout, re.MULTILINE)
        assert match, f"no {name!r} in sysbench's report:\n{proc.stdout}"
        counts[name] = int(match.group(1))
    print(f"sysbench run {' '.join(options)} on port {target.port}: {counts}")
    return counts


def check_sysbench_tables(mariadb) -> None:
    """oltp_read_write deletes and re-inserts the same rows inside its transactions: every table
    still has all of its rows, and the secondary index agrees with the table."""
    for n in range(1, SYSBENCH_TABLES + 1):
        rows = mariadb.query(f"SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM sbtest{n}")
        assert rows == [(SYSBENCH_TABLE_SIZE, SYSBENCH_TABLE_SIZE, 1, SYSBENCH_TABLE_SIZE)], (n, rows)
        by_index = mariadb.scalar(f"SELECT COUNT(*) FROM sbtest{n} FORCE INDEX (k_{n}) WHERE k >= 0")
        assert by_index == SYSBENCH_TABLE_SIZE, (n, by_index)


def test_sysbench_oltp_read_write(mysql_proxy, mariadb):
    """16 sysbench threads for 10 s over the default cap of 10 backends, text protocol
    (--db-ps-mode=disable): no error, no reconnect, the server never sees more than 10 of the
    proxy's connections, and the tables are whole afterwards, as after the same run directly.
    Then 4 threads with sysbench's default server-side prepared statements: each session pins its
    backend (counted), and they run as well."""
    text_protocol = ["--threads=16", "--db-ps-mode=disable"]
    # Directly, for comparison (shorter).
    sysbench(mariadb, "prepare", *text_protocol)
    direct = sysbench(mariadb, "run", *text_protocol, "--time=5")
    # The baseline: a deadlock the server chose directly (an ignored error) is not the proxy's.
    assert direct["transactions"] > 0 and direct["reconnects"] == 0, direct
    check_sysbench_tables(mariadb)
    sysbench(mariadb, "cleanup")

    p = mysql_proxy(connection_borrow_timeout=60, metrics=True)  # cap 10 of max_connections 100
    sysbench(p, "prepare", *text_protocol)
    # Every 0.1 s, not the sampler's 0.02: MariaDB 10.11.19 once crashed (a segfault in Aria's
    # ha_maria::drop_table, sysbench's temporary tables) while PROCESSLIST was read every 20 ms
    # beside this run; 100 samples still see the pool at its cap.
    with ProcesslistSampler(mariadb, "app", interval=0.1) as sampler:
        proxied = sysbench(p, "run", *text_protocol, "--time=10")
    assert proxied["transactions"] > 0, proxied
    assert proxied["ignored errors"] == 0 and proxied["reconnects"] == 0, proxied
    assert sampler.samples > 10
    if not DIRECT:
        assert 1 <= sampler.max_seen <= 10, f"the server saw {sampler.max_seen} connections of app"
        pins = {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
                if name == "concierge_session_pins_total" and v}
        assert pins == {}, f"sysbench's text protocol pinned: {pins}"
    check_sysbench_tables(mariadb)

    # sysbench's default: server-side prepared statements (--db-ps-mode=auto), multiplexed.
    with ProcesslistSampler(mariadb, "app", interval=0.1) as sampler:
        prepared = sysbench(p, "run", "--threads=16", "--db-ps-mode=auto", "--time=10")
    assert prepared["transactions"] > 0, prepared
    assert prepared["ignored errors"] == 0 and prepared["reconnects"] == 0, prepared
    if not DIRECT:
        assert 1 <= sampler.max_seen <= 10, f"the server saw {sampler.max_seen} connections of app"
        pins = {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
                if name == "concierge_session_pins_total" and v}
        assert pins == {}, f"sysbench's prepared statements pinned: {pins}"
    check_sysbench_tables(mariadb)
    sysbench(p, "cleanup")
    assert mariadb.query("SHOW TABLES LIKE 'sbtest%'") == []
    p.assert_serves()
