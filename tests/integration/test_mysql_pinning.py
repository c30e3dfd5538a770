"""Pinning on a MySQL proxy: every pin reason triggers, is logged with its name and counted
(`concierge_session_pins_total{reason=...}`, the names of MySQLPinReasons), and keeps the client
on its backend (with a cap of 1, another client then times out); the session state that caused
it still works. Look-alikes (`SELECT '@x'`, a comment that says LOCK TABLES, a backticked column
named `get_lock`, tracked SETs) do not pin: another client gets the one backend after each.

Direct mode runs the same statements against MariaDB (they must be valid and do what they say);
the proxy's log, metrics and the other client's turn are checked only through a proxy.
"""

import re

import pymysql
import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import metric

# reason -> (statements that pin, (a query and its first row: the state is there), cleanup)
PINS = {
    "user_variable": (["SET @pinned = 42"], ("SELECT @pinned", (42,)), []),
    "temporary_table": (["CREATE TEMPORARY TABLE pin_tmp (id INT)", "INSERT INTO pin_tmp VALUES (7)"],
                        ("SELECT id FROM pin_tmp", (7,)), ["DROP TEMPORARY TABLE pin_tmp"]),
    "lock_tables": (["LOCK TABLES pin_rows READ"], ("SELECT COUNT(*) FROM pin_rows", (5,)), ["UNLOCK TABLES"]),
    "flush_tables_with_read_lock": (["FLUSH TABLES WITH READ LOCK"],
                                    ("SELECT COUNT(*) FROM pin_rows", (5,)), ["UNLOCK TABLES"]),
    "get_lock": (["SELECT GET_LOCK('concierge_itest', 5)"],
                 ("SELECT IS_USED_LOCK('concierge_itest') = CONNECTION_ID()", (1,)),
                 ["SELECT RELEASE_LOCK('concierge_itest')"]),
    "sql_prepare": (["PREPARE pin_stmt FROM 'SELECT 6 * 7'"], ("EXECUTE pin_stmt", (42,)),
                    ["DEALLOCATE PREPARE pin_stmt"]),
    "sql_calc_found_rows": (["SELECT SQL_CALC_FOUND_ROWS id FROM pin_rows ORDER BY id LIMIT 2"],
                            ("SELECT FOUND_ROWS()", (5,)), []),
    "handler": (["HANDLER pin_rows OPEN"], ("HANDLER pin_rows READ `PRIMARY` FIRST", (1,)),
                ["HANDLER pin_rows CLOSE"]),
    "xa_transaction": (["XA START 'concierge_xa'", "INSERT INTO pin_rows VALUES (100)"],
                       ("SELECT COUNT(*) FROM pin_rows", (6,)),
                       ["XA END 'concierge_xa'", "XA ROLLBACK 'concierge_xa'"]),
    "set_variable": (["SET SESSION max_sort_length = 2048"], ("SELECT @@max_sort_length", (2048,)), []),
}

LOOKALIKES = [
    ("SELECT '@x'", ("@x",)),
    ("SELECT 1 /* LOCK TABLES pin_rows READ */", (1,)),
    ("SELECT 1 -- LOCK TABLES pin_rows READ", (1,)),
    ("SELECT 1 # FLUSH TABLES WITH READ LOCK", (1,)),
    ("SELECT `get_lock` FROM lookalike", (3,)),
    ("SELECT 'SET @y = 1', \"@z\", 'GET_LOCK(''a'', 1)'", ("SET @y = 1", "@z", "GET_LOCK('a', 1)")),
    ("SELECT 'it''s @x', 'a\\'@b'", ("it's @x", "a'@b")),
    ("SELECT `@x` FROM (SELECT 5 AS `@x`) AS t", (5,)),
    ("SELECT CONCAT('app', '@', 'host')", ("app@host",)),
    ("SET time_zone = '+01:00'", None),  # tracked variables: restored, not pinned
    ("SET NAMES latin1", None),
    ("SET SESSION sql_mode = 'TRADITIONAL', autocommit = 1", None),
    ("SELECT @@session.time_zone, @@sql_mode LIKE '%STRICT%'", ("+01:00", 1)),
]


