"""Statements that reset session state, prepared-statement bookkeeping around them, two-phase
commit and notifications: what real drivers do, through the proxy as directly.

asyncpg's pool runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` on every
connection it releases; psycopg sends DEALLOCATE ALL, DISCARD ALL and LISTEN/NOTIFY. None of them
may pin a session for good, desynchronise the proxy's statements, or show the client anything a
direct connection would not.
"""

import asyncio
import struct

import psycopg
import pytest

from helpers import DIRECT, BackendSampler
from pgwire import ServerError, message

ASYNCPG_RESET = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"


def parse(name: str, sql: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(name: str, portal: str = "") -> bytes:
    return message(b"B", portal.encode() + b"\0" + name.encode() + b"\0"
                   + struct.pack("!hh", 0, 0) + struct.pack("!h", 0))


EXECUTE = message(b"E", b"\0" + struct.pack("!i", 0))
SYNC = message(b"S")


def run_statement(c, name: str) -> list[str]:
    """Bind, Execute, Sync of statement `name`: the rows (first column), or ServerError."""
    c.send(bind(name) + EXECUTE + SYNC)
    rows, error = [], None
    while True:
        msg = c.recv()
        assert msg is not None, "connection closed"
        if msg.type == b"D":
            n = struct.unpack("!i", msg.payload[2:6])[0]
            rows.append(msg.payload[6:6 + n].decode())
        elif msg.type == b"E":
            from pgwire import parse_error_fields
            error = ServerError(parse_error_fields(msg.payload))
        elif msg.type == b"Z":
            if error:
                raise error
            return rows


def prepare(c, name: str, sql: str) -> None:
    c.send(parse(name, sql) + SYNC)
    c.expect(b"1")
    c.expect(b"Z")


@pytest.mark.proxy_only
def test_asyncpgs_reset_query_does_not_pin(proxy):
    # One backend. Were the reset query to pin (RESET ALL did), the next client would wait for
    # the backend until its borrow timeout.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    with p.connect() as a, p.connect() as b:
        a.execute(ASYNCPG_RESET)
        assert b.execute("select 1").fetchone()[0] == 1
        a.execute(ASYNCPG_RESET)
        assert b.execute("select 2").fetchone()[0] == 2
    assert "session pinned" not in p.log(), p.log()


def test_reset_all_returns_to_the_startup_values_and_reports_them(proxy):
    # RESET ALL goes back to the values of the startup packet (PostgreSQL's reset values), and
    # reports what changed, as a direct session does; another client on the same backend
    # in between changes nothing of that.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.connect(application_name="mine", options="-c DateStyle=German") as a, \
            p.connect(application_name="other") as b:
        a.execute("SET application_name = 'changed'")
        a.execute("SET DateStyle = 'ISO, YMD'")
        assert b.execute("show application_name").fetchone()[0] == "other"
        a.execute("RESET ALL")
        assert a.info.parameter_status("application_name") == "mine"
        assert a.info.parameter_status("DateStyle") == "German, DMY"
        assert a.execute("show application_name").fetchone()[0] == "mine"
        assert a.execute("show DateStyle").fetchone()[0] == "German, DMY"
        assert b.execute("show application_name").fetchone()[0] == "other"
        assert b.execute("show DateStyle").fetchone()[0] == "ISO, MDY"
        # Nothing changed: nothing is reported (a direct session reports nothing either).
        with p.wire() as c:
            c.startup("app", p.passwords["app"], application_name="wire")
            c.send(message(b"Q", b"RESET ALL\0"))
            types = []
            while (m := c.recv()).type != b"Z":
                types.append(m.type)
            assert types == [b"C"], types


def test_reset_all_inside_a_transaction_applies_there(proxy):
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)
    with p.connect(application_name="mine") as a:
        a.execute("SET application_name = 'changed'")
        with a.transaction():
            a.execute("RESET ALL")
            assert a.execute("show application_name").fetchone()[0] == "mine"
        assert a.execute("show application_name").fetchone()[0] == "mine"
        with a.transaction():
            a.execute("SET application_name = 'again'")
        a.execute("BEGIN")
        a.execute("RESET ALL")
        a.execute("ROLLBACK")
        assert a.execute("show application_name").fetchone()[0] == "again"
        assert a.info.parameter_status("application_name") == "again"


def test_discard_all_resets_the_session_and_unpins_it(proxy, pg):
    # A SET of an untracked setting pins; DISCARD ALL returns everything to the defaults, so the
    # session no longer needs its backend: with one backend, another client gets it.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    default_work_mem = pg.scalar("show work_mem")
    with p.connect(application_name="mine") as a, p.connect() as b:
        a.execute("SET work_mem = '1234kB'")
        a.execute("PREPARE q AS SELECT 42")
        a.execute("DISCARD ALL")
        assert a.execute("show work_mem").fetchone()[0] == default_work_mem
        assert a.execute("show application_name").fetchone()[0] == "mine"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE q")
        assert b.execute("select 1").fetchone()[0] == 1
        assert b.execute("show work_mem").fetchone()[0] == default_work_mem


