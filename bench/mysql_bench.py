#!/usr/bin/env python3
"""The scenarios of bench/mysql.sh: run sysbench against direct MariaDB and Concierge (engine_family
MYSQL), print and save the results table in bench.py's style.

    python3 bench/mysql_bench.py SETUP.json

mysql.sh starts MariaDB and Concierge and writes SETUP.json (ports, pid, password); this file only
drives clients against them. Every measurement runs against each target (`direct`, `concierge`),
repeated BENCH_REPEAT times, interleaved (rep 1 of both, then rep 2, ...). For Concierge, each
sysbench run also reads the proxy's CPU time (/proc/PID/stat) before and after: CPU per
transaction (per connection for the storm).

Standard library only: sysbench does the heavy lifting (its password goes in a mode-600
--config-file, not on the command line); the idle-client scenario uses a small asyncio MySQL
client (handshake + mysql_native_password).
"""

from __future__ import annotations

import asyncio
import hashlib
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

from bench import log_line   # Concierge's logfmt lines, read as bench.py reads them

DURATION = int(os.environ.get("BENCH_DURATION", "5"))     # seconds per sysbench run (--time)
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))         # runs per (scenario, target)
IDLE_CLIENTS = int(os.environ.get("BENCH_IDLE_CLIENTS", "10000"))
# A sysbench run still going this many seconds after its --time is stopped, reported as stalled
# and not repeated: with server-side prepared statements pinned, the threads beyond the cap wait
# for a backend up to connection_borrow_timeout (120 s), and sysbench waits for them.
GUARD = int(os.environ.get("BENCH_GUARD", "20"))
TICKS = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent

SETUP: dict = json.loads(Path(sys.argv[1]).read_text()) if __name__ == "__main__" else {}
TARGETS = ("direct", "concierge")
PROXIES = ("concierge",)
LABEL = {"direct": "direct", "concierge": "Concierge"}
WIDTH = 10
PROXY_METRICS = ("cpu_us",)
# Not measured, and why (a line in the results rather than a silently missing column).
NOT_MEASURED = [
    "ProxySQL and MaxScale: not in Debian's packages (Debian 12 has neither), so not measured here.",
    "PgBouncer: PostgreSQL only, it has no MySQL side.",
]


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def why_gone() -> str:
    work = Path(SETUP["work"])
    exit_file = work / "concierge.exit"
    how = exit_file.read_text().strip() if exit_file.exists() else "ended (no exit status)"
    log = work / "concierge" / "concierge.log"
    tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
    return f"{how}; last log lines: " + " | ".join(line[:200] for line in tail)


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
    """(utime, stime) of a process, all threads, in clock ticks (see bench.py)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]), int(fields[12])


def log_size() -> int:
    path = Path(SETUP["work"]) / "concierge" / "concierge.log"
    return path.stat().st_size if path.exists() else 0


def log_since(offset: int) -> dict[str, int]:
    """What Concierge logged during a run, as message -> count (pins, borrow timeouts, ...)."""
    with open(Path(SETUP["work"]) / "concierge" / "concierge.log", "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    counts: Counter = Counter()
    for line in text.splitlines():
        m = log_line(line)
        if m:
            counts[m] += 1
    return dict(counts.most_common(8))


def mariadb_select1(target: str) -> tuple[bool, float, str]:
    """Whether `SELECT 1` works through target right now, how long it took, and any error."""
    env = dict(os.environ, MYSQL_PWD=SETUP["password"])
    t0 = time.monotonic()
    proc = subprocess.run([SETUP["client"], "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1",
                           "-P", str(SETUP[target]["port"]), "-u", "bench", "--connect-timeout=10",
                           "-N", "-e", "SELECT 1", "bench"],
                          capture_output=True, text=True, env=env, timeout=60)
    ok = proc.returncode == 0 and proc.stdout.strip() == "1"
    return ok, time.monotonic() - t0, proc.stderr.strip()


# -- results ---------------------------------------------------------------------------------

@dataclass
class Run:
    scenario: str
    target: str
    rep: int
    values: dict[str, float] = field(default_factory=dict)
    failed: int = 0          # errors: sysbench's FATAL lines, ignored errors, storm errors
    errors: dict[str, int] = field(default_factory=dict)
    returncode: int = 0
    stalled: bool = False
    seconds: float = 0.0
    command: str = ""
    note: str = ""
    proxy_log: dict[str, int] = field(default_factory=dict)


@dataclass
class Scenario:
    key: str
    title: str
    metrics: list[tuple[str, str]]
    kind: str = "sysbench"           # sysbench | storm | latency | idle
    script: str = "oltp_read_only"
    options: list[str] = field(default_factory=list)
    threads: int = 1
    targets: tuple[str, ...] = TARGETS
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def scenarios() -> list[Scenario]:
    out = []
    n = 0
    for script in ("oltp_read_only", "oltp_read_write"):
        n += 1
        for mode in ("disable", "auto"):
            for threads in (10, 100, 1000):
                proto = "text protocol" if mode == "disable" else "server-side prepared"
                out.append(Scenario(
                    f"{script[5:]}_{mode}_{threads}",
                    f"{n}. {script}, --db-ps-mode={mode} ({proto}), {threads:,} threads",
                    [("tps", "tps"), ("cpu_us", "proxy CPU µs/tx")], script=script,
                    options=[f"--db-ps-mode={mode}"], threads=threads))
    out += [
        Scenario("storm_50", "3. connection storm (connect, SELECT 1, disconnect), 50 threads",
                 [("conn_s", "conn/s"), ("cpu_us", "proxy CPU µs/conn")], kind="storm",
                 script=str(BENCH_DIR / "mysql_storm.lua"), threads=50),
        *(Scenario(f"latency_{mode}", f"4. latency, 1 thread, oltp_point_select, --db-ps-mode={mode}",
                   [("avg_ms", "avg ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"),
                    ("cpu_us", "proxy CPU µs/tx")], kind="latency", script="oltp_point_select",
                   options=[f"--db-ps-mode={mode}", "--histogram=on"], threads=1)
          for mode in ("disable", "auto")),
        Scenario("idle_clients", f"5. {IDLE_CLIENTS:,} idle clients (mysql_native_password)",
                 [("open_s", "s to open all"), ("rss_mb", "proxy RSS MB"),
                  ("kb_per_client", "KB RSS / client")], kind="idle", threads=IDLE_CLIENTS,
                 targets=PROXIES),
    ]
    return out


# -- sysbench --------------------------------------------------------------------------------

def config_file(target: str) -> str:
    """sysbench's connection options, the password among them, in a mode-600 file (not argv)."""
    path = Path(SETUP["work"]) / f"sysbench-{target}.cfg"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text("\n".join([
            "db-driver=mysql", "mysql-host=127.0.0.1", f"mysql-port={SETUP[target]['port']}",
            "mysql-user=bench", f"mysql-password={SETUP['password']}", "mysql-db=bench",
            "mysql-ssl=off",
        ]) + "\n")
    return str(path)


def normalize_error(line: str) -> str:
    line = re.sub(r"\bthread \d+\b", "thread N", line)
    line = re.sub(r"\b\d+ ms\b", "N ms", line)
    return line.strip()[:300]


