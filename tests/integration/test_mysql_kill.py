"""KILL through a MySQL proxy, and the per-connection functions a multiplexed client reads.

The connection id a client's handshake gives (PyMySQL's `thread_id()`) is the proxy's; `KILL
QUERY id`, `KILL [CONNECTION] id` and COM_PROCESS_KILL with it reach the backend serving that
client at that moment; another user's id gets MySQL's 1095, an unknown one 1094; a bare `SELECT
CONNECTION_ID()` answers the same id. ROW_COUNT(), FOUND_ROWS(), LAST_INSERT_ID() and SHOW
WARNINGS answer what a direct connection answers while another client's statements run on the
same backend in between (a cap of one backend): the same script runs directly on MariaDB and
through the proxy, and the answers are compared.

Every scenario runs against the MariaDB itself too (`mariadb` is a target like the proxy), so
the proxy's answers are compared with the server's, not with numbers written here.
"""

from __future__ import annotations

import struct
import threading
import time

import pymysql
import pytest

from helpers import DIRECT, wait_for
from mysql_fixtures import MariaDB, MyTarget
from mywire import (CLIENT_DEPRECATE_EOF, CLIENT_SESSION_TRACK, DEFAULT_CAPABILITIES, Packet, parse_err,
                    read_lenenc_int)

COM_PROCESS_KILL = 0x0C
LONG = "SELECT SLEEP(30)"


def running(db: MariaDB, sql: str) -> bool:
    """The server is executing `sql` (on any connection)."""
    return db.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = %s", (sql,)) > 0


def error_of(fn) -> tuple[int, str] | None:
    try:
        fn()
    except pymysql.err.MySQLError as e:
        return (e.args[0], e.args[1])
    return None


class Runner:
    """A statement run on its own thread, its outcome and duration kept."""

    def __init__(self, conn, sql: str):
        self.conn, self.sql = conn, sql
        self.result = None
        self.error: tuple[int, str] | None = None
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        started = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.sql)
                self.result = cur.fetchall()
        except pymysql.err.MySQLError as e:
            self.error = (e.args[0], e.args[1])
        self.elapsed = time.monotonic() - started

    def join(self, timeout: float = 20) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.sql} did not end within {timeout}s"


def kill_query_scenario(target: MyTarget, db: MariaDB, bystander_statements: int = 20) -> dict:
    """A client's long statement is killed by another client of the same user while a third
    runs statements on the target's other backend; returns what each saw."""
    victim, killer, bystander = target.connect(), target.connect(), target.connect()
    sql = LONG.replace("SELECT", f"SELECT /* {target.port} */", 1)
    try:
        long = Runner(victim, sql)
        wait_for(lambda: running(db, sql), 10, "the long statement to run")
        # A bystander's statements before and after the kill must all succeed.
        seen = []
        with bystander.cursor() as cur:
            for i in range(bystander_statements // 2):
                cur.execute("SELECT %s", (i,))
                seen.append(cur.fetchone()[0])
            with killer.cursor() as k:
                k.execute(f"KILL QUERY {victim.thread_id()}")
            long.join()
            for i in range(bystander_statements // 2, bystander_statements):
                cur.execute("SELECT %s", (i,))
                seen.append(cur.fetchone()[0])
        # The victim's connection still works, and it is the same connection.
        with victim.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            still = cur.fetchone()[0]
        return {"result": long.result, "error": long.error, "elapsed": long.elapsed,
                "bystander": seen, "victim_id_after": still == victim.thread_id()}
    finally:
        for c in (victim, killer, bystander):
            c.close()


def test_kill_query_stops_only_the_targets_statement_as_directly(mysql_proxy, mariadb):
    # Two backends: the victim's statement holds one, the bystander runs on the other.
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10)
    direct = kill_query_scenario(mariadb, mariadb)
    proxied = kill_query_scenario(p, mariadb)
    assert direct["elapsed"] < 10 and proxied["elapsed"] < 10, (direct, proxied)
    # MariaDB's SLEEP() returns 1 when killed (other statements end with 1317).
    assert (proxied["result"], proxied["error"]) == (direct["result"], direct["error"]), (direct, proxied)
    assert proxied["bystander"] == direct["bystander"] == list(range(20))
    assert proxied["victim_id_after"] and direct["victim_id_after"]
    # Nothing of the killed statement is left on the server.
    wait_for(lambda: not mariadb.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(30)%'"
                                        " AND ID <> CONNECTION_ID()"),
             10, "the killed statement to be gone")
    p.assert_serves()


