"""Differential fuzzing of the MySQL binary protocol: the same random sequence of prepared
statements (prepare, execute with and without parameter types, cursors read to their end, long
data, reset, close) and text queries (transactions, session variables, schema changes, DDL,
LAST_INSERT_ID, SHOW WARNINGS), from several clients in a fixed interleaving, run directly on
MariaDB and through a proxy whose few backends the clients share; every answer must be the same.

The sequences come from seeds 1..CONCIERGE_MYSQL_FUZZ_SEQUENCES (30 by default, about 20 s; a
longer run is a larger number, or CONCIERGE_MYSQL_FUZZ_SEED_BASE for other seeds). A divergence
fails with its seed, the step, both answers and the steps before it.

What is normalised: statement ids (MariaDB numbers statements across the server, the proxy per
client; the fuzzer maps its own handles to each side's ids, and the id inside the messages of
errors 1243 and 1421), and status flags to the ones a client acts on (in transaction,
autocommit, more results, cursor, last row).
A transaction or a cursor is run whole by one client between two other clients' steps, and
there are as many backends as clients: a client whose statement left warnings or an error keeps
its backend for its SHOW WARNINGS, so with fewer backends a step could wait for another
client's (the fixed interleaving would then deadlock). Clients still move between backends
after every statement.
"""

from __future__ import annotations

import os
import random
import re
import struct

import pytest

from helpers import DIRECT
from mywire import BinaryResult, ErrPacket, MyWireStatements, Packet, read_lenenc_int

SEQUENCES = int(os.environ.get("CONCIERGE_MYSQL_FUZZ_SEQUENCES") or 30)
SEED_BASE = int(os.environ.get("CONCIERGE_MYSQL_FUZZ_SEED_BASE") or 1)
STEPS, CLIENTS = 40, 3

# (SQL, parameter kinds): "i" an integer, "s" a short string, "l" a long string.
TEMPLATES = [
    ("SELECT ? + 1 AS a", "i"),
    ("SELECT v FROM fz WHERE k = ?", "i"),
    ("SELECT id, k, v FROM fz WHERE k >= ? ORDER BY id", "i"),
    ("SELECT * FROM fz WHERE id = ?", "i"),
    ("INSERT INTO fz (k, v) VALUES (?, ?)", "is"),
    ("UPDATE fz SET v = ? WHERE k = ?", "si"),
    ("SELECT COUNT(*) AS n, CONCAT('', SUM(k)) AS s FROM fz WHERE v LIKE ?", "s"),
    ("SELECT CONCAT(?, '-', ?) AS c", "ss"),
    ("SELECT LENGTH(?) AS n, LEFT(?, 3) AS l", "ll"),
    ("SELECT CONCAT('', LAST_INSERT_ID()) AS id", ""),
    ("SELECT seq, CONCAT('r', seq) AS r FROM seq_1_to_30 WHERE seq > ?", "i"),
    ("SELEC ?", "i"),
    ("INSERT INTO fz (k, v) VALUES (?, REPEAT('x', 60))", "i"),  # too long: an error in strict mode, a warning else
]
QUERIES = [
    "SELECT 1",
    "SELECT COUNT(*), CONCAT('', SUM(k)) FROM fz",
    "INSERT INTO fz (k, v) VALUES (7, 'text')",
    "SELECT CONCAT('', LAST_INSERT_ID())",
    "SET SESSION sql_mode = ''",
    "SET SESSION sql_mode = DEFAULT",
    "USE app2",
    "USE app",
    "ALTER TABLE fz ADD COLUMN x INT DEFAULT 1",
    "ALTER TABLE fz DROP COLUMN x",
    "SELECT * FROM fz ORDER BY id LIMIT 3",
]
STATUS_MASK = 0x01 | 0x02 | 0x08 | 0x40 | 0x80