def test_deallocate_all_keeps_the_statements_in_sync(proxy):
    # The failure of shared/evidence/psycopg-prepared-desync.trace: after DEALLOCATE ALL, every
    # simple Query made the proxy forget what the backend still had, so the next use of a
    # statement prepared since then was answered `prepared statement "concierge_..." already
    # exists` (an internal name reaching the client).
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)
    with p.wire() as c, p.connect() as other:
        c.startup("app", p.passwords["app"])
        prepare(c, "s1", "select 1")
        assert run_statement(c, "s1") == ["1"]
        c.query("DEALLOCATE ALL")
        with pytest.raises(ServerError) as err:
            run_statement(c, "s1")
        assert err.value.sqlstate == "26000" and '"s1"' in err.value.message
        prepare(c, "s1", "select 11")
        prepare(c, "s2", "select 2")
        for round in range(3):
            assert c.query("select 3") == [("3",)]
            other.execute("select 1")
            assert run_statement(c, "s2") == ["2"]
            assert run_statement(c, "s1") == ["11"]
        # DISCARD ALL forgets them too, and a redefinition afterwards works.
        c.query("DISCARD ALL")
        with pytest.raises(ServerError) as err:
            run_statement(c, "s2")
        assert err.value.sqlstate == "26000" and '"s2"' in err.value.message
        prepare(c, "s2", "select 22")
        assert run_statement(c, "s2") == ["22"]
        assert c.query("select 4") == [("4",)]
        assert run_statement(c, "s2") == ["22"]


def test_deallocate_all_in_a_pipeline_before_a_redefinition(proxy):
    # Messages already on their way when DEALLOCATE ALL runs: a statement defined after it
    # survives it, one defined before does not.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "old", "select 'old'")
        assert run_statement(c, "old") == ["old"]
        c.send(message(b"Q", b"DEALLOCATE ALL\0") + parse("new", "select 'new'") + bind("new") + EXECUTE + SYNC)
        c.expect(b"C")
        c.expect(b"Z")
        c.expect(b"1")
        c.expect(b"2")
        assert c.expect(b"D").payload.endswith(b"new")
        c.expect(b"C")
        c.expect(b"Z")
        with pytest.raises(ServerError) as err:
            run_statement(c, "old")
        assert err.value.sqlstate == "26000"
        assert run_statement(c, "new") == ["new"]


def test_deallocate_of_a_protocol_level_statement(proxy):
    # psycopg (with a libpq before 17) evicts statements with DEALLOCATE name: the proxy knows
    # the statement by another name on the backend, and the client must see PostgreSQL's answers.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "_pg3_0", "select 5")
        assert run_statement(c, "_pg3_0") == ["5"]
        c.send(message(b"Q", b"DEALLOCATE _pg3_0\0"))
        assert c.expect(b"C").payload == b"DEALLOCATE\0"
        c.expect(b"Z")
        with pytest.raises(ServerError) as err:
            run_statement(c, "_pg3_0")
        assert err.value.sqlstate == "26000" and '"_pg3_0"' in err.value.message
        # Inside a transaction, and pipelined behind other messages.
        prepare(c, "a", "select 6")
        prepare(c, "b", "select 7")
        assert c.query("BEGIN") == []
        assert run_statement(c, "a") == ["6"]
        c.send(bind("b") + EXECUTE + SYNC + message(b"Q", b"DEALLOCATE b\0") + message(b"Q", b"COMMIT\0"))
        for expected in (b"2", b"D", b"C", b"Z", b"C", b"Z", b"C", b"Z"):
            c.expect(expected)
        with pytest.raises(ServerError):
            run_statement(c, "b")
        assert run_statement(c, "a") == ["6"]
        # In a failed transaction: PostgreSQL's error, and the statement stays.
        assert c.query("BEGIN") == []
        with pytest.raises(ServerError):
            c.query("select 1/0")
        with pytest.raises(ServerError) as err:
            c.query("DEALLOCATE a")
        assert err.value.sqlstate == "25P02"
        assert c.query("ROLLBACK") == []
        assert run_statement(c, "a") == ["6"]
        # A name it never prepared: PostgreSQL's error.
        with pytest.raises(ServerError) as err:
            c.query("DEALLOCATE nope")
        assert err.value.sqlstate == "26000"


def test_psycopg_prepared_statements_survive_deallocate_all_and_pipelines(proxy):
    # The psycopg 3 scenario of the evidence: an autocommit connection that prepares its
    # statements (threshold 0), runs DEALLOCATE ALL, and keeps going while another client uses
    # pipeline mode and leaves inside an open transaction.
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=0) as a:
        a.execute("drop table if exists resets_t")
        a.execute("create table resets_t (id text primary key)")
        for i in range(5):
            a.execute("select %s::int", [i])
        a.execute("DEALLOCATE ALL")
        for round in range(4):
            a.execute("insert into resets_t values (%s)", [f"r{round}"])
            with p.connect(autocommit=False) as b:
                with b.pipeline():
                    b.execute("insert into resets_t values (%s)", [f"b{round}"])
                    b.commit()
                    b.execute("select * from resets_t")
                # leaves inside the open transaction of the select
            # A simple Query (no parameters, not prepared), then the prepared insert again.
            a.execute("select * from resets_t", prepare=False).fetchall()
            assert a.execute("select count(*) from resets_t where id = %s", [f"r{round}"]).fetchone()[0] == 1
        a.execute("drop table resets_t")