def run_sysbench(sc: Scenario, target: str, rep: int) -> Run:
    """One sysbench run; its numbers, failures and errors. --report-interval=1 prints progress
    each second, so a run stopped by the guard still tells what it did."""
    tables = [] if sc.kind == "storm" else [f"--tables={SETUP['tables']}",
                                            f"--table-size={SETUP['table_size']}"]
    cmd = ["sysbench", sc.script, f"--config-file={config_file(target)}", *tables,
           f"--threads={sc.threads}", f"--time={DURATION}", "--report-interval=1", *sc.options, "run"]
    run = Run(sc.key, target, rep, command=" ".join(cmd))
    limit = DURATION + GUARD + sc.threads / 50
    mark = log_size() if target != "direct" else 0
    pid = SETUP[target].get("pid")
    cpu0 = cpu_ticks(pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tempfile.gettempdir())
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        run.stalled = True
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    cpu1 = cpu_ticks(pid)
    run.seconds = round(time.monotonic() - t0, 2)
    run.returncode = proc.returncode

    def number(pattern: str) -> float | None:
        m = re.search(pattern, out, re.M)
        return float(m.group(1)) if m else None

    events = number(r"^\s+total number of events:\s+(\d+)")
    total = number(r"^\s+total time:\s+([\d.]+)s")
    transactions = number(r"^\s+transactions:\s+(\d+)")
    ignored = number(r"^\s+ignored errors:\s+(\d+)")
    processed = transactions if transactions is not None else events
    if processed is not None:
        run.values["processed"] = processed
    if sc.kind == "storm":
        # The script's own counts: connections that logged in and ran SELECT 1, and failures
        # (sysbench still prints a FATAL line for each, below, but the thread goes on).
        counts = re.findall(r"^storm: connects=(\d+) errors=(\d+) first_error=(.*)$", out, re.M)
        connects = sum(int(c) for c, _, _ in counts)
        run.failed += sum(int(e) for _, e, _ in counts)
        processed = run.values["processed"] = connects
        if counts and total:
            run.values["conn_s"] = round(connects / total, 1)
    else:
        tps = number(r"^\s+transactions:\s+\d+\s+\(([\d.]+) per sec\.\)")
        if tps is not None:
            run.values["tps"] = tps
        if ignored:
            run.values["ignored_errors"] = ignored
    progress = [float(v) for v in re.findall(r"^\[ \d+s \] thds: \d+ tps: ([\d.]+)", out, re.M)]
    if sc.kind != "storm" and "tps" not in run.values:
        if progress:
            during = progress[:DURATION] or progress
            run.values["tps"] = round(statistics.mean(during), 1)
            run.note = "tps from per-second progress (no summary)"
        elif run.stalled:
            run.values["tps"] = 0.0
            run.note = "no progress output"
    if sc.kind == "latency":
        avg = number(r"^\s+avg:\s+([\d.]+)")
        if avg is not None:
            run.values["avg_ms"] = avg
        # --histogram=on: "      0.095 |***    12" lines: value (ms) and count.
        hist = [(float(v), int(c)) for v, c in
                re.findall(r"^\s+([\d.]+) \|\**\s+(\d+)\s*$", out, re.M)]
        n = sum(c for _, c in hist)
        if n:
            def pick(q: float) -> float:
                seen = 0
                for v, c in hist:
                    seen += c
                    if seen >= q * n:
                        return v
                return hist[-1][0]
            run.values.update(p95_ms=pick(0.95), p99_ms=pick(0.99))
    if cpu0 and cpu1 and processed:
        user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        us = 1e6 / TICKS / processed
        run.values.update(cpu_us=round((user + sys_) * us, 2), cpu_user_us=round(user * us, 2),
                          cpu_sys_us=round(sys_ * us, 2), cpu_user_ticks=user, cpu_sys_ticks=sys_)
    if run.stalled:
        run.note = (f"stalled: still running {limit:.0f} s after start ({DURATION} s --time), "
                    f"stopped; " + run.note).rstrip("; ")
    elif "Worker threads failed to initialize" in out:
        # sysbench's own limit (30 s) on its threads' thread_init, which prepares the statements:
        # threads beyond the backends the pinned ones hold wait for one there. A stall too.
        run.stalled = True
        run.note = "stalled: sysbench's threads did not all initialize within its 30 s limit"
    errors: Counter = Counter()
    for line in out.splitlines():
        if re.match(r"\s*(FATAL|ALERT|WARNING|error)", line, re.I) and "storm:" not in line:
            errors[normalize_error(line)] += 1
    if sc.kind != "storm" and not run.stalled:   # the storm counted its own (its threads go on)
        run.failed += sum(c for e, c in errors.items() if e.startswith("FATAL"))
    for e, c in errors.most_common(8):
        run.errors[e] = c
    if target != "direct":
        run.proxy_log = log_since(mark)
    return run


