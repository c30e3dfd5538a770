#!/usr/bin/env python3
"""The scenarios of bench/run.sh: run them, parse pgbench, print and save the results table.

    python3 bench/bench.py SETUP.json

run.sh starts PostgreSQL, PgBouncer and Concierge (and fakepg with a PgBouncer and one Concierge
per loop count in front of it) and writes SETUP.json (ports, pids, passwords); this file only
drives clients against them. Every measurement runs against each of its targets (`pgbouncer`,
`concierge`; `direct` with BENCH_FULL or BENCH_DIRECT; `concierge_base` when run.sh was given
CONCIERGE_BASE_BIN; the proxy-bound scenario's own), repeated BENCH_REPEAT times, interleaved
(rep 1 of all of them, then rep 2, ...) so slow drifts of the machine hit them all alike; cells
show the median and interquartile range. For the proxies, each pgbench run also reads the proxy
process's user and system CPU time (/proc/PID/stat) before and after: CPU per transaction (per
connection with -C). The results end with issue 20's targets, met or not.

Standard library only: pgbench and psql do the heavy lifting, and the idle-client scenario uses
a small asyncio PostgreSQL client (startup + md5 / SCRAM-SHA-256, adapted from
tests/integration/pgwire.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

# BENCH_QUICK=1: a smoke run (1 run of 5 s per cell, 1,000 idle clients) unless set otherwise.
QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
# BENCH_FULL=1: every scenario (also those no target of issue 20 reads) and direct PostgreSQL.
FULL = os.environ.get("BENCH_FULL", "0") == "1"
DIRECT = FULL or os.environ.get("BENCH_DIRECT", "0") == "1"
DURATION = int(os.environ.get("BENCH_DURATION", "5" if QUICK else "15"))  # seconds per run (-T)
REPEAT = int(os.environ.get("BENCH_REPEAT", "1" if QUICK else "5"))      # runs per cell
IDLE_CLIENTS = int(os.environ.get("BENCH_IDLE_CLIENTS", "1000" if QUICK else "10000"))
# A pgbench run still going this many seconds after its -T (plus time to connect) is stopped and
# reported as stalled, and not repeated: e.g. clients queued behind pinned backends would
# otherwise wait out connection_borrow_timeout (120 s).
GUARD = int(os.environ.get("BENCH_GUARD", "20"))
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
TICKS = os.sysconf("SC_CLK_TCK")   # /proc/PID/stat's unit for CPU time (100 per second)


# -- setup -----------------------------------------------------------------------------------

SETUP: dict = json.loads(Path(sys.argv[1]).read_text()) if __name__ == "__main__" else {}

# The targets, in the order each repetition runs them. `concierge_base` (a second Concierge
# binary, CONCIERGE_BASE_BIN) only when run.sh started one: the "before" of a before/after run.
# `direct` (PostgreSQL without a proxy) only with BENCH_FULL=1 or BENCH_DIRECT=1.
BASE = "concierge_base" in SETUP
TARGETS = (("direct",) if DIRECT else ()) + (
    ("pgbouncer", "concierge_base", "concierge") if BASE else ("pgbouncer", "concierge"))
PROXIES = tuple(t for t in TARGETS if t != "direct")
LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "concierge_base": "Concierge base",
         "concierge": "Concierge", "pgbouncer_fake": "PgBouncer"}
# The proxy-bound scenario's targets, in front of fakepg: a PgBouncer (md5) and one Concierge per
# loop count (BENCH_LOOPS; run.sh's concierge_fake_L, --threads L).
LOOPS = {f"concierge_fake_{c['loops']}": c["loops"] for c in SETUP.get("concierge_fake", [])}
FAKE_TARGETS = ("pgbouncer_fake", *LOOPS)
for _target, _loops in LOOPS.items():
    LABEL[_target] = (f"Concierge, {_loops} loop{'s' if _loops > 1 else ''}"
                      + (" (default)" if _loops == SETUP.get("cpus", {}).get("nproc") else ""))
# Targets with a concierge.log of their own (NAME/NAME.log).
CONCIERGES = ("concierge_base", "concierge", *LOOPS)
WIDTH = max(10, *(len(LABEL[t]) for t in TARGETS + FAKE_TARGETS))  # labels in progress lines
# Metrics that only a proxy has: `direct` shows "–" for them.
PROXY_METRICS = ("cpu_us", "cpu_user_us", "cpu_sys_us", "tx_per_cpu_s")
# pgbench runs on these CPUs (taskset), if BENCH_CLIENT_CPUS set them.
CLIENT_CPUS = SETUP.get("cpus", {}).get("client", "")


def cpu_count(cpus: str) -> int:
    """How many CPUs a taskset list ("2-9", "0,4-5") names."""
    n = 0
    for part in filter(None, cpus.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def endpoint(target: str) -> dict:
    """SETUP's {"port", "pid"} of a target (a proxy-bound Concierge: its entry in the list)."""
    if target in LOOPS:
        return next(c for c in SETUP["concierge_fake"] if c["loops"] == LOOPS[target])
    return SETUP[target]


def port_for(target: str, user: str) -> int:
    """Where `user` connects for `target`. PgBouncer's md5-hashed user goes to the second
    instance (auth_type = md5): auth_type = scram-sha-256 needs SCRAM verifiers."""
    if target == "pgbouncer" and user == "bench_md5":
        return SETUP["pgbouncer_md5"]["port"]
    return endpoint(target)["port"]


def pid_for(target: str, user: str) -> int | None:
    if target == "pgbouncer" and user == "bench_md5":
        return SETUP["pgbouncer_md5"]["pid"]
    return endpoint(target).get("pid")


def proxy_name(target: str, user: str) -> str:
    """run.sh's name for the process serving `user` for `target` (its log and .exit files)."""
    if target == "pgbouncer_fake":
        return "pgbouncer-fake"
    return "pgbouncer-md5" if target == "pgbouncer" and user == "bench_md5" else target


