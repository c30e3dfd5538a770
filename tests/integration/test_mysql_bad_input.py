"""Malformed input to a MySQL proxy on raw sockets: impossible lengths, wrong sequence ids, bytes
right after an SSLRequest, a command before the login. Each gets an ERR packet (and, before the
login, the connection closed), and disturbs no other client: a bystander in the middle of a
transaction goes on and commits, and a new client is served."""

import struct

import pytest

from mywire import CLIENT_SSL, COM_QUERY, packet, parse_err, ssl_request

EOF_TIMEOUT = 5  # a rejected client is answered and closed promptly, not after a long timeout


@pytest.fixture(scope="module")
def proxy_tls(mariadb):
    cert, key = mariadb.pki.issue("myproxy-bad-input", dns=["localhost"], ips=["127.0.0.1"])
    return {"certificate_file": str(cert), "private_key_file": str(key)}


@pytest.fixture
def p(mysql_proxy, mariadb, proxy_tls):
    """A proxy (with TLS offered), and a bystander client inside a transaction during the test."""
    mariadb.create_table("bystander", "id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)")
    target = mysql_proxy(tls=proxy_tls)
    bystander = target.connect()
    cur = bystander.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO bystander (v) VALUES ('during')")
    yield target
    try:
        cur.execute("SELECT v FROM bystander")
        assert cur.fetchall() == (("during",),)
        cur.execute("COMMIT")
    finally:
        bystander.close()
    assert mariadb.query("SELECT v FROM bystander") == [("during",)]
    target.assert_serves()


def answered_with_err(w, *, closes: bool = True):
    """The server's answer is an ERR packet (returned, parsed); with `closes`, it then closes
    the connection (and sent nothing else)."""
    if closes:
        packets = w.read_until_eof(timeout=EOF_TIMEOUT)
    else:
        packets = [w.read_packet(timeout=EOF_TIMEOUT)]
    assert packets and packets[0] is not None, "the server closed the connection without an ERR packet"
    assert packets[0].is_err, f"expected an ERR packet, got {packets[0].payload[:60]!r}"
    assert len(packets) == 1, f"more than the ERR: {packets[1:]}"
    err = parse_err(packets[0].payload)
    assert err.sqlstate and err.message, err
    return err


# -- impossible lengths ------------------------------------------------------------------------

def test_handshake_response_too_short(p):
    with p.wire() as w:
        w.read_greeting()
        w.send_packet(b"\x8d\xa6", 1)  # two bytes: not even the capability flags
        assert answered_with_err(w).code == 1043  # Bad handshake


def test_auth_response_length_past_the_end_of_the_packet(p):
    with p.wire() as w:
        w.read_greeting()
        body = w.handshake_response("app", p.passwords["app"])
        at = 32 + len(b"app\0")  # the length-encoded length of the auth response
        assert body[at] == 20
        w.send_packet(body[:at] + bytes([250]) + body[at + 1:], 1)
        assert answered_with_err(w).code == 1043


@pytest.mark.proxy_only
def test_handshake_response_declared_16_mb_long(p):
    """A login packet can never be that long: refused at once (a server waits for the bytes
    until its connect_timeout and closes without a word)."""
    with p.wire() as w:
        w.read_greeting()
        w.send(b"\xff\xff\xff\x01" + b"\0" * 1000)
        answered_with_err(w)


def closed_or_serving(w) -> None:
    """After an ERR to a logged-in client: the connection is either closed or still serves."""
    try:
        w.command(COM_QUERY, b"SELECT 'still here'")
        first = w.read_packet(timeout=EOF_TIMEOUT)
    except (BrokenPipeError, ConnectionResetError):
        return
    if first is None:
        return
    w.buffer = packet(first.payload, first.seq) + w.buffer  # back, to read the whole result
    assert w.read_result() == [["still here"]]


def test_empty_command_packet(p):
    with p.wire() as w:
        w.login("app", p.passwords["app"])
        w.send(b"\x00\x00\x00\x00")  # a command packet without a command byte
        answered_with_err(w, closes=False)
        closed_or_serving(w)


# -- wrong sequence ids ----------------------------------------------------------------------

@pytest.mark.parametrize("seq", [0, 2, 5])
def test_handshake_response_with_a_wrong_sequence_id(p, seq):
    with p.wire() as w:
        w.read_greeting()
        w.send_packet(w.handshake_response("app", p.passwords["app"]), seq)  # 1 expected
        assert answered_with_err(w).code == 1156  # Got packets out of order


@pytest.mark.parametrize("seq", [1, 5])
def test_command_with_a_wrong_sequence_id(p, seq):
    with p.wire() as w:
        w.login("app", p.passwords["app"])
        assert w.query("SELECT 1") == [["1"]]
        w.command(COM_QUERY, b"SELECT 2", seq=seq)  # a command starts at 0
        assert answered_with_err(w, closes=False).code == 1156
        closed_or_serving(w)


# -- bytes after an SSLRequest ------------------------------------------------------------------

def test_plaintext_right_after_ssl_request(p):
    """An SSLRequest and, in the same write, a plaintext HandshakeResponse (with the password's
    scramble) instead of a TLS ClientHello: refused with an ERR, never logged in."""
    with p.wire() as w:
        greeting = w.read_greeting()
        assert greeting.capabilities & CLIENT_SSL, "the server offers TLS"
        w.send(packet(ssl_request(), 1) + packet(w.handshake_response("app", p.passwords["app"]), 2))
        answered_with_err(w)


# -- a command before the login ----------------------------------------------------------------

@pytest.mark.parametrize("seq", [0, 1])
def test_command_before_login(p, seq):
    with p.wire() as w:
        w.read_greeting()
        w.command(COM_QUERY, b"SELECT 1", seq=seq)
        answered_with_err(w)


def test_packets_split_and_joined_are_no_bad_input(p):
    """The control case: a login and a query fed one byte at a time are served."""
    with p.wire() as w:
        w.read_greeting()
        body = w.handshake_response("app", p.passwords["app"])
        data = struct.pack("<I", len(body))[:3] + b"\x01" + body
        for i in range(len(data)):
            w.send(data[i:i + 1])
        ok = w.read_packet()
        assert ok is not None and ok.is_ok, ok
        query = b"\x03SELECT 42"
        packet = struct.pack("<I", len(query))[:3] + b"\x00" + query
        for i in range(len(packet)):
            w.send(packet[i:i + 1])
        assert w.read_result() == [["42"]]
