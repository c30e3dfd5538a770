"""COM_CHANGE_USER through a MySQL proxy, answered by the proxy: the client authenticates again
(native password, caching_sha2, IAM: as at login, against the same users and secrets), its
session returns to the new user's login defaults with the packet's schema, its pins go, the
backend it held is released (closed when pinned or in a transaction: its transaction is rolled
back, as MySQL rolls it back), and its later commands run on the new user's backends. A wrong
password gets the login's ERROR 1045, and the connection is closed.

Run with mysqlclient (MySQLdb, libmariadb's mysql_change_user) and mysql-connector-python
(`cmd_change_user`), each the same way through the proxy and directly on MariaDB
(`CONCIERGE_ITEST_DIRECT=1` runs the direct side alone).
"""

import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import CACHING_SHA2, NATIVE, MyTarget

MySQLdb = pytest.importorskip("MySQLdb")

DENIED_HOST = "127.0.0.1" if DIRECT else "%"


def mysqldb(target: MyTarget, user: str = "app", database: str | None = "app"):
    kw = {"database": database} if database else {}
    return MySQLdb.connect(host=target.host, port=target.port, user=user, password=target.passwords[user],
                           connect_timeout=10, autocommit=True, ssl_mode="DISABLED", **kw)


def connector(target: MyTarget, user: str = "app", database: str | None = "app", plugin: str | None = None):
    import mysql.connector
    kw = {"auth_plugin": plugin} if plugin else {}
    return mysql.connector.connect(host=target.host, port=target.port, user=user, password=target.passwords[user],
                                   database=database, connection_timeout=10, use_pure=True, ssl_disabled=True,
                                   autocommit=True, **kw)


def fetch(conn, sql: str):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall() if cur.description else None
    finally:
        cur.close()


def change_user_session(target: MyTarget, mariadb, client: str) -> list:
    """What a client sees across COM_CHANGE_USERs: app (pinned by a user variable, a
    transaction open) becomes app_monitor without a schema, then app again with `app2`."""
    table = mariadb.create_table(f"change_user_{client}", "id INT PRIMARY KEY")
    seen = []
    conn = mysqldb(target) if client == "mysqldb" else connector(target)
    try:
        fetch(conn, "SET @x = 41, time_zone = '+05:00'")
        fetch(conn, "BEGIN")
        fetch(conn, f"INSERT INTO {table} VALUES (1)")
        seen.append(fetch(conn, "SELECT CURRENT_USER(), DATABASE(), @x + 1, @@time_zone, @@in_transaction"))
        if client == "mysqldb":
            conn.change_user("app_monitor", target.passwords["app_monitor"], "")
        else:
            conn.cmd_change_user(username="app_monitor", password=target.passwords["app_monitor"], database="")
        seen.append(fetch(conn, "SELECT CURRENT_USER(), DATABASE(), @x, @@time_zone = @@global.time_zone, @@in_transaction"))
        # The transaction was rolled back.
        seen.append(mariadb.query(f"SELECT COUNT(*) FROM {table}"))
        if client == "mysqldb":
            conn.change_user("app", target.passwords["app"], "app2")
        else:
            conn.cmd_change_user(username="app", password=target.passwords["app"], database="app2")
        seen.append(fetch(conn, "SELECT CURRENT_USER(), DATABASE(), @x"))
        fetch(conn, "USE app")
        seen.append(fetch(conn, f"SELECT COUNT(*) FROM {table}"))
    finally:
        conn.close()
    return [[tuple(row) for row in rows] for rows in seen]


EXPECTED = [
    [("app@%", "app", 42, "+05:00", 1)],
    [("app_monitor@%", None, None, 1, 0)],
    [(0,)],
    [("app@%", "app2", None)],
    [(0,)],
]


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
@pytest.mark.parametrize("client", ["mysqldb", "connector"])
def test_change_user_is_a_new_login_on_the_same_connection(mysql_proxy, mariadb, client, auth):
    p = mysql_proxy(client_auth=auth)
    assert change_user_session(p, mariadb, client) == EXPECTED
    if not DIRECT:
        # The same session directly on MariaDB, for comparison.
        direct = MyTarget(mariadb.host, mariadb.port, mariadb.passwords)
        assert change_user_session(direct, mariadb, client) == EXPECTED