def test_kill_query_of_a_join_gets_1317_as_directly(mysql_proxy, mariadb):
    # (SLEEP() and BENCHMARK() return a value when killed; a scan stops with an error.)
    long_sql = "SELECT COUNT(*) FROM seq_1_to_1000000 a, seq_1_to_1000000 b"
    p = mysql_proxy()
    outcomes = []
    for n, target in enumerate((mariadb, p)):
        victim, killer = target.connect(), target.connect()
        # Marked per run: the previous run's killed statement may linger in the process list.
        sql = long_sql.replace("SELECT", f"SELECT /* run {n} */", 1)
        try:
            run = Runner(victim, sql)
            wait_for(lambda: running(mariadb, sql), 10, "the statement to run")
            with killer.cursor() as k:
                k.execute(f"KILL QUERY {victim.thread_id()}")
            run.join()
            outcomes.append((run.result, run.error))
        finally:
            victim.close()
            killer.close()
    assert outcomes[0] == outcomes[1] == (None, (1317, "Query execution was interrupted")), outcomes


def test_kill_query_of_an_idle_client_is_a_no_op(mysql_proxy):
    p = mysql_proxy()
    idle, killer = p.connect(), p.connect()
    try:
        with killer.cursor() as k:
            k.execute(f"KILL QUERY {idle.thread_id()}")
        with idle.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
    finally:
        idle.close()
        killer.close()


def test_connection_id_is_the_handshakes_and_kill_of_oneself_answers_as_the_server(mysql_proxy, mariadb):
    p = mysql_proxy()
    for target in (mariadb, p):
        conn = target.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                assert cur.fetchone()[0] == conn.thread_id()
                cur.execute("SELECT CONNECTION_ID() AS id, ROW_COUNT()")
                assert cur.fetchone() == (conn.thread_id(), -1)
                assert [d[0] for d in cur.description] == ["id", "ROW_COUNT()"]
                # KILL QUERY of one's own connection interrupts the KILL itself.
                assert error_of(lambda: cur.execute(f"KILL QUERY {conn.thread_id()}")) == (
                    1317, "Query execution was interrupted")
                cur.execute("SELECT 1")
                # KILL of one's own connection ends it.
                assert error_of(lambda: cur.execute(f"KILL {conn.thread_id()}")) == (1927, "Connection was killed")
        finally:
            conn.close()


def test_another_users_connection_is_refused_with_1095_and_an_unknown_id_with_1094(mysql_proxy, mariadb):
    p = mysql_proxy()
    for target in (mariadb, p):
        other = target.connect("app_monitor", database=None)
        app = target.connect()
        try:
            with app.cursor() as cur:
                oid = other.thread_id()
                for sql in (f"KILL QUERY {oid}", f"KILL {oid}", f"KILL CONNECTION {oid}", f"KILL SOFT QUERY {oid}"):
                    assert error_of(lambda: cur.execute(sql)) == (1095, f"You are not owner of thread {oid}"), (target, sql)
                for sql, shown in (("KILL QUERY 4294967295", "4294967295"), ("KILL 99999999999", "99999999999"),
                                   ("KILL -1", "18446744073709551615")):
                    assert error_of(lambda: cur.execute(sql)) == (1094, f"Unknown thread id: {shown}"), (target, sql)
                assert error_of(lambda: cur.execute("KILL QUERY ID 123456789")) == (1957, "Unknown query id: 123456789")
            with other.cursor() as cur:
                cur.execute("SELECT 7")
                assert cur.fetchone() == (7,), "the other user's connection was disturbed"
        finally:
            other.close()
            app.close()


def kill_connection_scenario(target: MyTarget, db: MariaDB, busy: bool) -> tuple:
    victim, killer = target.connect(), target.connect()
    sql = LONG.replace("SELECT", f"SELECT /* {target.port} */", 1)
    try:
        long = Runner(victim, sql) if busy else None
        if busy:
            wait_for(lambda: running(db, sql), 10, "the long statement to run")
        with killer.cursor() as k:
            k.execute(f"KILL {victim.thread_id()}")
        if long:
            long.join()
            first = long.error
        else:
            first = error_of(lambda: victim.cursor().execute("SELECT 1"))
        # The killed connection is gone for good.
        then = error_of(lambda: victim.cursor().execute("SELECT 1"))
        return (first is not None and first[0] in (2013, 2006, 1927), then is not None)
    finally:
        victim.close()
        killer.close()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-statement"])
