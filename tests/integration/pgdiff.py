#!/usr/bin/env python3
"""pgdiff: a differential protocol fuzzer for Concierge.

Several raw-socket clients (pgwire.WireClient) send random but valid sequences of frontend
messages (simple Query; Parse, Bind, Describe, Execute, Close, Flush, Sync; pipelines of several
Syncs in one write; reconnects) to PostgreSQL directly and, in lock step, through a Concierge
proxy that gives them fewer backends than there are clients. After every step the two answers
are compared message by message, after normalising only what must differ: BackendKeyData, the pid
in NotificationResponse (mapped to "own" or "other" pid), pids in error text, the OIDs of the
run's own tables and types (RowDescription, ParameterDescription: renumbered in order of
appearance), the order of ParameterStatus at login (compared as a set there), and the source
location of 25P02 errors (INHERENT). The SCRAM exchange itself is not compared.

The next step is generated from the seeded RNG and the direct side's answers so far, so both sides
get the same messages as long as the answers agree. The scheduler never lets more clients hold a
backend than the proxy has (a client holds one while in a transaction, while it has unsynced
extended-protocol messages, and from a statement that may pin its session until it reconnects):
otherwise the proxy would, rightly, queue a client that PostgreSQL would answer. A divergence is
shrunk (clients, then steps, then messages, re-running both sides each time) to the shortest
sequence that still diverges the same way, printed in a readable form and saved as JSON for
`--replay`.

The direct side runs in database app2, the proxy side in database app (the proxy serves both);
each run starts from freshly recreated tables and a fresh proxy process (which must serve a
login and `select 1` before the run starts). Two runs must not share a cluster: each recreates
the same tables.

Run as a script (starts its own throwaway PostgreSQL with scripts/pg.sh):

    python3 tests/integration/pgdiff.py --bin /tmp/cbin/concierge --seconds 600 --seed 7
    python3 tests/integration/pgdiff.py --bin ... --replay /tmp/pgdiff-seed7.json [--shrink]
    python3 tests/integration/pgdiff.py --bin ... --pg-port P --pg-password X --app-password Y
                                        # against a running cluster with user app, dbs app, app2
    python3 tests/integration/pgdiff.py --self-check --seconds 60   # PostgreSQL against itself

Knobs (environment variables; the script's flags override them):

    CONCIERGE_FUZZ_SEED=N            first seed (default 1); successive sequences use N+1, N+2, ...
    CONCIERGE_FUZZ_SECONDS=S         keep generating sequences until S seconds have passed
    CONCIERGE_FUZZ_SEQUENCES=N       stop after N sequences (0: no limit)
                                     (default: the CI budget, 45 s)
    CONCIERGE_FUZZ_STEPS=N           steps per sequence (default 150)
    CONCIERGE_FUZZ_CLIENTS=N         clients (default 5); the proxy gets 3 backends
    CONCIERGE_FUZZ_SHRINK_SECONDS=S  time allowed for shrinking a divergence (default 90; 0: none)
    CONCIERGE_FUZZ_AVOID=a,b         construct tags not to generate (see TAGS)
    CONCIERGE_FUZZ_ASSUME_PINS=a,b   treat these constructs as pinning in the scheduler
                                     (reset_all, discard_all, deallocate, deallocate_all, ...)
    CONCIERGE_FUZZ_INHERENT=1        also generate the inherent differences (INHERENT)
    CONCIERGE_FUZZ_KEEP_GOING=1      after a divergence, go on with the next seed
    CONCIERGE_FUZZ_FINDINGS=path     append each shrunk divergence to this Markdown file
    CONCIERGE_FUZZ_OUT=dir           where shrunk sequences are saved as JSON (default /tmp)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgwire import Message, ServerError, WireClient, message, parse_error_fields  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_SH = REPO_ROOT / "scripts" / "pg.sh"

# Every construct the generator can produce has a tag; CONCIERGE_FUZZ_AVOID names tags to leave
# out (to look past a known divergence).
TAGS = """read show write error tx savepoint set_tracked set_driver set_local set_other set_config
reset_one reset_all discard_all prepare deallocate deallocate_all listen unlisten notify advisory
advisory_unlock_all cursor cursor_hold close_all temp sequence ddl empty unnamed named use_named
close describe bind_missing exec_missing unnamed_reuse q_in_extended fetch_portal binary
parse_existing_name reconnect login_params login_options set_default pipeline flush
multi_statement reset_ext""".split()

# Statements that reset session state; `reset_ext` sends them through the extended protocol and
# inside multi-statement Queries too (not only as a lone simple Query).
RESETTING = {"deallocate", "deallocate_all", "reset_all", "discard_all"}

# Differences inherent to a pooling proxy, not generated unless CONCIERGE_FUZZ_INHERENT=1:
INHERENT = {
    # A named Parse that arrives while the client holds no backend is answered by the proxy
    # (ParseComplete) without one: it cannot know whether the SQL parses, and borrowing a
    # backend for every Parse could deadlock clients that hold the other backends (which
    # PostgreSQL, with a backend per connection, never does). So a Parse that fails is
    # reported at its first Bind or Describe instead. The generator does not send a Parse that
    # can fail at that point (README, "Prepared statements").
    "deferred_parse_error",
    # In a transaction that has failed, a Bind of a statement the serving backend lacks fails
    # (25P02) at the Parse the proxy sends first, before PostgreSQL would check the Bind's
    # parameter count (08P01); the proxy cannot know the count of a statement no backend has
    # analysed, nor have it analysed now. Binds of earlier statements inside transactions get
    # the right parameter count (Generator.params_for).
    "failed_tx_bind_count",
    # A named statement is parsed again on each backend that serves it (and, answered without a
    # backend, first at its first use), under the session's settings of that moment: a literal
    # whose reading depends on them ('a\\b' and standard_conforming_strings; an ambiguous date
    # and DateStyle) can read differently if the client changed them since its Parse (README,
    # "Differences from a direct connection"). Unless this is generated, a named Parse's text
    # has no such literal.
    "deferred_parse_settings",
    # In a transaction that has failed, a Describe of a statement the serving backend lacks
    # fails (25P02) at the Parse the proxy sends first; PostgreSQL describes a statement that
    # returns no rows even then (README). Unless this is generated, a Describe of a named
    # statement is not sent inside a transaction block.
    "failed_tx_describe",
    # PostgreSQL ends every Parse with a CommandCounterIncrement: rows an UPDATE ... RETURNING
    # changed, its portal suspended by a row limit, become visible to the next statement of the
    # batch. A Parse the proxy sends (a statement the serving backend lacks) may do that where
    # the client sent none (README). Unless this is generated, a batch binds or describes no
    # earlier statement after an Execute with a row limit.
    "deferred_parse_visibility",
    # Whether a statement runs with a custom plan (its parameters folded as constants at Bind)
    # or a generic one depends on how often it ran on that backend: an error PostgreSQL raises
    # while planning (10 / $1 with 0) comes at Bind on one side and at Execute on the other
    # (README). Unless this is generated, no parameter makes planning fail.
    "plan_time_errors",
}
# Also inherent, and normalised rather than avoided: in a failed transaction, a Bind or Describe
# of a statement the serving backend lacks fails (25P02) at the Parse the proxy sends first, so
# the error's source location (F, L, R: exec_parse_message) is not the one PostgreSQL gives for the
# Bind (exec_bind_message). Severity, SQLSTATE and message are the same; only 25P02 is affected.

TRACKED = {"application_name", "datestyle", "timezone", "intervalstyle", "client_encoding",
           "standard_conforming_strings"}
# Driver settings: a lone SET of one outside a transaction does not pin (README).
DRIVER = {"extra_float_digits", "statement_timeout", "lock_timeout",
          "idle_in_transaction_session_timeout", "bytea_output"}

DATESTYLES = ["ISO, MDY", "ISO, DMY", "SQL, DMY", "German", "Postgres, MDY", "SQL"]
TIMEZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Berlin", "Australia/Adelaide"]
INTERVALSTYLES = ["postgres", "postgres_verbose", "sql_standard", "iso_8601"]
ENCODINGS = ["UTF8", "LATIN1", "SQL_ASCII"]
WORDS = ["a", "b", "zz", "kiwi", "x y", "it''s"]
STMT_NAMES = ["s1", "s2", "s3"]
PORTAL_NAMES = ["", "p1", "p2"]


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def env_set(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


# -- frontend messages -----------------------------------------------------------------------
#
# A message is a JSON-friendly list:
#   ["Q", sql]                              simple Query
#   ["P", name, sql, [type oids]]           Parse
#   ["B", portal, statement, [params], [result formats]]   Bind (text parameters; None is NULL)
#   ["D", "S"|"P", name]                    Describe statement / portal
#   ["E", portal, max_rows]                 Execute
#   ["C", "S"|"P", name]                    Close statement / portal
#   ["H"], ["S"]                            Flush, Sync
# A step is {"c": client, "op": "login"|"reconnect"|"batch", "params": {...}, "msgs": [...]}.

def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def encode(m: list) -> bytes:
    t = m[0]
    if t == "Q":
        return message(b"Q", _cstr(m[1]))
    if t == "P":
        return message(b"P", _cstr(m[1]) + _cstr(m[2]) + struct.pack("!H", len(m[3]))
                       + b"".join(struct.pack("!I", o) for o in m[3]))
    if t == "B":
        body = _cstr(m[1]) + _cstr(m[2]) + struct.pack("!HH", 0, len(m[3]))
        for p in m[3]:
            if p is None:
                body += struct.pack("!i", -1)
            else:
                b = p.encode()
                body += struct.pack("!i", len(b)) + b
        body += struct.pack("!H", len(m[4])) + b"".join(struct.pack("!H", f) for f in m[4])
        return message(b"B", body)
    if t == "D":
        return message(b"D", m[1].encode() + _cstr(m[2]))
    if t == "E":
        return message(b"E", _cstr(m[1]) + struct.pack("!i", m[2]))
    if t == "C":
        return message(b"C", m[1].encode() + _cstr(m[2]))
    if t == "H":
        return message(b"H")
    if t == "S":
        return message(b"S")
    raise ValueError(f"unknown message {m!r}")


def show_msg(m: list) -> str:
    t = m[0]
    if t == "Q":
        return f"Query({m[1]!r})"
    if t == "P":
        return f"Parse({m[1]!r}, {m[2]!r}{', ' + repr(m[3]) if m[3] else ''})"
    if t == "B":
        extra = f", formats={m[4]!r}" if m[4] else ""
        return f"Bind({m[1]!r}, {m[2]!r}, {m[3]!r}{extra})"
    if t == "D":
        return f"Describe{'Statement' if m[1] == 'S' else 'Portal'}({m[2]!r})"
    if t == "E":
        return f"Execute({m[1]!r}{', ' + str(m[2]) if m[2] else ''})"
    if t == "C":
        return f"Close{'Statement' if m[1] == 'S' else 'Portal'}({m[2]!r})"
    return {"H": "Flush", "S": "Sync"}[t]


def show_step(step: dict) -> str:
    c = f"c{step['c']}"
    if step["op"] in ("login", "reconnect"):
        params = " ".join(f"{k}={v!r}" for k, v in step.get("params", {}).items())
        verb = "login" if step["op"] == "login" else "reconnect (Terminate, new login)"
        return f"{c}: {verb}{' ' + params if params else ''}"
    return f"{c}: " + " ".join(show_msg(m) for m in step["msgs"])


# -- normalising backend messages ------------------------------------------------------------

_PID_RE = re.compile(r"\b(PID|pid|process|Process|backend)( +)\d+")


def _pidless(text: str) -> str:
    return _PID_RE.sub(r"\1\2<pid>", text)


class Normaliser:
    """Turns backend messages into comparable strings, for one side of one run."""

    def __init__(self) -> None:
        self.oids: dict[int, str] = {}

    def oid(self, o: int) -> str:
        if o < 16384:  # FirstNormalObjectId: built-in objects have the same OID everywhere
            return str(o)
        if o not in self.oids:
            self.oids[o] = f"#{len(self.oids) + 1}"
        return self.oids[o]

    def __call__(self, m: Message, own_pid: int | None) -> str:
        t, p = m.type.decode(), m.payload
        if t in ("E", "N"):
            f = parse_error_fields(p)
            if f.get("C") == "25P02":
                # In a failed transaction, the proxy's Parse of a statement the serving backend
                # lacks fails before the client's Bind or Describe: same error, raised by
                # exec_parse_message instead (INHERENT, README). Source location not compared.
                for k in ("F", "L", "R"):
                    f.pop(k, None)
            head = f"{t} {f.get('S', '')} {f.get('C', '')} {_pidless(f.get('M', ''))}"
            rest = " ".join(f"{k}={_pidless(v)!r}" for k, v in sorted(f.items())
                            if k not in ("S", "C", "M", "V"))
            return head + (" | " + rest if rest else "")
        if t == "D":
            n = struct.unpack("!H", p[:2])[0]
            pos, vals = 2, []
            for _ in range(n):
                ln = struct.unpack("!i", p[pos:pos + 4])[0]
                pos += 4
                if ln < 0:
                    vals.append(None)
                else:
                    raw = p[pos:pos + ln]
                    pos += ln
                    try:
                        vals.append(raw.decode())
                    except UnicodeDecodeError:
                        vals.append("0x" + raw.hex())
            return f"D {vals!r}"
        if t == "T":
            n = struct.unpack("!H", p[:2])[0]
            pos, cols = 2, []
            for _ in range(n):
                end = p.index(b"\0", pos)
                name = p[pos:end].decode()
                pos = end + 1
                tab, att, typ, tlen, tmod, fmt = struct.unpack("!IhIhih", p[pos:pos + 18])
                pos += 18
                tab_s = self.oid(tab) if tab else "0"
                cols.append(f"{name}:{tab_s}.{att}:{self.oid(typ)}/{tlen}/{tmod}/{fmt}")
            return "T [" + ", ".join(cols) + "]"
        if t == "t":
            n = struct.unpack("!H", p[:2])[0]
            oids = struct.unpack(f"!{n}I", p[2:2 + 4 * n])
            return "t [" + ", ".join(self.oid(o) for o in oids) + "]"
        if t == "C":
            return "C " + p.rstrip(b"\0").decode()
        if t == "S":
            k, v, _ = p.split(b"\0", 2)
            return f"S {k.decode()}={v.decode()}"
        if t == "A":
            pid = struct.unpack("!I", p[:4])[0]
            ch, payload, _ = p[4:].split(b"\0", 2)
            who = "own pid" if pid == own_pid else "other pid"
            return f"A ({who}) {ch.decode()} {payload.decode()!r}"
        if t == "Z":
            return f"Z {p.decode()}"
        if t == "K":
            return "K <key>"
        names = {"1": "ParseComplete", "2": "BindComplete", "3": "CloseComplete", "n": "NoData",
                 "s": "PortalSuspended", "I": "EmptyQueryResponse"}
        if t in names and not p:
            return f"{t} {names[t]}"
        return f"{t} {p!r}"


# -- connections -----------------------------------------------------------------------------

@dataclass
class Endpoint:
    name: str  # "direct" or "proxy"
    host: str
    port: int
    dbname: str
    user: str
    password: str
    timeout: float  # how long one step may wait for an answer


class Pending:
    """A frontend message sent and not yet fully answered."""

    __slots__ = ("kind", "msg", "answer", "outcome", "saw_t")

    def __init__(self, msg: list):
        self.msg = msg
        self.kind = msg[0] + (msg[1] if msg[0] == "D" else "")
        self.answer: list[str] = []
        self.outcome = ""  # "ok", "error", "skipped"
        self.saw_t = False


class Conn:
    """One client's connection on one side, with what it awaits."""

    def __init__(self, ep: Endpoint, params: dict[str, str]):
        self.ep = ep
        self.params = params
        self.w: WireClient | None = None
        self.pid: int | None = None
        self.pending: list[Pending] = []
        self.skipping = False  # an error since the last Sync: the server skips until Sync
        self.broken = False
        self.received = 0
        self.sent = 0

    def login(self, norm: Normaliser) -> list[str]:
        try:
            self.w = WireClient(self.ep.host, self.ep.port, timeout=self.ep.timeout)
            self.w.startup(self.ep.user, self.ep.password, self.ep.dbname, **self.params)
        except ServerError as e:
            self.broken = True
            return [f"E {e.fields.get('S')} {e.sqlstate} {_pidless(e.message or '')} (at login)"]
        except (TimeoutError, ConnectionError, OSError) as e:
            self.broken = True
            return [f"<login failed: {type(e).__name__}: {e}>"]
        self.pid = self.w.backend_key[0] if self.w.backend_key else None
        out = sorted(f"S {k}={v}" for k, v in self.w.params.items())
        self.received += len(out) + 2
        return out + (["K <key>"] if self.w.backend_key else ["<no BackendKeyData>"]) + ["Z I"]

    def close(self, terminate: bool = True) -> None:
        if self.w is None:
            return
        if terminate and not self.broken:
            try:
                self.w.send(message(b"X"))
                self.sent += 1
            except OSError:
                pass
        self.w.close()
        self.w = None

    def send(self, msgs: list[list]) -> None:
        assert self.w is not None
        data = b"".join(encode(m) for m in msgs)
        self.sent += len(msgs)
        self.pending.extend(Pending(m) for m in msgs)
        try:
            self.w.send(data)
        except OSError:
            self.broken = True

    def read_due(self, norm: Normaliser, done: list[Pending]) -> list[str]:
        """Reads until every message up to the last Flush, Sync or Query sent is answered.
        Returns the normalised messages read; answered (or skipped) entries go to `done`."""
        out: list[str] = []
        if self.broken or self.w is None:
            return ["<connection broken>"]
        due = max((i for i, p in enumerate(self.pending) if p.kind in ("H", "S", "Q")), default=-1)
        deadline = time.monotonic() + self.ep.timeout
        while due >= 0:
            head = self.pending[0]
            if head.kind == "H" or (self.skipping and head.kind != "S"):
                head.outcome = "skipped" if head.kind != "H" else "ok"
                done.append(self.pending.pop(0))
                due -= 1
                continue
            try:
                m = self.w.recv(timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                out.append(f"<timeout after {self.ep.timeout:g}s waiting for the answer to "
                           f"{show_msg(head.msg)}>")
                self.broken = True
                return out
            except OSError as e:
                m = None
                out.append(f"<{type(e).__name__}>")
            if m is None:
                out.append("<connection closed by the server>")
                self.broken = True
                return out
            self.received += 1
            s = norm(m, self.pid)
            out.append(s)
            head.answer.append(s)
            t = m.type
            if t in (b"N", b"A", b"S"):
                continue
            finished = False
            if t == b"E":
                if head.kind == "Q" or head.kind == "S":
                    head.outcome = "error"
                    continue  # ReadyForQuery follows
                head.outcome = "error"
                self.skipping = True
                finished = True
            elif head.kind in ("Q", "S"):
                if t == b"Z":
                    head.outcome = head.outcome or "ok"
                    if head.kind == "S":
                        self.skipping = False
                    finished = True
            elif head.kind == "P":
                finished = t == b"1"
            elif head.kind == "B":
                finished = t == b"2"
            elif head.kind == "C":
                finished = t == b"3"
            elif head.kind == "DS":
                if t == b"t":
                    head.saw_t = True
                finished = head.saw_t and t in (b"T", b"n")
            elif head.kind == "DP":
                finished = t in (b"T", b"n")
            elif head.kind == "E":
                finished = t in (b"C", b"I", b"s")
            if finished:
                head.outcome = head.outcome or "ok"
                done.append(self.pending.pop(0))
                due -= 1
        return out

    def drain(self, norm: Normaliser) -> list[str]:
        """Whatever the server sent beyond what was due (read without waiting)."""
        if self.broken or self.w is None:
            return []
        out = []
        try:
            self.w.sock.setblocking(False)
            try:
                while True:
                    chunk = self.w.sock.recv(65536)
                    if not chunk:
                        out.append("<connection closed by the server>")
                        break
                    self.w._buf += chunk
            except (BlockingIOError, InterruptedError):
                pass
            finally:
                self.w.sock.setblocking(True)
        except OSError as e:
            out.append(f"<{type(e).__name__}>")
        while len(self.w._buf) >= 5:
            length = struct.unpack("!I", self.w._buf[1:5])[0]
            if len(self.w._buf) < 1 + length:
                break
            m = Message(self.w._buf[:1], self.w._buf[5:1 + length])
            self.w._buf = self.w._buf[1 + length:]
            out.append(norm(m, self.pid))
        if self.w._buf:
            out.append(f"<{len(self.w._buf)} bytes of a partial message>")
        return out


# -- what the generator and the scheduler know about each client ----------------------------

def split_sql(sql: str) -> list[str]:
    # The generated SQL has no ';' inside literals.
    return [s.strip() for s in sql.split(";") if s.strip()]


def may_pin(sql: str, lone_outside_tx: bool, assume: set[str], in_tx: bool = False) -> bool:
    """Whether the proxy may pin the session for `sql` (conservatively). Statements the proxy is
    meant not to pin (RESET ALL, DISCARD ALL, DEALLOCATE, UNLISTEN, CLOSE ALL, tracked SET /
    RESET, SET LOCAL, ...) count as pinning only when `assume` names their tag."""
    stmts = split_sql(sql)
    lone = lone_outside_tx and len(stmts) == 1
    for s in stmts:
        low = " ".join(s.lower().replace("=", " = ").replace("(", "( ").split())
        words = low.split()
        first, rest = words[0], words[1:]
        if first == "set":
            if rest[:1] in (["local"], ["transaction"]):
                continue
            if rest[:1] == ["session"]:
                rest = rest[1:]
            name = rest[0] if rest else ""
            if name in TRACKED or (name in DRIVER and lone):
                continue
            return True
        if first == "reset":
            name = rest[0] if rest else ""
            if name == "all":
                # Inside a transaction block RESET ALL pins (README, Resets).
                if "reset_all" in assume or in_tx:
                    return True
                continue
            if name in TRACKED:
                continue
            return True
        if first == "discard":
            if rest[:1] == ["all"] and "discard_all" not in assume:
                continue
            return True
        if first == "prepare" or first == "listen":
            return True
        if first == "deallocate":
            if ("deallocate_all" if "all" in rest else "deallocate") in assume:
                return True
            continue
        if first in ("unlisten", "close") and (first if first == "unlisten" else "close_all") in assume:
            return True
        if first == "create" and ("temp" in rest[:2] or "temporary" in rest[:2]):
            return True
        if first == "declare" and "hold" in rest:
            return True
        if re.search(r"pg_(try_)?advisory_lock(_shared)?\(", low):
            return True
        if "pg_advisory_unlock_all(" in low and "advisory_unlock_all" in assume:
            return True
        if re.search(r"\b(nextval|setval|currval|lastval)\(", low):
            return True
        # A non-local set_config pins, whatever the parameter (README, "Pinning").
        if re.search(r"set_config\( '[a-z_]+',[^,]*, false\)", low):
            return True
    return False


@dataclass
class ClientModel:
    """What the direct side's answers say about a client (a guide for generating, and the
    scheduler's notion of who holds a backend)."""

    connected: bool = False
    status: str = "I"
    unsynced: bool = False       # extended-protocol messages since the last Sync
    routed: bool = False         # ... of which some need a backend (not a named Parse / Close)
    # ... and the proxy may Parse at another moment than PostgreSQL: a named Parse it answered
    # itself, or a Bind / Describe that makes it prepare the statement on the serving backend
    parsed_locally: bool = False
    maybe_pinned: bool = False   # sent a statement that may pin, since its last login
    stmts: dict[str, list] = field(default_factory=dict)   # protocol statements: param choices
    sql_prepared: set[str] = field(default_factory=set)
    portals: set[str] = field(default_factory=set)
    cursors: set[str] = field(default_factory=set)
    savepoints: list[str] = field(default_factory=list)
    listening: bool = False
    aux_table: bool = False
    temp_table: bool = False
    generation: int = 0
    proposed: dict[str, list] = field(default_factory=dict)  # parameter lists by statement text
    # an Execute with a row limit since the last Sync (its portal may be suspended)
    suspended: bool = False
    reset_in_tx: bool = False    # RESET ALL sent in the transaction block now open
    stmt_sql: dict[str, str] = field(default_factory=dict)  # statement texts by name (a guide)
    # per Query sent, not yet answered: (unsynced, routed, parsed_locally) after it runs
    after_queries: list = field(default_factory=list)
    # the unnamed portal may FETCH from a named portal (the fetch_portal unit): not described
    fetch_unnamed: bool = False

    def holds(self) -> bool:
        return self.status in ("T", "E") or self.unsynced or self.maybe_pinned

    def why(self) -> str:
        return ",".join(w for w, b in (("tx", self.status in ("T", "E")),
                                       ("unsynced", self.unsynced),
                                       ("may be pinned", self.maybe_pinned)) if b)

    def login(self) -> None:
        gen = self.generation + 1
        self.__init__()
        self.connected, self.generation = True, gen

    def note_sent(self, msgs: list[list], assume: set[str]) -> None:
        # Whether a transaction block may be open (a Bind of a statement that begins one, sent
        # in an earlier write not yet synced, counts as well).
        in_tx = self.status in ("T", "E") or self.unsynced
        for k, m in enumerate(msgs):
            t = m[0]
            sql = m[1] if t == "Q" else m[2] if t == "P" else None
            if sql is not None:
                # Only the first message of a write can find the client without a backend.
                lone = t == "Q" and k == 0 and self.status == "I" and not self.unsynced
                low = sql.lower()
                in_tx = in_tx or "begin" in low or "start transaction" in low
                if may_pin(sql, lone, assume, in_tx=in_tx):
                    self.maybe_pinned = True
                if in_tx and re.search(r"\breset\s+all\b", low):
                    self.reset_in_tx = True
            in_tx = in_tx or t in ("B", "E")
            if t == "S":
                self.unsynced = self.routed = self.parsed_locally = False
            elif t == "Q":
                # It ends the messages before it as a Sync does, if it runs (an error before it
                # skips it): `apply` sees its ReadyForQuery and takes the state the messages
                # after it leave (a later Query may be skipped: only a Sync surely resets).
                after = [False, False, False]
                for later in msgs[k + 1:]:
                    if later[0] == "S":
                        after = [False, False, False]
                    elif later[0] not in ("Q", "H"):
                        after = [True, after[1] or routes(later), after[2] or later[0] in ("P", "B", "D")]
                self.after_queries.append(tuple(after))
            elif t != "H":  # a Flush alone opens nothing
                if (t == "P" and m[1] and not self.routed and self.status == "I") or t == "B" \
                        or (t == "D" and m[1] == "S"):
                    self.parsed_locally = True
                self.unsynced = True
                if routes(m):
                    self.routed = True

    def apply(self, p: Pending) -> None:
        """An answered message (direct side)."""
        m, ok = p.msg, p.outcome == "ok"
        t = m[0]
        for a in p.answer:
            if a.startswith("Z "):
                self.status = a[2]
                if self.status == "I":
                    self.fetch_unnamed = False  # portals end with the transaction
                    self.reset_in_tx = False
                    self.portals.clear()
                    self.cursors.clear()
                    self.savepoints.clear()
        if t == "P":
            if ok:
                self.stmts[m[1]] = self.proposed.get(m[2], [[]])
                self.stmt_sql[m[1]] = m[2]
            elif not m[1]:
                self.stmts.pop("", None)
        elif t == "B" and ok and m[1]:
            self.portals.add(m[1])
        elif t == "C" and ok:
            (self.stmts.pop(m[2], None) if m[1] == "S" else self.portals.discard(m[2]))
        elif t == "Q":
            self.stmts.pop("", None)
            after = self.after_queries.pop(0) if self.after_queries else None
            if after is not None and any(a.startswith("Z ") for a in p.answer):
                # Run (not skipped after an error): it ended the extended messages before it,
                # as a Sync does, and the proxy may give the backend back; what follows it in
                # the same write counts again.
                self.unsynced, self.routed, self.parsed_locally = after
        # Effects of SQL on the session (a guide only; statements run through Execute are not
        # followed).
        if t == "Q" and ok and not any(a.startswith("E ") for a in p.answer):
            self.sql_effects(m[1])

    def sql_effects(self, sql: str) -> None:
        for s in split_sql(sql):
            w = s.lower().split()
            if w[:2] == ["deallocate", "all"]:
                self.sql_prepared.clear()
                self.stmts = {k: v for k, v in self.stmts.items() if k == ""}
            elif w[0] == "deallocate":
                self.sql_prepared.discard(w[-1])
                self.stmts.pop(w[-1], None)
            elif w[0] == "prepare":
                self.sql_prepared.add(w[1].split("(")[0])
            elif w[:2] == ["discard", "all"]:
                self.sql_prepared.clear()
                self.stmts = {k: v for k, v in self.stmts.items() if k == ""}
                self.listening = self.temp_table = False
                self.portals.clear()
                self.cursors.clear()
            elif w[0] == "listen":
                self.listening = True
            elif w[:2] == ["unlisten", "*"]:
                self.listening = False
            elif w[0] == "declare":
                self.cursors.add(w[1])
            elif w[:2] == ["close", "all"]:
                self.cursors.clear()
                self.portals.clear()
            elif w[0] == "savepoint":
                self.savepoints.append(w[1])
            elif w[:2] == ["create", "table"]:
                self.aux_table = True
            elif w[:2] == ["drop", "table"]:
                self.aux_table = False
            elif w[:3] == ["create", "temp", "table"]:
                self.temp_table = True


def routes(m: list) -> bool:
    """Whether the proxy needs a backend for this message (a named Parse, a Close of a named
    statement, Flush and Sync it may answer itself)."""
    t = m[0]
    if t == "P":
        return m[1] == ""
    if t == "C":
        return not (m[1] == "S" and m[2])
    return t in ("Q", "B", "D", "E")


# -- the generator ---------------------------------------------------------------------------

class Generator:
    """Random steps from a seed and the direct side's answers so far."""

    def __init__(self, seed: int, nclients: int, cap: int, avoid: set[str], inherent: bool,
                 assume: set[str]):
        self.rng = random.Random(seed)
        self.nclients, self.cap = nclients, cap
        self.avoid, self.inherent, self.assume = avoid, inherent, assume
        self.counter = 0

    def ok(self, tag: str) -> bool:
        return tag not in self.avoid

    # SQL ------------------------------------------------------------------------------------

    def sql_catalogue(self, i: int, m: ClientModel) -> list[tuple[float, str, str, bool]]:
        """(weight, tag, sql, parses everywhere) for client i."""
        r, t = self.rng, f"fz_c{i}"
        self.counter += 1
        n = self.counter
        rid = r.randint(1, 9)
        word = r.choice(WORDS)
        key = 1000 * (i + 1) + r.randint(1, 3)
        tracked = r.choice([
            f"application_name = 'fz{i}_{word.replace(chr(39), '')}'",
            f"DateStyle = '{r.choice(DATESTYLES)}'",
            f"TimeZone = '{r.choice(TIMEZONES)}'",
            f"IntervalStyle = '{r.choice(INTERVALSTYLES)}'",
            f"client_encoding = '{r.choice(ENCODINGS)}'",
            f"standard_conforming_strings = {r.choice(['on', 'off'])}",
            "DateStyle = 'Bogus'",
        ] + ([r.choice(["application_name to default", "TimeZone = default"])]
             if self.ok("set_default") else []))
        other = r.choice(["work_mem = '4MB'", "work_mem = '64kB'", "enable_seqscan = off",
                          "search_path = public, pg_catalog", "geqo = off",
                          "default_transaction_isolation = 'repeatable read'"])
        driver = r.choice(["extra_float_digits = 0", "extra_float_digits = 3",
                           "extra_float_digits = -3", "statement_timeout = '30s'",
                           "bytea_output = 'escape'", "lock_timeout = 0"])
        param = r.choice(["application_name", "DateStyle", "TimeZone", "IntervalStyle",
                          "extra_float_digits", "work_mem", "search_path", "statement_timeout",
                          "client_encoding", "standard_conforming_strings", "bytea_output",
                          "default_transaction_isolation"])
        in_tx = m.status in ("T", "E")
        cur = r.choice(sorted(m.cursors) or ["cu1"])
        sp = r.choice(m.savepoints or ["sp1"])
        q = r.choice(sorted(m.sql_prepared) or ["q1", "q2"])
        cat: list[tuple[float, str, str, bool]] = [
            (6, "read", f"select id, v from {t} order by id", True),
            (2, "read", f"select count(*) from {t}", True),
            (2, "read", f"select v from {t} where id = {rid}", True),
            (2, "read", f"select generate_series(1, {r.randint(1, 4)}) as g", True),
            (3, "read", "select timestamptz '2024-01-02 03:04:05+00' as ts, date '2024-02-03' as d,"
                        " interval '1 day 02:03:04' as iv, 0.1::float8 + 0.2 as f,"
                        " 'a\\b' as s, '\\x01ff'::bytea as b", True),
            (3, "show", f"show {param}", True),
            (1, "show", f"select current_setting('{param}')", True),
            (1, "show", "select count(*) from pg_locks where locktype = 'advisory' "
                        "and pid = pg_backend_pid()", True),
            (2, "error", "select 1/0", True),
            (1, "error", "selec 1", False),
            (1, "error", f"select * from {t}_missing", False),
            (1, "error", f"select nosuchcol from {t}", False),
            (1, "error", "select 'x'::int", False),
            (4, "write", f"insert into {t} values ({rid}, '{word}')", True),
            (2, "write", f"update {t} set v = v || '!' where id <= {rid} returning id, v", True),
            (2, "write", f"delete from {t} where id = {rid}", True),
            (4 if not in_tx else 1, "tx", r.choice(["begin", "start transaction isolation level "
                                                    "repeatable read", "begin read only"]), True),
            (4 if in_tx else 1, "tx", r.choice(["commit", "rollback", "end", "abort"]), True),
            (2 if in_tx else 0.3, "savepoint", f"savepoint sp{r.randint(1, 2)}", True),
            (1 if in_tx else 0.2, "savepoint", f"release savepoint {sp}", True),
            (2 if m.status == "E" else 0.3, "savepoint", f"rollback to savepoint {sp}", True),
            (4, "set_tracked", f"set {tracked}", True),
            (1, "reset_one", f"reset {r.choice(['application_name', 'DateStyle', 'TimeZone', 'IntervalStyle'])}", True),
            (2, "set_driver", f"set {driver}", True),
            (2 if in_tx else 0.5, "set_local", f"set local {r.choice([tracked, other, driver])}", True),
            (1, "set_other", f"set {other}", True),
            (0.5, "reset_one", f"reset {r.choice(['work_mem', 'search_path', 'extra_float_digits'])}", True),
            (1, "set_config", f"select set_config('{r.choice(['application_name', 'work_mem', 'TimeZone'])}', "
                              f"'{r.choice(['fz' + str(i) + 'c', '2MB', 'Asia/Tokyo'])}', "
                              f"{r.choice(['true', 'false'])})", True),
            (1.5, "reset_all", "reset all", True),
            (1.5, "discard_all", "discard all", True),
            (1, "prepare", f"prepare q{r.randint(1, 2)} as select $1::int * {r.randint(2, 9)}", True),
            (0.5, "prepare", f"prepare q{r.randint(1, 2)}(int) as select v from {t} where id = $1", True),
            (1.5 if m.sql_prepared else 0.3, "prepare", f"execute {q}({rid})", True),
            (1, "deallocate", f"deallocate {r.choice(['prepare ', ''])}{r.choice([q] + STMT_NAMES)}", True),
            (1, "deallocate_all", "deallocate all", True),
            (2, "listen", f"listen fz_ch{i}", True),
            (0.5, "unlisten", f"unlisten fz_ch{i}", True),
            (1, "unlisten", "unlisten *", True),
            (6 if m.listening else 0.5, "notify", r.choice([f"notify fz_ch{i}, 'm{n}'", f"notify fz_ch{i}",
                                                         f"select pg_notify('fz_ch{i}', 'p{n}')"]), True),
            (1, "advisory", f"select pg_advisory_lock({key})", True),
            (1, "advisory", f"select pg_advisory_unlock({key})", True),
            (1, "advisory", f"select pg_advisory_xact_lock({key})", True),
            (0.5, "advisory", f"select pg_try_advisory_xact_lock({key})", True),
            (1, "advisory_unlock_all", "select pg_advisory_unlock_all()", True),
            (2 if in_tx else 0.3, "cursor", f"declare cu{r.randint(1, 2)} cursor for select generate_series(1, 5)", True),
            (2 if m.cursors else 0.3, "cursor", f"fetch {r.randint(1, 3)} from {cur}", True),
            (1 if m.cursors else 0.2, "cursor", f"close {cur}", True),
            (0.5, "fetch_portal", f"fetch 1 from {r.choice(['p1', 'p2'])}", True),
            (0.5, "cursor_hold", "declare ch1 cursor with hold for select generate_series(1, 3)", True),
            (1, "close_all", "close all", True),
            (0.7, "temp", "create temp table fz_tmp (a int)", False),
            (1 if m.temp_table else 0.2, "temp", "insert into fz_tmp values (1) returning a", False),
            (0.7, "sequence", f"select nextval('fz_s{i}')", True),
            (0.3, "sequence", f"select currval('fz_s{i}')", True),
            (0.7, "ddl", f"create table {t}_x (a int)", True),
            (0.7, "ddl", f"drop table {'if exists ' if r.random() < 0.5 else ''}{t}_x", True),
            (1 if m.aux_table else 0.2, "ddl", f"insert into {t}_x values ({rid}) returning a", False),
            (1 if m.aux_table else 0.2, "ddl", f"select a from {t}_x order by a", False),
            (0.5, "empty", "", True),
        ]
        return [c for c in cat if c[0] > 0 and self.ok(c[1])]

    def pick_sql(self, i: int, m: ClientModel, safe_only: bool = False,
                 lone_query: bool = False, no_isolation: bool = False,
                 multi: bool = False, named: bool = False) -> tuple[str, str]:
        cat = self.sql_catalogue(i, m)
        if safe_only:
            cat = [c for c in cat if c[3]]
        if named and not self.inherent:
            # INHERENT's deferred_parse_settings (the unnamed statement too: bound again in a
            # later batch, it may be prepared again on another backend).
            cat = [c for c in cat if "\\" not in c[2]]
        if no_isolation:
            cat = [c for c in cat if "isolation" not in c[2]]
        if not lone_query and not self.ok("reset_ext"):
            cat = [c for c in cat if c[1] not in RESETTING]
            # Statements after RESET name (or SET [LOCAL] name TO DEFAULT) in the same Query, or
            # in the same extended-protocol batch, see the backend's default (README's
            # differences): such a reset is sent only as a lone Query.
            cat = [c for c in cat if c[1] != "reset_one"
                   and not re.search(r"(\bto|=)\s*default\b", c[2], re.I)]
        if not self.ok("reset_ext"):
            # SET LOCAL name TO DEFAULT: the backend's default for the transaction (README).
            cat = [c for c in cat if not (c[2].startswith("set local")
                                          and re.search(r"(\bto|=)\s*default\b", c[2], re.I))]
        total = sum(c[0] for c in cat)
        x = self.rng.uniform(0, total)
        for w, tag, sql, _ in cat:
            x -= w
            if x <= 0:
                return sql, tag
        return cat[-1][2], cat[-1][1]

    def param_sql(self, i: int) -> tuple[str, list[int], list[list]]:
        """A statement with parameters: (sql, declared types, parameter lists to bind)."""
        r, t = self.rng, f"fz_c{i}"
        rid = str(r.randint(1, 9))
        word = r.choice(WORDS).replace("''", "'")
        choices = [
            ("select $1::int + 1 as n", [23], [["5"], ["x"], [None], ["1", "2"]]),
            ("select $1::int + 1 as n", [], [["7"], []]),
            (f"select v from {t} where id = $1", [23], [[rid], ["1"]]),
            (f"select v from {t} where id = $1", [], [[rid]]),
            (f"insert into {t} values ($1, $2) returning *", [23, 25], [[rid, word], [rid, None]]),
            (f"update {t} set v = $2 where id = $1", [], [[rid, word]]),
            # With 0: INHERENT's plan_time_errors.
            ("select 10 / $1::int as q", [], [["0"], ["2"]] if self.inherent else [["2"]]),
            ("select $1::text as a, $2::text as b", [], [["x", "y"], [None, "z"]]),
            ("select $1::timestamptz as ts, $2::interval as iv", [],
             [["2024-05-06 07:08:09+02", "3 days 04:05"]]),
        ]
        return r.choice(choices)

    # steps ----------------------------------------------------------------------------------

    def login_params(self, i: int, generation: int) -> dict[str, str]:
        r = self.rng
        if not self.ok("login_params"):
            return {}
        params: dict[str, str] = {}
        if r.random() < 0.7:
            params["application_name"] = f"fz{i}_{generation}"
        if r.random() < 0.3:
            params["DateStyle"] = r.choice(DATESTYLES)
        if r.random() < 0.3:
            params["TimeZone"] = r.choice(TIMEZONES)
        if r.random() < 0.2:
            params["IntervalStyle"] = r.choice(INTERVALSTYLES)
        if r.random() < 0.15:
            params["extra_float_digits"] = r.choice(["0", "1", "-2"])
        if r.random() < 0.15 and self.ok("login_options"):
            params["options"] = r.choice(["-c work_mem=5MB", "-c search_path=public,pg_catalog",
                                          "-c DateStyle=German"])
        return params

    def next_step(self, models: list[ClientModel]) -> dict:
        r = self.rng
        holders = [c for c, m in enumerate(models) if m.holds()]
        eligible = holders if len(holders) >= self.cap else list(range(self.nclients))
        c = r.choice(eligible)
        m = models[c]
        if not m.connected:
            return {"c": c, "op": "login", "params": self.login_params(c, m.generation + 1)}
        # With every backend held, lean towards giving one back.
        if len(holders) >= self.cap and r.random() < 0.4:
            if m.unsynced:
                return {"c": c, "op": "batch", "msgs": [["S"]]}
            if m.status in ("T", "E"):
                return {"c": c, "op": "batch", "msgs": [["Q", r.choice(["commit", "rollback"])]]}
            if m.maybe_pinned and self.ok("reconnect"):
                return {"c": c, "op": "reconnect", "params": self.login_params(c, m.generation + 1)}
        x = r.random()
        if x < 0.04 and self.ok("reconnect"):
            return {"c": c, "op": "reconnect", "params": self.login_params(c, m.generation + 1)}
        if x < 0.45:
            msgs = self.simple_batch(c, m)
            if m.unsynced and not self.ok("q_in_extended"):
                msgs = [["S"]] + msgs
            return {"c": c, "op": "batch", "msgs": msgs}
        return {"c": c, "op": "batch", "msgs": self.extended_batch(c, m)}

    def simple_batch(self, c: int, m: ClientModel) -> list[list]:
        r = self.rng
        n = 1 if r.random() < 0.8 or not self.ok("multi_statement") else r.randint(2, 3)
        stmts = []
        for _ in range(n):
            sql, _tag = self.pick_sql(c, m, lone_query=n == 1, multi=n > 1,
                                      no_isolation=(m.parsed_locally or m.reset_in_tx) and not self.inherent)
            if sql:
                stmts.append(sql)
        msgs = [["Q", "; ".join(stmts)]]
        if r.random() < 0.08 and self.ok("pipeline"):
            sql, _tag = self.pick_sql(c, m)
            msgs.append(["Q", sql])
        return msgs

    def extended_batch(self, c: int, m: ClientModel) -> list[list]:
        r = self.rng
        msgs: list[list] = []
        # Whether the proxy surely holds a backend for this client at this point of the batch
        # (a named Parse that fails while it holds none is reported later: INHERENT).
        # "tx": a transaction block may be open (an unsynced earlier write may have begun one).
        state = {"held": m.status in ("T", "E") or m.routed, "tx": m.status in ("T", "E") or m.unsynced,
                 "parsed_locally": m.parsed_locally, "suspended": m.suspended,
                 "reset_in_tx": m.reset_in_tx}
        groups = 1 if r.random() < 0.65 or not self.ok("pipeline") else r.randint(2, 4)
        for g in range(groups):
            for _ in range(1 if r.random() < 0.7 else 2):
                for msg in self.unit(c, m, state):
                    msgs.append(msg)
                    if routes(msg):
                        state["held"] = True
                    if msg[0] == "B" or (msg[0] == "D" and msg[1] == "S"):
                        state["parsed_locally"] = True
                    sql = msg[1] if msg[0] == "Q" else msg[2] if msg[0] == "P" else ""
                    if msg[0] == "B":
                        sql = m.stmt_sql.get(msg[2], "")  # an earlier statement bound again
                    if re.match(r"\s*(begin|start)\b", sql, re.I):
                        state["tx"] = True
                    if msg[0] == "E" and msg[2] > 0:
                        state["suspended"] = True
                    elif msg[0] == "Q":
                        state["suspended"] = False
            if g < groups - 1 or r.random() < 0.75 or not self.ok("flush"):
                msgs.append(["S"])
                state["held"] = False
                state["parsed_locally"] = False
                state["suspended"] = False
            else:
                msgs.append(["H"])
        m.suspended = state["suspended"]
        return msgs

    def unit(self, c: int, m: ClientModel, state: dict) -> list[list]:
        r = self.rng
        kinds = [(30, "unnamed"), (20, "named"), (20 if m.stmts else 2, "use_named"),
                 (6, "close"), (5, "describe"), (3, "bind_missing"), (2, "exec_missing"),
                 (3, "unnamed_reuse"), (2, "q_in_extended"), (2, "fetch_portal")]
        kinds = [k for k in kinds if self.ok(k[1])]
        if state.get("suspended") and not self.inherent:
            # INHERENT's deferred_parse_visibility.
            kinds = [k for k in kinds if k[1] not in ("use_named", "unnamed_reuse", "describe")]
        x = r.uniform(0, sum(w for w, _ in kinds))
        kind = kinds[-1][1]
        for w, k in kinds:
            x -= w
            if x <= 0:
                kind = k
                break
        fmts = [1] if r.random() < 0.1 and self.ok("binary") else []
        maxrows = r.choice([0, 0, 0, 1, 2])
        if kind == "unnamed":
            sql, types, plists = self.ext_sql(c, m, safe_only=False, state=state)
            out = [["P", "", sql, types], ["B", "", "", r.choice(plists), fmts]]
            if r.random() < 0.3:
                out.append(["D", "P", ""])
            out.append(["E", "", maxrows])
            if maxrows and r.random() < 0.5:
                out.append(["E", "", 0])
            return out
        if kind == "named":
            names = STMT_NAMES
            if not self.ok("parse_existing_name"):
                names = [n for n in STMT_NAMES if n not in m.stmts] or []
            if not names:
                return [["C", "S", r.choice(STMT_NAMES)]]
            name = r.choice(names)
            # The proxy answers a named Parse itself while it holds no backend for the client.
            safe = not state["held"] and not self.inherent
            sql, types, plists = self.ext_sql(c, m, safe_only=safe, state=state, named=True)
            if not state["held"]:
                state["parsed_locally"] = True
            params = r.choice(plists)
            out = [["P", name, sql, types]]
            if r.random() < 0.3:
                out.append(["D", "S", name])
            if r.random() < 0.7:
                portal = r.choice(PORTAL_NAMES)
                out += [["B", portal, name, params, fmts], ["E", portal, maxrows]]
                if maxrows and r.random() < 0.5:
                    out.append(["E", portal, 0])
                if portal and r.random() < 0.3:
                    out.append(["C", "P", portal])
            return out
        if kind == "use_named":
            known = sorted(n for n in m.stmts if n or self.ok("unnamed_reuse"))
            candidates = STMT_NAMES
            if self.no_isolation(state):
                # Run after a Parse the proxy answered itself: see no_isolation.
                isolating = {n for n, q in m.stmt_sql.items() if "isolation" in q}
                known = [n for n in known if n not in isolating]
                candidates = [n for n in STMT_NAMES if n not in isolating] or ["nosuch"]
            name = r.choice(known) if known and r.random() < 0.9 else r.choice(candidates)
            params = self.params_for(m.stmts.get(name) or [[]], state)
            portal = r.choice(PORTAL_NAMES)
            out = [["B", portal, name, params, fmts]]
            if r.random() < 0.3:
                out.append(["D", "P", portal])
            out.append(["E", portal, maxrows])
            if maxrows and r.random() < 0.5:
                out.append(["E", portal, maxrows])
            return out
        if kind == "close":
            if r.random() < 0.6:
                return [["C", "S", r.choice(STMT_NAMES + ["", "nosuch"])]]
            return [["C", "P", r.choice(PORTAL_NAMES + ["nosuch"])]]
        if kind == "describe":
            if r.random() < 0.5:
                in_tx = state["tx"] and not self.inherent  # INHERENT's failed_tx_describe
                unnamed = [""] if self.ok("unnamed_reuse") and not in_tx else []
                named = STMT_NAMES if not in_tx else []
                return [["D", "S", r.choice(named + unnamed + ["nosuch"])]]
            # PostgreSQL 15 crashes (FetchStatementTargetList) describing a portal that FETCHes
            # from a portal closed since: not generated.
            portals = PORTAL_NAMES if not m.fetch_unnamed else [n for n in PORTAL_NAMES if n]
            return [["D", "P", r.choice(portals + ["nosuch"])]]
        if kind == "bind_missing":
            return [["B", "", "nosuch", [], []], ["E", "", 0]]
        if kind == "exec_missing":
            return [["E", "nosuch", 0]]
        if kind == "unnamed_reuse":
            if self.no_isolation(state) and "isolation" in m.stmt_sql.get("", ""):
                return [["C", "S", "nosuch"]]
            if state["tx"] and not self.inherent:
                # INHERENT's failed_tx_bind_count: which statement is unnamed now (and its
                # parameter count) is not known here while earlier units of the write are
                # unanswered.
                return [["C", "S", "nosuch"]]
            return [["B", "", "", self.params_for(m.stmts.get("") or [[]], state), fmts],
                    ["E", "", 0]]
        if kind == "q_in_extended":
            sql, _tag = self.pick_sql(c, m, no_isolation=self.no_isolation(state))
            return [["Q", sql]]
        # fetch_portal: a named portal read with FETCH, through the extended protocol
        portal = r.choice(["p1", "p2"])
        m.fetch_unnamed = True
        return [["P", "", f"fetch {r.randint(1, 2)} from {portal}", []], ["B", "", "", [], []],
                ["E", "", 0]]

    def ext_sql(self, c: int, m: ClientModel, safe_only: bool,
                state: dict, named: bool = True) -> tuple[str, list[int], list]:
        """(sql, declared types, parameter lists to bind: the first has the right count)."""
        if self.rng.random() < 0.5:
            sql, types, plists = self.param_sql(c)
        else:
            for _ in range(20):
                sql, _tag = self.pick_sql(c, m, safe_only=safe_only,
                                          no_isolation=self.no_isolation(state), named=named)
                # FETCH from a protocol portal only through the fetch_portal unit (see there).
                if _tag != "fetch_portal":
                    break
            types, plists = [], [[]]
        m.proposed[sql] = plists
        return sql, types, plists

    def no_isolation(self, state: dict) -> bool:
        """A named Parse the proxy answered without a backend took no snapshot in the implicit
        transaction (PostgreSQL's parse analysis does), and a Bind or Describe makes the proxy
        prepare the statement (taking one) where PostgreSQL takes none: so a later START
        TRANSACTION ISOLATION LEVEL before the Sync (parsed then, or bound then after an earlier
        Parse) fails (25001) on one side only. Part of INHERENT's deferred_parse_error, not
        generated. Also after RESET ALL inside a transaction block: the proxy sets the client's
        startup values again with a query in that transaction (README's differences)."""
        return (state.get("parsed_locally", False) or state.get("reset_in_tx", False)) and not self.inherent

    def params_for(self, plists: list[list], state: dict) -> list:
        """Parameters for a Bind of a statement parsed in an earlier unit. In a transaction
        that may have failed, the proxy's Parse of a statement the serving backend lacks fails
        (25P02) before PostgreSQL would check the parameter count (08P01), and the proxy cannot
        know the count of a statement never analysed: INHERENT, so the count is kept right."""
        if state["tx"] and not self.inherent:
            return plists[0]
        return self.rng.choice(plists)


# -- the environment: PostgreSQL and proxies -------------------------------------------------

class Environment:
    """A PostgreSQL cluster with user app and databases app, app2; starts proxies."""

    def __init__(self, host: str, port: int, superuser_password: str, app_password: str,
                 bin_path: Path | None, workdir: Path, nclients: int, self_check: bool = False):
        self.host, self.port = host, port
        self.superuser_password, self.app_password = superuser_password, app_password
        self.bin_path, self.workdir, self.nclients = bin_path, workdir, nclients
        self.self_check = self_check
        self.proc: subprocess.Popen | None = None
        self.borrow_timeout = 5  # seconds; shrinking uses less
        self.proxy_port = 0
        self.proxies_started = 0
        self.max_connections = int(self.sql("show max_connections", "postgres")[0][0])
        self.percent = 3
        self.cap = 3 if self_check else max(1, self.percent * self.max_connections // 100)
        if not self_check:
            while self.cap > 3 and self.percent > 1:
                self.percent -= 1
                self.cap = max(1, self.percent * self.max_connections // 100)

    def sql(self, sql: str, dbname: str) -> list[tuple]:
        import psycopg
        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname=dbname,
                             password=self.superuser_password, sslmode="disable",
                             connect_timeout=10, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def reset(self) -> None:
        """Fresh tables, sequences for every client in both databases."""
        parts = ["set lock_timeout = '20s'",
                 "do $$ declare r record; begin for r in select c.relname, c.relkind from pg_class c "
                 "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and "
                 "c.relname like 'fz\\_%' and c.relkind in ('r', 'S') loop execute format("
                 "case when r.relkind = 'S' then 'drop sequence if exists %I cascade' else "
                 "'drop table if exists %I cascade' end, r.relname); end loop; end $$"]
        for i in range(self.nclients):
            parts += [f"create table fz_c{i} (id int primary key, v text)",
                      f"insert into fz_c{i} values (1, 'one'), (2, 'two'), (3, null)",
                      f"alter table fz_c{i} owner to app",
                      f"create sequence fz_s{i}", f"alter sequence fz_s{i} owner to app"]
        for db in ("app", "app2"):
            self.sql("; ".join(parts), db)

    def direct(self, dbname: str) -> Endpoint:
        return Endpoint("direct", self.host, self.port, dbname, "app", self.app_password, 15.0)

    def start_proxy(self) -> Endpoint:
        if self.self_check:
            return Endpoint("direct(app)", self.host, self.port, "app", "app", self.app_password, 15.0)
        for attempt in range(5):
            try:
                return self._start_proxy()
            except RuntimeError as e:
                # A free port taken by another process (parallel runs) before the proxy bound it.
                if "Address already in use" not in str(e) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _start_proxy(self) -> Endpoint:
        from helpers import free_port, port_accepts, proxy_config, to_yaml, write_secret
        self.stop_proxy()
        self.proxies_started += 1
        d = self.workdir / "proxy"
        d.mkdir(parents=True, exist_ok=True)
        secret = write_secret(d / "app.json", "app", self.app_password)
        self.proxy_port = free_port()
        cfg = proxy_config(listen_port=self.proxy_port, db_port=self.port, secrets={"app": secret},
                           drain_timeout=1, max_connections_percent=self.percent,
                           max_idle_connections_percent=self.percent,
                           connection_borrow_timeout=self.borrow_timeout,
                           idle_client_timeout=600)
        (d / "concierge.yaml").write_text(to_yaml(cfg) + "\n")
        self.log_path = d / "concierge.log"
        log = open(self.log_path, "wb")
        extra = ["--log-level", "debug"] if os.environ.get("CONCIERGE_ITEST_DEBUG") == "1" else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.proc = subprocess.Popen([str(self.bin_path), "serve", "--config", str(d / "concierge.yaml"),
                                      *extra], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=d, env=env)
        log.close()
        # Ready when a login and `select 1` work (as conftest's _wait_ready, retried: a client that
        # connects in the proxy's first moments may get no answer at all).
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"concierge did not start (exit {self.proc.poll()}):\n"
                                   f"{self.proxy_log()}")
            if port_accepts(self.proxy_port):
                try:
                    with WireClient("127.0.0.1", self.proxy_port, timeout=2) as w:
                        w.startup("app", self.app_password, "app")
                        if w.query("select 1") == [("1",)]:
                            break
                except (OSError, TimeoutError, ServerError):
                    pass
            time.sleep(0.02)
        return Endpoint("proxy", "127.0.0.1", self.proxy_port, "app", "app", self.app_password, 15.0)

    def proxy_alive(self) -> bool:
        return self.self_check or (self.proc is not None and self.proc.poll() is None)

    def proxy_log(self, tail: int = 200000) -> str:
        if self.self_check or not getattr(self, "log_path", None) or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop_proxy(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- running a sequence on both sides --------------------------------------------------------

@dataclass
class StepResult:
    step: dict
    direct: list[str]
    proxy: list[str]
    holders: str = ""  # the scheduler's view before the step: who holds a backend, and why


@dataclass
class Divergence:
    index: int            # step index in `executed`
    executed: list[StepResult]
    reason: str
    proxy_log: str = ""

    def signature(self) -> tuple:
        """What kind of divergence this is, so shrinking keeps to the same one."""
        last = self.executed[self.index]
        d, p = first_difference(last.direct, last.proxy)

        def kind(s: str | None) -> str:
            if s is None:
                return "-"
            if s.startswith(("E ", "N ")):
                return " ".join(s.split()[:3])
            if s.startswith("<"):
                return s.split()[0]
            return s[:1]
        return kind(d), kind(p)


def first_difference(a: list[str], b: list[str]) -> tuple[str | None, str | None]:
    for x, y in zip(a, b):
        if x != y:
            return x, y
    if len(a) != len(b):
        return (a[len(b)] if len(a) > len(b) else None), (b[len(a)] if len(b) > len(a) else None)
    return None, None


@dataclass
class Counts:
    sequences: int = 0
    steps: int = 0
    frontend: int = 0
    backend_direct: int = 0
    backend_proxy: int = 0
    runs: int = 0

    def line(self) -> str:
        return (f"{self.sequences} sequences, {self.steps} steps, {self.frontend} frontend messages "
                f"per side, {self.backend_direct} backend messages direct / {self.backend_proxy} "
                f"through the proxy ({self.runs} runs in all, shrinking included)")


class Side:
    """One side of a run: where it connects, its normaliser and its clients' connections."""

    def __init__(self, ep: Endpoint):
        self.ep, self.norm = ep, Normaliser()
        self.conns: dict[int, Conn] = {}
        self.received = 0

    def retire(self, conn: Conn) -> None:
        conn.close()
        self.received += conn.received
        conn.received = 0

    def execute(self, step: dict) -> tuple[list[str], list[Pending]]:
        c = step["c"]
        done: list[Pending] = []
        if step["op"] in ("login", "reconnect"):
            old = self.conns.pop(c, None)
            if old is not None:
                self.retire(old)
            conn = Conn(self.ep, step.get("params", {}))
            self.conns[c] = conn
            return conn.login(self.norm), done
        conn = self.conns.get(c)
        if conn is None:
            return ["<not connected>"], done
        if conn.broken:
            return ["<connection broken>"], done
        conn.send(step["msgs"])
        return conn.read_due(self.norm, done), done

    def close(self) -> None:
        for conn in self.conns.values():
            self.retire(conn)
        self.conns.clear()


class Runner:
    def __init__(self, env: Environment, nclients: int, assume: set[str], counts: Counts):
        self.env, self.nclients, self.assume, self.counts = env, nclients, assume, counts

    def run(self, next_step: Callable[[list[ClientModel], int], dict | None],
            count: bool = True, check_schedule: bool = False,
            drain: bool = True) -> tuple[list[StepResult], Divergence | None, str]:
        """Runs steps (from `next_step(models, index)`, None to stop) on both sides in lock step.
        Returns the executed steps, the first divergence (or None) and, when `check_schedule` and
        a step would have more clients hold backends than the proxy has, why it stopped."""
        env = self.env
        env.reset()
        direct = Side(env.direct("app2"))
        proxy = Side(env.start_proxy())
        models = [ClientModel() for _ in range(self.nclients)]
        executed: list[StepResult] = []
        self.counts.runs += 1
        try:
            index = 0
            while True:
                step = next_step(models, index)
                if step is None:
                    break
                c = step["c"]
                m = models[c]
                if check_schedule:
                    holders = sum(1 for x in models if x.holds())
                    if not m.holds() and holders >= env.cap:
                        return executed, None, f"step {index} would exceed the cap"
                    if step["op"] == "batch" and not m.connected:
                        return executed, None, f"step {index}: c{c} is not connected"
                    if step["op"] == "login" and m.connected:
                        step = dict(step, op="reconnect")
                held = " ".join(f"c{k}({x.why()})" for k, x in enumerate(models) if x.holds())
                d_out, d_done = direct.execute(step)
                p_out, _ = proxy.execute(step)
                res = StepResult(step, d_out, p_out, held)
                executed.append(res)
                if step["op"] == "batch":
                    m.note_sent(step["msgs"], self.assume)
                else:
                    m.login()
                for p in d_done:
                    m.apply(p)
                if any(s.startswith(("<connection", "<timeout", "<login")) for s in res.direct) \
                        or any(s.startswith("E FATAL") for s in res.direct):
                    m.connected = False
                if count:
                    self.counts.steps += 1
                    self.counts.frontend += len(step.get("msgs", [])) + (1 if step["op"] != "batch" else 0)
                if res.direct != res.proxy:
                    return executed, Divergence(index, executed, "answers differ",
                                                env.proxy_log()), ""
                if not env.proxy_alive():
                    return executed, Divergence(index, executed, f"the proxy exited ({env.proc.returncode})",
                                                env.proxy_log()), ""
                index += 1
            # Anything sent beyond what was due?
            if not drain:
                return executed, None, ""
            time.sleep(0.3)
            for c in range(self.nclients):
                extra_d = direct.conns[c].drain(direct.norm) if c in direct.conns else []
                extra_p = proxy.conns[c].drain(proxy.norm) if c in proxy.conns else []
                if extra_d != extra_p:
                    step = {"c": c, "op": "batch", "msgs": []}
                    executed.append(StepResult(step, extra_d, extra_p))
                    return executed, Divergence(len(executed) - 1, executed,
                                                "unexpected messages after the last step",
                                                env.proxy_log()), ""
            return executed, None, ""
        finally:
            direct.close()
            proxy.close()
            if count:
                self.counts.backend_direct += direct.received
                self.counts.backend_proxy += proxy.received
            if not env.self_check:
                env.stop_proxy()


# -- reports ---------------------------------------------------------------------------------

def format_divergence(div: Divergence, seed: int | None, context: int = 12) -> str:
    ex = div.executed
    lines = [f"DIVERGENCE ({div.reason}) at step {div.index}"
             + (f" of seed {seed}" if seed is not None else "")]
    sig = div.signature()
    lines.append(f"first differing message: direct {sig[0]!r} / proxy {sig[1]!r}")
    lines.append("")
    start = max(0, div.index - context)
    if start:
        lines.append(f"  ... {start} earlier steps (answers equal) ...")
    for k in range(start, div.index + 1):
        r = ex[k]
        lines.append(f"[{k}] {show_step(r.step)}")
        if k == div.index and r.holders:
            lines.append(f"      (holding backends before this step: {r.holders})")
        if r.direct == r.proxy:
            for s in r.direct:
                lines.append(f"      = {s}")
        else:
            n = max(len(r.direct), len(r.proxy))
            for j in range(n):
                a = r.direct[j] if j < len(r.direct) else "(nothing)"
                b = r.proxy[j] if j < len(r.proxy) else "(nothing)"
                if a == b:
                    lines.append(f"      = {a}")
                else:
                    lines.append(f"    direct: {a}")
                    lines.append(f"    proxy:  {b}")
    return "\n".join(lines)


def format_sequence(steps: list[dict]) -> str:
    return "\n".join(f"  [{k}] {show_step(s)}" for k, s in enumerate(steps))


# -- shrinking -------------------------------------------------------------------------------

class Shrinker:
    def __init__(self, runner: Runner, seconds: float, log: Callable[[str], None],
                 avoid: set[str] = frozenset()):
        self.runner, self.seconds, self.log, self.avoid = runner, seconds, log, avoid
        self.deadline = time.monotonic() + seconds
        self.tries = 0

    def reproduces(self, steps: list[dict], sig: tuple) -> Divergence | None:
        self.tries += 1
        it = iter(steps)

        def nxt(models, index):
            return next(it, None)
        env = self.runner.env
        saved, env.borrow_timeout = env.borrow_timeout, 2
        try:
            executed, div, why = self.runner.run(nxt, count=False, check_schedule=True,
                                                 drain=self.drain)
        except (RuntimeError, OSError) as e:
            self.log(f"  shrink: a run failed: {e}")
            return None
        finally:
            env.borrow_timeout = saved
        if div is not None and div.signature() == sig:
            return div
        return None

    def shrink(self, steps: list[dict], div: Divergence) -> tuple[list[dict], Divergence]:
        sig = div.signature()
        self.drain = div.reason.startswith("unexpected")
        steps = [r.step for r in div.executed[:div.index + 1]]
        if div.executed[div.index].step.get("msgs") == [] and div.reason.startswith("unexpected"):
            steps = steps[:-1]
        best = (steps, div)

        def attempt(candidate: list[dict]) -> bool:
            nonlocal best
            if time.monotonic() > self.deadline or not candidate or not self.valid(candidate):
                return False
            d = self.reproduces(candidate, sig)
            if d is not None:
                cut = [r.step for r in d.executed[:d.index + 1]]
                if d.reason.startswith("unexpected"):
                    cut = candidate
                best = (cut, d)
                return True
            return False

        # 1. whole clients
        for c in sorted({s["c"] for s in best[0]}, reverse=True):
            cand = [s for s in best[0] if s["c"] != c]
            if attempt(cand):
                self.log(f"  shrink: without c{c}: {len(best[0])} steps")
        # 2. steps (ddmin over the steps that are not a client's first login)
        n = 2
        while time.monotonic() < self.deadline:
            cur = best[0]
            removable = [k for k, s in enumerate(cur) if not self.first_login(cur, k)]
            if len(removable) < 1:
                break
            n = min(n, len(removable))
            chunk = max(1, len(removable) // n)
            reduced = False
            for start in range(0, len(removable), chunk):
                drop = set(removable[start:start + chunk])
                cand = [s for k, s in enumerate(cur) if k not in drop]
                cand = self.drop_idle_logins(cand)
                if attempt(cand):
                    self.log(f"  shrink: {len(best[0])} steps")
                    n = max(n - 1, 2)
                    reduced = True
                    break
            if not reduced:
                if chunk == 1:
                    break
                n = min(n * 2, len(removable))
        # 3. messages within batches, login parameters
        changed = True
        while changed and time.monotonic() < self.deadline:
            changed = False
            for k in range(len(best[0]) - 1, -1, -1):
                cur = best[0]
                if k >= len(cur):
                    continue
                s = cur[k]
                if s["op"] in ("login", "reconnect"):
                    for key in list(s.get("params", {})):
                        params = {a: b for a, b in s["params"].items() if a != key}
                        if attempt(cur[:k] + [dict(s, params=params)] + cur[k + 1:]):
                            changed = True
                            break
                    continue
                msgs = s["msgs"]
                for j in range(len(msgs) - 1, -1, -1):
                    if len(msgs) == 1 or j >= len(msgs):
                        continue
                    cand_msgs = msgs[:j] + msgs[j + 1:]
                    if attempt(best[0][:k] + [dict(s, msgs=cand_msgs)] + best[0][k + 1:]):
                        changed = True
                        s = best[0][k] if k < len(best[0]) else s
                        msgs = s.get("msgs", [])
                # multi-statement queries: one statement at a time
                for j, m in enumerate(list(msgs)):
                    if m[0] == "Q" and len(split_sql(m[1])) > 1:
                        for part in split_sql(m[1]):
                            cand_msgs = msgs[:j] + [["Q", part]] + msgs[j + 1:]
                            if attempt(best[0][:k] + [dict(s, msgs=cand_msgs)] + best[0][k + 1:]):
                                changed = True
                                break
        return best

    def valid(self, steps: list[dict]) -> bool:
        """Keeps the generator's invariants, so that shrinking does not drift into another kind
        of divergence: every batch ends with Sync, Flush or Query, and (unless q_in_extended is
        generated) no Query follows extended-protocol messages not yet synced."""
        unsynced: dict[int, bool] = {}
        for s in steps:
            c = s["c"]
            if s["op"] != "batch":
                unsynced[c] = False
                continue
            msgs = s["msgs"]
            if not msgs or msgs[-1][0] not in ("S", "H", "Q"):
                return False
            for m in msgs:
                if m[0] == "S":
                    unsynced[c] = False
                elif m[0] == "Q":
                    if unsynced.get(c) and "q_in_extended" in self.avoid:
                        return False
                else:
                    unsynced[c] = True
        return True

    @staticmethod
    def first_login(steps: list[dict], k: int) -> bool:
        c = steps[k]["c"]
        return steps[k]["op"] == "login" and all(s["c"] != c for s in steps[:k])

    @staticmethod
    def drop_idle_logins(steps: list[dict]) -> list[dict]:
        """A client's steps must start with a login; drop clients that only log in."""
        out = []
        for k, s in enumerate(steps):
            if s["op"] in ("login", "reconnect") and all(t["c"] != s["c"] for t in steps[k + 1:]):
                if any(t["c"] == s["c"] for t in out):
                    out.append(s)  # a reconnect at the end may matter (a pin released)
                continue
            if s["op"] == "reconnect" and all(t["c"] != s["c"] for t in out):
                s = dict(s, op="login")
            out.append(s)
        return out


# -- the fuzzing loop ------------------------------------------------------------------------

@dataclass
class Options:
    seed: int = 1
    seconds: float = 45
    steps: int = 150
    clients: int = 5
    shrink_seconds: float = 90
    avoid: set[str] = field(default_factory=set)
    assume: set[str] = field(default_factory=set)
    inherent: bool = False
    keep_going: bool = False
    findings: str | None = None
    out_dir: str = "/tmp"
    max_sequences: int | None = None

    @classmethod
    def from_env(cls) -> "Options":
        return cls(seed=env_int("CONCIERGE_FUZZ_SEED", 1),
                   seconds=float(os.environ.get("CONCIERGE_FUZZ_SECONDS") or 45),
                   steps=env_int("CONCIERGE_FUZZ_STEPS", 150),
                   clients=env_int("CONCIERGE_FUZZ_CLIENTS", 5),
                   shrink_seconds=float(os.environ.get("CONCIERGE_FUZZ_SHRINK_SECONDS") or 90),
                   avoid=env_set("CONCIERGE_FUZZ_AVOID"),
                   assume=env_set("CONCIERGE_FUZZ_ASSUME_PINS"),
                   inherent=os.environ.get("CONCIERGE_FUZZ_INHERENT") == "1",
                   keep_going=os.environ.get("CONCIERGE_FUZZ_KEEP_GOING") == "1",
                   findings=os.environ.get("CONCIERGE_FUZZ_FINDINGS") or None,
                   out_dir=os.environ.get("CONCIERGE_FUZZ_OUT") or "/tmp",
                   max_sequences=env_int("CONCIERGE_FUZZ_SEQUENCES", 0) or None)


@dataclass
class Report:
    ok: bool
    text: str
    counts: Counts
    divergences: list[str] = field(default_factory=list)


def fuzz(env: Environment, opts: Options, log: Callable[[str], None] = print) -> Report:
    unknown = (opts.avoid | opts.assume) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown construct tags {sorted(unknown)}; known: {' '.join(TAGS)}")
    counts = Counts()
    runner = Runner(env, opts.clients, opts.assume, counts)
    avoid = set(opts.avoid)
    started = time.monotonic()
    seed = opts.seed
    divergences: list[str] = []
    log(f"pgdiff: seed {opts.seed}, {opts.clients} clients, {env.cap} backends, {opts.steps} steps "
        f"per sequence, {opts.seconds:g} s" + (f", avoiding {sorted(avoid)}" if avoid else "")
        + (f", assuming pins for {sorted(opts.assume)}" if opts.assume else ""))
    while True:
        gen = Generator(seed, opts.clients, env.cap, avoid, opts.inherent, opts.assume)

        def nxt(models, index, gen=gen):
            if index < opts.clients:
                return {"c": index, "op": "login", "params": gen.login_params(index, 1)}
            if index >= opts.steps + opts.clients:
                return None
            return gen.next_step(models)
        executed, div, _ = runner.run(nxt)
        counts.sequences += 1
        if div is not None:
            text = format_divergence(div, seed)
            log(text)
            if div.proxy_log:
                try:
                    (Path(opts.out_dir) / f"pgdiff-seed{seed}.log").write_text(div.proxy_log)
                    log(f"proxy log: {Path(opts.out_dir) / f'pgdiff-seed{seed}.log'}")
                except OSError:
                    pass
            shrunk_steps = [r.step for r in executed[:div.index + 1]]
            shrunk = div
            if opts.shrink_seconds > 0:
                log(f"shrinking (up to {opts.shrink_seconds:g} s) ...")
                t0 = time.monotonic()
                sh = Shrinker(runner, opts.shrink_seconds, log, avoid)
                shrunk_steps, shrunk = sh.shrink(shrunk_steps, div)
                log(f"shrunk to {len(shrunk_steps)} steps in {time.monotonic() - t0:.0f} s "
                    f"({sh.tries} runs)")
            path = Path(opts.out_dir) / f"pgdiff-seed{seed}.json"
            try:
                path.write_text(json.dumps({"seed": seed, "clients": opts.clients,
                                            "steps": shrunk_steps}, indent=1) + "\n")
            except OSError:
                path = None
            summary = (f"seed {seed}: {shrunk.signature()[0]!r} directly, {shrunk.signature()[1]!r} "
                       f"through the proxy\n"
                       f"shortest sequence ({len(shrunk_steps)} steps"
                       + (f", saved as {path}; replay: pgdiff.py --replay {path}" if path else "")
                       + "):\n" + format_sequence(shrunk_steps) + "\n\n"
                       + format_divergence(shrunk, seed, context=len(shrunk_steps)))
            log(summary)
            divergences.append(summary)
            if opts.findings:
                with open(opts.findings, "a") as f:
                    f.write(f"\n## pgdiff seed {seed} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n\n"
                            f"```\n{summary}\n```\n")
            if not opts.keep_going:
                break
        seed += 1
        if time.monotonic() - started > opts.seconds:
            break
        if opts.max_sequences and counts.sequences >= opts.max_sequences:
            break
    elapsed = time.monotonic() - started
    end = (f"pgdiff: seeds {opts.seed}..{seed if divergences and not opts.keep_going else seed - 1}, "
           f"{counts.line()}, {elapsed:.0f} s, "
           f"{len(divergences)} divergence{'s' if len(divergences) != 1 else ''}")
    log(end)
    return Report(not divergences, end + ("\n\n" + "\n\n".join(divergences) if divergences else ""),
                  counts, divergences)


def replay(env: Environment, path: Path, opts: Options, log: Callable[[str], None] = print,
           shrink: bool = False) -> bool:
    data = json.loads(path.read_text())
    steps = data["steps"]
    counts = Counts()
    runner = Runner(env, max(s["c"] for s in steps) + 1, opts.assume, counts)
    it = iter(steps)
    executed, div, why = runner.run(lambda models, index: next(it, None), check_schedule=True)
    if why:
        log(f"note: {why}")
    if div is None:
        log(f"replay of {path}: {len(executed)} steps, no divergence")
        for k, r in enumerate(executed):
            log(f"[{k}] {show_step(r.step)}")
            for s in r.direct:
                log(f"      = {s}")
        return True
    log(format_divergence(div, data.get("seed"), context=len(executed)))
    if getattr(env, "log_path", None) and env.log_path.exists():
        kept = path.with_name(path.stem + "-proxy.log")
        try:
            shutil.copyfile(env.log_path, kept)
            log(f"proxy log: {kept}")
        except OSError:
            pass
    if opts.shrink_seconds > 0 and shrink:
        sh = Shrinker(runner, opts.shrink_seconds, log, opts.avoid)
        shrunk_steps, shrunk = sh.shrink(steps, div)
        out = path.with_name(path.stem + "-shrunk.json")
        out.write_text(json.dumps(dict(data, steps=shrunk_steps), indent=1) + "\n")
        log(f"shrunk to {len(shrunk_steps)} steps ({sh.tries} runs), saved as {out}:\n"
            + format_sequence(shrunk_steps) + "\n\n"
            + format_divergence(shrunk, data.get("seed"), context=len(shrunk_steps)))
    return False


# -- a throwaway cluster for script use ------------------------------------------------------

class ScriptCluster:
    def __init__(self) -> None:
        from helpers import free_port
        self.root = Path(tempfile.mkdtemp(prefix="concierge-pgdiff-", dir="/tmp"))
        self.port = free_port()
        self.superuser_password = secrets.token_hex(16)
        self.app_password = secrets.token_hex(12)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env["CONCIERGE_PG_PASSWORD"] = self.superuser_password

    def start(self) -> None:
        subprocess.run(["bash", str(PG_SH), "start", str(self.root / "data"), str(self.port),
                        "max_connections=100"], env=self.env, check=True, timeout=180,
                       capture_output=True)
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             password=self.superuser_password, sslmode="disable",
                             autocommit=True) as conn:
            conn.execute(f"create role app login password '{self.app_password}'")
            conn.execute("create database app owner app")
            conn.execute("create database app2 owner app")

    def stop(self) -> None:
        subprocess.run(["bash", str(PG_SH), "stop", str(self.root / "data")], env=self.env,
                       check=False, timeout=120, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    opts = Options.from_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("CONCIERGE_BIN") or
                    str(REPO_ROOT / ".build" / "debug" / "concierge"), help="the proxy binary")
    ap.add_argument("--seed", type=int, default=opts.seed)
    ap.add_argument("--seconds", type=float, default=opts.seconds)
    ap.add_argument("--steps", type=int, default=opts.steps)
    ap.add_argument("--clients", type=int, default=opts.clients)
    ap.add_argument("--sequences", type=int, default=None, help="stop after this many sequences")
    ap.add_argument("--shrink-seconds", type=float, default=opts.shrink_seconds)
    ap.add_argument("--avoid", default=",".join(sorted(opts.avoid)))
    ap.add_argument("--assume-pins", default=",".join(sorted(opts.assume)))
    ap.add_argument("--inherent", action="store_true", default=opts.inherent)
    ap.add_argument("--keep-going", action="store_true", default=opts.keep_going)
    ap.add_argument("--findings", default=opts.findings)
    ap.add_argument("--replay", type=Path, help="replay a saved sequence")
    ap.add_argument("--shrink", action="store_true",
                    help="with --replay: shrink a divergence it reproduces (--shrink-seconds)")
    ap.add_argument("--self-check", action="store_true",
                    help="compare PostgreSQL with itself (app2 against app): checks the fuzzer")
    ap.add_argument("--pg-port", type=int, help="use this running cluster (with --pg-password, "
                    "--app-password) instead of starting one")
    ap.add_argument("--pg-password")
    ap.add_argument("--app-password")
    a = ap.parse_args(argv)
    # SIGTERM: unwind (stop the proxy and the cluster) rather than die.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    opts.seed, opts.seconds, opts.steps, opts.clients = a.seed, a.seconds, a.steps, a.clients
    opts.shrink_seconds, opts.inherent, opts.keep_going = a.shrink_seconds, a.inherent, a.keep_going
    opts.avoid = {x for x in a.avoid.split(",") if x}
    opts.assume = {x for x in a.assume_pins.split(",") if x}
    opts.findings, opts.max_sequences = a.findings, a.sequences
    bin_path = Path(a.bin)
    if not a.self_check and not os.access(bin_path, os.X_OK):
        print(f"pgdiff: no executable proxy at {bin_path} (--bin or CONCIERGE_BIN)", file=sys.stderr)
        return 2
    cluster = None
    workdir = Path(tempfile.mkdtemp(prefix="pgdiff-", dir="/tmp"))
    try:
        if a.pg_port:
            host, port, sup, app = "127.0.0.1", a.pg_port, a.pg_password, a.app_password
        else:
            cluster = ScriptCluster()
            cluster.start()
            host, port = "127.0.0.1", cluster.port
            sup, app = cluster.superuser_password, cluster.app_password
        env = Environment(host, port, sup, app, bin_path, workdir, opts.clients,
                          self_check=a.self_check)
        try:
            if a.replay:
                return 0 if replay(env, a.replay, opts, shrink=a.shrink) else 1
            report = fuzz(env, opts)
            return 0 if report.ok else 1
        finally:
            env.stop_proxy()
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
