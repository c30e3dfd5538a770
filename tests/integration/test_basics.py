"""Everyday client traffic through the proxy: psql, errors, notices, COPY, extended protocol."""

import time
import uuid

import psycopg
import pytest

from helpers import wait_for
from pgwire import message


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_select_1(proxy):
    p = proxy()
    assert p.psql("select 1").stdout == "1\n"


def test_multi_statement_query(proxy):
    # One simple-protocol Query message holding three statements; psql (15+) prints every result.
    p = proxy()
    out = p.psql("select 1 as a; select 'two' as b; select 3 as c").stdout
    assert out.split() == ["1", "two", "3"]


def test_error_then_session_still_works(proxy):
    p = proxy()
    # One psql session: the error must not end it; ON_ERROR_STOP=0 goes on to the next query.
    proc = p.psql(input="select 1/0;\nselect 42;\n", on_error_stop=False, check=False)
    assert "division by zero" in proc.stderr
    assert proc.stdout.strip() == "42"

    # The SQLSTATE, as a driver sees it, and the same connection used again.
    with p.connect() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as exc:
            conn.execute("select 1/0")
        assert exc.value.sqlstate == "22012"
        assert conn.execute("select 7").fetchone()[0] == 7


def test_notice_is_shown(proxy):
    p = proxy()
    proc = p.psql("DO $$ BEGIN RAISE NOTICE 'hi'; END $$")
    assert "NOTICE:  hi" in proc.stderr


def test_copy_round_trip(proxy, pg):
    table = pg.create_table(unique("copytest"))
    rows = "".join(f"{i}\tvalue {i}\n" for i in range(1, 1001))
    p = proxy()
    # COPY FROM STDIN: psql streams its own stdin as CopyData.
    proc = p.psql(f"copy {table} from stdin", input=rows)
    assert proc.stdout.strip() == "COPY 1000"
    assert pg.scalar(f"select count(*) from {table}") == 1000
    # COPY TO STDOUT: the rows come back byte for byte.
    out = p.psql(f"copy (select * from {table} order by id) to stdout").stdout
    assert out == rows


def test_extended_protocol_with_parameters(proxy):
    p = proxy()
    with p.connect() as conn:
        # Parameters travel in Bind (extended protocol), typed and binary-safe.
        row = conn.execute("select %s::int + %s::int, %s::text, %s::text is null",
                           (40, 2, "it's \"quoted\"", None)).fetchone()
        assert row == (42, "it's \"quoted\"", True)
        # Run one statement often enough that psycopg names and prepares it (prepare_threshold),
        # then reuses the prepared statement across transactions.
        for i in range(10):
            assert conn.execute("select %s::int * 2", (i,)).fetchone()[0] == i * 2
        with conn.cursor() as cur:
            cur.executemany("select %s::int", [(i,) for i in range(5)])


def test_transaction_rollback_leaves_nothing(proxy, pg):
    table = pg.create_table(unique("rollbacktest"))
    p = proxy()
    proc = p.psql(input=f"BEGIN;\nINSERT INTO {table} VALUES (1, 'x');\n"
                        f"SELECT count(*) FROM {table};\nROLLBACK;\n")
    assert proc.stdout.splitlines() == ["BEGIN", "INSERT 0 1", "1", "ROLLBACK"]
    assert pg.scalar(f"select count(*) from {table}") == 0
    # And through psycopg's implicit transactions.
    with p.connect(autocommit=False) as conn:
        conn.execute(f"insert into {table} values (2, 'y')")
        conn.rollback()
    assert pg.scalar(f"select count(*) from {table}") == 0


def test_large_messages_both_ways(proxy):
    # Messages far larger than one socket read arrive in pieces: a 4 MB query text, a COPY of
    # ~8 MB, and a ~20 MB result that the client reads as it comes (the proxy must neither
    # corrupt a message split across reads nor buffer the whole result).
    p = proxy()
    big = "x" * (4 * 1024 * 1024)
    with p.connect() as conn:
        assert conn.execute(f"select length('{big}')").fetchone()[0] == len(big)
        table = unique("big")
        conn.execute(f"create temp table {table} (line text)")
        row = "y" * 1000
        with conn.cursor().copy(f"copy {table} from stdin") as copy:
            for _ in range(8000):
                copy.write_row((row,))
        assert conn.execute(f"select count(*), sum(length(line)) from {table}").fetchone() == (8000, 8_000_000)
        total = 0
        with conn.transaction(), conn.cursor(name="stream") as cur:
            cur.execute("select repeat('z', 1000) from generate_series(1, 20000)")
            for (value,) in cur:
                total += len(value)
        # And in one go, as a plain result.
        rows = conn.execute("select repeat('w', 1000) from generate_series(1, 20000)").fetchall()
        assert sum(len(r[0]) for r in rows) == 20_000_000
        assert total == 20_000_000


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.proxy_only
def test_slow_reader_does_not_make_the_proxy_buffer_the_result(proxy, pg):
    # A client asks for ~400 MB and reads nothing: the proxy must stop reading from the database
    # (backpressure) instead of holding the result in memory, then deliver all of it once the
    # client reads.
    p = proxy()
    with p.wire(timeout=60) as w:
        w.startup("app", pg.passwords["app"])
        before = _rss_kb(p.proc.pid)
        w.send(message(b"Q", b"select repeat('z', 4000) from generate_series(1, 100000)\0"))
        # Without backpressure the database would finish sending ~400 MB in about a second and go
        # idle while the proxy holds it all. With it, the query stays active, blocked writing
        # (wait_event ClientWrite), for as long as the client does not read.
        state_sql = ("select state, wait_event from pg_stat_activity where usename = 'app' "
                     "and query like 'select repeat%'")
        wait_for(lambda: pg.query(state_sql) == [("active", "ClientWrite")], timeout=30,
                 what="the database blocked writing to the proxy")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert pg.query(state_sql) == [("active", "ClientWrite")], \
                "the database finished sending although the client read nothing"
            time.sleep(0.1)
        grown_mb = (_rss_kb(p.proc.pid) - before) / 1024
        assert grown_mb < 64, f"proxy RSS grew by {grown_mb:.0f} MB while the client did not read"
        rows = 0
        while True:
            m = w.recv(timeout=60)
            if m.type == b"D":
                rows += 1
            elif m.type == b"Z":
                break
        assert rows == 100000
