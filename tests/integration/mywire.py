"""A raw-socket MySQL/MariaDB protocol client for the integration tests: exact packets, exact
sequence ids, and malformed input on purpose.

Packets are a 3-byte little-endian payload length, a 1-byte sequence id and the payload. Only
what the tests need is here: the server's greeting (HandshakeV10), HandshakeResponse41 and the
SSLRequest, mysql_native_password, COM_QUERY with text results, OK/ERR/EOF.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass

# Capability flags (the lower 32 bits; MariaDB's extended ones are never asked for here).
CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24

# What this client asks for by default: a plain 4.1 client with plugin auth, no TLS, no EOF
# deprecation (so result sets end with EOF packets).
DEFAULT_CAPABILITIES = (CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_CONNECT_WITH_DB | CLIENT_PROTOCOL_41
                        | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_RESULTS
                        | CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E

UTF8MB4_GENERAL_CI = 45
MAX_PAYLOAD = 0xFFFFFF


def native_password_scramble(password: str, salt: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(salt[:20] + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix))


def lenenc_int(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def read_lenenc_int(data: bytes, pos: int) -> tuple[int | None, int]:
    first = data[pos]
    if first < 251:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1  # NULL in a text row
    if first == 0xFC:
        return struct.unpack_from("<H", data, pos + 1)[0], pos + 3
    if first == 0xFD:
        return int.from_bytes(data[pos + 1:pos + 4], "little"), pos + 4
    return struct.unpack_from("<Q", data, pos + 1)[0], pos + 9


def packet(payload: bytes, seq: int) -> bytes:
    """One wire packet (payloads of 16 MB and more must be split by the caller)."""
    assert len(payload) < MAX_PAYLOAD
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


@dataclass
class Packet:
    seq: int
    payload: bytes

    @property
    def is_err(self) -> bool:
        return self.payload[:1] == b"\xff"

    @property
    def is_ok(self) -> bool:
        return self.payload[:1] == b"\x00"

    @property
    def is_eof(self) -> bool:
        return self.payload[:1] == b"\xfe" and len(self.payload) < 9


@dataclass
class ErrPacket:
    code: int
    sqlstate: str
    message: str

    def __str__(self) -> str:  # as the mariadb command-line client shows it
        return f"ERROR {self.code} ({self.sqlstate}): {self.message}"


def parse_err(payload: bytes) -> ErrPacket:
    assert payload[:1] == b"\xff", f"not an ERR packet: {payload[:40]!r}"
    code = struct.unpack_from("<H", payload, 1)[0]
    if payload[3:4] == b"#":
        return ErrPacket(code, payload[4:9].decode(), payload[9:].decode(errors="replace"))
    return ErrPacket(code, "", payload[3:].decode(errors="replace"))  # a pre-4.1 ERR (no SQLSTATE)


@dataclass
class Greeting:
    protocol_version: int
    server_version: str
    connection_id: int
    salt: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str
    seq: int


def parse_greeting(p: Packet) -> Greeting:
    data = p.payload
    assert data[:1] == b"\x0a", f"not a HandshakeV10: {data[:40]!r}"
    end = data.index(b"\0", 1)
    version = data[1:end].decode()
    pos = end + 1
    connection_id = struct.unpack_from("<I", data, pos)[0]
    pos += 4
    salt = data[pos:pos + 8]
    pos += 9  # and the filler
    cap_low = struct.unpack_from("<H", data, pos)[0]
    pos += 2
    charset = data[pos]
    status = struct.unpack_from("<H", data, pos + 1)[0]
    cap_high = struct.unpack_from("<H", data, pos + 3)[0]
    auth_len = data[pos + 5]
    pos += 6 + 10
    capabilities = cap_low | cap_high << 16
    if capabilities & CLIENT_SECURE_CONNECTION:
        n = max(13, auth_len - 8)
        salt += data[pos:pos + n].rstrip(b"\0")
        pos += n
    plugin = ""
    if capabilities & CLIENT_PLUGIN_AUTH:
        plugin = data[pos:].split(b"\0", 1)[0].decode()
    return Greeting(data[0], version, connection_id, salt, capabilities, charset, status, plugin, p.seq)


class MyWireClient:
    """A TCP connection speaking raw MySQL packets."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""
        self.greeting: Greeting | None = None

    def __enter__(self) -> "MyWireClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def start_tls(self, context: "ssl.SSLContext", server_hostname: str | None = None) -> None:
        """Wraps the connection in TLS (after an SSLRequest was sent)."""
        assert not self.buffer, f"bytes after the SSLRequest's answer: {self.buffer[:40]!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    # -- bytes ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, payload: bytes, seq: int) -> None:
        self.send(packet(payload, seq))

    def _fill(self, n: int, deadline: float) -> bool:
        """Reads until the buffer holds n bytes; False at EOF (or a reset)."""
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete packet within {self.timeout}s (have {self.buffer[:64]!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_packet(self, timeout: float | None = None) -> Packet | None:
        """The next packet (joined when 16 MB and more), or None at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        payload = b""
        while True:
            if not self._fill(4, deadline):
                return None
            length = int.from_bytes(self.buffer[:3], "little")
            seq = self.buffer[3]
            if not self._fill(4 + length, deadline):
                return None
            payload += self.buffer[4:4 + length]
            self.buffer = self.buffer[4 + length:]
            if length < MAX_PAYLOAD:
                return Packet(seq, payload)

    def read_until_eof(self, timeout: float = 5.0) -> list[Packet]:
        """Every packet until the server closes the connection (fails if it does not in time)."""
        packets = []
        deadline = time.monotonic() + timeout
        while True:
            p = self.read_packet(timeout=max(0.01, deadline - time.monotonic()))
            if p is None:
                return packets
            packets.append(p)

    def read_bytes_until_eof(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        data, self.buffer = self.buffer, b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the server did not close the connection within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- the login -----------------------------------------------------------------------------

    def read_greeting(self) -> Greeting:
        p = self.read_packet()
        assert p is not None, "the server closed the connection before its greeting"
        if p.is_err:
            raise AssertionError(f"the server refused the connection: {parse_err(p.payload)}")
        self.greeting = parse_greeting(p)
        return self.greeting

    def handshake_response(self, user: str, password: str, database: str | None = "app", *,
                           capabilities: int = DEFAULT_CAPABILITIES,
                           plugin: str = "mysql_native_password",
                           auth_response: bytes | None = None) -> bytes:
        """A HandshakeResponse41 payload answering this connection's greeting."""
        assert self.greeting is not None, "read the greeting first"
        if database is not None:
            capabilities |= CLIENT_CONNECT_WITH_DB
        else:
            capabilities &= ~CLIENT_CONNECT_WITH_DB
        if auth_response is None:
            auth_response = native_password_scramble(password, self.greeting.salt)
        body = struct.pack("<IIB23x", capabilities, 1 << 24, UTF8MB4_GENERAL_CI)
        body += user.encode() + b"\0"
        if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            body += lenenc_int(len(auth_response)) + auth_response
        else:
            body += bytes([len(auth_response)]) + auth_response
        if database is not None:
            body += database.encode() + b"\0"
        if capabilities & CLIENT_PLUGIN_AUTH:
            body += plugin.encode() + b"\0"
        return body

    def login(self, user: str, password: str, database: str | None = "app",
              capabilities: int = DEFAULT_CAPABILITIES) -> Packet:
        """The whole login with mysql_native_password (following one AuthSwitchRequest to it);
        returns the final OK (fails on anything else)."""
        self.read_greeting()
        self.send_packet(self.handshake_response(user, password, database, capabilities=capabilities), 1)
        p = self.read_packet()
        assert p is not None, "the server closed the connection during the login"
        if p.payload[:1] == b"\xfe":  # AuthSwitchRequest: plugin name, then its data
            name, _, data = p.payload[1:].partition(b"\0")
            assert name == b"mysql_native_password", f"auth switch to {name!r}"
            self.send_packet(native_password_scramble(password, data.rstrip(b"\0")), p.seq + 1)
            p = self.read_packet()
            assert p is not None, "the server closed the connection during the login"
        if p.is_err:
            raise AssertionError(f"login failed: {parse_err(p.payload)}")
        assert p.is_ok, f"unexpected answer to the login: {p.payload[:60]!r}"
        self.capabilities = capabilities
        return p

    # -- commands ------------------------------------------------------------------------------

    def command(self, code: int, argument: bytes = b"", seq: int = 0) -> None:
        self.send_packet(bytes([code]) + argument, seq)

    def query(self, sql: str) -> list[list[str | None]] | ErrPacket | Packet:
        """COM_QUERY; returns the rows of a result set (text), an ErrPacket, or the OK packet."""
        self.command(COM_QUERY, sql.encode())
        return self.read_result()

    def read_result(self) -> list[list[str | None]] | ErrPacket | Packet:
        first = self.read_packet()
        assert first is not None, "the server closed the connection instead of answering"
        if first.is_err:
            return parse_err(first.payload)
        if first.is_ok:
            return first
        columns, _ = read_lenenc_int(first.payload, 0)
        for _ in range(columns):
            assert self.read_packet() is not None
        deprecate_eof = getattr(self, "capabilities", 0) & CLIENT_DEPRECATE_EOF
        if not deprecate_eof:
            eof = self.read_packet()
            assert eof is not None and eof.is_eof, f"expected EOF after the columns, got {eof}"
        rows = []
        while True:
            p = self.read_packet()
            assert p is not None, "the server closed the connection in a result set"
            if p.is_err:
                return parse_err(p.payload)
            if p.payload[:1] == b"\xfe" and len(p.payload) < MAX_PAYLOAD:
                return rows
            row, pos = [], 0
            for _ in range(columns):
                n, pos = read_lenenc_int(p.payload, pos)
                if n is None:
                    row.append(None)
                else:
                    row.append(p.payload[pos:pos + n].decode(errors="replace"))
                    pos += n
            rows.append(row)


def ssl_request(capabilities: int = DEFAULT_CAPABILITIES) -> bytes:
    """The 32-byte SSLRequest payload (a HandshakeResponse41 cut after its fixed part)."""
    return struct.pack("<IIB23x", capabilities | CLIENT_SSL, 1 << 24, UTF8MB4_GENERAL_CI)


# -- the binary protocol (prepared statements) ---------------------------------------------------

COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_STMT_FETCH = 0x1C
CURSOR_TYPE_READ_ONLY = 1
SERVER_STATUS_CURSOR_EXISTS = 0x40
SERVER_STATUS_LAST_ROW_SENT = 0x80

TYPE_LONG, TYPE_LONGLONG, TYPE_NULL = 3, 8, 6
TYPE_VAR_STRING, TYPE_STRING, TYPE_BLOB = 253, 254, 252
TYPE_NEWDECIMAL, TYPE_VARCHAR = 246, 15


@dataclass
class Prepared:
    id: int
    columns: int
    params: int


@dataclass
class BinaryResult:
    """A binary-protocol answer: column names, rows (str for strings and decimals, int for
    integers, None for NULL) and the final status flags; or the OK packet's fields."""
    names: list[str]
    rows: list[list]
    status: int
    affected: int | None = None


def _column_definition(payload: bytes) -> tuple[str, int]:
    """A column definition's name and type."""
    pos, parts = 0, []
    for _ in range(6):
        n, pos = read_lenenc_int(payload, pos)
        parts.append(payload[pos:pos + n])
        pos += n
    _, pos = read_lenenc_int(payload, pos)  # length of the fixed fields (0x0c)
    column_type = payload[pos + 6]
    return parts[4].decode(), column_type


def _binary_row(payload: bytes, types: list[int]) -> list:
    n = len(types)
    bitmap_len = (n + 7 + 2) // 8
    bitmap = payload[1:1 + bitmap_len]
    pos, row = 1 + bitmap_len, []
    for i, t in enumerate(types):
        if bitmap[(i + 2) // 8] & (1 << ((i + 2) % 8)):
            row.append(None)
        elif t == TYPE_LONGLONG:
            row.append(struct.unpack_from("<q", payload, pos)[0]); pos += 8
        elif t == TYPE_LONG:
            row.append(struct.unpack_from("<i", payload, pos)[0]); pos += 4
        else:  # strings, decimals, blobs: length-encoded
            length, pos = read_lenenc_int(payload, pos)
            row.append(payload[pos:pos + length].decode(errors="replace")); pos += length
    return row


def _param_value(value) -> tuple[int, bytes]:
    if isinstance(value, int):
        return TYPE_LONGLONG, struct.pack("<q", value)
    data = value.encode() if isinstance(value, str) else bytes(value)
    return TYPE_VAR_STRING, lenenc_int(len(data)) + data


class MyWireStatements:
    """COM_STMT_* on a logged-in MyWireClient (without DEPRECATE_EOF)."""

    def __init__(self, client: MyWireClient):
        self.c = client

    def prepare(self, sql: str) -> Prepared | ErrPacket:
        self.c.command(COM_STMT_PREPARE, sql.encode())
        first = self.c.read_packet()
        assert first is not None, "closed instead of answering the prepare"
        if first.is_err:
            return parse_err(first.payload)
        stmt_id, columns, params = struct.unpack_from("<IHH", first.payload, 1)
        for count in (params, columns):
            for _ in range(count):
                assert self.c.read_packet() is not None
            if count:
                eof = self.c.read_packet()
                assert eof is not None and eof.is_eof, f"expected an EOF, got {eof}"
        return Prepared(stmt_id, columns, params)

    def execute_packet(self, stmt_id: int, params: list, *, send_types: bool = True, cursor: bool = False) -> bytes:
        body = struct.pack("<IBI", stmt_id, CURSOR_TYPE_READ_ONLY if cursor else 0, 1)
        if params:
            bitmap = bytearray((len(params) + 7) // 8)
            types, values = b"", b""
            for i, value in enumerate(params):
                if value is None:
                    bitmap[i // 8] |= 1 << (i % 8)
                    types += struct.pack("<H", TYPE_NULL)
                    continue
                t, v = _param_value(value)
                types += struct.pack("<H", t)
                values += v
            body += bytes(bitmap) + (b"\x01" + types if send_types else b"\x00") + values
        return bytes([COM_STMT_EXECUTE]) + body

    def execute(self, stmt_id: int, params: list | None = None, *, send_types: bool = True,
                cursor: bool = False) -> BinaryResult | ErrPacket:
        self.c.send_packet(self.execute_packet(stmt_id, params or [], send_types=send_types, cursor=cursor), 0)
        return self.read_binary_result()

    def read_binary_result(self) -> BinaryResult | ErrPacket:
        first = self.c.read_packet()
        assert first is not None, "closed instead of answering the execute"
        if first.is_err:
            return parse_err(first.payload)
        if first.is_ok:
            affected, pos = read_lenenc_int(first.payload, 1)
            _, pos = read_lenenc_int(first.payload, pos)
            return BinaryResult([], [], struct.unpack_from("<H", first.payload, pos)[0], affected)
        columns, _ = read_lenenc_int(first.payload, 0)
        names, types = [], []
        for _ in range(columns):
            name, t = _column_definition(self.c.read_packet().payload)
            names.append(name)
            types.append(t)
        eof = self.c.read_packet()
        assert eof is not None and eof.is_eof, f"expected an EOF after the columns, got {eof}"
        status = struct.unpack_from("<H", eof.payload, 3)[0]
        self.types = types
        if status & SERVER_STATUS_CURSOR_EXISTS:
            return BinaryResult(names, [], status)
        rows, status = self._rows(types)
        return BinaryResult(names, rows, status) if not isinstance(rows, ErrPacket) else rows

    def _rows(self, types: list[int]):
        rows = []
        while True:
            p = self.c.read_packet()
            assert p is not None, "closed in a result set"
            if p.is_err:
                return parse_err(p.payload), 0
            if p.is_eof:
                return rows, struct.unpack_from("<H", p.payload, 3)[0]
            rows.append(_binary_row(p.payload, types))

    def fetch(self, stmt_id: int, count: int) -> BinaryResult | ErrPacket:
        self.c.send_packet(struct.pack("<BII", COM_STMT_FETCH, stmt_id, count), 0)
        rows, status = self._rows(self.types)
        return rows if isinstance(rows, ErrPacket) else BinaryResult([], rows, status)

    def send_long_data(self, stmt_id: int, param: int, data: bytes) -> None:
        self.c.send_packet(struct.pack("<BIH", COM_STMT_SEND_LONG_DATA, stmt_id, param) + data, 0)

    def close(self, stmt_id: int) -> None:
        self.c.send_packet(struct.pack("<BI", COM_STMT_CLOSE, stmt_id), 0)

    def reset(self, stmt_id: int) -> Packet | ErrPacket:
        self.c.send_packet(struct.pack("<BI", COM_STMT_RESET, stmt_id), 0)
        p = self.c.read_packet()
        return parse_err(p.payload) if p.is_err else p