@pytest.mark.parametrize("client", ["mysqldb", "connector"])
def test_a_wrong_password_is_1045_and_the_connection_is_closed(mysql_proxy, mariadb, client):
    """The login's 1045, word for word; then the proxy closes the connection, as MySQL does.
    MariaDB differs here: it keeps the connection, as the previous user (its session reset),
    which the direct run shows."""
    import mysql.connector

    p = mysql_proxy()
    targets = [p] if DIRECT else [p, MyTarget(mariadb.host, mariadb.port, mariadb.passwords)]
    for target in targets:
        proxied = target is p and not DIRECT
        host = "%" if proxied else "127.0.0.1"
        for user in ("app", "nobody"):
            conn = mysqldb(target) if client == "mysqldb" else connector(target)
            try:
                if client == "mysqldb":
                    with pytest.raises(MySQLdb.OperationalError) as exc:
                        conn.change_user(user, "not the password", "app")
                    assert exc.value.args == (1045, f"Access denied for user '{user}'@'{host}' (using password: YES)")
                    closed_error = MySQLdb.OperationalError
                else:
                    with pytest.raises(mysql.connector.errors.ProgrammingError) as exc2:
                        conn.cmd_change_user(username=user, password="not the password", database="app")
                    assert (exc2.value.errno, exc2.value.sqlstate) == (1045, "28000")
                    assert exc2.value.msg == f"Access denied for user '{user}'@'{host}' (using password: YES)"
                    closed_error = mysql.connector.errors.Error
                if proxied:
                    with pytest.raises(closed_error):
                        fetch(conn, "SELECT 1")
                else:
                    assert [tuple(r) for r in fetch(conn, "SELECT CURRENT_USER()")] == [("app@%",)]
            finally:
                try:
                    conn.close()
                except Exception:
                    pass


@pytest.mark.proxy_only
def test_a_pinned_backend_is_closed_and_a_clean_one_reused(mysql_proxy, mariadb):
    """The pinned client's backend (its user variable lives there) is closed at the change;
    an unpinned client's goes back to app's pool; the new user's commands run on its own."""
    p = mysql_proxy()
    conn = mysqldb(p)
    try:
        fetch(conn, "SET @pin = 1")
        pinned_id = fetch(conn, "SELECT CONNECTION_ID() + 0")[0][0]
        conn.change_user("app_monitor", p.passwords["app_monitor"], "")
        assert fetch(conn, "SELECT CURRENT_USER()") == (("app_monitor@%",),)
        wait_for(lambda: mariadb.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
                                        (pinned_id,)) == 0, 10, "the pinned backend to be closed")
        # Unpinned: the backend goes back to app's pool, open.
        conn.change_user("app", p.passwords["app"], "app")
        backend_id = fetch(conn, "SELECT CONNECTION_ID() + 0")[0][0]  # + 0: the backend's (a bare one is the proxy's)
        conn.change_user("app_monitor", p.passwords["app_monitor"], "")
        assert fetch(conn, "SELECT CURRENT_USER()") == (("app_monitor@%",),)
        assert mariadb.scalar("SELECT USER FROM information_schema.PROCESSLIST WHERE ID = %s", (backend_id,)) == "app"
    finally:
        conn.close()
    p.assert_serves()


@pytest.mark.proxy_only
def test_change_user_to_a_schema_not_the_users_is_refused_like_a_login(mysql_proxy):
    p = mysql_proxy()
    conn = mysqldb(p)
    try:
        with pytest.raises(MySQLdb.OperationalError) as exc:
            conn.change_user("app", p.passwords["app"], "no_such_schema")
        # The server's answer (the schema is checked there, as at login): 1044 for a user whose
        # grants do not cover it.
        assert exc.value.args == (1044, "Access denied for user 'app'@'%' to database 'no_such_schema'")
        with pytest.raises(MySQLdb.OperationalError):
            fetch(conn, "SELECT 1")
    finally:
        try:
            conn.close()
        except Exception:
            pass
    p.assert_serves()


@pytest.mark.proxy_only
def test_a_change_user_pipelined_behind_a_query_waits_for_its_answer(mysql_proxy):
    """A COM_QUERY, a COM_CHANGE_USER and another COM_QUERY in one write: the first query is
    answered as app, then the change (at once: the scramble is of the greeting's nonce), then
    the second query as app_monitor. (MariaDB itself answers this change with an
    AuthSwitchRequest, and then reads the pipelined query as the client's answer to it.)"""
    import struct

    from mywire import COM_QUERY, native_password_scramble, packet

    p = mysql_proxy()
    with p.wire() as w:
        w.login("app", p.passwords["app"])
        scramble = native_password_scramble(p.passwords["app_monitor"], w.greeting.salt)
        change = (b"\x11app_monitor\0" + bytes([len(scramble)]) + scramble + b"\0"
                  + struct.pack("<H", 45) + b"mysql_native_password\0")
        w.send(packet(bytes([COM_QUERY]) + b"SELECT SLEEP(0.3), CURRENT_USER()", 0) + packet(change, 0)
               + packet(bytes([COM_QUERY]) + b"SELECT CURRENT_USER(), DATABASE()", 0))
        assert w.read_result() == [["0", "app@%"]]
        answer = w.read_packet()
        assert answer is not None and answer.is_ok and answer.seq == 1, answer
        assert w.read_result() == [["app_monitor@%", None]]
