"""Everyday client traffic through the proxy: psql, errors, notices, COPY, extended protocol."""

import uuid

import psycopg
import pytest


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
