"""Binary-protocol prepared statements through a MySQL proxy, multiplexed instead of pinned
(issue 19): the client sees statement ids of its own; each backend prepares a statement the
first time a lease there executes it; a bounded cache per backend closes the least recently
used; COM_STMT_CLOSE, COM_STMT_RESET and COM_STMT_SEND_LONG_DATA are the proxy's; an execute
that leaves out its parameter types gets the client's last ones; a cursor keeps its backend
until it is exhausted or closed; DDL between prepare and execute gives what it gives directly.

Each test runs the same client program directly on MariaDB and through the proxy and compares
(CONCIERGE_ITEST_DIRECT=1 runs them all directly). Real clients: mysql-connector-python's
prepared cursors (its pure-Python binary protocol), and raw COM_STMT_* packets (mywire) where a
driver gives no hold on the packets (types left out, long data, cursors, statement ids).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import metric
from mywire import BinaryResult, ErrPacket, MyWireClient, MyWireStatements

mysql_connector = pytest.importorskip("mysql.connector")


def pins_of(p) -> dict[str, float]:
    return {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
            if name == "concierge_session_pins_total" and v}


def wire_login(target, database: str = "app") -> tuple[MyWireClient, MyWireStatements]:
    c = target.wire()
    c.login("app", target.passwords["app"], database)
    return c, MyWireStatements(c)


def prepared_count(mariadb) -> int:
    return int(mariadb.query("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")[0][1])


# -- mysql-connector-python's prepared cursors, 50 clients over 5 backends ----------------------

THREADS, ROWS = 50, 6


def connector_workload(target, table: str) -> dict[int, list[str]]:
    """Each of 50 threads on its own connection with a prepared cursor: inserts, point selects,
    updates with parameters, a range aggregate, a duplicate key and a NULL parameter; the lines
    each thread saw."""
    out: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(t: int) -> None:
        lines = out.setdefault(t, [])
        try:
            conn = mysql_connector.connect(host=target.host, port=target.port, user="app",
                                           password=target.passwords["app"], database="app",
                                           autocommit=True, ssl_disabled=True, use_pure=True)
            cur = conn.cursor(prepared=True)
            start.wait(timeout=60)
            base = t * 1000
            for i in range(ROWS):
                cur.execute(f"INSERT INTO {table} (k, v) VALUES (?, ?)", (base + i, f"t{t}-{i}"))
                lines.append(f"insert {i} rowcount {cur.rowcount}")
            for i in range(ROWS):
                cur.execute(f"SELECT k, v FROM {table} WHERE k = ?", (base + i,))
                lines.append(f"select {i} {cur.fetchall()}")
                cur.execute(f"UPDATE {table} SET v = CONCAT(v, ?) WHERE k = ?", ("+", base + i))
                lines.append(f"update {i} rowcount {cur.rowcount}")
            cur.execute(f"SELECT COUNT(*), SUM(k), GROUP_CONCAT(v ORDER BY k) FROM {table} WHERE k BETWEEN ? AND ?",
                        (base, base + ROWS - 1))
            lines.append(f"range {cur.fetchall()}")
            try:
                cur.execute(f"INSERT INTO {table} (k, v) VALUES (?, ?)", (base, "again"))
                lines.append("duplicate accepted")
            except mysql_connector.Error as e:
                lines.append(f"duplicate error {e.errno} {e.sqlstate}")
            cur.execute("SELECT ? IS NULL, CONCAT('x', ?)", (None, "y"))
            lines.append(f"null {cur.fetchall()}")
            cur.close()
            conn.close()
        except BaseException as e:  # reported below, with the thread
            errors.append(e)
            lines.append(f"exception {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    assert not errors, f"{len(errors)} threads failed, first: {errors[0]!r}"
    return out


def test_connector_python_prepared_cursors_50_clients_over_5_backends(mysql_proxy, mariadb):
    table = mariadb.create_table("ps_conn", "k INT PRIMARY KEY, v VARCHAR(64)")
    direct = connector_workload(mariadb, table)
    mariadb.query(f"TRUNCATE TABLE {table}")
    p = mysql_proxy(max_connections_percent=5, connection_borrow_timeout=60, metrics=True)  # 5 backends
    proxied = connector_workload(p, table)
    assert proxied == direct
    assert direct[7][-2].startswith("duplicate error 1062 23000"), direct[7]
    if not DIRECT:
        assert pins_of(p) == {}, f"prepared cursors pinned: {pins_of(p)}"
        # 5 backends, each with the workload's statements once (not one per client).
        assert prepared_count(mariadb) <= 5 * 8, prepared_count(mariadb)
    p.assert_serves()


# -- the packets drivers do not let a test choose -----------------------------------------------

def kill_backends(p, mariadb) -> None:
    """Kills the proxy's backends of `app` on the server and waits until the proxy has none."""
    for (thread_id,) in mariadb.query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'"):
        mariadb.query(f"KILL {thread_id}")
    wait_for(lambda: mariadb.connections("app") == 0, 10, "the server to drop app's sessions")
    wait_for(lambda: metric(p.metrics(), "concierge_database_connections") == 0, 10,
             "the proxy to see its backends closed")