def generate(seed: int) -> list[tuple]:
    rnd = random.Random(seed)
    handles: dict[int, list[int]] = {c: [] for c in range(CLIENTS)}
    template_of: dict[int, int] = {}
    executed: set[int] = set()
    steps: list[tuple] = []
    next_handle = 0

    def params(kinds: str) -> list:
        out = []
        for kind in kinds:
            if kind == "i":
                out.append(rnd.choice([0, 1, 2, 5, 7, -3, 2**40, None]) if rnd.random() < 0.9 else None)
            elif kind == "s":
                out.append(rnd.choice(["a", "b%", "%", "héllo", "", "t-1", "x" * 40]))
            else:
                out.append("L" * rnd.choice([0, 10, 300, 70000]))
        return out

    def execute_step(c: int, h: int) -> tuple:
        kinds = TEMPLATES[template_of[h]][1]
        send_types = h not in executed or rnd.random() < 0.3
        executed.add(h)
        return ("exec", c, h, params(kinds), send_types)

    for _ in range(STEPS):
        c = rnd.randrange(CLIENTS)
        roll = rnd.random()
        mine = handles[c]
        if roll < 0.2 or not mine:
            t = rnd.randrange(len(TEMPLATES))
            h = next_handle
            next_handle += 1
            template_of[h] = t
            mine.append(h)
            steps.append(("prep", c, h, TEMPLATES[t][0]))
        elif roll < 0.55:
            steps.append(execute_step(c, rnd.choice(mine)))
        elif roll < 0.62:
            h = rnd.choice(mine)
            if "l" in TEMPLATES[template_of[h]][1]:
                steps.append(("long", c, h, 0, "D" * rnd.choice([5, 5000, 100000])))
            steps.append(execute_step(c, h))
        elif roll < 0.68:
            h = rnd.choice(mine)
            executed.add(h)
            steps.append(("cursor", c, h, rnd.choice([1, 4, 10]), params(TEMPLATES[template_of[h]][1])))
        elif roll < 0.72:
            steps.append(("reset", c, rnd.choice(mine)))
        elif roll < 0.77:
            h = rnd.choice(mine)
            mine.remove(h)
            steps.append(("close", c, h))
        elif roll < 0.85:
            # A transaction, whole: statements of this client only.
            inner = [("query", c, "BEGIN")]
            for _ in range(rnd.randrange(1, 4)):
                if mine and rnd.random() < 0.6:
                    inner.append(execute_step(c, rnd.choice(mine)))
                else:
                    inner.append(("query", c, rnd.choice(QUERIES[:4])))
            inner.append(("query", c, rnd.choice(["COMMIT", "ROLLBACK"])))
            steps.append(("tx", c, inner))
        elif roll < 0.9:
            # A statement that uses a table, then the same client's SHOW WARNINGS. MariaDB clears
            # the diagnostics area only for statements that use a table (a `SELECT ? + 1` or a
            # prepare leaves an earlier statement's conditions there), and the proxy keeps a
            # client's backend for them only until its next statement: SHOW WARNINGS after such
            # a statement is a difference of the text protocol's, not this fuzzer's subject.
            tabled = [h for h in mine if "fz" in TEMPLATES[template_of[h]][0]]
            first = execute_step(c, rnd.choice(tabled)) if tabled else ("query", c, rnd.choice(QUERIES[1:3]))
            steps.append(("warn", c, first))
        else:
            steps.append(("query", c, rnd.choice(QUERIES)))
    return steps


def normalise_error(e: ErrPacket) -> tuple:
    message = e.message
    if e.code in (1243, 1421):
        message = re.sub(r"\(\d+\)", "(N)", message)
    return ("err", e.code, e.sqlstate, message)


def ok_fields(p: Packet) -> tuple:
    affected, pos = read_lenenc_int(p.payload, 1)
    insert_id, pos = read_lenenc_int(p.payload, pos)
    status, warnings = struct.unpack_from("<HH", p.payload, pos)
    return ("ok", affected, insert_id, status & STATUS_MASK, warnings)


