"""Session state a MySQL proxy tracks and restores instead of pinning: two clients with different
time_zone, sql_mode, character set (SET NAMES) and default schema (USE), taking turns on one
backend (a cap of 1), each always see their own; LAST_INSERT_ID() is each client's own; a
client that did not ask for session tracking gets OK packets without it; the init query is the
baseline of every backend, also after COM_RESET_CONNECTION."""

import struct

import pytest

from helpers import DIRECT
from mywire import ErrPacket, read_lenenc_int

ROUNDS = 10
STATE = "SELECT @@time_zone, @@sql_mode, @@character_set_client, @@character_set_results, DATABASE()"


def test_two_clients_keep_their_own_session_state_on_one_backend(mysql_proxy, mariadb):
    # One backend (1% of 100), and a borrow timeout that fails the test instead of hanging it.
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=5)
    # Both log in with a schema: such clients share backends (the schema is restored per lease).
    # A client without one never gets a backend with a schema selected (test below), so it has
    # backends of its own.
    a = p.connect(database="app")
    b = p.connect(database="app2")
    try:
        ca, cb = a.cursor(), b.cursor()
        # Interleaved: each SET lands on the backend the other client used just before.
        ca.execute("SET time_zone = '+05:30'")
        cb.execute("SET time_zone = '-03:00'")
        ca.execute("SET sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'")
        cb.execute("SET SESSION sql_mode = 'TRADITIONAL'")
        ca.execute("SET NAMES latin1")
        cb.execute("SET NAMES utf8mb4")
        ca.execute("USE app2")
        cb.execute("USE app")
        ca.execute(STATE)
        own_a = ca.fetchone()
        cb.execute(STATE)
        own_b = cb.fetchone()
        assert own_a == ("+05:30", "ANSI_QUOTES,NO_BACKSLASH_ESCAPES", "latin1", "latin1", "app2")
        assert own_b[0] == "-03:00" and own_b[2:] == ("utf8mb4", "utf8mb4", "app")
        assert "STRICT_ALL_TABLES" in own_b[1] and "ANSI_QUOTES" not in own_b[1], own_b
        backends = set()
        for round_ in range(ROUNDS):
            for cur, own, name in [(ca, own_a, "a"), (cb, own_b, "b")]:
                cur.execute(STATE + ", CONNECTION_ID()")
                row = cur.fetchone()
                assert row[:-1] == own, f"round {round_}: client {name} sees {row[:-1]}, not its own {own}"
                backends.add(row[-1])
        # What the state does, not only what it says: the time zone shifts NOW(); with
        # NO_BACKSLASH_ESCAPES a backslash is a character, else it escapes the next one;
        # ANSI_QUOTES makes "v" an identifier; latin1 reads the two bytes of UTF-8's é as two
        # characters.
        checks = [
            ("SELECT TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW())", (329, 330), (-181, -180)),
            ("SELECT LENGTH('a\\b')", (3,), (2,)),
            ("""SELECT "v" FROM (SELECT 'x' AS v) AS t""", ("x",), ("v",)),
            ("SELECT CHAR_LENGTH('é')", (2,), (1,)),
        ]
        for sql, for_a, for_b in checks:
            ca.execute(sql)
            assert ca.fetchone()[0] in for_a, sql
            cb.execute(sql)
            assert cb.fetchone()[0] in for_b, sql
            ca.execute("SELECT CONNECTION_ID() + 0")
            backends.add(ca.fetchone()[0])
    finally:
        a.close()
        b.close()
    if not DIRECT:
        assert len(backends) == 1, f"the two clients were served by {len(backends)} backends, not one"


def test_a_client_without_a_schema_never_sees_another_clients_schema(mysql_proxy, mariadb):
    """MySQL cannot go back to "no schema" once one is selected: a client that logged in without
    one must never get a backend on which another client selected one."""
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=5)
    users = [p.connect(database=None) for _ in range(2)]
    try:
        first, second = (u.cursor() for u in users)
        first.execute("USE app")
        first.execute("SELECT DATABASE()")
        assert first.fetchone() == ("app",)
        for _ in range(3):
            second.execute("SELECT DATABASE()")
            assert second.fetchone() == (None,)
            first.execute("SELECT DATABASE()")
            assert first.fetchone() == ("app",)
    finally:
        for u in users:
            u.close()


