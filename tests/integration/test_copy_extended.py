"""COPY FROM STDIN through the extended protocol, as pg8000 sends it."""

import pytest
from pgwire import message, ServerError
from test_resets import parse, bind, EXECUTE, SYNC


def test_copy_from_stdin_through_the_extended_protocol(proxy, pg):
    # pg8000 sends Parse/Bind/Describe/Execute/Sync for COPY ... FROM STDIN, then the data,
    # CopyDone and another Sync (PostgreSQL ignores the first Sync while in copy-in mode).
    pg.query("drop table if exists copy_ext")
    pg.query("create table copy_ext (a int)")
    pg.query("grant all on copy_ext to app")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.wire(timeout=10) as c:
        c.startup("app", p.passwords["app"])
        for data, ok in ((b"1\n2\n", True), (b"x\n", False), (b"3\n", True)):
            c.send(parse("", "copy copy_ext from stdin") + bind("") + message(b"D", b"P\0") + EXECUTE + SYNC)
            c.expect(b"1")
            c.expect(b"2")
            c.expect(b"n")
            c.expect(b"G")
            c.send(message(b"d", data) + message(b"c") + SYNC)
            if ok:
                c.expect(b"C")
            else:
                with pytest.raises(ServerError):
                    c.expect(b"C")
            c.expect(b"Z")
        assert c.query("select count(*) from copy_ext") == [("3",)]
        # The backend went back to the pool (the ignored Syncs are not owed a ReadyForQuery).
        with p.connect() as other:
            assert other.execute("select 1").fetchone()[0] == 1
