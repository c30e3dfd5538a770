#!/usr/bin/env python3
"""Records a real MariaDB server's packets for MySQLWireTests (Tests/MySQLWireTests/Captures).

Standard library only. Logs in with mysql_native_password as a raw-socket client, runs each
scenario, and writes one NAME.hex per scenario:

    # capabilities: 0x...        the capabilities negotiated (client's & server's), MariaDB's in bits 32+
    # expect: response           what the tracker should expect for the scenario's commands
    # note: ...                  free text
    C <hex>                      bytes the client sent (whole packets, headers included)
    S <hex>                      bytes the server sent in reply, read until it fell silent

Runs of 64 or more equal bytes are written as a separate token `HH*COUNT` (the 16 MB rows and the
17 MB statement would otherwise take 34 MB of hex each).

A scenario's reply is read until the server sends nothing for QUIET seconds, so the captures do
not depend on any idea of where a response ends: that is what the tests check.

    bash scripts/mysql.sh start /tmp/concierge-mywire/data 3399
    python3 Tests/MySQLWireTests/Captures/capture.py --port 3399 \
        --password-file /tmp/concierge-mywire/admin.password --out Tests/MySQLWireTests/Captures
"""
import argparse
import hashlib
import os
import socket
import struct
import time

QUIET = 0.4
CAPTURE_PASSWORD = "capture-secret"

LONG_PASSWORD = 1
FOUND_ROWS = 2
LONG_FLAG = 4
CONNECT_WITH_DB = 8
LOCAL_FILES = 0x80
PROTOCOL_41 = 0x200
TRANSACTIONS = 0x2000
SECURE_CONNECTION = 0x8000
MULTI_STATEMENTS = 1 << 16
MULTI_RESULTS = 1 << 17
PS_MULTI_RESULTS = 1 << 18
PLUGIN_AUTH = 1 << 19
CONNECT_ATTRS = 1 << 20
PLUGIN_AUTH_LENENC = 1 << 21
SESSION_TRACK = 1 << 23
DEPRECATE_EOF = 1 << 24
MARIADB_CACHE_METADATA = 1 << 36

BASE = (LONG_PASSWORD | LONG_FLAG | CONNECT_WITH_DB | LOCAL_FILES | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION
        | MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC | SESSION_TRACK)