def test_kill_connection_closes_the_target_client_and_leaks_no_backend(mysql_proxy, mariadb, busy):
    p = mysql_proxy(max_connections_percent=2, connection_borrow_timeout=10)
    assert kill_connection_scenario(p, mariadb, busy) == kill_connection_scenario(mariadb, mariadb, busy) == (True, True)
    # The killed client's backend is not left running its statement.
    wait_for(lambda: not mariadb.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(30)%'"
                                        " AND ID <> CONNECTION_ID()"),
             10, "the killed client's statement to be gone")
    p.assert_serves()


def test_com_process_kill_closes_the_target_and_refuses_unknown_ids(mysql_proxy, mariadb):
    p = mysql_proxy()
    for target in (mariadb, p):
        victim = target.connect()
        w = target.wire()
        try:
            w.login("app", target.passwords["app"], "app")
            w.command(COM_PROCESS_KILL, struct.pack("<I", 4000000000))
            answer = w.read_packet()
            assert answer.is_err and parse_err(answer.payload).code == 1094, (target, answer)
            assert parse_err(answer.payload).message == "Unknown thread id: 4000000000"
            w.command(COM_PROCESS_KILL, struct.pack("<I", victim.thread_id()))
            answer = w.read_packet()
            assert answer.is_ok, (target, answer)
            assert error_of(lambda: victim.cursor().execute("SELECT 1")) is not None
            # The killer's connection goes on.
            assert w.query("SELECT 5") == [["5"]]
        finally:
            w.close()
            victim.close()


# -- ROW_COUNT(), FOUND_ROWS(), LAST_INSERT_ID(), SHOW WARNINGS across backends ---------------

SCRIPT = [
    "INSERT INTO fn_t (v) VALUES (1), (2), (3)",
    "UPDATE fn_t SET v = v + 1 WHERE id <= 2",
    "SELECT * FROM fn_t",
    "SELECT * FROM fn_t LIMIT 1",
    "DELETE FROM fn_t WHERE id > 100",
    "INSERT INTO fn_t (v) SELECT v FROM fn_t LIMIT 2",
    "SELECT nosuch FROM fn_t",
    "SELECT CAST('12abc' AS SIGNED)",
    "SHOW TABLES LIKE 'fn%'",
    # (An explicit id, `REPLACE INTO fn_t (id, v) VALUES (1, 10)`, is left out: see README,
    # LAST_INSERT_ID() after an explicit AUTO_INCREMENT value.)
    "REPLACE INTO fn_t (v) VALUES (10)",
    "DESCRIBE fn_t",
    "SHOW WARNINGS",
    "SET time_zone = '+01:00'",
    "CALL fn_p()",
    "UPDATE fn_t SET v = 0 WHERE id = 1",
]
CHECKS = [
    "SHOW ERRORS",
    "SELECT ROW_COUNT()",
    "SELECT FOUND_ROWS()",
    "SELECT found_rows() AS n, ROW_COUNT() rc",
    "SELECT LAST_INSERT_ID()",
    "SELECT LAST_INSERT_ID() AS id, ROW_COUNT()",
    "SHOW WARNINGS",
]