def why_gone(name: str) -> str:
    """How a proxy that is no longer running ended, and the last lines of its log."""
    work = Path(SETUP["work"])
    exit_file = work / f"{name}.exit"
    how = exit_file.read_text().strip() if exit_file.exists() else "ended (no exit status)"
    log = work / name / f"{name.split('-')[0]}.log"
    tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
    return f"{how}; last log lines: " + " | ".join(line[:200] for line in tail)


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise RuntimeError(f"process {pid} is gone: the proxy exited") from None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_ticks(pid: int | None) -> tuple[int, int] | None:
    """A process's CPU time so far, all threads: (utime, stime) in clock ticks, fields 14 and 15
    of /proc/PID/stat (counted after the parenthesized command name, which may hold spaces).
    None without a process (direct) or once it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]), int(fields[12])


CONCIERGE_LOG_LEVELS = ("warning", "error", "critical")


def concierge_log(target: str) -> Path:
    """run.sh's log of a Concierge target: $WORK/NAME/NAME.log."""
    return Path(SETUP["work"]) / target / f"{target}.log"


def proxy_log_size(target: str) -> int:
    path = concierge_log(target)
    return path.stat().st_size if target in CONCIERGES and path.exists() else 0


def proxy_log_since(target: str, offset: int) -> dict[str, int]:
    """What Concierge logged during a run, as message -> count: pins, borrow timeouts, ..."""
    if target not in CONCIERGES:
        return {}
    with open(concierge_log(target), "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    counts: Counter = Counter()
    for line in text.splitlines():
        m = log_line(line)
        if m:
            counts[m] += 1
    return dict(counts.most_common(8))


def log_line(line: str) -> str | None:
    """`LEVEL: message (pin reasons)` of one of Concierge's logfmt lines
    (`ts=... level=warning msg="..." key=value ...`, the `concierge.` of its keys dropped)."""
    level = re.search(r"\blevel=(\w+)", line)
    msg = re.search(r'\bmsg=("(?:[^"\\]|\\.)*"|\S+)', line)
    if not (level and msg):
        return None
    reason = re.search(r"\bpin_reasons?=(\S+)", line)
    text = msg.group(1).strip('"')
    return f"{level.group(1)}: {text}" + (f" ({reason.group(1)})" if reason else "")


def client_env(user: str, tls: bool = False) -> dict[str, str]:
    """The environment without the caller's libpq settings, plus the user's password; TLS
    (sslmode=require: encrypted, the self-signed certificate not verified) or none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=SETUP["passwords"][user], PGSSLMODE="require" if tls else "disable",
               PGCONNECT_TIMEOUT="10")
    return env


def psql_select1(target: str, user: str) -> tuple[bool, float, str]:
    """Whether `select 1` works through target right now, how long it took, and any error."""
    t0 = time.monotonic()
    proc = subprocess.run([f"{SETUP['pg_bin']}/psql", "-X", "-At", "-h", "127.0.0.1",
                           "-p", str(port_for(target, user)), "-U", user, "-d", "bench",
                           "-c", "select 1"],
                          capture_output=True, text=True, env=client_env(user), timeout=60)
    ok = proc.returncode == 0 and proc.stdout.strip() == "1"
    return ok, time.monotonic() - t0, proc.stderr.strip()


# -- results ---------------------------------------------------------------------------------

@dataclass
class Run:
    """One measurement of one scenario against one target."""

    scenario: str
    target: str
    rep: int
    values: dict[str, float] = field(default_factory=dict)  # metric name -> number
    failed: int = 0          # pgbench's "number of failed transactions"
    aborted: int = 0         # pgbench clients that aborted on an error
    errors: dict[str, int] = field(default_factory=dict)    # distinct error line -> count
    returncode: int = 0
    stalled: bool = False    # stopped by the guard, see GUARD
    seconds: float = 0.0
    command: str = ""
    note: str = ""
    proxy_log: dict[str, int] = field(default_factory=dict)  # Concierge log lines during the run


@dataclass
class Scenario:
    key: str
    title: str
    metrics: list[tuple[str, str]]  # (metric name, unit shown in the table)
    kind: str = "pgbench"           # pgbench | latency | idle | proxy_bound (CPU: see with_cpu)
    args: list[str] = field(default_factory=list)
    clients: int = 0
    user: str = "bench"
    targets: tuple[str, ...] = TARGETS
    higher_is_better: bool = True
    tls: bool = False               # clients connect with sslmode=require
    default: bool = True            # in the default set (a target of issue 20 reads it)
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # target -> why it was not run


def select_only(clients: int, mode: str = "simple") -> list[str]:
    # pgbench's -T includes connecting its clients (~3-5 s for 1,000 SCRAM logins here, 10 on a
    # busy machine), so many clients get more time; the tps it reports excludes the initial
    # connection time.
    seconds = DURATION + clients // 100
    return ["-S", "-n", "-M", mode, "-T", str(seconds), "-c", str(clients), "-j", "2"]


# The proxy-bound scenario's transaction: pgbench -S's, as a script (-f), so that pgbench does not
# look at pgbench_branches (fakepg has no tables).
SELECT_SCRIPT = "\\set aid random(1, 1000000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"


def scenarios() -> list[Scenario]:
    D = str(DURATION)
    storm = ["-S", "-n", "-C", "-T", D, "-c", "50", "-j", "2"]
    out = [Scenario(f"select_{c}", f"1. select-only, {c:,} clients", [("tps", "tps")],
                    args=select_only(c), clients=c, default=c != 10) for c in (10, 100, 1000)]
    out += [
        Scenario("extended_100", "2. select-only, extended protocol, 100 clients", [("tps", "tps")],
                 args=select_only(100, "extended"), clients=100),
        Scenario("prepared_100", "3. select-only, prepared (named statements), 100 clients",
                 [("tps", "tps")], args=select_only(100, "prepared"), clients=100, default=False),
        Scenario("storm_scram", "4. connection storm (-C), 50 clients, SCRAM", [("tps", "conn/s")],
                 args=storm, clients=50, default=False),
        Scenario("storm_md5", "4. connection storm (-C), 50 clients, md5", [("tps", "conn/s")],
                 args=storm, clients=50, user="bench_md5"),
        Scenario("latency_1", "5. latency, 1 client, select-only",
                 [("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")], kind="latency",
                 args=["-S", "-n", "-T", D, "-c", "1", "-j", "1"], clients=1,
                 higher_is_better=False),
        Scenario("idle_clients", f"6. {IDLE_CLIENTS:,} idle clients (md5)",
                 [("open_s", "s to open all"), ("kb_per_client", "KB RSS / client")], kind="idle",
                 clients=IDLE_CLIENTS, user="bench_md5", targets=PROXIES,
                 higher_is_better=False),
        Scenario("tpcb_50", "7. write mix (TPC-B-like), 50 clients", [("tps", "tps")],
                 args=["-n", "-T", D, "-c", "50", "-j", "2"], clients=50),
        # TLS (sslmode=require) to the clients; the proxies' backends stay plain. The storm uses
        # the md5 user: pgbench's own SCRAM work would hold the rate to a few hundred logins a
        # second and hide the proxies' TLS cost.
        Scenario("tls_storm_md5", "8. TLS connection storm (-C, sslmode=require), 50 clients, md5",
                 [("tps", "conn/s")], args=storm, clients=50, user="bench_md5", tls=True),
        Scenario("tls_select_100", "9. select-only over TLS (sslmode=require), 100 clients",
                 [("tps", "tps")], args=select_only(100), clients=100, tls=True),
        # The proxies in front of fakepg (bench/fakepg.c), which answers at once: their own cost
        # decides the throughput. Its own table (one column per target), with the scaling.
        Scenario("proxy_bound", "10. proxy-bound: select-only script against fakepg, 100 clients",
                 [("tps", "tps"), ("tx_per_cpu_s", "tx per proxy CPU-s")], kind="proxy_bound",
                 args=["-n", "-M", "simple", "-T", D, "-c", "100", "-j",
                       str(max(2, cpu_count(CLIENT_CPUS)))],
                 clients=100, user="bench_md5", targets=FAKE_TARGETS),
    ]
    return [with_cpu(sc) for sc in out]


def with_cpu(sc: Scenario) -> Scenario:
    """Every pgbench scenario gets rows for the proxy's CPU per transaction (per connection
    with -C, where each transaction is one connection): user + system, user, system; see
    run_pgbench."""
    if sc.kind in ("pgbench", "latency", "proxy_bound"):
        per = "conn" if "-C" in sc.args else "tx"
        sc.metrics += [("cpu_us", f"proxy CPU µs/{per}"), ("cpu_user_us", f"  user µs/{per}"),
                       ("cpu_sys_us", f"  sys µs/{per}")]
    return sc


# -- pgbench ---------------------------------------------------------------------------------

def normalize_error(line: str) -> str:
    """One error line without the numbers that differ between clients."""
    line = re.sub(r"\bclient \d+\b", "client N", line)
    line = re.sub(r"\bscript \d+\b", "script N", line)
    line = re.sub(r"\bcommand \d+\b", "command N", line)
    return line.strip()


def run_pgbench(sc: Scenario, target: str, rep: int, log_prefix: str | None = None) -> Run:
    """One pgbench run; its numbers, failures and errors. -P 1 prints per-second progress, so a
    run stopped by the guard still tells what it did."""
    cmd = [f"{SETUP['pg_bin']}/pgbench", "-h", "127.0.0.1", "-p", str(port_for(target, sc.user)),
           "-U", sc.user, "-P", "1", *sc.args]
    if log_prefix:
        cmd += ["-l", f"--log-prefix={log_prefix}"]
    script = None
    if sc.kind == "proxy_bound":
        script = tempfile.NamedTemporaryFile("w", prefix="concierge-bench-", suffix=".sql")
        script.write(SELECT_SCRIPT)
        script.flush()
        cmd += ["-f", script.name]
    cmd.append("bench")
    if CLIENT_CPUS:
        cmd = ["taskset", "-c", CLIENT_CPUS, *cmd]
    run = Run(sc.key, target, rep, command=" ".join(cmd))
    limit = DURATION + GUARD + sc.clients / 50   # 1,000 SCRAM logins take a few seconds
    log_mark = proxy_log_size(target)
    pid = pid_for(target, sc.user)
    # fakepg's CPU too (the proxy-bound scenario), to show it is not what limits the run.
    fake_pid = SETUP["fakepg"]["pid"] if sc.kind == "proxy_bound" else None
    fake0 = cpu_ticks(fake_pid)
    cpu0 = cpu_ticks(pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env(sc.user, sc.tls), cwd=tempfile.gettempdir())
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        run.stalled = True
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    cpu1 = cpu_ticks(pid)
    fake1 = cpu_ticks(fake_pid)
    run.seconds = round(time.monotonic() - t0, 2)
    if script:
        script.close()
    run.returncode = proc.returncode

    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    connect = re.search(r"^(?:initial|average) connection time = ([\d.]+) ms", out, re.M)
    if connect:
        run.values["connect_ms"] = float(connect.group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    run.failed = int(failed.group(1)) if failed else 0
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    if processed:
        run.values["processed"] = int(processed.group(1))
    if cpu0 and cpu1 and processed and int(processed.group(1)) > 0:
        # The proxy's CPU during the whole run (connecting the clients included), per
        # transaction pgbench processed (per connection with -C). One tick is 10 ms.
        n = int(processed.group(1))
        user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        us = 1e6 / TICKS / n
        run.values.update(cpu_us=round((user + sys_) * us, 2), cpu_user_us=round(user * us, 2),
                          cpu_sys_us=round(sys_ * us, 2), cpu_user_ticks=user,
                          cpu_sys_ticks=sys_)
        if user + sys_:
            # Efficiency: transactions per second of the proxy's CPU (user + system).
            run.values["tx_per_cpu_s"] = round(n * TICKS / (user + sys_), 1)
        if fake0 and fake1:
            run.values["fakepg_cpu_us"] = round(
                (sum(fake1) - sum(fake0)) * 1e6 / TICKS / n, 2)
    progress = [(float(t), float(v)) for t, v in
                re.findall(r"^progress: ([\d.]+) s, ([\d.]+) tps", err, re.M)]
    if tps:
        run.values["tps"] = float(tps.group(1))
    elif progress:
        # No summary (stopped): the mean of the per-second progress during -T.
        during = [v for t, v in progress if t <= DURATION] or [v for _, v in progress]
        run.values["tps"] = round(statistics.mean(during), 1)
        run.note = "tps from per-second progress (no summary)"
    elif run.stalled:
        # pgbench 15 prepares statements with a blocking PQprepare: one client waiting for a
        # backend blocks its whole thread, so no progress is printed at all.
        run.values["tps"] = 0.0
        run.note = "no transaction completed (no progress output)"
    if run.stalled:
        run.note = (f"stalled: still running {limit:.0f} s after start ({DURATION} s -T), "
                    f"stopped; " + run.note).rstrip("; ")

    errors = Counter()
    for line in err.splitlines():
        if line.startswith("progress:") or not line.strip():
            continue
        if re.search(r"client \d+ (script \d+ )?aborted", line):
            run.aborted += 1
        errors[normalize_error(line)] += 1
    run.errors = dict(errors.most_common(8))
    run.proxy_log = proxy_log_since(target, log_mark)
    return run


def latency_run(sc: Scenario, target: str, rep: int) -> Run:
    """A 1-client run with per-transaction logging (-l): p50 and p99 of its latencies."""
    with tempfile.TemporaryDirectory(prefix="concierge-bench-lat-") as tmp:
        run = run_pgbench(sc, target, rep, log_prefix=f"{tmp}/lat")
        latencies = []  # microseconds; the 3rd field of each line ("failed"/"skipped" if not)
        for path in Path(tmp).glob("lat*"):
            for line in path.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
    if latencies:
        latencies.sort()
        pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
        run.values.update(p50_ms=round(pick(0.50), 4), p99_ms=round(pick(0.99), 4))
        run.values["transactions"] = len(latencies)
    return run


# -- idle clients: a small asyncio PostgreSQL client --------------------------------------------

def _msg(type_: bytes, payload: bytes) -> bytes:
    return type_ + struct.pack("!I", len(payload) + 4) + payload


def _startup(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", user), ("database", database)))
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


_SALTED: dict[tuple[bytes, int], bytes] = {}   # PBKDF2 once per (salt, iterations), not per login


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    length = struct.unpack("!I", header[1:])[0]
    return header[:1], await reader.readexactly(length - 4)


async def login(port: int, user: str, password: str):
    """Connect and authenticate (md5 or SCRAM-SHA-256); returns (reader, writer) at the first
    ReadyForQuery. Raises on an ErrorResponse or a close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_startup(user, "bench"))
        scram = None
        while True:
            type_, body = await _read(reader)
            if type_ == b"E":
                fields = {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}
                raise RuntimeError(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")
            if type_ == b"Z":
                return reader, writer
            if type_ != b"R":
                continue  # ParameterStatus, BackendKeyData, notices
            code = struct.unpack("!I", body[:4])[0]
            if code == 5:  # md5
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                writer.write(_msg(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:  # SASL: start SCRAM-SHA-256
                nonce = base64.b64encode(os.urandom(18)).decode()
                scram = {"bare": f"n=,r={nonce}", "nonce": nonce}
                first = ("n,," + scram["bare"]).encode()
                writer.write(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
            elif code == 11:  # SASL continue: send the proof
                server_first = body[4:].decode()
                attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                key = (base64.b64decode(attrs["s"]), int(attrs["i"]))
                if key not in _SALTED:
                    _SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), *key)
                client_key = hmac.digest(_SALTED[key], b"Client Key", "sha256")
                final = f"c=biws,r={attrs['r']}"
                auth = f"{scram['bare']},{server_first},{final}".encode()
                sig = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
                proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
                writer.write(_msg(b"p", f"{final},p={proof}".encode()))
            elif code not in (0, 12):
                raise RuntimeError(f"unsupported authentication request {code}")
    except BaseException:
        writer.close()
        raise


RSS_BASELINE: dict[str, int] = {}   # target -> proxy RSS (KB) before its first idle clients


async def idle_run_async(sc: Scenario, target: str, rep: int) -> Run:
    """Open sc.clients authenticated clients that then stay idle; the time that takes, and the
    proxy's RSS growth per client. The growth is measured from the RSS before the *first* run:
    later runs reuse the memory the first one's clients freed, so their own before/after
    difference would be about zero."""
    run = Run(sc.key, target, rep)
    port, pid = port_for(target, sc.user), pid_for(target, sc.user)
    password = SETUP["passwords"][sc.user]
    errors: Counter = Counter()
    writers = []
    sem = asyncio.Semaphore(100)  # logins in flight: keeps listen backlogs from overflowing

    async def one():
        async with sem:
            try:
                _, writer = await asyncio.wait_for(login(port, sc.user, password), 30)
                writers.append(writer)
            except Exception as e:  # counted and reported, never fatal
                errors[normalize_error(f"{type(e).__name__}: {e}")] += 1

    before = rss_kb(pid)
    baseline = RSS_BASELINE.setdefault(target, before)
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(sc.clients)))
    run.values["open_s"] = round(time.monotonic() - t0, 3)
    await asyncio.sleep(1)   # let the proxy settle
    after = rss_kb(pid)
    run.values.update(opened=len(writers), rss_baseline_kb=baseline, rss_before_kb=before,
                      rss_after_kb=after)
    if writers:
        run.values["kb_per_client"] = round((after - baseline) / len(writers), 2)
    # A normal client must still be served while they are all open.
    ok, took, err = await asyncio.get_running_loop().run_in_executor(
        None, psql_select1, target, sc.user)
    run.values["select1_ok"] = int(ok)
    run.values["select1_s"] = round(took, 3)
    if not ok:
        errors[f"select 1 while {len(writers)} idle clients were open failed: {err}"] += 1
    run.note = (f"{len(writers):,} of {sc.clients:,} opened; RSS {baseline:,} KB before the "
                f"first run, {before:,} -> {after:,} KB in this one; "
                f"select 1 {'ok' if ok else 'FAILED'} in {took * 1000:.0f} ms")
    run.failed = sc.clients - len(writers)
    run.errors = dict(errors.most_common(8))
    for w in writers:
        w.write(_msg(b"X", b""))
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    run.seconds = round(time.monotonic() - t0, 2)
    await asyncio.sleep(2)   # let the proxy notice the closes before the next run
    return run