def lenenc_int(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(b):
    return lenenc_int(len(b)) + b


def packets(payload, seq):
    out = b""
    while True:
        chunk, payload = payload[:0xFFFFFF], payload[0xFFFFFF:]
        out += struct.pack("<I", len(chunk))[:3] + bytes([seq & 0xFF]) + chunk
        seq += 1
        if len(chunk) < 0xFFFFFF:
            return out


def rle_hex(data):
    """Hex, with runs of 64+ equal bytes as space-separated `HH*COUNT` tokens."""
    tokens, plain, i = [], [], 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        if j - i >= 64:
            if plain:
                tokens.append(bytes(plain).hex())
                plain = []
            tokens.append(f"{data[i]:02x}*{j - i}")
        else:
            plain.extend(data[i:j])
        i = j
    if plain:
        tokens.append(bytes(plain).hex())
    return " ".join(tokens)


def split_packets(data):
    """(seq, payload) of each packet in data; continuation packets are not joined here."""
    out = []
    while len(data) >= 4:
        length = data[0] | data[1] << 8 | data[2] << 16
        out.append((data[3], data[4:4 + length]))
        data = data[4 + length:]
    return out


def native_scramble(password, nonce):
    if not password:
        return b""
    s1 = hashlib.sha1(password.encode()).digest()
    s2 = hashlib.sha1(s1).digest()
    key = hashlib.sha1(nonce[:20] + s2).digest()
    return bytes(a ^ b for a, b in zip(s1, key))


class Conn:
    def __init__(self, port, user, password, caps, db=None, plugin="mysql_native_password", bad_password=False):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(QUIET)
        self.user, self.password, self.db = user, password, db
        self.client_caps = caps | (CONNECT_WITH_DB if db else 0)
        if not db:
            self.client_caps &= ~CONNECT_WITH_DB
        self.plugin, self.bad_password = plugin, bad_password
        self.records = []

    def read_burst(self, wait_first=5.0):
        data = b""
        deadline = time.time() + wait_first
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                if data or time.time() > deadline:
                    break
                continue
            if not chunk:
                break
            data += chunk
        self.records.append(("S", data))
        return data

    def send(self, data):
        self.records.append(("C", data))
        self.sock.sendall(data)

    def login(self):
        hs = self.read_burst()
        payload = split_packets(hs)[0][1]
        pos = 1
        end = payload.index(b"\0", pos)
        pos = end + 1 + 4
        nonce = payload[pos:pos + 8]
        pos += 9
        caps = struct.unpack_from("<H", payload, pos)[0]
        pos += 2 + 1 + 2
        caps |= struct.unpack_from("<H", payload, pos)[0] << 16
        pos += 2
        auth_len = payload[pos]
        pos += 1
        filler = payload[pos:pos + 10]
        pos += 10
        if not caps & LONG_PASSWORD:
            caps |= struct.unpack_from("<I", filler, 6)[0] << 32
        part2_len = max(13, auth_len - 8)
        nonce += payload[pos:pos + part2_len].rstrip(b"\0")
        self.server_caps = caps
        self.negotiated = self.client_caps & caps
        if self.client_caps & LONG_PASSWORD:
            self.negotiated &= 0xFFFFFFFF
        password = self.password + ("x" if self.bad_password else "")
        auth = native_scramble(password, nonce) if self.plugin == "mysql_native_password" else os.urandom(32)
        resp = struct.pack("<IIB", self.client_caps & 0xFFFFFFFF, 1 << 24, 45) + b"\0" * 19
        resp += struct.pack("<I", 0 if self.client_caps & LONG_PASSWORD else self.client_caps >> 32)
        resp += self.user.encode() + b"\0" + lenenc_str(auth)
        if self.db:
            resp += self.db.encode() + b"\0"
        resp += self.plugin.encode() + b"\0"
        attrs = lenenc_str(b"_client_name") + lenenc_str(b"concierge-capture") + lenenc_str(b"_pid") + lenenc_str(b"1")
        resp += lenenc_str(attrs)
        self.send(packets(resp, 1))
        reply = self.read_burst()
        first = split_packets(reply)[0]
        if first[1][:1] == b"\xfe":  # AuthSwitchRequest
            body = first[1][1:]
            name, data = body.split(b"\0", 1)
            assert name == b"mysql_native_password", name
            self.send(packets(native_scramble(password, data.rstrip(b"\0")), first[0] + 1))
            reply = self.read_burst()
        return reply

    def command(self, payload):
        self.send(packets(payload, 0))
        return self.read_burst()

    def query(self, sql):
        return self.command(b"\x03" + sql.encode())

    def discard(self):
        self.records = []

    def save(self, out, name, expect, note):
        with open(os.path.join(out, name + ".hex"), "w") as f:
            f.write(f"# capabilities: 0x{self.negotiated:x}\n# expect: {expect}\n# note: {note}\n")
            for direction, data in self.records:
                f.write(f"{direction} {rle_hex(data)}\n")
        self.records = []


def stmt_id_of(prepare_reply):
    payload = split_packets(prepare_reply)[0][1]
    assert payload[0] == 0, payload
    return struct.unpack_from("<I", payload, 1)[0]


def execute(stmt_id, params, flags=0):
    body = b"\x17" + struct.pack("<IBI", stmt_id, flags, 1)
    if params:
        body += b"\0" * ((len(params) + 7) // 8) + b"\x01"
        body += b"".join(b"\x08\x00" for _ in params)
        body += b"".join(struct.pack("<q", p) for p in params)
    return body


def scenarios(port, admin_user, admin_password, out):
    # Schema for the scenarios, set up by an unrecorded connection.
    setup = Conn(port, admin_user, admin_password, BASE)
    setup.login()
    for sql in [
        "DROP DATABASE IF EXISTS capture", "DROP DATABASE IF EXISTS capture2",
        "CREATE DATABASE capture", "CREATE DATABASE capture2",
        "CREATE TABLE capture.t (id INT AUTO_INCREMENT PRIMARY KEY, a VARCHAR(20))",
        "INSERT INTO capture.t (a) VALUES ('one'), ('two'), ('three'), (NULL)",
        "CREATE TABLE capture.t2 (a INT, b VARCHAR(10))",
        "CREATE PROCEDURE capture.two_results() BEGIN SELECT 1 AS x; SELECT 'a' AS y, 2 AS z; END",
        "DROP USER IF EXISTS 'capture'@'%'",
        f"CREATE USER 'capture'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{CAPTURE_PASSWORD}')",
        "GRANT ALL PRIVILEGES ON capture.* TO 'capture'@'%'",
        "GRANT ALL PRIVILEGES ON capture2.* TO 'capture'@'%'",
    ]:
        reply = setup.query(sql)
        assert split_packets(reply)[0][1][:1] == b"\0", (sql, reply)
    # The scenarios log in as a user whose password the tests know, so they can check the
    # scramble the server accepted.
    user, password = "capture", CAPTURE_PASSWORD

    for mode, caps in [("eof", BASE), ("deprecate_eof", BASE | DEPRECATE_EOF)]:
        c = Conn(port, user, password, caps, db="capture")
        c.login()
        c.save(out, f"handshake_{mode}", "login", "HandshakeV10, HandshakeResponse41 (native), OK")
        c.query("SET SESSION session_track_system_variables='*', session_track_schema=ON, session_track_state_change=ON")
        c.save(out, f"session_track_on_{mode}", "response", "OK for turning the session trackers on")
        c.query("DO 1")
        c.save(out, f"ok_{mode}", "response", "plain OK")
        c.query("INSERT INTO t (a) VALUES ('four')")
        c.save(out, f"ok_insert_{mode}", "response", "OK with affected rows 1 and an insert id")
        c.query("SELECT * FROM no_such_table")
        c.save(out, f"err_{mode}", "response", "ERR 1146")
        c.query("SELECT id, a, NULL AS n FROM t ORDER BY id")
        c.save(out, f"select_{mode}", "response", "text result set, 3 columns, 5 rows, a NULL column")
        c.query("SELECT 1 FROM t WHERE 1 = 0")
        c.save(out, f"select_empty_{mode}", "response", "text result set with no rows")
        c.query("SELECT 1 AS one; SELECT 2 AS two, 3 AS three; DO 1")
        c.save(out, f"multi_{mode}", "response", "multi-statement: two result sets then an OK")
        c.query("SELECT 1; SELECT * FROM no_such_table; SELECT 3")
        c.save(out, f"multi_err_{mode}", "response", "multi-statement: a result set then ERR (the rest is skipped)")
        c.query("CALL two_results()")
        c.save(out, f"call_{mode}", "response", "CALL with two result sets, then the CALL's OK")
        c.query("BEGIN")
        c.save(out, f"begin_{mode}", "response", "OK with SERVER_STATUS_IN_TRANS")
        c.query("COMMIT")
        c.save(out, f"commit_{mode}", "response", "OK after COMMIT")
        reply = c.command(b"\x16" + b"SELECT id, a, ? AS p FROM t WHERE id > ?")
        c.save(out, f"prepare_{mode}", "prepareResponse", "COM_STMT_PREPARE: 2 parameters, 3 columns")
        stmt = stmt_id_of(reply)
        c.command(execute(stmt, [7, 1]))
        c.save(out, f"execute_{mode}", "response", "COM_STMT_EXECUTE: binary result set")
        c.command(execute(stmt, [7, 1], flags=1))
        c.save(out, f"execute_cursor_{mode}", "response", "COM_STMT_EXECUTE opening a read-only cursor")
        c.command(b"\x1c" + struct.pack("<II", stmt, 2))
        c.save(out, f"fetch_{mode}", "fetch", "COM_STMT_FETCH of 2 rows (more remain)")
        c.command(b"\x1c" + struct.pack("<II", stmt, 100))
        c.save(out, f"fetch_last_{mode}", "fetch", "COM_STMT_FETCH to the end (SERVER_STATUS_LAST_ROW_SENT)")
        c.command(b"\x1a" + struct.pack("<I", stmt))
        c.save(out, f"stmt_reset_{mode}", "response", "COM_STMT_RESET: OK")
        reply = c.command(b"\x16" + b"DO 1")
        c.save(out, f"prepare_none_{mode}", "prepareResponse", "COM_STMT_PREPARE without parameters or columns")
        c.command(b"\x19" + struct.pack("<I", stmt_id_of(reply)))
        c.command(b"\x0e")
        c.save(out, f"close_ping_{mode}", "none,response", "COM_STMT_CLOSE (no response) then COM_PING")
        reply = c.command(b"\x16" + b"CALL two_results()")
        call_stmt = stmt_id_of(reply)
        c.discard()
        c.command(execute(call_stmt, []))
        c.save(out, f"execute_call_{mode}", "response", "COM_STMT_EXECUTE of a CALL: two binary result sets and an OK")
        c.send(packets(b"\x03" + b"LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE t2 FIELDS TERMINATED BY ','", 0))
        reply = c.read_burst()
        seq = split_packets(reply)[0][0] + 1
        c.send(packets(b"1,a\n2,b\n3,c\n", seq) + packets(b"", seq + 1))
        c.read_burst()
        c.save(out, f"local_infile_{mode}", "response", "LOAD DATA LOCAL INFILE: 0xFB request, the file, an empty packet, OK")
        c.command(b"\x04" + b"t\0")
        c.save(out, f"field_list_{mode}", "fieldList", "COM_FIELD_LIST: column definitions then EOF")
        c.command(b"\x09")
        c.save(out, f"statistics_{mode}", "statistics", "COM_STATISTICS: one string")
        c.command(b"\x1b" + struct.pack("<H", 1))
        c.save(out, f"set_option_{mode}", "response", "COM_SET_OPTION (multi-statements off): EOF")
        c.command(b"\x1b" + struct.pack("<H", 0))
        c.discard()
        c.query("SET SESSION sql_mode='ANSI_QUOTES,NO_BACKSLASH_ESCAPES'")
        c.save(out, f"session_sql_mode_{mode}", "response", "OK with session state: sql_mode")
        c.query("USE capture2")
        c.save(out, f"session_use_{mode}", "response", "OK with session state: schema")
        c.command(b"\x02" + b"capture")
        c.save(out, f"session_init_db_{mode}", "response", "COM_INIT_DB: OK with session state: schema")
        c.query("SET NAMES latin1")
        c.save(out, f"session_names_{mode}", "response", "OK with session state: three character set variables")
        c.query("SET @x = 1")
        c.save(out, f"session_user_variable_{mode}", "response", "OK with session state: state changed only")
        c.query("SET time_zone = '+02:00', autocommit = 0")
        c.save(out, f"session_time_zone_{mode}", "response", "OK with session state: time_zone, autocommit")
        c.query("SELECT 1")
        c.save(out, f"select_autocommit_off_{mode}", "response", "result set with autocommit off (in a transaction)")
        c.query("SELECT REPEAT('x', 16777216 + 10) AS big, 'tail' AS small")
        c.save(out, f"big_row_{mode}", "response",
               "a row whose first field is 16 MB + 10 bytes: it starts with 0xFE and is split in 2 packets")
        c.query("SELECT REPEAT('y', 16777215 - 4) AS exact")
        c.save(out, f"exact_row_{mode}", "response",
               "a row payload of exactly 0xFFFFFF bytes, continued by an empty packet")
        c.query("SELECT LENGTH('" + "z" * (17 * 1024 * 1024) + "') AS n")
        c.save(out, f"big_statement_{mode}", "response", "a 17 MB COM_QUERY, split in 2 packets by the client")
        # COM_CHANGE_USER naming another plugin: the server switches to native with a new nonce.
        body = b"\x11" + user.encode() + b"\0" + bytes([20]) + os.urandom(20) + b"capture\0"
        body += struct.pack("<H", 45) + b"caching_sha2_password\0" + lenenc_str(b"")
        reply = c.command(body)
        switch = split_packets(reply)[0]
        assert switch[1][:1] == b"\xfe", reply
        name, data = switch[1][1:].split(b"\0", 1)
        c.send(packets(native_scramble(password, data.rstrip(b"\0")), switch[0] + 1))
        c.read_burst()
        c.save(out, f"change_user_{mode}", "authentication",
               "COM_CHANGE_USER with another plugin: AuthSwitchRequest, the scramble, OK")
        c.command(b"\x1f")
        c.save(out, f"reset_connection_{mode}", "response", "COM_RESET_CONNECTION: OK")
        c.command(b"\x0e")
        c.save(out, f"ping_{mode}", "response", "COM_PING: OK")

    # MariaDB extended capabilities: the client lacks CLIENT_MYSQL and asks for cache metadata.
    c = Conn(port, user, password, (BASE | DEPRECATE_EOF | MARIADB_CACHE_METADATA) & ~LONG_PASSWORD, db="capture")
    c.login()
    c.save(out, "handshake_mariadb_extended", "login", "client without CLIENT_MYSQL, MARIADB_CLIENT_CACHE_METADATA")
    c.query("SELECT id FROM t WHERE id < 3")
    c.save(out, "select_cache_metadata", "response", "text result set with cache metadata negotiated")
    reply = c.command(b"\x16" + b"SELECT id, a FROM t WHERE id < ?")
    c.save(out, "prepare_cache_metadata", "prepareResponse", "COM_STMT_PREPARE with cache metadata")
    stmt = stmt_id_of(reply)
    c.command(execute(stmt, [3]))
    c.save(out, "execute_cache_metadata_1", "response", "first execute: metadata follows")
    c.command(execute(stmt, [3]))
    c.save(out, "execute_cache_metadata_2", "response", "second execute: metadata skipped")

    c = Conn(port, user, password, BASE, db="capture", plugin="caching_sha2_password")
    c.login()
    c.save(out, "handshake_auth_switch", "login", "client names caching_sha2_password: AuthSwitchRequest to native, OK")
    c = Conn(port, user, password, BASE, db="capture", bad_password=True)
    c.login()
    c.save(out, "handshake_wrong_password", "login", "wrong password: ERR 1045")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="concierge_admin")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.password_file) as f:
        password = f.read().strip()
    os.makedirs(args.out, exist_ok=True)
    scenarios(args.port, args.user, password, args.out)


if __name__ == "__main__":
    main()