def run_script(target: MyTarget) -> list:
    """Each statement of SCRIPT followed by each check (the statement runs again before each
    check, on a fresh table each time the script starts)."""
    # CLIENT_FOUND_ROWS: an UPDATE's affected rows (and ROW_COUNT()) are the rows it matched.
    conn = target.connect(client_flag=pymysql.constants.CLIENT.FOUND_ROWS)
    answers = []
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS fn_t")
            cur.execute("CREATE TABLE fn_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
            cur.execute("CREATE OR REPLACE PROCEDURE fn_p() BEGIN SELECT * FROM seq_1_to_4; "
                        "UPDATE fn_t SET v = v WHERE id < 3; END")
            for statement in SCRIPT:
                for check in CHECKS:
                    error_of(lambda: cur.execute(statement))
                    while cur.nextset():  # a CALL's results
                        pass
                    cur.execute(check)
                    answers.append((statement, check, cur.fetchall()))
    finally:
        conn.close()
    return answers


class Interleaver:
    """Another client whose statements change ROW_COUNT(), FOUND_ROWS(), LAST_INSERT_ID() and the
    warnings of whatever backend serves it, in a loop until stopped."""

    def __init__(self, target: MyTarget):
        self.conn = target.connect()
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS fn_bg (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        self.stop = threading.Event()
        self.statements = 0
        self.errors: list = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        sqls = ["INSERT INTO fn_bg (v) VALUES (1), (2), (3), (4), (5), (6), (7)", "SELECT * FROM seq_1_to_9",
                "SELECT CAST('x9' AS SIGNED)", "UPDATE fn_bg SET v = v + 1 LIMIT 11", "SELECT 1 FROM seq_1_to_13"]
        try:
            with self.conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute(sqls[self.statements % len(sqls)])
                    if cur.description:
                        cur.fetchall()
                    self.statements += 1
        except Exception as e:  # reported by the test
            self.errors.append(e)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()
        return self.statements


def test_session_functions_answer_as_directly_while_others_share_the_backend(mysql_proxy, mariadb):
    # The other client runs in both (its table shows in SHOW TABLES); directly it has its own
    # session, through the proxy it shares the one backend with the script's client (a cap of
    # one): between any two statements of the script, its statements may run there.
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=10, metrics=True)
    results = []
    for target in (mariadb, p):
        other = Interleaver(target)
        try:
            results.append(run_script(target))
        finally:
            ran = other.close()
        assert not other.errors, other.errors
        assert ran >= 20, "the other client hardly ran"
    direct, proxied = results
    if not DIRECT:
        # Right without pinning: nothing pinned either client.
        pins = sum(v for (name, _), v in p.metrics().items() if name == "concierge_session_pins_total")
        assert pins == 0, p.metrics()
    for d, q in zip(direct, proxied):
        assert d == q, f"after {d[0]!r}, {d[1]!r}: direct {d[2]}, through the proxy {q[2]}"
    assert len(direct) == len(proxied) == len(SCRIPT) * len(CHECKS)
    # Spot checks of the direct answers (so the comparison is not of two wrong answers).
    answers = {(s, c): r for s, c, r in direct}
    assert answers[(SCRIPT[0], "SELECT ROW_COUNT()")] == ((3,),)
    assert answers[(SCRIPT[2], "SELECT FOUND_ROWS()")][0][0] >= 3
    assert answers[(SCRIPT[6], "SELECT ROW_COUNT()")] == ((-1,),)
    assert answers[(SCRIPT[7], "SHOW WARNINGS")][0][1] == 1292


def test_a_bare_select_of_session_functions_does_not_pin(mysql_proxy, mariadb):
    if DIRECT:
        pytest.skip("the proxy's pin metrics")
    p = mysql_proxy(metrics=True)
    conn = p.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM items WHERE id < 0")
            cur.execute("SELECT ROW_COUNT(), FOUND_ROWS(), CONNECTION_ID()")
            assert cur.fetchone() == (0, 1, conn.thread_id())
            # Not answerable by the proxy, and run without a backend: it pins, with its reason.
            cur.execute("SELECT ROW_COUNT() + 1")
            cur.fetchall()
        pins = {labels: v for (name, labels), v in p.metrics().items() if name == "concierge_session_pins_total"}
        assert any(("reason", "row_count_found_rows") in labels and v >= 1 for labels, v in pins.items()), pins
    finally:
        conn.close()


@pytest.mark.proxy_only
def test_kill_query_of_a_client_waiting_for_a_backend_fails_its_statement_with_1317(mysql_proxy, mariadb):
    # One backend, held by a transaction: the victim's statement waits for it; KILL QUERY ends
    # the wait with the server's error for a killed statement, and the victim goes on.
    p = mysql_proxy(max_connections_percent=1, connection_borrow_timeout=30)
    holder, victim, killer = p.connect(), p.connect(), p.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
        waiting = Runner(victim, "SELECT 2")
        # A KILL QUERY before the victim's command reaches the proxy is a no-op (nothing runs):
        # repeated until the statement ends (only a kill ends it: the backend is held for 30 s).
        deadline = time.monotonic() + 5
        with killer.cursor() as k:
            while True:
                k.execute(f"KILL QUERY {victim.thread_id()}")
                waiting.thread.join(0.2)
                if not waiting.thread.is_alive() or time.monotonic() > deadline:
                    break
        waiting.join()
        assert waiting.error == (1317, "Query execution was interrupted"), (waiting.result, waiting.error)
        with holder.cursor() as cur:
            cur.execute("COMMIT")
        with victim.cursor() as cur:
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)
    finally:
        for c in (holder, victim, killer):
            c.close()