def idle_run(sc: Scenario, target: str, rep: int) -> Run:
    return asyncio.run(idle_run_async(sc, target, rep))


# -- running everything ------------------------------------------------------------------------

def direct_slots() -> int:
    """Client connections the database itself can take from `bench` while the proxies (pools of
    up to `pool` backends each: PgBouncer's two instances, Concierge, and the base if any) hold
    theirs."""
    pools = 2 + len([t for t in PROXIES if t != "pgbouncer"])
    return SETUP["max_connections"] - SUPERUSER_RESERVED - pools * SETUP["pool"]


def rep_order(targets: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """The order of one repetition. Two Concierge binaries swap places every other repetition
    (base, new; new, base; ...): measured here, whichever runs second in a pair pays 5-9% more
    CPU per transaction (the pair shares warm caches and PostgreSQL's state with the runs just
    before), so a fixed order would show a difference that is only the order."""
    if rep % 2 == 0 and "concierge_base" in targets and "concierge" in targets:
        swapped = list(targets)
        i, j = swapped.index("concierge_base"), swapped.index("concierge")
        swapped[i], swapped[j] = swapped[j], swapped[i]
        return tuple(swapped)
    return targets


def run_all(scs: list[Scenario]) -> None:
    runner = {"pgbench": run_pgbench, "latency": latency_run, "idle": idle_run,
              "proxy_bound": run_pgbench}
    # The idle clients run first, while the proxies are fresh: memory that earlier scenarios'
    # clients freed would otherwise be reused and hide part of the per-client cost.
    for sc in sorted(scs, key=lambda sc: sc.kind != "idle"):
        if "direct" in sc.targets and sc.clients > direct_slots():
            sc.skipped["direct"] = (f"n/a (max_connections): {sc.clients:,} clients > "
                                    f"{direct_slots()} free slots of max_connections="
                                    f"{SETUP['max_connections']}")
        no_repeat: set[str] = set()
        for rep in range(1, REPEAT + 1):
            for target in rep_order(sc.targets, rep):
                if target in sc.skipped or target in no_repeat:
                    continue
                if not alive(pid_for(target, sc.user)):
                    why = why_gone(proxy_name(target, sc.user))
                    sc.skipped[target] = f"not running: {LABEL[target]} {why}"
                    print(f"  {sc.key:<14} {LABEL[target]:<{WIDTH}} #{rep}: "
                          f"{sc.skipped[target]}", flush=True)
                    continue
                try:
                    run = runner[sc.kind](sc, target, rep)
                except Exception as e:  # e.g. the proxy died: report it, go on with the rest
                    run = Run(sc.key, target, rep, returncode=-1, note=f"error: {e}",
                              errors={f"{type(e).__name__}: {e}": 1})
                sc.runs.append(run)
                shown = ", ".join(f"{k}={v:g}" for k, v in run.values.items())
                trouble = (f" failed={run.failed} aborted={run.aborted} rc={run.returncode}"
                           if run.failed or run.aborted or run.returncode else "")
                trouble += " NO TRANSACTION" if empty(run) and sc.kind != "idle" else ""
                print(f"  {sc.key:<14} {LABEL[target]:<{WIDTH}} #{rep}: {shown}{trouble}"
                      f"{' STALLED' if run.stalled else ''} ({run.seconds:.1f} s)", flush=True)
                if run.stalled:
                    no_repeat.add(target)  # another run would stall the same way
                    time.sleep(1)          # let the proxy drop the stopped clients


# -- the tables ----------------------------------------------------------------------------------

def fmt(metric: str, v: float) -> str:
    if metric in ("tps", "tx_per_cpu_s"):
        return f"{v:,.0f}"
    if metric.endswith("_ms"):
        return f"{v:.3f}"
    if metric.startswith("cpu_") or metric.endswith("cpu_us"):
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def empty(r: Run) -> bool:
    """A pgbench run that completed no transaction at all (e.g. its clients were still logging
    in when -T ran out): it measured nothing."""
    return r.values.get("processed", 1) == 0


def valid(sc: Scenario, r: Run) -> bool:
    """Whether a run's numbers mean something: not when every client aborted (pgbench still
    prints a tps for the few transactions before that), nor when none completed."""
    return not (sc.kind != "idle" and (r.aborted >= sc.clients or empty(r)))


def stats(sc: Scenario, target: str, metric: str) -> dict | None:
    """Median, quartiles (the interquartile range), min and max of a metric over the target's
    valid runs; None without any."""
    values = sorted(r.values[metric] for r in sc.runs
                    if r.target == target and metric in r.values and valid(sc, r))
    if not values:
        return None
    q1, med, q3 = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
                   else (values[0],) * 3)
    return {"n": len(values), "median": med, "q1": q1, "q3": q3, "min": values[0],
            "max": values[-1]}