@pytest.mark.proxy_only
def test_two_phase_commit_does_not_pin(proxy, pg):
    # PREPARE TRANSACTION ends the transaction (it is not the SQL PREPARE statement): the backend
    # goes back to the pool and any client may COMMIT PREPARED it.
    assert int(pg.scalar("show max_prepared_transactions")) > 0
    pg.query("drop table if exists twophase")
    pg.query("create table twophase (id int)")
    pg.query("grant all on twophase to app")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    with p.connect() as a, p.connect() as b:
        a.execute("BEGIN")
        a.execute("insert into twophase values (1)")
        a.execute("PREPARE TRANSACTION 'concierge-2pc-1'")
        assert b.execute("select count(*) from twophase").fetchone()[0] == 0
        b.execute("COMMIT PREPARED 'concierge-2pc-1'")
        assert a.execute("select count(*) from twophase").fetchone()[0] == 1
        a.execute("BEGIN")
        a.execute("insert into twophase values (2)")
        a.execute("PREPARE TRANSACTION 'concierge-2pc-2'")
        b.execute("ROLLBACK PREPARED 'concierge-2pc-2'")
        assert b.execute("select count(*) from twophase").fetchone()[0] == 1
    assert "session pinned" not in p.log(), p.log()


def test_a_notification_from_the_clients_own_session_carries_its_pid(proxy):
    p = proxy(max_connections_percent=2)
    with p.connect() as a:
        a.execute("LISTEN concierge_channel")
        a.execute("NOTIFY concierge_channel, 'hello'")
        notification = next(a.notifies(timeout=5, stop_after=1))
        assert notification.payload == "hello"
        assert notification.pid == a.info.backend_pid
        # From another session: that session's pid (its BackendKeyData), as PostgreSQL shows it.
        with p.connect() as b:
            b.execute("NOTIFY concierge_channel, 'other'")
            sender = b.info.backend_pid
        notification = next(a.notifies(timeout=5, stop_after=1))
        assert notification.payload == "other"
        assert notification.pid == sender
        a.execute("UNLISTEN *")


def test_asyncpg_pool_over_fewer_backends(proxy, pg):
    # asyncpg's pool (min 10, max 20) over 5 backends: 500 tasks, each a transaction with
    # prepared statements; every release runs asyncpg's reset query.
    import asyncpg  # scripts/test.sh installs it
    pg.query("drop table if exists asyncpg_pool")
    pg.query("create table asyncpg_pool (id int primary key, v text)")
    pg.query("grant all on asyncpg_pool to app")
    p = proxy(max_connections_percent=5, connection_borrow_timeout=30)

    async def main() -> int:
        pool = await asyncpg.create_pool(host=p.host, port=p.port, user="app", password=p.passwords["app"],
                                         database="app", min_size=10, max_size=20)
        async def task(i: int) -> int:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("insert into asyncpg_pool values ($1, $2)", i, f"v{i}")
                    statement = await conn.prepare("select v from asyncpg_pool where id = $1")
                    assert await statement.fetchval(i) == f"v{i}"
                    return await conn.fetchval("select count(*) from asyncpg_pool where id <= $1", i)
        try:
            results = await asyncio.gather(*(task(i) for i in range(500)))
        finally:
            await pool.close()
        return len(results)

    with BackendSampler(pg) as sampler:
        assert asyncio.run(asyncio.wait_for(main(), 120)) == 500
    assert pg.scalar("select count(*) from asyncpg_pool") == 500
    if not DIRECT:
        assert sampler.max_seen <= 5, sampler.max_seen
        assert "session pinned" not in p.log(), p.log()


@pytest.mark.proxy_only
def test_the_proxys_statement_names_never_reach_a_client(proxy):
    # A DEALLOCATE ALL the proxy cannot see (inside a DO block) removes the backend's statements
    # behind its back. The client's next use fails as it would directly (naming its own
    # statement, not the proxy's), and the one after it works: the proxy prepares it again.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "mine", "select 8")
        assert run_statement(c, "mine") == ["8"]
        c.query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        with pytest.raises(ServerError) as err:
            run_statement(c, "mine")
        assert err.value.sqlstate == "26000"
        assert "concierge_" not in str(err.value.fields), err.value.fields
        assert '"mine"' in err.value.message
        assert run_statement(c, "mine") == ["8"]
    assert "one of the proxy's statements" in p.log()


def test_reset_all_pipelined_behind_a_set(proxy):
    # Two simple Queries in one write: the SET's ParameterStatus is the SET's, RESET ALL's is
    # the return to the startup value, each before its own ReadyForQuery.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"], application_name="mine")
        c.send(message(b"Q", b"SET application_name = 'x'\0") + message(b"Q", b"RESET ALL\0"))
        seen = []
        while len([m for m in seen if m[0] == b"Z"]) < 2:
            m = c.recv()
            seen.append((m.type, m.payload.split(b"\0")[1] if m.type == b"S" else b""))
        assert seen == [(b"C", b""), (b"S", b"x"), (b"Z", b""), (b"C", b""), (b"S", b"mine"), (b"Z", b"")], seen
        assert c.query("show application_name") == [("mine",)]


def test_the_unnamed_statement_is_the_clients_own_across_syncs(proxy):
    # PostgreSQL keeps the unnamed statement across Syncs (libpq: PQprepare(conn, "", ...) then
    # PQexecPrepared(conn, "", ...)). Through the proxy another client's unnamed statement may
    # sit on the backend the next transaction gets: the client must run its own, never that one.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as a, p.wire() as b:
        a.startup("app", p.passwords["app"])
        b.startup("app", p.passwords["app"])
        # B has no unnamed statement yet: PostgreSQL's error, even if the backend holds one.
        a.send(parse("", "select 'A''s statement'") + SYNC)
        a.expect(b"1")
        a.expect(b"Z")
        with pytest.raises(ServerError) as err:
            run_statement(b, "")
        assert err.value.sqlstate == "26000"
        b.send(parse("", "select 'B''s statement'") + SYNC)
        b.expect(b"1")
        b.expect(b"Z")
        assert run_statement(a, "") == ["A's statement"]
        assert run_statement(b, "") == ["B's statement"]
        assert run_statement(a, "") == ["A's statement"]
        # A simple Query destroys it.
        assert a.query("select 1") == [("1",)]
        with pytest.raises(ServerError):
            run_statement(a, "")
        assert run_statement(b, "") == ["B's statement"]