def test_the_mariadb_client_and_mysql_connector_see_the_servers_kill_errors(mysql_proxy, mariadb):
    import mysql.connector

    p = mysql_proxy()
    seen: list = []
    for target in (mariadb, p):
        other = target.connect("app_monitor", database=None)
        try:
            oid = other.thread_id()
            cli = target.cli(f"KILL QUERY {oid}", check=False)
            conn = mysql.connector.connect(host=target.host, port=target.port, user="app",
                                           password=target.passwords["app"], database="app", ssl_disabled=True)
            try:
                cur = conn.cursor()
                cur.execute("SELECT CONNECTION_ID()")
                own = cur.fetchone()[0]
                assert own == conn.connection_id, (own, conn.connection_id)
                with pytest.raises(mysql.connector.errors.Error) as exc:
                    cur.execute(f"KILL {oid}")
                connector = (exc.value.errno, exc.value.sqlstate, exc.value.msg)
            finally:
                conn.close()
            seen.append((cli.returncode, cli.stderr.strip(), connector))
        finally:
            other.close()
        assert seen[-1] == (1, f"ERROR 1095 (HY000) at line 1: You are not owner of thread {oid}",
                            (1095, "HY000", f"You are not owner of thread {oid}")), (target, seen)


def test_a_pipelined_kill_is_answered_in_its_turn(mysql_proxy, mariadb):
    # A client that sends a KILL behind a running statement (and more behind it) gets the
    # answers in order, as from the server.
    p = mysql_proxy()
    for target in (mariadb, p):
        w = target.wire()
        try:
            w.login("app", target.passwords["app"], "app")
            w.send(b"".join(
                struct.pack("<I", len(sql) + 1)[:3] + b"\x00" + b"\x03" + sql
                for sql in (b"SELECT SLEEP(0.3)", b"KILL QUERY 4000000000", b"SELECT 9")))
            assert w.read_result() == [["0"]], target
            err = w.read_result()
            assert (err.code, err.message) == (1094, "Unknown thread id: 4000000000"), (target, err)
            assert w.read_result() == [["9"]], target
        finally:
            w.close()


def raw_result(w, sql: str, deprecate_eof: bool) -> list[tuple[int, bytes]]:
    """A result set's packets (sequence id, payload) as sent."""
    w.command(0x03, sql.encode())
    first = w.read_packet()
    packets = [(first.seq, first.payload)]
    columns, _ = read_lenenc_int(first.payload, 0)
    for _ in range(columns + (0 if deprecate_eof else 1)):
        p = w.read_packet()
        packets.append((p.seq, p.payload))
    while True:
        p = w.read_packet()
        packets.append((p.seq, p.payload))
        if p.payload[:1] in (b"\xfe", b"\xff") and len(p.payload) < 9:
            return packets


@pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate-eof"])
def test_the_proxys_answers_are_mariadbs_bytes(mysql_proxy, mariadb, deprecate_eof):
    p = mysql_proxy()
    caps = DEFAULT_CAPABILITIES | (CLIENT_DEPRECATE_EOF | CLIENT_SESSION_TRACK if deprecate_eof else 0)
    seen = []
    for target in (mariadb, p):
        w = target.wire()
        try:
            w.login("app", target.passwords["app"], "app", capabilities=caps)
            # (A new MariaDB session's FOUND_ROWS() is what its server thread had last, from a
            # previous connection: a SELECT makes it the session's own.)
            assert w.query("SELECT 1 FROM seq_1_to_3") == [["1"]] * 3
            assert w.query("DELETE FROM items WHERE id < 0").is_ok
            one = raw_result(w, "SELECT ROW_COUNT() AS rc, found_rows( ) `Found`", deprecate_eof)
            ident = raw_result(w, "SELECT CONNECTION_ID()", deprecate_eof)
            own = str(w.greeting.connection_id).encode()
            # The id's row: its length-encoded text, which is the handshake's id.
            assert ident[-2][1] == bytes([len(own)]) + own, (target, ident)
            seen.append((one, ident[:-2] + ident[-1:]))
        finally:
            w.close()
    assert seen[0] == seen[1], seen