def median(scs: list[Scenario], key: str, target: str, metric: str) -> float | None:
    sc = next((sc for sc in scs if sc.key == key), None)
    st = stats(sc, target, metric) if sc else None
    return st["median"] if st else None


def show(metric: str, st: dict) -> str:
    """`median [q1–q3]`, or `value (1 run)`."""
    if st["n"] == 1:
        return f"{fmt(metric, st['median'])} (1 run)"
    return f"{fmt(metric, st['median'])} [{fmt(metric, st['q1'])}–{fmt(metric, st['q3'])}]"


def failures(sc: Scenario, target: str) -> str:
    runs = [r for r in sc.runs if r.target == target]
    if not runs:
        return "–"
    failed = sum(r.failed for r in runs)
    aborted = sum(r.aborted for r in runs)
    bad_rc = sum(1 for r in runs if r.returncode)
    stalled = sum(1 for r in runs if r.stalled)
    nothing = sum(1 for r in runs if empty(r) and not r.stalled)
    parts = []
    if failed:
        parts.append(f"{failed:,} failed" + (" conns" if sc.kind == "idle" else ""))
    if aborted:
        parts.append(f"{aborted:,} aborted")
    if stalled:
        parts.append("stalled")
    elif bad_rc:
        parts.append(f"exit≠0 ×{bad_rc}")
    if nothing:
        parts.append(f"no transaction ×{nothing}")
    return ", ".join(parts) or "0"