def test_a_query_skipped_after_an_extended_error_does_not_keep_the_backend(proxy):
    # After an error PostgreSQL skips every message up to Sync, a simple Query included: it gets
    # no ReadyForQuery of its own. The proxy counted one and kept the backend for ever.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    with p.wire() as a, p.connect() as other:
        a.startup("app", p.passwords["app"])
        a.send(bind("nosuch") + message(b"Q", b"select 1\0") + SYNC)
        with pytest.raises(ServerError) as err:
            a.expect(b"2")
        assert err.value.sqlstate == "26000"
        a.expect(b"Z")
        assert other.execute("select 2").fetchone()[0] == 2
        assert a.query("select 3") == [("3",)]


def test_a_startup_parameter_wins_over_the_same_one_in_options(proxy):
    # PostgreSQL applies `options` first, then the packet's own parameters.
    p = proxy()
    with p.wire() as c:
        c.startup("app", p.passwords["app"], DateStyle="ISO, MDY", options="-c DateStyle=German")
        assert c.params["DateStyle"] == "ISO, MDY"
        assert c.query("show DateStyle") == [("ISO, MDY",)]


def _types_until_ready(c) -> list:
    seen = []
    while True:
        m = c.recv()
        seen.append((m.type, m.payload.split(b"\0")[1].decode() if m.type == b"S" else ""))
        if m.type == b"Z":
            return seen


def test_reset_of_a_startup_parameter_returns_to_its_startup_value(proxy):
    # A startup packet's value is the session default: RESET name and SET name TO DEFAULT go
    # back to it (and report nothing when nothing changes), through either protocol.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"], TimeZone="UTC", application_name="x",
                  options="-c work_mem=5MB")
        for sql in ("reset TimeZone", "set application_name to default", "set TimeZone = default"):
            c.send(message(b"Q", sql.encode() + b"\0"))
            assert _types_until_ready(c) == [(b"C", ""), (b"Z", "")], sql
        c.query("set application_name = 'y'")
        c.send(message(b"Q", b"reset application_name\0"))
        assert _types_until_ready(c) == [(b"C", ""), (b"S", "x"), (b"Z", "")]
        c.query("set work_mem = '1MB'")
        c.query("reset work_mem")
        assert c.query("show work_mem") == [("5MB",)]
        c.query("set work_mem = '2MB'")
        c.query("set work_mem to default")
        assert c.query("show work_mem") == [("5MB",)]
        # The extended protocol.
        c.query("set application_name = 'z'")
        c.send(parse("", "reset all") + bind("") + EXECUTE + SYNC)
        assert _types_until_ready(c) == [(b"1", ""), (b"2", ""), (b"C", ""), (b"S", "x"), (b"Z", "")]
        c.send(parse("", "reset TimeZone") + bind("") + EXECUTE + SYNC)
        assert _types_until_ready(c) == [(b"1", ""), (b"2", ""), (b"C", ""), (b"Z", "")]
        assert c.query("show TimeZone") == [("UTC",)]
        assert c.query("show application_name") == [("x",)]


def test_deallocate_all_through_the_extended_protocol(proxy):
    # Executing a statement whose text is DEALLOCATE ALL removes every statement, itself
    # included, for the messages after it in the same batch too.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        c.send(parse("s2", "deallocate all") + bind("s2") + EXECUTE + bind("s2", "p1") + SYNC)
        for expected in (b"1", b"2", b"C"):
            c.expect(expected)
        with pytest.raises(ServerError) as err:
            c.expect(b"2")
        assert err.value.sqlstate == "26000"
        c.expect(b"Z")
        # A failed DEALLOCATE ALL (in a failed transaction) removes nothing.
        prepare(c, "keep", "select 'kept'")
        assert c.query("begin") == []
        with pytest.raises(ServerError):
            c.query("select 1/0")
        with pytest.raises(ServerError):
            c.query("deallocate all")
        assert c.query("rollback") == []
        assert run_statement(c, "keep") == ["kept"]


def test_a_parse_of_a_name_in_use_fails_as_in_postgresql(proxy):
    # 42P05 naming the client's statement; the first definition stays; the rest of the batch is
    # skipped up to Sync. Outside and inside a transaction.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "s1", "select 'first'")
        for in_transaction in (False, True):
            if in_transaction:
                assert c.query("begin") == []
            c.send(parse("s1", "select 'second'") + bind("s1") + EXECUTE + SYNC)
            with pytest.raises(ServerError) as err:
                c.expect(b"1")
            assert err.value.sqlstate == "42P05"
            assert err.value.message == 'prepared statement "s1" already exists'
            c.expect(b"Z")
            if in_transaction:
                assert c.query("rollback") == []
            assert run_statement(c, "s1") == ["first"]