def test_last_insert_id_is_each_clients_own(mysql_proxy, mariadb):
    """LAST_INSERT_ID() after an autocommit INSERT answers the client's own insert, though
    another client's INSERT ran on the same backend in between."""
    mariadb.create_table("auto_ids", "id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(10)")
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=5)
    a, b = p.connect(), p.connect()
    try:
        ca, cb = a.cursor(), b.cursor()
        for _ in range(3):
            ca.execute("INSERT INTO auto_ids (who) VALUES ('a')")
            own_a = ca.lastrowid
            cb.execute("INSERT INTO auto_ids (who) VALUES ('b'), ('b')")
            own_b = cb.lastrowid  # the first id of a multi-row insert
            ca.execute("SELECT LAST_INSERT_ID()")
            assert ca.fetchone() == (own_a,)
            cb.execute("SELECT LAST_INSERT_ID()")
            assert cb.fetchone() == (own_b,)
            ca.execute("SELECT who FROM auto_ids WHERE id = LAST_INSERT_ID()")
            assert ca.fetchone() == ("a",)
    finally:
        a.close()
        b.close()


def test_ok_packets_carry_no_session_state_for_a_client_that_did_not_ask(mysql_proxy):
    """The proxy's backends track session state; a client without CLIENT_SESSION_TRACK gets OK
    packets without it (no SERVER_SESSION_STATE_CHANGED flag, no state-change data)."""
    p = mysql_proxy()
    with p.wire() as w:
        w.login("app", p.passwords["app"])  # no CLIENT_SESSION_TRACK
        for sql in ["SET time_zone = '+02:00'", "USE app2", "SET NAMES latin1", "SET autocommit = 1"]:
            ok = w.query(sql)
            assert not isinstance(ok, (list, ErrPacket)) and ok.is_ok, (sql, ok)
            pos = 1
            for _ in range(2):  # affected rows, last insert id
                _, pos = read_lenenc_int(ok.payload, pos)
            status = struct.unpack_from("<H", ok.payload, pos)[0]
            assert not status & 0x4000, f"{sql}: SERVER_SESSION_STATE_CHANGED set for a client that did not ask"
        assert w.query("SELECT @@time_zone, DATABASE(), @@character_set_client") == [["+02:00", "app2", "latin1"]]


@pytest.mark.proxy_only
def test_init_query_runs_on_every_new_backend_and_after_a_reset(mysql_proxy):
    """init_query runs on each new backend; COM_RESET_CONNECTION (mysql-connector's
    reset_session) wipes the client's state, not the init query's."""
    import mysql.connector

    p = mysql_proxy(init_query="SET SESSION max_sort_length = 1234, SESSION div_precision_increment = 7")
    conns = [p.connect() for _ in range(3)]
    try:
        for c in conns:  # three transactions at once: three backends
            c.begin()
            with c.cursor() as cur:
                cur.execute("SELECT @@max_sort_length, @@div_precision_increment, CONNECTION_ID()")
                row = cur.fetchone()
                assert row[:2] == (1234, 7)
        for c in conns:
            c.commit()
    finally:
        for c in conns:
            c.close()
    conn = mysql.connector.connect(host=p.host, port=p.port, user="app", password=p.passwords["app"],
                                   database="app", ssl_disabled=True, connection_timeout=10)
    try:
        cur = conn.cursor()
        cur.execute("SET time_zone = '+03:00'")
        cur.execute("SELECT @@time_zone, @@max_sort_length")
        assert cur.fetchone() == ("+03:00", 1234)
        cur.close()
        conn.cmd_reset_connection()
        cur = conn.cursor()
        cur.execute("SELECT @@time_zone, @@max_sort_length, @@div_precision_increment, DATABASE()")
        assert cur.fetchone() == ("SYSTEM", 1234, 7, "app")
        cur.close()
    finally:
        conn.close()