def cells(sc: Scenario, metric: str, targets: tuple[str, ...]) -> tuple[list[str], dict, set]:
    """One row's cells, the medians, and the targets whose runs were all clean."""
    out, medians, clean = [], {}, set()
    for target in targets:
        st = stats(sc, target, metric) if target in sc.targets else None
        if target not in sc.targets or (target == "direct" and metric in PROXY_METRICS):
            out.append("–")
        elif target in sc.skipped and st is None:
            out.append(sc.skipped[target].split(":")[0])
        elif st is None and metric in PROXY_METRICS and any(
                r.stalled for r in sc.runs if r.target == target):
            out.append("stalled")   # pgbench printed no summary: no transaction count
        elif st is None:
            out.append("failed (see notes)")
        else:
            runs = [r for r in sc.runs if r.target == target and metric in r.values]
            cell = show(metric, st)
            if any(r.stalled for r in runs):
                cell = "stalled: " + cell
            elif any(r.aborted or r.failed or empty(r) for r in sc.runs if r.target == target):
                cell += " ⚠"
            else:
                clean.add(target)
            out.append(cell)
            medians[target] = st["median"]
    return out, medians, clean


def scenario_notes(sc: Scenario) -> list[str]:
    """Skips, stalls, exit codes and distinct errors of one scenario."""
    notes = [f"- {sc.title}, {LABEL[target]}: {why}." for target, why in sc.skipped.items()]
    for target in sc.targets:
        runs = [r for r in sc.runs if r.target == target]
        errors: Counter = Counter()
        for r in runs:
            errors.update(r.errors)
        run_notes = sorted({r.note for r in runs if r.note and sc.kind != "idle"})
        if any(empty(r) for r in runs) and sc.kind != "idle":
            run_notes.append(f"{sum(map(empty, runs))} run(s) completed no transaction (pgbench "
                             "processed 0: e.g. its clients were still logging in at the end)")
        for r in runs:
            if r.proxy_log and (r.stalled or r.returncode or r.failed or r.aborted):
                run_notes.append(f"run {r.rep}, {LABEL[target]}'s log: " + "; ".join(
                    f"{n}× {m}" for m, n in r.proxy_log.items()))
        if sc.kind == "idle":
            run_notes = [f"run {r.rep}: {r.note}" for r in runs]
        if errors or run_notes:
            notes.append(f"- {sc.title}, {LABEL[target]}: exit codes "
                         f"{sorted({r.returncode for r in runs})}" if sc.kind != "idle"
                         else f"- {sc.title}, {LABEL[target]}:")
            notes.extend(f"    - {n}" for n in run_notes)
            notes.extend(f"    - ×{c}: `{e[:300]}`" for e, c in errors.most_common(4))
    return notes