def test_messages_postgresql_skips_after_an_error_change_nothing(proxy):
    # After an error PostgreSQL skips everything up to Sync: a Close there closes nothing and is
    # not answered, whether it was sent with the failing message or after its error arrived.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "s3", "select 42")
        c.send(bind("nosuch") + message(b"C", b"Ss3\0") + SYNC)
        with pytest.raises(ServerError):
            c.expect(b"2")
        c.expect(b"Z")
        assert run_statement(c, "s3") == ["42"]
        c.send(bind("nosuch") + message(b"H"))
        with pytest.raises(ServerError):
            c.expect(b"2")
        c.send(message(b"C", b"Ss3\0") + message(b"Q", b"select 1\0") + SYNC)
        c.expect(b"Z")  # no CloseComplete, no result of the skipped Query
        assert run_statement(c, "s3") == ["42"]
        assert c.query("select 2") == [("2",)]


def test_errors_name_the_clients_statement(proxy):
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        c.send(parse("s2", "select $1::int + 1") + bind("s2") + message(b"C", b"Ss2\0") + message(b"H"))
        c.expect(b"1")
        with pytest.raises(ServerError) as err:
            c.expect(b"2")
        assert err.value.message == 'bind message supplies 0 parameters, but prepared statement "s2" requires 1'
        c.send(SYNC)
        c.expect(b"Z")


def test_a_parse_in_a_failed_transaction_fails(proxy):
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "s1", "select 1")
        assert run_statement(c, "s1") == ["1"]
        assert c.query("begin") == []
        with pytest.raises(ServerError):
            c.query("select 1/0")
        c.send(parse("s2", "select 1") + SYNC)
        with pytest.raises(ServerError) as err:
            c.expect(b"1")
        assert err.value.sqlstate == "25P02"
        c.expect(b"Z")
        assert c.query("rollback") == []
        with pytest.raises(ServerError):
            run_statement(c, "s2")


def test_a_fresh_parse_infers_parameter_types_after_ddl(proxy, pg):
    # The backend holds a statement of the same text prepared before the table changed; a
    # client's new Parse must get the types PostgreSQL infers now (asyncpg's codec tests).
    pg.query("drop table if exists ddl_types")
    pg.query("create table ddl_types (v int)")
    pg.query("grant all on ddl_types to app")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)

    def parameter_type(c, name: str) -> int:
        c.send(message(b"D", b"S" + name.encode() + b"\0") + SYNC)
        description = c.expect(b"t")
        c.expect(b"n")
        c.expect(b"Z")
        return struct.unpack("!I", description.payload[2:6])[0]

    with p.wire() as a:
        a.startup("app", p.passwords["app"])
        prepare(a, "ins", "insert into ddl_types values ($1)")
        assert parameter_type(a, "ins") == 23  # int4
    pg.query("drop table ddl_types")
    pg.query("create table ddl_types (v date)")
    pg.query("grant all on ddl_types to app")
    with p.wire() as b:
        b.startup("app", p.passwords["app"])
        prepare(b, "ins", "insert into ddl_types values ($1)")
        assert parameter_type(b, "ins") == 1082  # date
        assert c_query_ok(b)


def c_query_ok(c) -> bool:
    return c.query("select 1") == [("1",)]


def test_a_cancel_reaches_only_the_statement_it_was_sent_for(proxy):
    # libpq's cancel returns when the server closed the cancel connection; the client's next
    # statement must not be hit by a cancel still on its way (asyncpg's COPY and timeout tests).
    import threading
    import time
    p = proxy(max_connections_percent=3, connection_borrow_timeout=5)
    with p.connect() as a, p.connect() as watcher:
        for attempt in range(5):
            outcome = {}
            def run():
                try:
                    a.execute("select pg_sleep(5)")
                    outcome["result"] = "finished"
                except psycopg.errors.QueryCanceled:
                    outcome["result"] = "cancelled"
            thread = threading.Thread(target=run)
            thread.start()
            # Until the statement runs on the backend (a cancel before that has nothing to do).
            wait_until = time.monotonic() + 5
            while time.monotonic() < wait_until:
                if watcher.execute("select count(*) from pg_stat_activity where query = 'select pg_sleep(5)' "
                                   "and state = 'active'").fetchone()[0]:
                    break
            a.cancel()
            thread.join(10)
            assert outcome.get("result") == "cancelled", outcome
            assert a.execute("select pg_sleep(0.2), 1").fetchone()[1] == 1


@pytest.mark.proxy_only
def test_a_cancel_while_waiting_for_a_backend_cancels_the_statement(proxy):
    import threading
    import time
    p = proxy(max_connections_percent=1, connection_borrow_timeout=30)
    with p.connect() as a, p.connect(autocommit=False) as b:
        b.execute("select 1")  # B holds the only backend in its transaction
        outcome = {}
        def run():
            started = time.monotonic()
            try:
                a.execute("select 1")
                outcome["result"] = "ran"
            except psycopg.errors.QueryCanceled:
                outcome["result"] = "cancelled"
            outcome["seconds"] = time.monotonic() - started
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)
        a.cancel()
        thread.join(10)
        assert outcome.get("result") == "cancelled", outcome
        assert outcome["seconds"] < 5, outcome
        b.commit()
        assert a.execute("select 2").fetchone()[0] == 2


