"""A tiny PostgreSQL v3 wire-protocol client over a raw socket.

Real drivers hide exactly what some tests need to see or to break: the authentication request a
server sends, the SQLSTATE of a login failure, and malformed or out-of-order messages. This client
speaks just enough of the protocol (startup, cleartext / md5 / SCRAM-SHA-256 authentication,
simple Query) and lets tests send arbitrary bytes in between.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102

# Authentication request codes (the int32 after an 'R' message).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass
class Message:
    type: bytes  # one byte, e.g. b"E"
    payload: bytes


class ServerError(Exception):
    """An ErrorResponse from the server; `fields` maps field codes (S, V, C, M, ...) to text."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Decode the fields of an ErrorResponse / NoticeResponse payload."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def startup_packet(user: str | None, database: str | None = None,
                   version: int = PROTOCOL_3_0, **params: str) -> bytes:
    """A StartupMessage (length, version, then name/value pairs)."""
    body = struct.pack("!I", version)
    pairs = dict(params)
    if user is not None:
        pairs["user"] = user
    if database is not None:
        pairs["database"] = database
    for k, v in pairs.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(type_: bytes, payload: bytes = b"") -> bytes:
    """A typed frontend message: type byte, int32 length (self-inclusive), payload."""
    return type_ + struct.pack("!I", len(payload) + 4) + payload


@dataclass
class WireClient:
    host: str
    port: int
    timeout: float = 10.0
    sock: socket.socket = field(init=False)
    _buf: bytes = field(init=False, default=b"")
    auth_requests: list[int] = field(init=False, default_factory=list)
    params: dict[str, str] = field(init=False, default_factory=dict)
    backend_key: tuple[int, int] | None = field(init=False, default=None)

    def __post_init__(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)

    # -- raw I/O ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False on EOF (or a reset, which is a close too)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out waiting for the server") from None
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read_byte(self, timeout: float | None = None) -> bytes:
        """One byte (the answer to an SSLRequest); b"" on EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        if not self._buf and not self._fill(deadline):
            return b""
        b, self._buf = self._buf[:1], self._buf[1:]
        return b

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next backend message, or None on EOF. Raises TimeoutError after `timeout`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self._buf) < 5:
            if not self._fill(deadline):
                return None
        type_, length = self._buf[:1], struct.unpack("!I", self._buf[1:5])[0]
        while len(self._buf) < 1 + length:
            if not self._fill(deadline):
                return None
        payload, self._buf = self._buf[5:1 + length], self._buf[1 + length:]
        return Message(type_, payload)

    def read_bytes_until_eof(self, timeout: float = 10.0) -> bytes:
        """Every byte until the server closes the connection (TimeoutError if it doesn't)."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        data, self._buf = self._buf, b""
        return data

    def read_until_eof(self, timeout: float = 10.0) -> list[Message]:
        """All messages until the server closes the connection (TimeoutError if it doesn't)."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            msg = self.recv(timeout=max(deadline - time.monotonic(), 0.001))
            if msg is None:
                return out
            out.append(msg)

    def expect(self, *types: bytes, timeout: float | None = None) -> Message:
        """The next message, which must be one of `types`; ErrorResponse raises ServerError."""
        msg = self.recv(timeout)
        if msg is None:
            raise ConnectionError(f"server closed the connection while expecting {types}")
        if msg.type == b"E" and b"E" not in types:
            raise ServerError(parse_error_fields(msg.payload))
        if msg.type not in types:
            raise AssertionError(f"expected {types}, got {msg.type!r}")
        return msg

    # -- startup and authentication --------------------------------------------------------

    def startup(self, user: str, password: str | None, database: str = "app", **params) -> None:
        """Send a StartupMessage and authenticate; returns at the first ReadyForQuery."""
        self.send(startup_packet(user, database, **params))
        self.authenticate(user, password)

    def authenticate(self, user: str, password: str | None) -> None:
        while True:
            msg = self.recv()
            if msg is None:
                raise ConnectionError("server closed the connection during authentication")
            if msg.type == b"E":
                raise ServerError(parse_error_fields(msg.payload))
            if msg.type == b"R":
                code = struct.unpack("!I", msg.payload[:4])[0]
                self.auth_requests.append(code)
                if code == AUTH_OK:
                    continue
                if password is None:
                    raise AssertionError(f"server asked for a password (auth code {code})")
                if code == AUTH_CLEARTEXT:
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == AUTH_MD5:
                    salt = msg.payload[4:8]
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == AUTH_SASL:
                    mechanisms = msg.payload[4:].split(b"\0")
                    assert b"SCRAM-SHA-256" in mechanisms, mechanisms
                    self._scram(password)
                else:
                    raise AssertionError(f"unsupported authentication request {code}")
            elif msg.type == b"S":
                k, v, _ = msg.payload.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif msg.type == b"K":
                self.backend_key = struct.unpack("!II", msg.payload)
            elif msg.type == b"Z":
                return
            # NoticeResponse ('N') and anything else: ignore.

    def _scram(self, password: str) -> None:
        """SCRAM-SHA-256 client side (RFC 5802/7677, no channel binding)."""
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))

        cont = self.expect(b"R")
        assert struct.unpack("!I", cont.payload[:4])[0] == AUTH_SASL_CONTINUE
        self.auth_requests.append(AUTH_SASL_CONTINUE)
        server_first = cont.payload[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        assert attrs["r"].startswith(nonce), "server nonce must extend ours"
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(),
                                     base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        final_no_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_no_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.send(message(b"p", f"{final_no_proof},p={base64.b64encode(proof).decode()}".encode()))

        final = self.expect(b"R")
        assert struct.unpack("!I", final.payload[:4])[0] == AUTH_SASL_FINAL
        self.auth_requests.append(AUTH_SASL_FINAL)
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        got = final.payload[4:].decode()
        assert got == f"v={expected}", "the server's SCRAM signature does not verify"

    # -- simple query ----------------------------------------------------------------------

    def query(self, sql: str, timeout: float | None = None) -> list[tuple[str | None, ...]]:
        """Run a simple Query; returns the rows (text) of all results; raises ServerError."""
        self.send(message(b"Q", sql.encode() + b"\0"))
        rows, error = [], None
        while True:
            msg = self.recv(timeout)
            if msg is None:
                raise ConnectionError("server closed the connection during a query")
            if msg.type == b"D":
                rows.append(_data_row(msg.payload))
            elif msg.type == b"E":
                error = ServerError(parse_error_fields(msg.payload))
            elif msg.type == b"Z":
                if error:
                    raise error
                return rows


def _data_row(payload: bytes) -> tuple[str | None, ...]:
    n = struct.unpack("!H", payload[:2])[0]
    pos, values = 2, []
    for _ in range(n):
        length = struct.unpack("!i", payload[pos:pos + 4])[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[pos:pos + length].decode())
            pos += length
    return tuple(values)