def table(scs: list[Scenario]) -> str:
    """The main table: one column per target, one row per scenario and metric."""
    short = {"direct": "direct", "pgbouncer": "PgB", "concierge_base": "base", "concierge": "C"}
    ratios = [("concierge", "pgbouncer")] + ([("concierge", "concierge_base")] if BASE else []) \
        + ([("concierge", "direct")] if DIRECT else [])
    lines = [f"| scenario | metric | {' | '.join(LABEL[t] for t in TARGETS)} | "
             + " | ".join(f"C ÷ {short[b]}" for _, b in ratios)
             + f" | failures ({' / '.join(short[t] for t in TARGETS)}) |",
             "|---|---|" + "--:|" * (len(TARGETS) + len(ratios)) + "---|"]
    for sc in scs:
        if sc.kind == "proxy_bound":
            continue
        for metric, unit in sc.metrics:
            row, medians, clean = cells(sc, metric, TARGETS)

            def ratio(a: str, b: str) -> str:
                # No ratio against a run that stalled or lost clients: it would mean nothing.
                if a in clean and b in clean and medians[b]:
                    return f"{medians[a] / medians[b]:.2f}×"
                return "–"
            fails = " / ".join(failures(sc, t) if t in sc.targets else "–" for t in TARGETS)
            lines.append(f"| {sc.title} | {unit} | {' | '.join(row)} | "
                         + " | ".join(ratio(a, b) for a, b in ratios) + f" | {fails} |")
    return "\n".join(lines)


def proxy_bound_table(sc: Scenario) -> tuple[str, list[dict]]:
    """The proxy-bound scenario: one row per target (PgBouncer, Concierge per loop count), and
    Concierge's scaling from 1 to N loops (tps and tx per proxy CPU-second, speedup over 1 loop)."""
    metrics = [("tps", "tps"), ("tx_per_cpu_s", "tx per proxy CPU-s"),
               ("cpu_us", "proxy CPU µs/tx"), ("cpu_user_us", "user µs/tx"),
               ("cpu_sys_us", "sys µs/tx"), ("fakepg_cpu_us", "fakepg CPU µs/tx")]
    lines = ["| target | " + " | ".join(u for _, u in metrics)
             + " | tps ÷ PgB | tps ÷ 1 loop | tx/CPU-s ÷ 1 loop | failures |",
             "|---|" + "--:|" * (len(metrics) + 3) + "---|"]
    first = min(LOOPS.values(), default=None)
    one = {m: median([sc], sc.key, f"concierge_fake_{first}", m) for m in ("tps", "tx_per_cpu_s")}
    pgb = median([sc], sc.key, "pgbouncer_fake", "tps")
    scaling = []
    for target in sc.targets:
        row = [cells(sc, m, (target,))[0][0] for m, _ in metrics]
        tps = median([sc], sc.key, target, "tps")
        eff = median([sc], sc.key, target, "tx_per_cpu_s")
        def over(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}×" if a and b else "–"
        loops = LOOPS.get(target)
        label = LABEL[target] + (" (1 thread)" if target == "pgbouncer_fake" else "")
        lines.append(f"| {label} | {' | '.join(row)} | {over(tps, pgb)} | "
                     + (f"{over(tps, one['tps'])} | {over(eff, one['tx_per_cpu_s'])}"
                        if loops else "– | –") + f" | {failures(sc, target)} |")
        if loops:
            scaling.append({"loops": loops, "tps": tps, "tx_per_cpu_s": eff,
                            "cpu_user_us": median([sc], sc.key, target, "cpu_user_us"),
                            "cpu_sys_us": median([sc], sc.key, target, "cpu_sys_us"),
                            "speedup_tps": round(tps / one["tps"], 3) if tps and one["tps"] else None,
                            "tx_per_cpu_s_vs_1_loop": (round(eff / one["tx_per_cpu_s"], 3)
                                                       if eff and one["tx_per_cpu_s"] else None),
                            "tps_vs_pgbouncer": round(tps / pgb, 3) if tps and pgb else None})
    return "\n".join(lines), scaling