def test_sql_execute_of_a_protocol_level_statement(proxy):
    # asyncpg's test_prepare_explicitly_named: a statement prepared with the protocol under a
    # name, then run with SQL EXECUTE (the backend knows it under the proxy's name).
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        c.send(parse("foobar", "select $1::int + 1") + SYNC)
        c.expect(b"1")
        c.expect(b"Z")
        assert c.query("EXECUTE foobar(41)") == [("42",)]
        with pytest.raises(ServerError) as err:
            c.query("execute foobar")
        assert err.value.sqlstate == "42601"
        assert "foobar" in err.value.message and "concierge_" not in err.value.message
        assert c.query("execute \"foobar\" (1)") == [("2",)]
        # A named statement that runs it (asyncpg prepares every query under a name), and
        # another client whose `foobar` is another statement.
        with p.wire() as other:
            other.startup("app", p.passwords["app"])
            prepare(other, "foobar", "select $1::int * 100")
            prepare(other, "runner", "EXECUTE foobar(3)")
            prepare(c, "runner", "EXECUTE foobar(3)")
            assert run_statement(c, "runner") == ["4"]
            assert run_statement(other, "runner") == ["300"]
            assert run_statement(c, "runner") == ["4"]
        # Through the extended protocol (asyncpg's fetchval('EXECUTE foobar')).
        c.send(parse("", "EXECUTE foobar(9)") + bind("") + EXECUTE + SYNC)
        for expected in (b"1", b"2"):
            c.expect(expected)
        assert c.expect(b"D").payload.endswith(b"10")
        c.expect(b"C")
        c.expect(b"Z")


def test_pipelined_statement_bookkeeping_in_one_batch(proxy):
    # Shrunk from the fuzzer: a repeated Parse then a Close in one batch (the error names the
    # client's statement, and the skipped Close closes nothing); a Close of the unnamed statement.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "s1", "select 'one'")
        c.send(parse("s1", "select 'two'") + message(b"C", b"Ss1\0") + SYNC)
        with pytest.raises(ServerError) as err:
            c.expect(b"1")
        assert err.value.message == 'prepared statement "s1" already exists'
        c.expect(b"Z")
        assert run_statement(c, "s1") == ["one"]
        prepare(c, "", "select 'unnamed'")
        c.send(message(b"C", b"S\0") + bind("") + SYNC)
        c.expect(b"3")
        with pytest.raises(ServerError) as err:
            c.expect(b"2")
        assert err.value.sqlstate == "26000"
        c.expect(b"Z")


def test_a_batch_after_a_failed_one_sees_what_postgresql_did(proxy):
    # Two batches in one write: the first fails before its Parse, Close or unnamed Parse runs,
    # so PostgreSQL skips them; the second must find the statements as PostgreSQL left them.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "kept", "select 'kept'")
        prepare(c, "", "select 'old unnamed'")
        c.send(bind("nosuch") + parse("s3", "select 'first'") + message(b"C", b"Skept\0")
               + parse("", "select 'new unnamed'") + SYNC
               + parse("s3", "select 'second'") + bind("kept") + EXECUTE + bind("") + EXECUTE + SYNC)
        with pytest.raises(ServerError):
            c.expect(b"2")
        c.expect(b"Z")
        c.expect(b"1")  # s3 did not exist: the second Parse creates it
        c.expect(b"2")
        assert c.expect(b"D").payload.endswith(b"kept")  # the Close was skipped
        c.expect(b"C")
        c.expect(b"2")
        assert c.expect(b"D").payload.endswith(b"old unnamed")
        c.expect(b"C")
        c.expect(b"Z")
        assert run_statement(c, "s3") == ["second"]


@pytest.mark.proxy_only
def test_a_lone_driver_set_pipelined_before_begin_does_not_pin(proxy):
    # `SET lock_timeout = 0` and `BEGIN` as two Queries in one write: the SET commits by itself
    # before the BEGIN; the proxy took the batch's last status (in a transaction) for the SET's.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    with p.wire() as c, p.connect() as other:
        c.startup("app", p.passwords["app"])
        c.send(message(b"Q", b"set lock_timeout = 0\0") + message(b"Q", b"begin read only\0"))
        for expected in (b"C", b"Z", b"C", b"Z"):
            c.expect(expected)
        assert c.query("commit") == []
        assert other.execute("select 1").fetchone()[0] == 1
        assert c.query("show lock_timeout") == [("0",)]
    assert "session pinned" not in p.log()


def test_a_skipped_query_does_not_destroy_the_unnamed_statement(proxy):
    # A simple Query destroys the unnamed statement, unless PostgreSQL skips it after an error
    # in the extended messages before it (up to Sync).
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        prepare(c, "", "select 'kept'")
        c.send(message(b"D", b"Pnosuch\0") + message(b"Q", b"select 1\0") + SYNC)
        with pytest.raises(ServerError):
            c.expect(b"T")
        c.expect(b"Z")
        assert run_statement(c, "") == ["kept"]


@pytest.mark.proxy_only
def test_a_reset_does_not_release_a_pin_taken_after_it(proxy):
    # `UNLISTEN *; LISTEN x` in one Query, and UNLISTEN * then LISTEN in one write: the session
    # listens afterwards and must keep its backend (another client must not get its
    # notifications, nor its state).
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)

    def notified(c, other, channel: str) -> None:
        for _ in range(3):
            other.execute("select 1")  # were the backend released, another client would use it
        other.execute(f"notify {channel}, 'x'")
        c.send(message(b"Q", b"select 1\0"))
        seen = []
        while (m := c.recv()).type != b"Z":
            seen.append(m.type)
        while b"A" not in seen:
            seen.append(c.recv(5).type)  # a notification may come after the query's answer

    with p.wire() as c, p.connect() as other:
        c.startup("app", p.passwords["app"])
        assert c.query("unlisten *; listen fz_after") == []
        notified(c, other, "fz_after")
        c.send(message(b"Q", b"unlisten *\0") + message(b"Q", b"listen fz_after2\0"))
        for expected in (b"C", b"Z", b"C", b"Z"):
            c.expect(expected)
        notified(c, other, "fz_after2")
    log = p.log()
    assert "session unpinned" not in log, log