def types_left_out(target, mariadb, between=None) -> list:
    """Prepare `SELECT ? + 1, CONCAT(?, '!')`, execute with types, then twice without (the
    second time after `between`, which may take the backend away)."""
    c, s = wire_login(target)
    with c:
        stmt = s.prepare("SELECT ? + 1 AS n, CONCAT(?, '!') AS s")
        assert isinstance(stmt, type(stmt)) and not isinstance(stmt, ErrPacket), stmt
        results = [s.execute(stmt.id, [41, "a"])]
        results.append(s.execute(stmt.id, [1, "b"], send_types=False))
        if between:
            between()
        results.append(s.execute(stmt.id, [99, "c"], send_types=False))
        return [(r.names, r.rows) if isinstance(r, BinaryResult) else str(r) for r in results]


def test_an_execute_without_types_on_a_backend_that_never_saw_them(mysql_proxy, mariadb):
    """After the first execute the client leaves its parameter types out (libmariadb does). The
    backend that then runs it is a new one (the old one was killed): it prepares the statement
    and gets the client's types from the proxy, and the answer is the same as directly."""
    direct = types_left_out(mariadb, mariadb)
    assert direct[2] == (["n", "s"], [[100, "c!"]]), direct
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=10, metrics=True)
    proxied = types_left_out(p, mariadb, between=None if DIRECT else lambda: kill_backends(p, mariadb))
    assert proxied == direct
    if not DIRECT:
        assert pins_of(p) == {}


def long_data(target) -> list:
    c, s = wire_login(target)
    with c:
        stmt = s.prepare("SELECT LENGTH(?), MD5(?), ? AS plain")
        out = []
        for round_ in range(3):
            s.send_long_data(stmt.id, 0, b"x" * 100_000)
            s.send_long_data(stmt.id, 0, b"y" * 50_000)
            s.send_long_data(stmt.id, 1, f"round {round_}".encode())
            r = s.execute(stmt.id, ["", "", "plain"])
            out.append(r.rows if isinstance(r, BinaryResult) else str(r))
        # Reset drops the long data sent since: the execute then sends its own values.
        s.send_long_data(stmt.id, 0, b"dropped")
        assert not isinstance(s.reset(stmt.id), ErrPacket)
        r = s.execute(stmt.id, ["ab", "cd", "ef"])
        out.append(r.rows if isinstance(r, BinaryResult) else str(r))
        return out


def test_long_data_is_held_until_the_execute(mysql_proxy, mariadb):
    """COM_STMT_SEND_LONG_DATA has no answer and arrives while the client holds no backend: the
    proxy keeps it and sends it, with the backend's statement id, just before the execute."""
    direct = long_data(mariadb)
    assert direct[0][0][0] == 150_000, direct[0]
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10, metrics=True)
    assert long_data(p) == direct
    if not DIRECT:
        assert pins_of(p) == {}


def test_a_cursor_keeps_its_backend_until_exhausted_or_closed(mysql_proxy, mariadb):
    """A read-only cursor (COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY, rows by COM_STMT_FETCH)
    lives on one backend: with a cap of 1, another client waits (and times out) while it is
    open, and is served once the cursor is exhausted, or closed mid-way."""
    def read_cursor(target, close_after: int | None = None) -> list:
        c, s = wire_login(target)
        with c:
            stmt = s.prepare("SELECT seq, CONCAT('row ', seq) FROM seq_1_to_25 WHERE seq > ?")
            r = s.execute(stmt.id, [0], cursor=True)
            assert isinstance(r, BinaryResult), r
            rows, batches = [], 0
            while True:
                batch = s.fetch(stmt.id, 10)
                assert isinstance(batch, BinaryResult), batch
                rows += batch.rows
                batches += 1
                if close_after and batches == close_after:
                    s.close(stmt.id)
                    return rows
                if batch.status & 0x80:  # SERVER_STATUS_LAST_ROW_SENT
                    break
                if blocked_check:
                    blocked_check()
            after = s.fetch(stmt.id, 10)
            return rows + [str(after) if isinstance(after, ErrPacket) else "more rows"]

    blocked_check = None
    direct = read_cursor(mariadb)
    assert [r[0] for r in direct[:-1]] == list(range(1, 26)), direct
    assert "1421" in direct[-1], direct[-1]

    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=1, metrics=True)
    if not DIRECT:
        def blocked_check():
            # PyMySQL's connect already runs a statement (SET autocommit): it waits, and fails.
            with pytest.raises(Exception) as refused:
                with p.connect() as other:
                    other.cursor().execute("SELECT 1")
            assert "9501" in str(refused.value), refused.value
    proxied = read_cursor(p)
    assert [r[:2] for r in proxied[:-1]] == [r[:2] for r in direct[:-1]]
    assert "1421" in proxied[-1], proxied[-1]
    p.assert_serves()  # exhausted: the backend is back
    blocked_check = None
    assert len(read_cursor(p, close_after=1)) == 10
    p.assert_serves()  # closed mid-way: back too
    if not DIRECT:
        assert pins_of(p) == {}


