"""Malformed and hostile input on raw sockets. Each case must close (at most) that one client;
afterwards the proxy must still serve a normal psql `select 1`."""

import struct

import pytest

from helpers import wait_for
from pgwire import AUTH_SASL, PROTOCOL_3_0, message, parse_error_fields, startup_packet

EOF_TIMEOUT = 5  # a rejected client is closed promptly, not after some long timeout


def errors_in(messages) -> list[dict]:
    return [parse_error_fields(m.payload) for m in messages if m.type == b"E"]


def assert_closed_without_service(w) -> list:
    """The server closes the connection and never answered as if the input were valid."""
    messages = w.read_until_eof(timeout=EOF_TIMEOUT)
    types = {m.type for m in messages}
    assert not types & {b"T", b"D", b"C", b"Z"}, f"unexpected answers: {messages}"
    return messages


@pytest.fixture
def p(proxy):
    """A proxy that must still work after the test body has abused it."""
    target = proxy()
    yield target
    target.assert_serves()


def test_garbage_before_startup(p):
    with p.wire() as w:
        w.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        messages = assert_closed_without_service(w)
        assert not any(m.type == b"R" for m in messages)


@pytest.mark.parametrize("length", [3, 100_000_000], ids=["length-3", "length-100MB"])
def test_bad_startup_length(p, length):
    with p.wire() as w:
        # A declared length, then the beginning of a plausible startup packet.
        w.send(struct.pack("!II", length, PROTOCOL_3_0) + b"user\0app\0")
        messages = assert_closed_without_service(w)
        assert not any(m.type == b"R" for m in messages)


def test_protocol_2_startup(p):
    with p.wire() as w:
        w.send(startup_packet("app", "app", version=2 << 16))
        data = w.read_bytes_until_eof(timeout=EOF_TIMEOUT)
    text = "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
    assert data[:1] == b"E", f"expected an ErrorResponse, got {data!r}"
    if data[1:2] == b"\0":
        # A v3 ErrorResponse (int32 length, then fields with the SQLSTATE): the proxy's reply.
        fields = parse_error_fields(data[5:])
        assert fields["M"] == text
        assert fields["C"] == "0A000"
    else:
        # PostgreSQL itself answers a v2 client in the v2 format: 'E', then text, then NUL.
        assert text in data[1:].decode()


def test_message_length_2_after_auth(p):
    with p.wire() as w:
        w.startup("app", p.passwords["app"])
        w.send(b"Q" + struct.pack("!I", 2))  # a length below 4 is impossible
        assert_closed_without_service(w)


def test_query_longer_than_max_message_size(p):
    with p.wire() as w:
        w.startup("app", p.passwords["app"])
        # ~2 GB declared (beyond any max_message_size and PostgreSQL's 1 GB); only 8 bytes sent.
        w.send(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select 1")
        assert_closed_without_service(w)


def test_query_before_authentication_completes(p):
    with p.wire() as w:
        # The startup packet and a Query in one write, before any authentication exchange.
        w.send(startup_packet("app", "app") + message(b"Q", b"select 1\0"))
        messages = assert_closed_without_service(w)
        assert errors_in(messages), f"expected an ErrorResponse, got {messages}"


@pytest.mark.parametrize("type_, body, text", [
    (b"P", b"s1\0select 1", "invalid Parse message"),
    (b"P", b"s1", "invalid Parse message"),
    (b"Q", b"select 1\0;", "invalid message of type 81: 1 unexpected trailing bytes"),
    (b"Q", b"select 1", "invalid message of type 81: missing NUL terminator in query string"),
], ids=["parse-no-query-nul", "parse-no-name-nul", "query-trailing-byte", "query-no-nul"])
def test_malformed_message_after_login(p, type_, body, text):
    with p.wire() as w:
        w.startup("app", p.passwords["app"])
        w.send(message(type_, body))
        errors = errors_in(assert_closed_without_service(w))
    assert [(e["C"], e["M"]) for e in errors] == [("08P01", text)]


def test_malformed_bind_arguments_are_answered_by_postgresql(p):
    """The proxy reads a Bind's names only and forwards the rest: PostgreSQL refuses a body that
    ends inside its parameters as it would directly, and the session goes on after the Sync."""
    with p.wire() as w:
        w.startup("app", p.passwords["app"])
        bind = b"\0\0" + struct.pack("!HHI", 0, 1, 5) + b"ab"  # one parameter of 5 bytes, 2 sent
        w.send(message(b"P", b"\0select $1::text\0\0\0") + message(b"B", bind) + message(b"S"))
        w.expect(b"1")
        error = w.expect(b"E")
        assert parse_error_fields(error.payload)["C"] == "08P01"
        w.expect(b"Z")
        assert w.query("select 1") == [("1",)]


def _close_after(p, stage: str) -> None:
    """Open a connection, go as far as `stage`, then drop it (no Terminate unless asked)."""
    w = p.wire()
    try:
        if stage == "connected":
            return
        if stage == "half-startup":
            w.send(startup_packet("app", "app")[:2])
            return
        w.send(startup_packet("app", "app"))
        if stage == "startup-sent":
            return
        auth = w.expect(b"R")
        assert struct.unpack("!I", auth.payload[:4])[0] == AUTH_SASL
        if stage == "auth-requested":
            return
        first = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
        w.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        if stage == "sasl-initial-sent":
            return
        # Start over on a fresh connection with the full exchange.
        w.close()
        w = p.wire()
        w.startup("app", p.passwords["app"])
        if stage == "ready":
            return
        if stage == "query-in-flight":
            w.send(message(b"Q", b"select pg_sleep(0.5)\0"))
            return
        if stage == "in-transaction":
            w.query("BEGIN")
            w.query("select 1")
            return
        if stage == "terminated":
            w.send(message(b"X"))
            assert w.read_until_eof(timeout=EOF_TIMEOUT) == []
            return
        raise ValueError(stage)
    finally:
        w.close()


def test_connect_and_close_at_each_stage(p, pg):
    stages = ["connected", "half-startup", "startup-sent", "auth-requested", "sasl-initial-sent",
              "ready", "query-in-flight", "in-transaction", "terminated"]
    for stage in stages:
        _close_after(p, stage)
        p.assert_serves()
    # Nothing was left open on the database by the abandoned sessions.
    wait_for(lambda: pg.scalar("select count(*) from pg_stat_activity where datname = 'app' "
                               "and (state like 'idle in transaction%' or "
                               "query = 'select pg_sleep(0.5)' and state = 'active')") == 0,
             10, "no abandoned transaction or query left on the database")