def targets_table(scs: list[Scenario]) -> tuple[str, list[dict]]:
    """Issue 20's targets, from this run's medians: target, measured, met or not."""
    rows = []

    def add(target: str, measured: str, met: bool | None) -> None:
        rows.append({"target": target, "measured": measured,
                     "met": None if met is None else bool(met)})

    def vs_pgbouncer(key: str, what: str, factor: float) -> None:
        unit = "conn/s" if "storm" in key else "tps"
        c, b = median(scs, key, "concierge", "tps"), median(scs, key, "pgbouncer", "tps")
        target = f"{what}: Concierge ≥ {factor:.2f}× PgBouncer"
        if c is None or b is None:
            if not any(sc.key == key and sc.runs for sc in scs):
                return add(target, "not measured", None)
            who = "Concierge" if c is None else "PgBouncer"
            return add(target, f"no valid run for {who} (see notes)",
                       False if c is None else None)
        if not b:
            return add(target, f"PgBouncer completed no transaction (Concierge {c:,.0f} {unit})",
                       None)
        add(target, f"{c / b:.2f}× ({c:,.0f} vs {b:,.0f} {unit})", c >= factor * b)

    vs_pgbouncer("select_100", "select-only, 100 clients", 0.95)
    vs_pgbouncer("select_1000", "select-only, 1,000 clients", 0.95)
    vs_pgbouncer("extended_100", "extended protocol, 100 clients", 0.95)
    vs_pgbouncer("tpcb_50", "TPC-B-like, 50 clients", 0.95)
    vs_pgbouncer("storm_md5", "md5 connection storm", 0.85)
    vs_pgbouncer("tls_storm_md5", "TLS connection storm", 1.0)
    vs_pgbouncer("tls_select_100", "TLS select-only, 100 clients", 1.0)
    c50, b50 = (median(scs, "latency_1", t, "p50_ms") for t in ("concierge", "pgbouncer"))
    c99, b99 = (median(scs, "latency_1", t, "p99_ms") for t in ("concierge", "pgbouncer"))
    if None in (c50, b50, c99, b99) or not (b50 and b99):
        add("1-client latency p50 ≤ PgBouncer's + 10 µs", "not measured", None)
        add("1-client latency p99 ≤ 1.15× PgBouncer's", "not measured", None)
    else:
        add("1-client latency p50 ≤ PgBouncer's + 10 µs",
            f"{c50 * 1000:.0f} µs vs {b50 * 1000:.0f} µs ({(c50 - b50) * 1000:+.0f} µs)",
            c50 <= b50 + 0.010)
        add("1-client latency p99 ≤ 1.15× PgBouncer's",
            f"{c99 * 1000:.0f} µs vs {b99 * 1000:.0f} µs ({c99 / b99:.2f}×)", c99 <= 1.15 * b99)
    kb = median(scs, "idle_clients", "concierge", "kb_per_client")
    add("memory per idle client ≤ 2 KB",
        "not measured" if kb is None else f"{kb:.2f} KB", None if kb is None else kb <= 2)
    for key, what, limit in (("select_100", "user CPU per select-only tx, 100 clients", 5),
                             ("storm_md5", "user CPU per md5 login with its query", 30)):
        us = median(scs, key, "concierge", "cpu_user_us")
        add(f"{what} ≤ {limit} µs", "not measured" if us is None else f"{us:.1f} µs",
            None if us is None else us <= limit)
    def bad(target: str) -> int:
        return sum(r.failed + r.aborted + r.stalled + (r.returncode != 0) + empty(r)
                   for sc in scs for r in sc.runs if r.target == target)
    concierges = [t for t in ("concierge", *LOOPS)]
    c_bad, b_bad = sum(map(bad, concierges)), bad("pgbouncer") + bad("pgbouncer_fake")
    add("failed transactions 0 everywhere (Concierge, every scenario and run)",
        f"{c_bad} (failed transactions + aborted clients + stalled, failed or empty runs; "
        f"PgBouncer: {b_bad})", c_bad == 0)
    yes = {True: "met", False: "**not met**", None: "–"}
    lines = ["| target | measured (Concierge vs PgBouncer, medians) | |", "|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']} | {yes[r['met']]} |" for r in rows]
    return "\n".join(lines), rows


def summary(scs: list[Scenario]) -> list[dict]:
    """Every cell's statistics, for the JSON."""
    return [{"key": sc.key, "target": t, "metric": m, **st}
            for sc in scs for t in sc.targets for m, _ in sc.metrics
            if (st := stats(sc, t, m)) is not None]


def estimate(scs: list[Scenario]) -> float:
    """Seconds the scenarios will take (measured here: each pgbench run takes its -T plus about
    0.5 s; an idle-clients run about 1 s per 1,500 clients plus 5 s)."""
    total = 0.0
    for sc in scs:
        if sc.kind == "idle":
            per = sc.clients / 1500 + 5
        else:
            per = int(sc.args[sc.args.index("-T") + 1]) + 0.5
        targets = [t for t in sc.targets
                   if not (t == "direct" and sc.clients > direct_slots())]
        total += per * len(targets) * REPEAT
    return total


# -- the machine ------------------------------------------------------------------------------

def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict[str, str]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    mem_kb = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                      if l.startswith("MemTotal:")))
    repo = SETUP["repo"]
    commit = sh("git", "-C", repo, "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", repo, "status", "--porcelain", "--", "Sources", "Package.swift",
               "Package.resolved")
    def built(binary: Path) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(binary.stat().st_mtime))
    binary = Path(SETUP["concierge"]["bin"])
    base = {}
    if BASE:
        base_bin = Path(SETUP["concierge_base"]["bin"])
        base["concierge_base_binary"] = f"{base_bin} (built {built(base_bin)})"
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": next((l.split("=", 1)[1].strip('"') for l in
                    Path("/etc/os-release").read_text().splitlines()
                    if l.startswith("PRETTY_NAME=")), "?"),
        "postgresql": sh(f"{SETUP['pg_bin']}/postgres", "--version"),
        "pgbench": sh(f"{SETUP['pg_bin']}/pgbench", "--version"),
        "pgbouncer": sh("pgbouncer", "--version").splitlines()[0],
        "concierge_commit": commit + (" (Sources modified)" if dirty else ""),
        "concierge_binary": f"{binary} (built {built(binary)})",
        **base,
        "python": platform.python_version(),
        "fd_limit": sh("bash", "-c", "ulimit -n"),
        "load_average_at_start": SETUP.get("loadavg", "?"),
        "load_average_at_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def choose(all_scs: list[Scenario]) -> list[Scenario]:
    """BENCH_SCENARIOS (comma-separated key prefixes, or `all`) picks from every scenario;
    without it, BENCH_FULL=1 runs them all and otherwise the default set (issue 20's targets)."""
    only = [k for k in os.environ.get("BENCH_SCENARIOS", "").split(",") if k]
    if only == ["all"] or (not only and FULL):
        return all_scs
    if only:
        return [sc for sc in all_scs if any(sc.key.startswith(k) for k in only)]
    return [sc for sc in all_scs if sc.default]