def ddl_between(target, mariadb, table: str) -> list:
    """Prepare `SELECT * FROM t`, then change t (a column added, the table dropped and made
    again) between executes."""
    mariadb.query(f"DROP TABLE IF EXISTS {table}")
    mariadb.query(f"CREATE TABLE {table} (id INT PRIMARY KEY, a VARCHAR(10))")
    mariadb.query(f"INSERT INTO {table} VALUES (1, 'one')")
    c, s = wire_login(target)
    out = []
    with c:
        stmt = s.prepare(f"SELECT * FROM {table} WHERE id >= ?")
        out.append(stmt.columns)

        def run():
            r = s.execute(stmt.id, [0])
            out.append((r.names, r.rows) if isinstance(r, BinaryResult) else str(r))

        run()
        mariadb.query(f"ALTER TABLE {table} ADD COLUMN b INT DEFAULT 7")
        run()
        mariadb.query(f"DROP TABLE {table}")
        run()
        mariadb.query(f"CREATE TABLE {table} (id INT PRIMARY KEY, c VARCHAR(10))")
        mariadb.query(f"INSERT INTO {table} VALUES (2, 'two')")
        run()
    return out


def test_ddl_between_executes_gives_what_it_gives_directly(mysql_proxy, mariadb):
    """The server re-prepares a statement whose table changed; a backend that prepares it for
    the first time after the change gets the new shape. Either way the client sees the new
    columns, the error of a dropped table, and the new table, as directly."""
    direct = ddl_between(mariadb, mariadb, "ps_ddl")
    assert direct[2][0] == ["id", "a", "b"] and "1146" in direct[3], direct
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10, metrics=True)
    assert ddl_between(p, mariadb, "ps_ddl") == direct
    if not DIRECT:
        assert pins_of(p) == {}


def test_errors_of_unknown_statements_are_the_servers(mysql_proxy, mariadb):
    def errors(target) -> list:
        c, s = wire_login(target)
        with c:
            out = [str(s.execute(4242, [])), str(s.reset(4242)), str(s.prepare("SELEC 1"))]
            stmt = s.prepare("SELECT 1")
            s.close(stmt.id)
            out.append(str(s.execute(stmt.id, [])))
            out.append(c.query("SELECT 'still here'"))
            return out

    direct = errors(mariadb)
    assert direct[0] == "ERROR 1243 (HY000): Unknown prepared statement handler (4242) given to mysqld_stmt_execute"
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10)
    proxied = errors(p)
    # The closed statement's id is the client's in both messages; the server numbers its
    # statements across connections, the proxy per client, so only the id may differ.
    assert proxied[:3] == direct[:3]
    assert proxied[3].startswith("ERROR 1243 (HY000): Unknown prepared statement handler (")
    assert proxied[4] == direct[4] == [["still here"]]


def test_the_statement_cache_keeps_the_server_under_max_prepared_stmt_count(mysql_proxy, mariadb):
    """With max_prepared_stmt_count 300 and max_connections 100 a backend holds at most 3
    statements: a client rotating through 8 statements over 2 backends gets every answer right,
    the least recently used are closed (the server never holds more than 6 of them), and
    nothing pins."""
    if DIRECT:
        pytest.skip("the proxy's cache")
    old = mariadb.scalar("SELECT @@global.max_prepared_stmt_count")
    mariadb.query("SET GLOBAL max_prepared_stmt_count = 300")
    try:
        p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10, metrics=True)
        c, s = wire_login(p)
        with c:
            stmts = [s.prepare(f"SELECT ? * {n} AS product") for n in range(1, 9)]
            assert all(not isinstance(x, ErrPacket) for x in stmts), stmts
            peak = 0
            for round_ in range(3):
                for n, stmt in enumerate(stmts, start=1):
                    r = s.execute(stmt.id, [round_ + 10])
                    assert isinstance(r, BinaryResult) and r.rows == [[(round_ + 10) * n]], (n, r)
                    peak = max(peak, prepared_count(mariadb))
            assert peak <= 6, f"the server held {peak} statements"
        assert pins_of(p) == {}
    finally:
        mariadb.query(f"SET GLOBAL max_prepared_stmt_count = {old}")
