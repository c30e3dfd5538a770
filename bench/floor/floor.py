#!/usr/bin/env python3
"""The floor: what any proxy on this machine can reach, next to PgBouncer and Concierge.

    BENCH_FLOOR=1 bench/run.sh          (run.sh sets up; this file measures)

Builds bench/floor (a separate Swift package) and starts, besides the PgBouncer (md5) and
Concierge that run.sh started:

- handshake-nio: a SwiftNIO server that only does the md5 login (one listener per event loop,
  one handler per connection, accepted as Concierge accepts): what a NIO-based proxy pays per
  connection at the least;
- handshake-raw: the same on a bare epoll loop per thread, with 2 threads and with 1;
- pooler-raw: a minimal transaction pooler on bare epoll (20 backends in all), 2 threads and 1;
- pooler-nio: the same pooler on SwiftNIO (a Channel per client and per backend), 2 threads.

and measures, interleaved, each BENCH_REPEAT times:

1. login storm: pgbench -C with a script of only `\\set x 1` (connect, md5 login, disconnect);
2. md5 storm: pgbench -S -C, scenario 4 of bench.py (login, one query through a backend);
3. latency: pgbench -S with 1 client, p50 of the per-transaction log (scenario 5);
4. throughput: pgbench -S with 100 clients (scenario 1), with 1,000 (its -T 10 s longer, as
   bench.py gives it, for the logins), and with 100 through the extended protocol (scenario 2);
5. idle clients: BENCH_IDLE_CLIENTS (10,000) logged-in clients held open on PgBouncer, Concierge
   and handshake-nio, the server's RSS growth per client (once per server: it repeats).

Built as scripts/build-release.sh builds Concierge (static Swift runtime, no run-time exclusivity
checks), so that the floor and Concierge are compared alike.

For each run it also reads the server process's user and system CPU from /proc/PID/stat and
divides by the connections (or transactions) made. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUP: dict = json.loads(Path(sys.argv[1]).read_text())
DURATION = int(os.environ.get("BENCH_DURATION", "5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
IDLE_CLIENTS = int(os.environ.get("BENCH_IDLE_CLIENTS", "10000"))
# BENCH_FLOOR_KINDS=select1000,idle: only these measurements (login, storm, latency, select,
# select1000, extended, idle); all by default.
KINDS = set(filter(None, os.environ.get("BENCH_FLOOR_KINDS", "").split(","))) or {
    "login", "storm", "latency", "select", "select1000", "extended", "idle"}
FLOOR = Path(__file__).resolve().parent
USER = "bench_md5"
PASSWORD = SETUP["passwords"][USER]
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"floor: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"floor: nothing listens on {port}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def pgbench(port: int, args: list[str], log_dir: str | None = None) -> tuple[float, int, str]:
    cmd = [f"{SETUP['pg_bin']}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", *args]
    if log_dir:
        cmd += ["-l", f"--log-prefix={log_dir}/lat"]
    cmd.append("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=PASSWORD, PGSSLMODE="disable")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=DURATION + 80)
    tps = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    problem = ""
    if out.returncode != 0 or not tps or (failed and failed.group(1) != "0"):
        problem = (out.stderr.strip().splitlines() or ["exit code %d" % out.returncode])[-1]
    return (float(tps.group(1)) if tps else 0.0), (int(done.group(1)) if done else 0), problem


def measure(kind: str, port: int, pid: int, script: str) -> dict:
    u0, s0 = cpu_seconds(pid)
    if kind == "latency":
        with tempfile.TemporaryDirectory(prefix="concierge-floor-") as tmp:
            tps, done, problem = pgbench(port, ["-S", "-T", str(DURATION), "-c", "1", "-j", "1"], tmp)
            latencies = sorted(int(f[2]) for p in Path(tmp).glob("lat*")
                               for f in (l.split() for l in p.read_text().splitlines())
                               if len(f) >= 3 and f[2].isdigit())
        value = latencies[len(latencies) // 2] / 1000 if latencies else 0.0
    elif kind in ("select", "select1000", "extended"):
        clients = 1000 if kind == "select1000" else 100
        mode = ["-M", "extended"] if kind == "extended" else []
        value, done, problem = pgbench(port, ["-S", *mode, "-T", str(DURATION + clients // 100), "-c", str(clients), "-j", "2"])
    else:
        args = ["-C", "-T", str(DURATION), "-c", "50", "-j", "2"]
        args += ["-f", script] if kind == "login" else ["-S"]
        value, done, problem = pgbench(port, args)
    u1, s1 = cpu_seconds(pid)
    per = max(done, 1)
    return {"value": value, "user_us": (u1 - u0) * 1e6 / per, "sys_us": (s1 - s0) * 1e6 / per,
            "problem": problem}


def idle_kb_per_client(port: int, pid: int) -> tuple[float, int]:
    """Open IDLE_CLIENTS logged-in md5 clients (bench.py's asyncio client) and hold them: the
    server's RSS growth per client, and how many opened."""
    sys.path.insert(0, str(FLOOR.parent))
    import asyncio
    import bench

    async def run() -> tuple[float, int]:
        writers = []
        sem = asyncio.Semaphore(100)

        async def one() -> None:
            async with sem:
                try:
                    writers.append((await asyncio.wait_for(bench.login(port, USER, PASSWORD), 30))[1])
                except Exception as e:  # counted below
                    log(f"idle client failed: {e}")

        before = bench.rss_kb(pid)
        await asyncio.gather(*(one() for _ in range(IDLE_CLIENTS)))
        await asyncio.sleep(1)
        after = bench.rss_kb(pid)
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        await asyncio.sleep(2)
        return (after - before) / max(len(writers), 1), len(writers)

    return asyncio.run(run())


def main() -> None:
    log("building bench/floor (release)")
    flags = ["-c", "release", "-Xswiftc", "-enforce-exclusivity=unchecked", "--static-swift-stdlib",
             "--package-path", str(FLOOR)]
    subprocess.run(["swift", "build", *flags], check=True, stdout=subprocess.DEVNULL)
    binary = Path(subprocess.run(["swift", "build", *flags, "--show-bin-path"], check=True,
                                 capture_output=True, text=True).stdout.strip()) / "floor"
    pg_port = SETUP["direct"]["port"]
    servers: dict[str, tuple[int, int]] = {
        "PgBouncer": (SETUP["pgbouncer_md5"]["port"], SETUP["pgbouncer_md5"]["pid"]),
        "Concierge": (SETUP["concierge"]["port"], SETUP["concierge"]["pid"]),
    }
    started: list[subprocess.Popen] = []
    floors = {
        "handshake-nio, 2 threads": ["handshake-nio", "2"],
        "handshake-raw, 2 threads": ["handshake-raw", "2"],
        "handshake-raw, 1 thread": ["handshake-raw", "1"],
        "pooler-raw, 2 threads": ["pooler-raw", "2"],
        "pooler-raw, 1 thread": ["pooler-raw", "1"],
        "pooler-nio, 2 threads": ["pooler-nio", "2"],
    }
    try:
        for name, (mode, threads) in floors.items():
            port = free_port()
            extra = [str(pg_port), "bench", str(SETUP["pool"] // int(threads))] if mode.startswith("pooler") else []
            proc = subprocess.Popen([str(binary), mode, str(port), threads, USER, PASSWORD, *extra])
            started.append(proc)
            wait_for_port(port)
            servers[name] = (port, proc.pid)

        script = Path(tempfile.mkstemp(prefix="concierge-floor-", suffix=".sql")[1])
        script.write_text("\\set x 1\n")
        plan = [
            ("login", "1. login storm (md5, no query), 50 clients", "conn/s",
             ["PgBouncer", "Concierge", "handshake-nio, 2 threads", "handshake-raw, 2 threads",
              "handshake-raw, 1 thread"]),
            ("storm", "2. md5 storm with a query (bench.py scenario 4)", "conn/s",
             ["PgBouncer", "Concierge", "pooler-nio, 2 threads", "pooler-raw, 2 threads", "pooler-raw, 1 thread"]),
            ("latency", "3. latency, 1 client (bench.py scenario 5)", "p50 ms",
             ["PgBouncer", "Concierge", "pooler-nio, 2 threads", "pooler-raw, 2 threads", "pooler-raw, 1 thread"]),
            ("select", "4. select-only, 100 clients (bench.py scenario 1)", "tps",
             ["PgBouncer", "Concierge", "pooler-nio, 2 threads", "pooler-raw, 2 threads", "pooler-raw, 1 thread"]),
            ("select1000", "4b. select-only, 1,000 clients (bench.py scenario 1)", "tps",
             ["PgBouncer", "Concierge", "pooler-nio, 2 threads", "pooler-raw, 2 threads", "pooler-raw, 1 thread"]),
            ("extended", "4c. select-only, extended protocol, 100 clients (bench.py scenario 2)", "tps",
             ["PgBouncer", "Concierge", "pooler-nio, 2 threads", "pooler-raw, 2 threads", "pooler-raw, 1 thread"]),
        ]
        plan = [p for p in plan if p[0] in KINDS]
        # Idle clients first, while every server is fresh (memory freed by earlier clients would
        # be reused and hide the growth).
        idle: dict[str, tuple[float, int]] = {}
        for name in ("PgBouncer", "Concierge", "handshake-nio, 2 threads") if "idle" in KINDS else ():
            port, pid = servers[name]
            idle[name] = idle_kb_per_client(port, pid)
            log(f"idle {name}: {idle[name][0]:.2f} KB per client, {idle[name][1]:,} opened")
        results: dict[tuple[str, str], list[dict]] = {}
        for kind, _, _, names in plan:
            for rep in range(REPEAT):
                for name in names:
                    port, pid = servers[name]
                    run = measure(kind, port, pid, str(script))
                    results.setdefault((kind, name), []).append(run)
                    log(f"{kind} {name} #{rep + 1}: {run['value']:.3f} (user {run['user_us']:.1f} µs, "
                        f"sys {run['sys_us']:.1f} µs) {run['problem']}")
        script.unlink()
    finally:
        for proc in started:
            proc.terminate()
            proc.wait()

    commit = subprocess.run(["git", "-C", SETUP["repo"], "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    lines = [f"# The floor, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "Made by `BENCH_FLOOR=1 bench/run.sh` (bench/floor/floor.py; see bench/README.md, "
             f"\"The floor\"). {DURATION} s per pgbench run, {REPEAT} runs per cell, interleaved; "
             "median (and min; max for latency). CPU is the server process's, per connection "
             "(storms) or per transaction (latency, select-only), medians.", ""]
    for kind, title, unit, names in plan:
        pgb = statistics.median(r["value"] for r in results[(kind, "PgBouncer")])
        lines += [f"## {title}", "", f"| server | {unit} | ÷ PgBouncer | user µs | system µs | problems |",
                  "|---|--:|--:|--:|--:|---|"]
        for name in names:
            runs = results[(kind, name)]
            values = [r["value"] for r in runs]
            median = statistics.median(values)
            low = max(values) if kind == "latency" else min(values)
            fmt = "{:.3f}" if kind == "latency" else "{:,.0f}"
            problems = "; ".join(sorted({r["problem"] for r in runs if r["problem"]})) or "–"
            lines.append(f"| {name} | {fmt.format(median)} ({'max' if kind == 'latency' else 'min'} "
                         f"{fmt.format(low)}) | {median / pgb:.2f}× | "
                         f"{statistics.median(r['user_us'] for r in runs):.1f} | "
                         f"{statistics.median(r['sys_us'] for r in runs):.1f} | {problems} |")
        lines.append("")
    if idle:
        lines += [f"## 5. {IDLE_CLIENTS:,} idle md5 clients", "", "| server | KB RSS per client | opened |",
                  "|---|--:|--:|"]
        lines += [f"| {name} | {kb:.2f} | {opened:,} |" for name, (kb, opened) in idle.items()]
        lines.append("")
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines += [f"Machine: {os.cpu_count()} cores; load average at the end {' '.join(load)}; "
              f"Concierge commit {commit}, binary {SETUP['concierge']['bin']}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(SETUP["results"]) / f"{stamp}-{commit}-floor.md"
    out.write_text(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