@pytest.fixture(scope="module")
def pin_tables(mariadb):
    mariadb.create_table("pin_rows", "id INT PRIMARY KEY")
    mariadb.query("INSERT INTO pin_rows VALUES (1), (2), (3), (4), (5)")
    mariadb.create_table("lookalike", "id INT, `get_lock` INT")
    mariadb.query("INSERT INTO lookalike VALUES (1, 3)")


def pin_lines(log: str, reason: str | None = None) -> list[str]:
    lines = [line for line in log.splitlines() if "pinned" in line and "unpinned" not in line]
    if reason is None:
        return lines
    return [line for line in lines if re.search(rf'pin_reasons?="?[\w,]*\b{reason}\b', line)]


def pins(samples) -> dict[str, float]:
    return {dict(labels)["reason"]: value for (name, labels), value in samples.items()
            if name == "concierge_session_pins_total"}


def borrow_times_out(p) -> bool:
    """Whether another client's statement times out waiting for the proxy's one backend."""
    try:
        with p.connect() as other, other.cursor() as cur:
            cur.execute("SELECT 1")
            return False
    except pymysql.err.OperationalError as e:
        assert e.args == (9501, "Timed-out waiting to acquire database connection")
        return True


@pytest.mark.parametrize("reason", list(PINS))
def test_pin_reason_is_logged_and_counted(mysql_proxy, pin_tables, reason):
    statements, (check, expected), cleanup = PINS[reason]
    p = mysql_proxy(metrics=True, max_connections_percent=1, connection_borrow_timeout=1)
    before = None if DIRECT else pins(p.metrics())
    if before is not None:
        assert reason in before, f"no counter for {reason}: {sorted(before)}"
    conn = p.connect()
    try:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
            cur.fetchall()
        if not DIRECT:
            def counted():
                now = pins(p.metrics())
                return {r: now[r] - before.get(r, 0) for r in now if now[r] != before.get(r, 0)}
            wait_for(lambda: counted().get(reason), 5, f"the {reason} pin to be counted")
            assert counted() == {reason: 1}, "exactly one pin, with this reason"
            assert metric(p.metrics(), "concierge_database_connections_currently_session_pinned") == 1
            wait_for(lambda: pin_lines(p.log(), reason), 5, f"the {reason} pin to be logged")
            # The client keeps its backend: with a cap of 1 another client cannot have it.
            assert borrow_times_out(p), "another client got the backend of a pinned session"
        cur.execute(check)
        assert cur.fetchone() == expected, check
        for sql in cleanup:
            cur.execute(sql)
            cur.fetchall()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    finally:
        conn.close()
    if not DIRECT:
        # Once the client leaves, its backend is no longer pinned and serves others.
        wait_for(lambda: metric(p.metrics(), "concierge_database_connections_currently_session_pinned") == 0,
                 10, "the pinned backend to be released")
        p.assert_serves()


def test_lookalikes_do_not_pin(mysql_proxy, pin_tables):
    p = mysql_proxy(metrics=True, max_connections_percent=1, connection_borrow_timeout=3)
    before = None if DIRECT else pins(p.metrics())
    a, b = p.connect(), p.connect()
    try:
        ca, cb = a.cursor(), b.cursor()
        for sql, expected in LOOKALIKES:
            ca.execute(sql)
            rows = ca.fetchall()
            if expected is not None:
                assert rows[0] == expected, sql
            # The other client gets the one backend at once: `a` holds nothing.
            try:
                cb.execute("SELECT 2")
            except pymysql.err.OperationalError as e:
                raise AssertionError(f"after {sql!r}, another client got {e}") from e
            assert cb.fetchone() == (2,), f"after {sql!r}"
    finally:
        a.close()
        b.close()
    if not DIRECT:
        after = pins(p.metrics())
        assert {r: after[r] - before.get(r, 0) for r in after if after[r] != before.get(r, 0)} == {}
        assert pin_lines(p.log()) == []