def _parameter_types(c, name: str) -> list[int]:
    """Describe of statement `name` in its own Sync: the parameter type OIDs."""
    c.send(message(b"D", b"S" + name.encode() + b"\0") + SYNC)
    t = c.expect(b"t")
    (count,) = struct.unpack("!h", t.payload[:2])
    c.expect(b"T", b"n")
    c.expect(b"Z")
    return list(struct.unpack(f"!{count}I", t.payload[2:2 + 4 * count]))


@pytest.mark.proxy_only
def test_a_backends_copy_older_than_the_clients_parse_is_not_used(proxy, pg):
    # Two clients prepare the same text while the column is int, one on each backend. After DDL
    # makes it text, a client that parses the text again must get the new parameter type on
    # either backend: another backend's copy predates the DDL (asyncpg's custom-codec test got
    # `incorrect binary data format` from such a copy).
    pg.query("drop table if exists stale_t")
    pg.query("create table stale_t (v int)")
    pg.query("alter table stale_t owner to app")
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)  # 2 backends
    sql = "select v from stale_t where v = $1"
    with p.wire() as a, p.wire() as b, p.wire() as c:
        for w in (a, b, c):
            w.startup("app", p.passwords["app"])
        for w in (a, b):
            w.query("begin")
            prepare(w, "s1", sql)
            assert _parameter_types(w, "s1") == [23]
        for w in (a, b):
            w.query("commit")
        c.query("alter table stale_t alter column v type text")
        # c parses the text again, in a transaction: on the backend that serves it (x).
        c.query("begin")
        prepare(c, "s1", sql)
        assert _parameter_types(c, "s1") == [25]
        x = c.query("select pg_backend_pid()")[0][0]
        c.query("commit")
        # Only the other backend is free: it has the copy parsed before the DDL.
        a.query("begin")
        b.query("begin")
        holders = {a.query("select pg_backend_pid()")[0][0]: a, b.query("select pg_backend_pid()")[0][0]: b}
        assert x in holders and len(holders) == 2
        for pid, w in holders.items():
            if pid != x:
                w.query("commit")
        assert _parameter_types(c, "s1") == [25]
        holders[x].query("commit")


@pytest.mark.proxy_only
@pytest.mark.parametrize("encoding", ["LATIN1", "SJIS", "GBK"])
def test_the_parameter_sync_is_read_the_same_in_any_previous_encoding(proxy, pg, encoding):
    # One backend. The previous client leaves its client_encoding on it; the SQL that gives the
    # backend to the next client was UTF-8 read in that encoding: `schéma` became `schÃ©ma`,
    # and in SJIS a crafted value swallowed the backslash before a quote (SQL injection).
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    crafted = "ぁぁ\\' , pg_catalog.set_config('work_mem', '1234kB', false) --"
    for _ in range(2):
        with p.wire() as before:
            before.startup("app", p.passwords["app"], client_encoding=encoding)
            before.query("select 1")
        with p.wire() as c:
            c.startup("app", p.passwords["app"], search_path="schéma, public", **{"concierge.test": crafted})
            assert c.query("show search_path") == [("schéma, public",)]
            assert c.query("show concierge.test") == [(crafted,)]
            assert c.query("show work_mem") != [("1234kB",)]
            assert c.query("show client_encoding") == [("UTF8",)]


def _hold_all_but(pid, clients):
    """Opens a transaction on each of `clients` (as many as backends): returns the one that
    holds backend `pid`; the others commit, so the next transaction runs on another backend."""
    for w in clients:
        w.query("begin")
    holders = {w.query("select pg_backend_pid()")[0][0]: w for w in clients}
    assert pid in holders and len(holders) == len(clients), holders
    for p_, w in holders.items():
        if p_ != pid:
            w.query("commit")
    return holders[pid]


def _shape_table(pg, name="shape_t"):
    pg.query(f"drop table if exists {name}")
    pg.query(f"create table {name} (a int, b int)")
    pg.query(f"insert into {name} values (1, 2)")
    pg.query(f"alter table {name} owner to app")


