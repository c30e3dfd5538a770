#!/usr/bin/env python3
"""Interleaved A/B of concierge binaries behind a held benchmark setup, with allocations counted.

    BENCH_HOLD=1 bench/run.sh &                # PostgreSQL, PgBouncer, Concierge; waits
    bench/profile/ab.py OLD_BIN NEW_BIN        # then this, as often as wanted

Each binary runs as its own Concierge (the held one's configuration, its own port) in front of the
held PostgreSQL, under bench/profile/alloccount.so (built here with gcc). pgbench runs against
each in turn, alternating the order every repetition, and the table gives per transaction (per
connection with CONNECT=1): the proxy's user and system CPU (/proc/PID/stat), and its heap
allocations (malloc, calloc, aligned; counted, not sampled, so they repeat from run to run).
A binary given as PATH@LIB runs with LD_PRELOAD=LIB instead (e.g. another allocator), uncounted.

Environment: BENCH_DIR (the held setup, default /tmp/concierge-bench), REPS (5), DUR (10 s),
CLIENTS (100), MODE (simple | extended | prepared), USER_ (bench_md5 | bench), CONNECT=1 (-C),
THREADS (Concierge's --threads). Standard library only.
"""
import json, os, re, shutil, socket, statistics, subprocess, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
W = os.environ.get("BENCH_DIR", "/tmp/concierge-bench")
S = json.load(open(f"{W}/setup.json"))
REPS = int(os.environ.get("REPS", "5")); DUR = int(os.environ.get("DUR", "10"))
CLIENTS = int(os.environ.get("CLIENTS", "100")); MODE = os.environ.get("MODE", "simple")
USER = os.environ.get("USER_", "bench_md5"); CONNECT = os.environ.get("CONNECT") == "1"
THREADS = os.environ.get("THREADS")
SHIM = f"{W}/alloccount.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(spec: str, i: int):
    binary, _, preload = spec.partition("@")
    d = f"{W}/ab{i}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in ("bench.json", "bench_md5.json"):
        shutil.copy(f"{W}/concierge/{f}", d)
    port = free_port()
    config = open(f"{W}/concierge/concierge.yaml").read()
    config = re.sub(r'listen: "127.0.0.1:\d+"', f'listen: "127.0.0.1:{port}"', config, count=1)
    open(f"{d}/concierge.yaml", "w").write(config)
    env = dict(os.environ)
    env["LD_PRELOAD"] = preload or SHIM
    env["ALLOCCOUNT_FILE"] = f"{d}/counts"
    cmd = [binary, "serve", "--config", f"{d}/concierge.yaml"] + (["--threads", THREADS] if THREADS else [])
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=open(f"{d}/log", "w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port, d


def cpu(pid: int) -> tuple[int, int]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def allocations(d: str) -> int:
    try:
        return int.from_bytes(open(f"{d}/counts", "rb").read(8), "little")
    except OSError:
        return 0


def run(proc, port: int, d: str) -> dict:
    env = dict(os.environ, PGPASSWORD=S["passwords"][USER], PGSSLMODE=os.environ.get("PGSSLMODE", "disable"))
    cmd = [f"{S['pg_bin']}/pgbench", "-n", "-S", "-T", str(DUR), "-c", str(CLIENTS), "-j", "2", "-M", MODE,
           "-h", "127.0.0.1", "-p", str(port), "-U", USER] + (["-C"] if CONNECT else []) + ["bench"]
    c0, a0 = cpu(proc.pid), allocations(d)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    c1, a1 = cpu(proc.pid), allocations(d)
    m = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    n = max(int(m.group(1)) if m else 0, 1)
    tps = re.search(r"tps = ([\d.]+)", out.stdout)
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return {"tps": float(tps.group(1)) if tps else 0.0, "user_us": (c1[0] - c0[0]) * tick / n,
            "sys_us": (c1[1] - c0[1]) * tick / n, "allocs": (a1 - a0) / n}


def main() -> int:
    specs = sys.argv[1:]
    if not specs:
        print(__doc__)
        return 2
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", SHIM, f"{HERE}/alloccount.c"], check=True)
    procs = [start(spec, i) for i, spec in enumerate(specs)]
    results = {spec: [] for spec in specs}
    try:
        for rep in range(REPS):
            order = list(enumerate(specs))
            for i, spec in (order if rep % 2 == 0 else reversed(order)):
                results[spec].append(run(*procs[i]))
        unit = "conn" if CONNECT else "tx"
        print(f"| binary | tps | user µs/{unit} | system µs/{unit} | allocations/{unit} |")
        print("|---|--:|--:|--:|--:|")
        for spec in specs:
            med = {k: statistics.median(r[k] for r in results[spec]) for k in results[spec][0]}
            allocs = "–" if "@" in spec else f"{med['allocs']:.2f}"
            print(f"| {spec} | {med['tps']:.0f} | {med['user_us']:.2f} | {med['sys_us']:.2f} | {allocs} |")
    finally:
        for proc, _, _ in procs:
            proc.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