def main() -> int:
    scs = choose(scenarios())
    seconds = estimate(scs)
    print(f"bench: {len(scs)} scenarios × {REPEAT} runs, {DURATION} s per pgbench run"
          f"{' (quick)' if QUICK else ''}; targets: "
          + ", ".join(LABEL[t] for t in TARGETS)
          + f"; estimated {seconds / 60:.0f} min ({seconds:.0f} s) from now", flush=True)
    try:
        run_all(scs)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    tbl = table(scs)
    notes = [n for sc in scs for n in scenario_notes(sc)]
    bound = next((sc for sc in scs if sc.kind == "proxy_bound"), None)
    bound_md, scaling = proxy_bound_table(bound) if bound else ("", [])
    goals_md, goals = targets_table(scs)
    info = machine()
    total = time.time() - SETUP["started"]
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    commit = info["concierge_commit"].split()[0]
    cpus = SETUP.get("cpus", {})
    pinning = "; ".join(f"{what} on CPUs {cpus[k]}" for k, what in
                        (("proxy", "proxies"), ("client", "pgbench"), ("server", "fakepg"))
                        if cpus.get(k))
    smoke = QUICK or DURATION < 15 or REPEAT < 5
    settings = (f"{DURATION} s per pgbench run, {REPEAT} runs per cell, interleaved; cells show "
                f"the median [interquartile range] (min, max and every run in the JSON); pool of "
                f"{SETUP['pool']} backends for both proxies (PgBouncer transaction mode, "
                f"default_pool_size = max_db_connections = {SETUP['pool']}; Concierge cap "
                f"{SETUP['pool']} = {SETUP['pool'] * 100 // SETUP['max_connections']}% of "
                f"max_connections={SETUP['max_connections']}); Concierge's event loops (--threads): "
                f"{SETUP['concierge'].get('threads', 'one per core')}"
                + (" (the same for Concierge base)" if BASE else "")
                + "; TLS: a self-signed RSA 2048 certificate, sslmode=require, TLS to the clients "
                "only; pgbench -i -s 10; all on loopback on the same machine as the clients"
                + (f"; {pinning}" if pinning else "") + ".")
    bound_section = [
        "## Proxy-bound: in front of fakepg",
        "",
        f"`bench/fakepg.c` answers every query at once ({SETUP['fakepg']['threads']} epoll "
        "loop(s)), so the proxy's own cost decides the throughput: pgbench's select-only "
        "transaction as a script (`-f`), 100 clients, md5, simple protocol; one Concierge "
        "process per loop count (`--threads`), PgBouncer (one thread). `tx per proxy CPU-s` is "
        "transactions ÷ the proxy's user + system CPU seconds during the run.",
        "",
        bound_md,
        "",
        "Scaling (Concierge, medians): "
        + "; ".join(f"{s['loops']} loop(s): {s['tps'] or 0:,.0f} tps, "
                    f"{s['tx_per_cpu_s'] or 0:,.0f} tx/CPU-s, ×{s['speedup_tps'] or 0:.2f}"
                    for s in scaling) + ".",
        "",
    ] if bound else []
    md = "\n".join([
        f"# Concierge benchmark{' (smoke run)' if smoke else ''}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        ("Direct PostgreSQL vs " if DIRECT else "") + "PgBouncer vs Concierge"
        + (f" vs Concierge base (`{SETUP['concierge_base']['bin']}`, interleaved)" if BASE else "")
        + ", made by `bench/run.sh` (see bench/README.md for how to read it).",
        "",
        tbl,
        "",
        "Cells: median [first–third quartile]. Ratios are of the medians: for tps and conn/s "
        "above 1 means Concierge is faster; for latencies, seconds, KB and proxy CPU (lower is "
        "better) above 1 means Concierge is slower, bigger or uses more CPU. Proxy CPU is user + "
        "system, then each apart."
        + (" C ÷ base is Concierge over Concierge base (the base binary), read the same way."
           if BASE else ""),
        "",
        *bound_section,
        "Notes:",
        "",
        *(notes or ["- none"]),
        "",
        "## Setup",
        "",
        settings,
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- whole run (setup, all scenarios): {total:.0f} s (estimated beforehand: "
        f"{seconds:.0f} s for the scenarios)",
        "",
        "## Against the targets of issue 20",
        "",
        goals_md,
        "",
    ])
    print()
    print(md)
    out_dir = Path(SETUP["results"])
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{stamp}-{commit}{'-quick' if QUICK else ''}"
    base.with_suffix(".md").write_text(md)
    base.with_suffix(".json").write_text(json.dumps({
        "date": stamp, "machine": info, "settings": {
            "duration_s": DURATION, "repeat": REPEAT, "idle_clients": IDLE_CLIENTS,
            "quick": QUICK, "full": FULL, "pool": SETUP["pool"],
            "max_connections": SETUP["max_connections"], "guard_s": GUARD,
            "targets": list(TARGETS), "proxy_bound_targets": list(FAKE_TARGETS),
            "cpus": cpus, "fakepg_threads": SETUP.get("fakepg", {}).get("threads"),
            "clock_ticks_per_s": TICKS},
        "total_seconds": round(total, 1), "estimated_seconds": round(seconds),
        "targets": goals, "scaling": scaling, "summary": summary(scs),
        "scenarios": [{"key": sc.key, "title": sc.title, "user": sc.user, "args": sc.args,
                       "clients": sc.clients, "tls": sc.tls, "targets": list(sc.targets),
                       "skipped": sc.skipped, "runs": [asdict(r) for r in sc.runs]}
                      for sc in scs],
    }, indent=2))
    print(f"bench: wrote {base}.md and .json ({total:.0f} s so far)", flush=True)
    died = [why for sc in scs for why in sc.skipped.values() if why.startswith("not running")]
    if died:
        print(f"bench: a proxy died during the run: {died[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