@pytest.mark.proxy_only
def test_a_statement_whose_row_type_changed_fails_on_any_backend(proxy, pg):
    # asyncpg's test_prepare_statement_invalid: a statement prepared while `b` is int, used after
    # DDL made it text. Directly, every use fails with 0A000 (asyncpg re-prepares on it). Through
    # the proxy the Bind reached a backend that lacked the statement: the proxy parsed the text
    # there afresh and the client got text where it expected int4 (`insufficient data in buffer`).
    _shape_table(pg)
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)  # 2 backends
    with p.wire() as a, p.wire() as b, p.wire() as c:
        for w in (a, b, c):
            w.startup("app", p.passwords["app"])
        a.query("begin")
        prepare(a, "s1", "select * from shape_t")
        prepare(a, "s2", "select a from shape_t")
        x = a.query("select pg_backend_pid()")[0][0]
        a.query("commit")
        holder = _hold_all_but(x, (b, c))  # a's next transaction: on the backend without s1
        pg.query("alter table shape_t alter column b type text")
        a.query("begin")
        with pytest.raises(ServerError) as failed:
            run_statement(a, "s1")
        assert failed.value.sqlstate == "0A000"
        assert failed.value.message == "cached plan must not change result type"
        # asyncpg recognises it by the routine (and re-prepares): the database's own fields.
        assert failed.value.fields.get("R") == "RevalidateCachedQuery"
        # As directly, the error aborted the transaction.
        with pytest.raises(ServerError) as aborted:
            a.query("select 1")
        assert aborted.value.sqlstate == "25P02"
        a.query("rollback")
        # A statement whose row type did not change is unaffected; the changed one fails again.
        assert run_statement(a, "s2") == ["1"]
        with pytest.raises(ServerError) as again:
            run_statement(a, "s1")
        assert again.value.sqlstate == "0A000"
        # Describe of it fails the same way, and the session goes on.
        a.send(message(b"D", b"Ss1\0") + SYNC)
        error = a.expect(b"E")
        assert b"0A000" in error.payload
        a.expect(b"Z")
        # So does SQL EXECUTE of it.
        with pytest.raises(ServerError) as executed:
            a.query("execute s1", timeout=10)
        assert executed.value.sqlstate == "0A000"
        # A new Parse of the same text gets the new row type.
        prepare(a, "s3", "select * from shape_t")
        assert run_statement(a, "s3") == ["1"]
        holder.query("commit")


@pytest.mark.proxy_only
def test_a_copy_another_client_parsed_after_ddl_does_not_serve_the_old_statement(proxy, pg):
    # Client a prepared the text before the DDL; client d parses the same text after it, so the
    # backend's shared copy returns the new row type. a's statement must still fail as directly.
    _shape_table(pg, "shape_u")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)  # 1 backend
    with p.wire() as a, p.wire() as d:
        for w in (a, d):
            w.startup("app", p.passwords["app"])
        prepare(a, "s1", "select * from shape_u")
        assert run_statement(a, "s1") == ["1"]
        pg.query("alter table shape_u alter column b type text")
        prepare(d, "s1", "select * from shape_u")
        assert run_statement(d, "s1") == ["1"]
        with pytest.raises(ServerError) as failed:
            run_statement(a, "s1")
        assert failed.value.sqlstate == "0A000"
        assert run_statement(d, "s1") == ["1"]


@pytest.mark.proxy_only
def test_the_same_text_under_two_search_paths_serves_both_clients(proxy, pg):
    # The same text names tables of different row types in two schemas: a backend's copy parsed
    # for one client must not fail (nor serve) the other.
    for schema, column in (("shape_s1", "int"), ("shape_s2", "text")):
        pg.query(f"drop schema if exists {schema} cascade")
        pg.query(f"create schema {schema} authorization app")
        pg.query(f"create table {schema}.t (v {column})")
        pg.query(f"insert into {schema}.t values ('7')")
        pg.query(f"alter table {schema}.t owner to app")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)  # 1 backend
    with p.wire() as a, p.wire() as b:
        a.startup("app", p.passwords["app"], search_path="shape_s1")
        b.startup("app", p.passwords["app"], search_path="shape_s2")
        prepare(a, "s", "select v, pg_typeof(v)::text from t")
        prepare(b, "s", "select v, pg_typeof(v)::text from t")
        for _ in range(3):
            for w in (a, b):
                assert run_statement(w, "s") == ["7"]
        assert a.query("select pg_typeof(v)::text from t") == [("integer",)]


@pytest.mark.proxy_only
def test_a_statement_whose_text_broke_answers_execute_and_deallocate_as_directly(proxy, pg):
    # A protocol-level statement that a backend lacks is parsed there before an SQL EXECUTE or
    # DEALLOCATE of it. After DDL broke its text that Parse fails, and PostgreSQL then skipped the
    # client's Query: it never got an answer (the fuzzer's finding 49, in a failed transaction).
    _shape_table(pg, "broken_t")
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)  # 2 backends
    with p.wire() as a, p.wire() as b, p.wire() as c:
        for w in (a, b, c):
            w.startup("app", p.passwords["app"])
        a.query("begin")
        prepare(a, "s1", "select a from broken_t")
        prepare(a, "s2", "select b from broken_t")
        x = a.query("select pg_backend_pid()")[0][0]
        a.query("commit")
        holder = _hold_all_but(x, (b, c))  # a's next transactions: on the backend without them
        pg.query("alter table broken_t rename to broken_gone")
        # Directly: EXECUTE fails as the statement is analysed again; DEALLOCATE succeeds.
        with pytest.raises(ServerError) as failed:
            a.query("execute s1", timeout=10)
        assert failed.value.sqlstate == "42P01"
        assert a.query("select 1", timeout=10) == [("1",)]
        a.query("deallocate s2", timeout=10)
        # In a failed transaction both give 25P02, and each gets its answer.
        a.query("begin")
        with pytest.raises(ServerError):
            a.query("select 1/0")
        for sql in ("execute s1", "deallocate s1"):
            with pytest.raises(ServerError) as aborted:
                a.query(sql, timeout=10)
            assert aborted.value.sqlstate == "25P02"
        a.query("rollback")
        # The statement is still the client's, as directly: once the table is back, it runs.
        pg.query("alter table broken_gone rename to broken_t")
        assert a.query("execute s1", timeout=10) == [("1",)]
        assert run_statement(a, "s1") == ["1"]
        # s2 was deallocated.
        with pytest.raises(ServerError) as gone:
            a.query("execute s2", timeout=10)
        assert gone.value.sqlstate == "26000"
        holder.query("commit")