# -- idle clients: a small asyncio MySQL client ------------------------------------------------

CLIENT_FLAGS = (0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000)  # LONG_PASSWORD, CONNECT_WITH_DB,
# PROTOCOL_41, TRANSACTIONS, SECURE_CONNECTION, PLUGIN_AUTH


def native_scramble(password: str, salt: bytes) -> bytes:
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(salt + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix))


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    length = header[0] | header[1] << 8 | header[2] << 16
    return header[3], await reader.readexactly(length)


def _send(writer: asyncio.StreamWriter, seq: int, payload: bytes) -> None:
    writer.write(struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload)


async def login(port: int, user: str, password: str, database: str):
    """Connect and log in with mysql_native_password (following an auth switch to it); returns
    (reader, writer) at the OK. Raises on an error packet or a close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        seq, hello = await _packet(reader)
        if hello[:1] == b"\xff":
            raise RuntimeError(f"refused: {hello[3:].decode(errors='replace')}")
        i = hello.index(b"\0", 1) + 1 + 4          # server version, thread id
        salt = hello[i:i + 8]
        i += 8 + 1 + 2 + 1 + 2 + 2                 # filler, caps, charset, status, caps
        auth_len = hello[i]
        i += 1 + 10
        salt += hello[i:i + max(13, auth_len - 8) - 1]
        auth = native_scramble(password, salt)
        _send(writer, seq + 1, struct.pack("<IIB23x", CLIENT_FLAGS, 1 << 24, 45)
              + user.encode() + b"\0" + bytes([len(auth)]) + auth
              + database.encode() + b"\0" + b"mysql_native_password\0")
        while True:
            seq, reply = await _packet(reader)
            if reply[:1] == b"\x00":
                return reader, writer
            if reply[:1] == b"\xff":
                raise RuntimeError(f"error {struct.unpack('<H', reply[1:3])[0]}: "
                                   f"{reply[9:].decode(errors='replace')}")
            if reply[:1] == b"\xfe":                 # auth switch request
                plugin, _, data = reply[1:].partition(b"\0")
                if plugin != b"mysql_native_password":
                    raise RuntimeError(f"unsupported auth switch to {plugin!r}")
                _send(writer, seq + 1, native_scramble(password, data.rstrip(b"\0")))
                continue
            raise RuntimeError(f"unexpected packet {reply[:1]!r} at login")
    except BaseException:
        writer.close()
        raise


RSS_BASELINE: dict[str, int] = {}


async def idle_run_async(sc: Scenario, target: str, rep: int) -> Run:
    """Open sc.threads logged-in clients that then stay idle; the time that takes, the proxy's
    RSS with them all open and its growth per client (from the RSS before the first run, as in
    bench.py); a `SELECT 1` through the proxy must work meanwhile."""
    run = Run(sc.key, target, rep)
    port, pid = SETUP[target]["port"], SETUP[target]["pid"]
    errors: Counter = Counter()
    writers = []
    sem = asyncio.Semaphore(100)   # logins in flight: keeps the listen backlog from overflowing

    async def one():
        async with sem:
            try:
                _, writer = await asyncio.wait_for(login(port, "bench", SETUP["password"], "bench"), 30)
                writers.append(writer)
            except Exception as e:
                errors[normalize_error(f"{type(e).__name__}: {e}")] += 1

    before = rss_kb(pid)
    baseline = RSS_BASELINE.setdefault(target, before)
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(sc.threads)))
    run.values["open_s"] = round(time.monotonic() - t0, 3)
    await asyncio.sleep(1)
    after = rss_kb(pid)
    run.values.update(opened=len(writers), rss_baseline_kb=baseline, rss_before_kb=before,
                      rss_after_kb=after, rss_mb=round(after / 1024, 1))
    if writers:
        run.values["kb_per_client"] = round((after - baseline) / len(writers), 2)
    ok, took, err = await asyncio.get_running_loop().run_in_executor(None, mariadb_select1, target)
    run.values["select1_ok"] = int(ok)
    if not ok:
        errors[f"SELECT 1 while {len(writers)} idle clients were open failed: {err}"] += 1
    run.note = (f"{len(writers):,} of {sc.threads:,} opened; RSS {baseline:,} KB before the first "
                f"run, {before:,} -> {after:,} KB in this one; SELECT 1 {'ok' if ok else 'FAILED'} "
                f"in {took * 1000:.0f} ms")
    run.failed = sc.threads - len(writers) + (0 if ok else 1)
    run.errors = dict(errors.most_common(8))
    for w in writers:
        _send(w, 0, b"\x01")   # COM_QUIT
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    run.seconds = round(time.monotonic() - t0, 2)
    await asyncio.sleep(2)
    return run


def idle_run(sc: Scenario, target: str, rep: int) -> Run:
    return asyncio.run(idle_run_async(sc, target, rep))


# -- running everything ------------------------------------------------------------------------

def run_all(scs: list[Scenario]) -> None:
    runner = {"sysbench": run_sysbench, "storm": run_sysbench, "latency": run_sysbench,
              "idle": idle_run}
    # The idle clients first, while the proxy is fresh (see bench.py).
    for sc in sorted(scs, key=lambda sc: sc.kind != "idle"):
        no_repeat: set[str] = set()
        for rep in range(1, REPEAT + 1):
            for target in sc.targets:
                if target in sc.skipped or target in no_repeat:
                    continue
                if not alive(SETUP[target].get("pid")):
                    sc.skipped[target] = f"not running: {LABEL[target]} {why_gone()}"
                    print(f"  {sc.key:<22} {LABEL[target]:<{WIDTH}} #{rep}: {sc.skipped[target]}",
                          flush=True)
                    continue
                try:
                    run = runner[sc.kind](sc, target, rep)
                except Exception as e:
                    run = Run(sc.key, target, rep, returncode=-1, note=f"error: {e}",
                              errors={f"{type(e).__name__}: {e}": 1})
                sc.runs.append(run)
                shown = ", ".join(f"{k}={v:g}" for k, v in run.values.items())
                trouble = (f" failed={run.failed} rc={run.returncode}"
                           if run.failed or run.returncode else "")
                print(f"  {sc.key:<22} {LABEL[target]:<{WIDTH}} #{rep}: {shown}{trouble}"
                      f"{' STALLED' if run.stalled else ''} ({run.seconds:.1f} s)", flush=True)
                if run.stalled:
                    no_repeat.add(target)
                    time.sleep(2)   # let the proxy drop the stopped clients


# -- the table -----------------------------------------------------------------------------------

def fmt(metric: str, v: float) -> str:
    if metric in ("tps", "conn_s"):
        return f"{v:,.0f}"
    if metric.endswith("_ms"):
        return f"{v:.3f}"
    if metric in ("cpu_us", "rss_mb"):
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def stats(sc: Scenario, target: str, metric: str) -> tuple[float, float, int] | None:
    values = [r.values[metric] for r in sc.runs if r.target == target and metric in r.values]
    if not values:
        return None
    return min(values), statistics.median(values), len(values)


def failures(sc: Scenario, target: str) -> str:
    runs = [r for r in sc.runs if r.target == target]
    if not runs:
        return "–"
    parts = []
    failed = sum(r.failed for r in runs)
    ignored = sum(int(r.values.get("ignored_errors", 0)) for r in runs)
    if failed:
        parts.append(f"{failed:,} " + ("failed conns" if sc.kind == "idle" else "errors"))
    if ignored:
        parts.append(f"{ignored:,} ignored (deadlocks)")
    if any(r.stalled for r in runs):
        parts.append("stalled")
    elif any(r.returncode for r in runs):
        parts.append(f"exit≠0 ×{sum(1 for r in runs if r.returncode)}")
    return ", ".join(parts) or "0"


def table(scs: list[Scenario]) -> tuple[str, list[str]]:
    lines = [f"| scenario | metric | {' | '.join(LABEL[t] for t in TARGETS)} | C ÷ direct "
             f"| failures (direct / C) |",
             "|---|---|" + "--:|" * (len(TARGETS) + 1) + "---|"]
    notes = []
    for sc in scs:
        for metric, unit in sc.metrics:
            cells, medians, clean = [], {}, set()
            for target in TARGETS:
                st = stats(sc, target, metric) if target in sc.targets else None
                runs = [r for r in sc.runs if r.target == target]
                if target not in sc.targets or (target == "direct" and metric in PROXY_METRICS):
                    cells.append("–")
                elif target in sc.skipped and st is None:
                    cells.append(sc.skipped[target].split(":")[0])
                elif st is None:
                    cells.append("stalled" if any(r.stalled for r in runs) else "failed (see notes)")
                else:
                    lo, med, n = st
                    cell = f"{fmt(metric, med)} (min {fmt(metric, lo)})" if n > 1 else f"{fmt(metric, med)} (1 run)"
                    if any(r.stalled for r in runs):
                        cell = "stalled: " + cell
                    elif any(r.failed or r.returncode for r in runs):
                        cell += " ⚠"
                    else:
                        clean.add(target)
                    cells.append(cell)
                    medians[target] = med
            ratio = (f"{medians['concierge'] / medians['direct']:.2f}×"
                     if {"concierge", "direct"} <= clean and medians.get("direct") else "–")
            fails = " / ".join(failures(sc, t) if t in sc.targets else "–" for t in TARGETS)
            lines.append(f"| {sc.title} | {unit} | {' | '.join(cells)} | {ratio} | {fails} |")
        for target, why in sc.skipped.items():
            notes.append(f"- {sc.title}, {LABEL[target]}: {why}.")
        for target in sc.targets:
            runs = [r for r in sc.runs if r.target == target]
            errors: Counter = Counter()
            for r in runs:
                errors.update(r.errors)
            run_notes = sorted({r.note for r in runs if r.note and sc.kind != "idle"})
            for r in runs:
                if r.proxy_log and (r.stalled or r.returncode or r.failed):
                    run_notes.append(f"run {r.rep}, Concierge's log: " + "; ".join(
                        f"{n}× {m[:200]}" for m, n in r.proxy_log.items()))
            if sc.kind == "idle":
                run_notes = [f"run {r.rep}: {r.note}" for r in runs]
            if errors or run_notes:
                notes.append(f"- {sc.title}, {LABEL[target]}: exit codes "
                             f"{sorted({r.returncode for r in runs})}" if sc.kind != "idle"
                             else f"- {sc.title}, {LABEL[target]}:")
                notes.extend(f"    - {n}" for n in run_notes)
                notes.extend(f"    - ×{c}: `{e[:300]}`" for e, c in errors.most_common(4))
    return "\n".join(lines), notes


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
    binary = Path(SETUP["concierge"]["bin"])
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(binary.stat().st_mtime))
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": next((l.split("=", 1)[1].strip('"') for l in
                    Path("/etc/os-release").read_text().splitlines()
                    if l.startswith("PRETTY_NAME=")), "?"),
        "mariadb": sh(SETUP["client"], "--version"),
        "sysbench": sh("sysbench", "--version"),
        "concierge_commit": commit + (" (Sources modified)" if dirty else ""),
        "concierge_binary": f"{binary} (built {built})",
        "python": platform.python_version(),
        "fd_limit": sh("bash", "-c", "ulimit -n"),
        "load_average_at_start": SETUP.get("loadavg", "?"),
        "load_average_at_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main() -> int:
    scs = scenarios()
    only = [k for k in os.environ.get("BENCH_SCENARIOS", "").split(",") if k]
    if only:
        scs = [sc for sc in scs if any(sc.key.startswith(k) for k in only)]
    print(f"bench: {len(scs)} measurements × {REPEAT} runs, {DURATION} s per sysbench run", flush=True)
    try:
        run_all(scs)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    tbl, notes = table(scs)
    info = machine()
    total = time.time() - SETUP["started"]
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    commit = info["concierge_commit"].split()[0]
    smoke = DURATION < 5 or REPEAT < 3
    settings = (f"{DURATION} s per sysbench run (--time), {REPEAT} runs per cell (median, and min); "
                f"Concierge's cap {SETUP['pool']} backends = "
                f"{SETUP['pool'] * 100 // SETUP['max_connections']}% of MariaDB's "
                f"max_connections={SETUP['max_connections']} (which lets 1,000 sysbench threads "
                f"connect directly); Concierge's event loops (--threads): "
                f"{SETUP['concierge'].get('threads', 'one per core')}; sysbench --tables="
                f"{SETUP['tables']} --table-size={SETUP['table_size']}; all on loopback on the "
                f"same machine as the clients.")
    md = "\n".join([
        f"# Concierge MySQL benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" (smoke run)" if smoke else ""),
        "",
        "Direct MariaDB vs Concierge (engine_family MYSQL), made by `bench/mysql.sh` (see "
        "bench/README.md for how to read it)."
        + (f" **Smoke run**: {DURATION} s per cell and {REPEAT} run(s) per cell, to check the "
           "script, not to quote." if smoke else ""),
        "",
        *(f"- {line}" for line in NOT_MEASURED),
        "",
        tbl,
        "",
        "Ratios are of the medians: for tps and conn/s above 1 means Concierge is faster; for "
        "latencies above 1 means Concierge is slower. With --db-ps-mode=auto sysbench uses "
        "server-side prepared statements: where the proxy pins them, at most 20 threads (the cap) "
        "run and the others wait for a backend (connection_borrow_timeout 120 s), so the run "
        "stalls and is stopped.",
        "",
        "Notes:",
        "",
        *(notes or ["- none"]),
        "",
        "## Setup",
        "",
        settings,
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- whole run (setup, all scenarios): {total:.0f} s",
        "",
    ])
    print()
    print(md)
    out_dir = Path(SETUP["results"])
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{stamp}-{commit}-mysql"
    base.with_suffix(".md").write_text(md)
    base.with_suffix(".json").write_text(json.dumps({
        "date": stamp, "machine": info, "settings": {
            "duration_s": DURATION, "repeat": REPEAT, "idle_clients": IDLE_CLIENTS,
            "pool": SETUP["pool"], "max_connections": SETUP["max_connections"],
            "tables": SETUP["tables"], "table_size": SETUP["table_size"],
            "guard_s": GUARD, "targets": list(TARGETS), "clock_ticks_per_s": TICKS},
        "not_measured": NOT_MEASURED,
        "total_seconds": round(total, 1),
        "scenarios": [{"key": sc.key, "title": sc.title, "script": Path(sc.script).name,
                       "options": sc.options, "threads": sc.threads, "skipped": sc.skipped,
                       "runs": [asdict(r) for r in sc.runs]} for sc in scs],
    }, indent=2))
    print(f"bench: wrote {base}.md and .json ({total:.0f} s so far)", flush=True)
    died = [why for sc in scs for why in sc.skipped.values() if why.startswith("not running")]
    if died:
        print(f"bench: the proxy died during the run: {died[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