class Side:
    """One side of the comparison: the clients' connections, and their statement ids."""

    def __init__(self, target):
        self.clients = []
        for _ in range(CLIENTS):
            c = target.wire()
            c.login("app", target.passwords["app"], "app")
            self.clients.append((c, MyWireStatements(c)))
        self.ids: dict[int, int] = {}

    def close(self) -> None:
        for c, _ in self.clients:
            c.close()

    def run(self, step: tuple) -> object:
        kind, c = step[0], step[1]
        conn, s = self.clients[c]
        if kind == "prep":
            r = s.prepare(step[3])
            if isinstance(r, ErrPacket):
                return normalise_error(r)
            self.ids[step[2]] = r.id
            return ("prep", r.columns, r.params)
        if kind == "exec":
            r = s.execute(self.ids.get(step[2], 999_999), step[3], send_types=step[4])
            return self.binary(r)
        if kind == "long":
            s.send_long_data(self.ids.get(step[2], 999_999), step[3], step[4].encode())
            return ("long",)
        if kind == "cursor":
            stmt = self.ids.get(step[2], 999_999)
            r = s.execute(stmt, step[4], cursor=True)
            out = [self.binary(r)]
            if isinstance(r, BinaryResult) and r.status & 0x40:
                for _ in range(40):
                    batch = s.fetch(stmt, step[3])
                    out.append(self.binary(batch))
                    if not isinstance(batch, BinaryResult) or batch.status & 0x80 or not batch.status & 0x40:
                        break
            return out
        if kind == "reset":
            r = s.reset(self.ids.get(step[2], 999_999))
            return normalise_error(r) if isinstance(r, ErrPacket) else ok_fields(r)
        if kind == "close":
            s.close(self.ids.get(step[2], 999_999))
            return ("closed",)
        if kind == "tx":
            return [self.run(inner) for inner in step[2]]
        if kind == "warn":
            first = self.run(step[2])
            if first[:2] in (("err", 1243), ("err", 1421)):
                # The proxy's own answer (the statement's prepare failed; no cursor): not in the
                # server's diagnostics area (README, binary-protocol statements' differences).
                return [first, "not compared"]
            return [first, self.run(("query", c, "SHOW WARNINGS"))]
        r = conn.query(step[2])
        if isinstance(r, ErrPacket):
            return normalise_error(r)
        if isinstance(r, Packet):
            return ok_fields(r)
        return ("rows", r)

    @staticmethod
    def binary(r) -> object:
        if isinstance(r, ErrPacket):
            return normalise_error(r)
        return ("result", r.names, r.rows, r.affected, r.status & STATUS_MASK)


def reset_tables(mariadb) -> None:
    mariadb.query("DROP TABLE IF EXISTS app.fz")
    mariadb.query("CREATE TABLE app.fz (id INT AUTO_INCREMENT PRIMARY KEY, k BIGINT, v VARCHAR(50))")
    mariadb.query("INSERT INTO app.fz (k, v) SELECT seq % 7, CONCAT('v', seq) FROM seq_1_to_12")
    mariadb.query("CREATE DATABASE IF NOT EXISTS app2")
    mariadb.query("GRANT ALL ON app2.* TO 'app'@'%'")


def run_side(target, mariadb, steps) -> list:
    reset_tables(mariadb)
    side = Side(target)
    try:
        return [side.run(step) for step in steps]
    finally:
        side.close()


@pytest.mark.skipif(DIRECT, reason="compares the proxy with the server")
def test_binary_protocol_differential_fuzz(mysql_proxy, mariadb):
    p = mysql_proxy(max_connections_percent=CLIENTS, connection_borrow_timeout=10, metrics=True)  # 1 backend a client
    counts = {"steps": 0}
    for seed in range(SEED_BASE, SEED_BASE + SEQUENCES):
        steps = generate(seed)
        direct = run_side(mariadb, mariadb, steps)
        proxied = run_side(p, mariadb, steps)
        counts["steps"] += len(steps)
        for i, (step, d, q) in enumerate(zip(steps, direct, proxied)):
            if d != q:
                before = "\n".join(f"  {j}: {s!r}" for j, s in enumerate(steps[:i]))
                pytest.fail(f"seed {seed}, step {i}: {step!r}\n directly:  {d!r}\n proxied:   {q!r}\n"
                            f"steps before it:\n{before}")
    print(f"MySQL differential fuzz: seeds {SEED_BASE}..{SEED_BASE + SEQUENCES - 1}, {counts['steps']} steps, "
          f"no difference")
    pins = {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
            if name == "concierge_session_pins_total" and v}
    assert pins == {}, pins
