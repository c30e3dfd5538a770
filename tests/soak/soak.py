#!/usr/bin/env python3
"""Soak test: a mixed workload through one Concierge for a long while, watching for leaks.

Starts its own PostgreSQL (scripts/pg.sh, max_connections=100) and a proxy in front of it (cap:
`max_connections_percent: 20`, i.e. 20 backends), then runs, all at once, until the time is up:

- pgbench select-only (8 clients) and pgbench TPC-B-like (4 clients), each alternating the
  simple and the prepared protocol in segments of up to 60 s (select-only starts with simple,
  TPC-B with prepared; each segment connects its clients anew), throttled (-R);
- a connect/disconnect loop: a new connection per transaction; every 5th one is a raw-socket
  client that begins a transaction, writes, and vanishes without a Terminate (its row must
  never be committed);
- pinning clients: sessions that create a temporary table, take a session advisory lock (and
  disconnect holding it, or release it), SET a parameter, or LISTEN, then disconnect;
- prepared statements: psycopg with prepare_threshold=0, and an asyncpg pool (its statement
  cache, its reset on release) when asyncpg is installed;
- cancels: psycopg's cancel during `pg_sleep`, and asyncpg's (a `wait_for` timeout). Every
  4th psycopg cancel is sent within 2 ms of the statement: PostgreSQL ignores a cancel that
  reaches a backend before it has read the statement, so those may be missed (counted in the
  summary, not failed); the others come 50-300 ms after it and must cancel it.

Every 2 s it samples the proxy's RSS and open descriptors (/proc/PID/status, /proc/PID/fd) and
the app user's backends (pg_stat_activity). At the end it stops the load, lets the clients go,
and checks. It fails (exit 1, one line per failed check) on:

- RSS growth after warm-up: end RSS > warm RSS x 1.25 + 16 MB. Warm-up is a quarter of the run
  (at least 30 s, at most 300 s); warm RSS is the highest sample in the last 10 s of the
  warm-up, end RSS the highest in the last 10 s of the load. The slack covers what may still
  settle after warm-up (allocator arenas, NIO's buffer pools, each backend's cache of up to 256
  prepared statements, per-user login templates); a leak of 100 bytes per transaction at the
  default rates over 30 minutes (about 1.6 M transactions) is 160 MB, far above it.
- descriptor growth: once every client has gone, the proxy must hold no more descriptors than
  before the load plus the cap and the health check (backends it keeps) plus 4; during the load,
  no more than before plus the clients the workload can hold at once plus the cap plus 16.
- any failed transaction: pgbench's "failed" or aborted clients or non-zero exit, and any
  driver error except the cancels the cancel workloads ask for (57014, asyncpg's timeout).
- leaked backends at the end: more backends of the app user than the cap, any not `idle`
  (idle in transaction, active), advisory locks still held, or the proxy's gauges not back to
  zero (client connections, borrowed, pinned, in transaction, waiters).
- the proxy exiting, or a workload thread stuck.

    CONCIERGE_BIN=.build/debug/concierge CONCIERGE_SOAK_SECONDS=180 python3 tests/soak/soak.py

| variable | effect |
|---|---|
| `CONCIERGE_SOAK_SECONDS` | how long the load runs (1800; CI: 180) |
| `CONCIERGE_BIN` | the binary (default `.build/debug/concierge`) |
| `CONCIERGE_SOAK_SELECT_RATE`, `CONCIERGE_SOAK_TPCB_RATE` | pgbench's -R (400, 100 tps) |
| `CONCIERGE_SOAK_KEEP=1` | keep the work directory (proxy log, samples.jsonl, pgbench logs) |

The summary (and samples.jsonl, one sample per line) goes to stdout and to the work directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

import psycopg  # noqa: E402

from helpers import (PG_SH, REPO_ROOT, PgCluster, clean_env, conninfo, free_port,  # noqa: E402
                     parse_pgbench, port_accepts, proxy_config, run, to_yaml, write_secret)
from pgwire import WireClient, message  # noqa: E402

try:
    import asyncpg  # type: ignore
except ImportError:  # the asyncpg workloads are left out
    asyncpg = None

MAX_CONNECTIONS = 100
CAP_PERCENT = 20
CAP = MAX_CONNECTIONS * CAP_PERCENT // 100
SAMPLE_EVERY = 2.0
SEGMENT = 60.0  # seconds of one pgbench run
SELECT_CLIENTS, TPCB_CLIENTS = 8, 4
# The most client connections the workloads hold at once (both pgbench lanes, the loops; an
# asyncpg pool of 4 and its cancel connection), for the descriptor bound during the load.
MAX_CLIENTS = SELECT_CLIENTS + TPCB_CLIENTS + 1 + 2 + 2 + 1 + 4 + 1 + 4


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- workloads ------------------------------------------------------------------------------

@dataclass
class Workload:
    """One concurrent part of the load: counts what succeeded and what failed."""

    name: str
    ok: int = 0
    expected: int = 0  # errors the workload asked for (cancels)
    failures: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def success(self, n: int = 1) -> None:
        with self.lock:
            self.ok += n

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {what}"[:500])


class Soak:
    def __init__(self, seconds: float, binary: Path):
        self.seconds = seconds
        self.binary = binary
        self.workdir = Path(tempfile.mkdtemp(prefix="concierge-soak-", dir="/tmp"))
        self.workdir.chmod(0o755)  # the PostgreSQL OS user (as root: concierge-pg) goes through it
        self.stop = threading.Event()
        self.workloads: list[Workload] = []
        self.samples: list[dict] = []
        self.proxy: subprocess.Popen | None = None
        self.pg: PgCluster | None = None
        self.pg_env: dict[str, str] = {}
        self.port = 0
        self.admin_port = 0
        self.password = secrets.token_hex(12)
        self.deadline = 0.0
        self.vanished_ids: list[int] = []

    # -- setup and teardown -----------------------------------------------------------------

    def start(self) -> None:
        root = self.workdir / "pg"
        root.mkdir()
        port = free_port()
        superuser = secrets.token_hex(16)
        self.pg_env = clean_env(CONCIERGE_PG_PASSWORD=superuser)
        run(["bash", str(PG_SH), "start", str(root / "data"), str(port),
             f"max_connections={MAX_CONNECTIONS}"], env=self.pg_env, timeout=180)
        bindir = Path(run(["bash", str(PG_SH), "bindir"]).stdout.strip())
        self.pg = PgCluster(host="127.0.0.1", port=port, bindir=bindir,
                            passwords={"app": self.password}, root=root, superuser_password=superuser)
        with self.pg.super_connect("postgres") as conn:
            conn.execute(f"create role app login password '{self.password}'")
            conn.execute("create database app owner app")
        proc = self.pg.pgbench("-i", "-q", "-s", "1", timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{proc.stderr}")
        self.pg.query("create table soak_rows (id bigint primary key, who text, at timestamptz "
                      "default now()); alter table soak_rows owner to app")

        secret = write_secret(self.workdir / "app.json", "app", self.password)
        self.port, self.admin_port = free_port(), free_port()
        config = proxy_config(listen_port=self.port, db_port=port, secrets={"app": secret},
                              max_connections_percent=CAP_PERCENT,
                              max_idle_connections_percent=CAP_PERCENT // 2,
                              connection_borrow_timeout=30, drain_timeout=10)
        config["proxies"][0]["debug_logging"] = False
        config["admin"] = {"listen": f"127.0.0.1:{self.admin_port}"}
        (self.workdir / "concierge.yaml").write_text(to_yaml(config) + "\n")
        self.proxy = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.workdir / "concierge.yaml")],
            stdin=subprocess.DEVNULL, stdout=open(self.workdir / "concierge.log", "wb"),
            stderr=subprocess.STDOUT, env=clean_env(), cwd=self.workdir)
        deadline = time.monotonic() + 30
        while not port_accepts(self.port):
            if self.proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start:\n{self.proxy_log()}")
            time.sleep(0.1)
        with self.connect() as conn:
            conn.execute("select 1")
        log(f"PostgreSQL on {port}, proxy pid {self.proxy.pid} on {self.port}, "
            f"cap {CAP} backends; work directory {self.workdir}")

    def proxy_log(self, tail: int = 4000) -> str:
        try:
            return (self.workdir / "concierge.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def teardown(self, keep: bool) -> None:
        if self.proxy and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(30)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        if self.pg:
            run(["bash", str(PG_SH), "stop", str(self.pg.datadir)], check=False, env=self.pg_env,
                timeout=120)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- clients ------------------------------------------------------------------------------

    def dsn(self, **params: Any) -> str:
        params.setdefault("connect_timeout", 30)
        return conninfo(host="127.0.0.1", port=self.port, user="app", dbname="app",
                        password=self.password, sslmode="disable", **params)

    def connect(self, prepare_threshold: int | None = None, **params: Any) -> psycopg.Connection:
        return psycopg.connect(self.dsn(**params), autocommit=True, prepare_threshold=prepare_threshold)

    def add(self, name: str, fn: Callable[[Workload], None]) -> None:
        w = Workload(name)

        def body() -> None:
            try:
                fn(w)
            except BaseException as e:  # a crash of the workload itself is a failure too
                w.fail(f"workload crashed: {e!r}\n{traceback.format_exc()[-800:]}")
        w.thread = threading.Thread(target=body, name=name, daemon=True)
        self.workloads.append(w)

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    # pgbench: segments alternating the protocol, each a fresh set of clients.
    def pgbench_lane(self, w: Workload, script: list[str], clients: int, rate: int,
                     first: str = "simple") -> None:
        modes = ["simple", "prepared"] if first == "simple" else ["prepared", "simple"]
        segment = 0
        w.detail = {m: 0 for m in modes}
        while self.running():
            remaining = self.deadline - time.monotonic()
            if remaining < 5:
                break
            mode = modes[segment % 2]
            seconds = int(min(SEGMENT, remaining))
            proc = self.pg_for_proxy().pgbench(
                *script, "-n", "-M", mode, "-c", str(clients), "-j", "1", "-R", str(rate),
                "-T", str(seconds), timeout=seconds + 120)
            res = parse_pgbench(proc)
            (self.workdir / f"pgbench-{w.name}-{segment}.log").write_text(res.output)
            w.success(res.processed)
            w.detail[mode] += res.processed
            aborted = re.search(r"(\d+) of \d+ clients? aborted|aborted", res.output)
            if res.returncode != 0 or res.failed != 0 or aborted:
                w.fail(f"pgbench {mode} segment {segment}: exit {res.returncode}, failed {res.failed}: "
                       + " | ".join(l for l in res.output.splitlines()
                                    if "error" in l.lower() or "abort" in l.lower() or "fail" in l.lower())[:400])
            segment += 1
        w.detail["segments"] = segment

    def pg_for_proxy(self) -> PgCluster:
        assert self.pg is not None
        return PgCluster(host="127.0.0.1", port=self.port, bindir=self.pg.bindir,
                         passwords={"app": self.password})

    # A new connection per transaction; every 5th a client that vanishes mid-transaction.
    def connect_loop(self, w: Workload) -> None:
        i = 0
        vanished = 0
        while self.running():
            i += 1
            try:
                if i % 5 == 0:
                    row_id = 10_000_000 + i
                    with WireClient("127.0.0.1", self.port, timeout=30) as c:
                        c.startup("app", self.password)
                        c.query("begin")
                        c.query(f"insert into soak_rows (id, who) values ({row_id}, 'vanished')")
                        # Gone without a Terminate: the proxy must roll this back.
                    self.vanished_ids.append(row_id)
                    vanished += 1
                else:
                    with self.connect(application_name="soak_connect") as conn:
                        if i % 2:
                            conn.execute("insert into soak_rows (id, who) values (%s, 'connect')", (i,))
                        else:
                            assert conn.execute("select 1").fetchone()[0] == 1
                w.success()
            except Exception as e:
                w.fail(f"iteration {i}: {e!r}")
                time.sleep(0.1)
        w.detail = {"vanished_mid_transaction": vanished}

    # Sessions that pin their backend, then disconnect (sometimes still holding a lock).
    def pinning_loop(self, w: Workload, n: int) -> None:
        i = 0
        kinds: dict[str, int] = {}
        while self.running():
            i += 1
            kind = ["temp", "lock_kept", "lock_released", "set", "listen"][i % 5]
            key = 1000 + n * 100 + i % 10
            try:
                with self.connect(application_name=f"soak_pin{n}") as conn:
                    conn.execute("set lock_timeout = '10s'")  # a leaked lock shows as 55P03
                    if kind == "temp":
                        conn.execute("create temp table soak_tmp (x int)")
                        conn.execute("insert into soak_tmp select generate_series(1, 100)")
                        assert conn.execute("select count(*) from soak_tmp").fetchone()[0] == 100
                    elif kind.startswith("lock"):
                        conn.execute("select pg_advisory_lock(%s)", (key,))
                        conn.execute("select count(*) from pgbench_branches")
                        if kind == "lock_released":
                            conn.execute("select pg_advisory_unlock(%s)", (key,))
                    elif kind == "set":
                        conn.execute("set work_mem = '8MB'")
                        assert conn.execute("show work_mem").fetchone()[0] == "8MB"
                    else:
                        conn.execute("listen soak_channel")
                        conn.execute("notify soak_channel, 'x'")
                    time.sleep(random.uniform(0, 0.05))
                w.success()
                kinds[kind] = kinds.get(kind, 0) + 1
            except Exception as e:
                w.fail(f"{kind}: {e!r}")
                time.sleep(0.1)
        w.detail = kinds

    # psycopg, every statement prepared (prepare_threshold=0), reads and short write transactions.
    def prepared_loop(self, w: Workload) -> None:
        i = 0
        with self.connect(prepare_threshold=0, application_name="soak_prepared") as conn:
            while self.running():
                i += 1
                aid = random.randint(1, 100_000)
                try:
                    row = conn.execute("select abalance from pgbench_accounts where aid = %s", (aid,)).fetchone()
                    assert row is not None
                    if i % 4 == 0:
                        with conn.transaction():
                            conn.execute("insert into soak_rows (id, who) values (%s, 'prepared')",
                                         (20_000_000 + i,))
                            conn.execute("select count(*) from soak_rows where who = %s", ("prepared",))
                    w.success()
                except Exception as e:
                    w.fail(f"iteration {i}: {e!r}")
                    time.sleep(0.1)
                time.sleep(0.002)

    # psycopg's cancel during pg_sleep: 57014 expected; the connection goes on.
    def cancel_loop(self, w: Workload) -> None:
        i = 0
        missed_early = 0
        with self.connect(application_name="soak_cancel") as conn:
            while self.running():
                i += 1
                outcome: list[BaseException | None] = []

                def sleep() -> None:
                    try:
                        conn.execute("select pg_sleep(5)")
                        outcome.append(None)
                    except BaseException as e:
                        outcome.append(e)
                t = threading.Thread(target=sleep, daemon=True)
                t.start()
                # Once the statement is sent (libpq: a command in progress), a moment more: it is
                # then waiting for a backend, or running.
                sent_by = time.monotonic() + 10
                while conn.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE \
                        and not outcome and time.monotonic() < sent_by:
                    time.sleep(0.001)
                # Every 4th cancel follows the statement at once: PostgreSQL itself ignores a
                # cancel that reaches the backend before it has read the statement, so one of
                # those may be missed (counted, not failed). The others come once it runs.
                early = i % 4 == 0
                time.sleep(random.uniform(0.0, 0.002) if early else random.uniform(0.05, 0.3))
                conn.cancel_safe(timeout=10)
                t.join(30)
                if t.is_alive():
                    w.fail(f"cancel {i}: pg_sleep still running 30 s after the cancel")
                    return
                e = outcome[0]
                if isinstance(e, psycopg.errors.QueryCanceled):
                    w.expected += 1
                elif e is None and early:
                    missed_early += 1
                else:
                    w.fail(f"cancel {i}: expected 57014, got {e!r}")
                w.detail = {"early_cancels": i // 4, "early_cancels_missed": missed_early}
                try:
                    assert conn.execute("select 1").fetchone()[0] == 1
                    w.success()
                except Exception as e2:
                    w.fail(f"after cancel {i}: {e2!r}")
                    return

    # asyncpg: a pool (statement cache, reset on release), and wait_for timeouts (its cancel).
    def asyncpg_loop(self, w: Workload) -> None:
        async def main() -> None:
            pool = await asyncpg.create_pool(host="127.0.0.1", port=self.port, user="app",
                                             database="app", password=self.password, ssl=False,
                                             min_size=2, max_size=4, command_timeout=60)
            i = 0
            cancels = 0

            async def one(i: int) -> None:
                nonlocal cancels
                async with pool.acquire() as conn:
                    if i % 25 == 0:
                        try:
                            await asyncio.wait_for(conn.fetchval("select pg_sleep(5)"),
                                                   timeout=random.uniform(0.05, 0.3))
                            w.fail(f"asyncpg cancel {i}: pg_sleep(5) returned")
                        except asyncio.TimeoutError:
                            w.expected += 1
                            cancels += 1
                        assert await conn.fetchval("select 1") == 1
                    elif i % 3 == 0:
                        async with conn.transaction():
                            await conn.execute("insert into soak_rows (id, who) values ($1, 'asyncpg')",
                                               30_000_000 + i)
                            await conn.fetchval("select count(*) from soak_rows where who = $1", "asyncpg")
                    else:
                        aid = random.randint(1, 100_000)
                        row = await conn.fetchrow("select aid, abalance from pgbench_accounts where aid = $1", aid)
                        assert row["aid"] == aid
                w.success()

            try:
                while self.running():
                    batch = []
                    for _ in range(4):
                        i += 1
                        batch.append(one(i))
                    for r in await asyncio.gather(*batch, return_exceptions=True):
                        if isinstance(r, BaseException):
                            w.fail(f"asyncpg: {r!r}")
                    await asyncio.sleep(0.005)
            finally:
                await asyncio.wait_for(pool.close(), 60)
            w.detail = {"cancels": cancels}

        asyncio.run(main())

    # -- sampling -----------------------------------------------------------------------------

    def sample(self) -> dict:
        assert self.proxy is not None and self.pg is not None
        pid = self.proxy.pid
        s: dict[str, Any] = {"t": round(time.monotonic() - self.t_start, 1)}
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            s["rss_kb"] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            s["threads"] = int(re.search(r"Threads:\s+(\d+)", status).group(1))
            s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            s["cpu_s"] = round((int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), 2)
        except (OSError, AttributeError):
            s["dead"] = True
        try:
            rows = self.pg.query("select state, count(*) from pg_stat_activity "
                                 "where backend_type = 'client backend' and usename = 'app' "
                                 "and application_name <> 'concierge_health_check' group by state")
            s["backends"] = {state or "none": n for state, n in rows}
        except psycopg.Error as e:
            s["backends_error"] = str(e)[:200]
        return s

    def sampler(self) -> None:
        with open(self.workdir / "samples.jsonl", "w") as out:
            while not self.sampling_done.is_set():
                s = self.sample()
                self.samples.append(s)
                out.write(json.dumps(s) + "\n")
                out.flush()
                self.sampling_done.wait(SAMPLE_EVERY)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return values

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> int:
        select_rate = int(os.environ.get("CONCIERGE_SOAK_SELECT_RATE", "400"))
        tpcb_rate = int(os.environ.get("CONCIERGE_SOAK_TPCB_RATE", "100"))
        self.t_start = time.monotonic()
        base = self.sample()
        self.sampling_done = threading.Event()
        sampler = threading.Thread(target=self.sampler, daemon=True)

        self.add("pgbench_select", lambda w: self.pgbench_lane(w, ["-S"], SELECT_CLIENTS, select_rate))
        self.add("pgbench_tpcb", lambda w: self.pgbench_lane(w, [], TPCB_CLIENTS, tpcb_rate, first="prepared"))
        self.add("connect_per_tx", self.connect_loop)
        self.add("pinning_1", lambda w: self.pinning_loop(w, 1))
        self.add("pinning_2", lambda w: self.pinning_loop(w, 2))
        self.add("psycopg_prepared", self.prepared_loop)
        self.add("psycopg_cancel", self.cancel_loop)
        if asyncpg is not None:
            self.add("asyncpg_pool", self.asyncpg_loop)
        else:
            log("asyncpg is not installed: its workload is left out")

        warmup = min(300.0, max(30.0, self.seconds / 4))
        self.deadline = time.monotonic() + self.seconds
        t_warm = time.monotonic() + warmup
        log(f"load for {self.seconds:.0f}s (warm-up {warmup:.0f}s): "
            + ", ".join(w.name for w in self.workloads))
        sampler.start()
        for w in self.workloads:
            assert w.thread is not None
            w.thread.start()
        next_report = time.monotonic() + 60
        while time.monotonic() < self.deadline:
            if self.proxy.poll() is not None:
                break
            time.sleep(0.5)
            if time.monotonic() >= next_report:
                next_report += 60
                last = self.samples[-1] if self.samples else {}
                log(f"t={last.get('t')}s rss={last.get('rss_kb', 0) / 1024:.1f}MB fds={last.get('fds')} "
                    f"backends={last.get('backends')} ok=" +
                    ",".join(f"{w.name}:{w.ok}" for w in self.workloads) +
                    f" failures={sum(len(w.failures) for w in self.workloads)}")
        self.stop.set()
        t_load_end = time.monotonic()
        stuck = []
        for w in self.workloads:
            assert w.thread is not None
            w.thread.join(180)
            if w.thread.is_alive():
                stuck.append(w.name)
        drained_at = time.monotonic()

        # Every client is gone: the proxy's state must come back to rest.
        checks: list[tuple[bool, str]] = []
        proxy_alive = self.proxy.poll() is None
        checks.append((proxy_alive, f"proxy alive at the end (exit code {self.proxy.returncode})"))
        checks.append((not stuck, f"no workload stuck ({stuck})"))
        end_state: dict[str, Any] = {}
        if proxy_alive:
            def at_rest() -> dict | None:
                s = self.sample()
                b = s.get("backends", {})
                m = self.metrics()
                gauges = {k: v for k, v in m.items() if k.split("{")[0] in (
                    "concierge_client_connections",
                    "concierge_database_connections_currently_borrowed",
                    "concierge_database_connections_currently_session_pinned",
                    "concierge_database_connections_currently_in_transaction",
                    "concierge_database_connection_borrow_waiters")}
                ok = (set(b) <= {"idle"} and sum(b.values()) <= CAP
                      and all(v == 0 for v in gauges.values()))
                return {"sample": s, "gauges": gauges, "metrics": m} if ok else None
            rest = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and rest is None:
                rest = at_rest()
                if rest is None:
                    time.sleep(0.5)
            final = rest or {"sample": self.sample(), "gauges": None, "metrics": self.metrics()}
            end_state = final
            b = final["sample"].get("backends", {})
            checks.append((sum(b.values()) <= CAP, f"backends at the end ({sum(b.values())}) <= cap {CAP}"))
            checks.append((set(b) <= {"idle"}, f"every backend idle at the end ({b})"))
            checks.append((final["gauges"] is not None and all(v == 0 for v in final["gauges"].values()),
                           f"proxy gauges back to zero ({rest['gauges'] if rest else 'not within 20 s'})"))
            locks = self.pg.scalar("select count(*) from pg_locks where locktype = 'advisory'")
            checks.append((locks == 0, f"no advisory lock left ({locks})"))
            # Vanished clients' rows were rolled back.
            committed = self.pg.scalar("select count(*) from soak_rows where who = 'vanished'")
            checks.append((committed == 0, f"no row of a client that vanished mid-transaction "
                                           f"committed ({committed} of {len(self.vanished_ids)})"))
        self.sampling_done.set()
        sampler.join(10)

        # Memory and descriptors.
        load = [s for s in self.samples if "rss_kb" in s and s["t"] <= t_load_end - self.t_start]
        warm_t = t_warm - self.t_start
        warm_window = [s for s in load if warm_t - 10 <= s["t"] <= warm_t] or \
            [min(load, key=lambda s: abs(s["t"] - warm_t))]
        end_window = [s for s in load if s["t"] >= load[-1]["t"] - 10]
        warm_rss = max(s["rss_kb"] for s in warm_window)
        end_rss = max(s["rss_kb"] for s in end_window)
        rss_bound = warm_rss * 1.25 + 16 * 1024
        max_fds = max(s["fds"] for s in load)
        base_fds = base["fds"]
        final_fds = end_state.get("sample", {}).get("fds") if end_state else None
        checks.append((end_rss <= rss_bound, f"end RSS {end_rss / 1024:.1f} MB <= warm RSS "
                       f"{warm_rss / 1024:.1f} MB x 1.25 + 16 MB = {rss_bound / 1024:.1f} MB"))
        fd_run_bound = base_fds + MAX_CLIENTS + CAP + 16
        checks.append((max_fds <= fd_run_bound,
                       f"max descriptors during the load {max_fds} <= {fd_run_bound} (start {base_fds} "
                       f"+ {MAX_CLIENTS} clients + cap {CAP} + 16)"))
        fd_end_bound = base_fds + CAP + 1 + 4
        checks.append((final_fds is not None and final_fds <= fd_end_bound,
                       f"descriptors once the clients are gone {final_fds} <= {fd_end_bound} "
                       f"(start {base_fds} + cap {CAP} + health check + 4)"))
        for w in self.workloads:
            checks.append((not w.failures, f"{w.name}: {len(w.failures)} failures"))

        m = end_state.get("metrics", {}) if end_state else {}
        summary = {
            "duration_s": round(t_load_end - self.t_start, 1),
            "warmup_s": warmup,
            "drain_s": round(drained_at - t_load_end, 1),
            "binary": str(self.binary),
            "cap": CAP,
            "transactions": {w.name: w.ok for w in self.workloads},
            "transactions_total": sum(w.ok for w in self.workloads),
            "expected_cancels": {w.name: w.expected for w in self.workloads if w.expected},
            "details": {w.name: w.detail for w in self.workloads if w.detail},
            "failures": {w.name: len(w.failures) for w in self.workloads},
            "first_failures": {w.name: w.failures[:5] for w in self.workloads if w.failures},
            "rss_mb": {"start": round(base["rss_kb"] / 1024, 1), "warm": round(warm_rss / 1024, 1),
                       "end": round(end_rss / 1024, 1),
                       "peak": round(max(s["rss_kb"] for s in load) / 1024, 1),
                       "bound": round(rss_bound / 1024, 1),
                       "at_rest": round(end_state["sample"]["rss_kb"] / 1024, 1)
                       if end_state and "rss_kb" in end_state.get("sample", {}) else None},
            "fds": {"start": base_fds, "max": max_fds, "at_rest": final_fds},
            "threads_max": max(s.get("threads", 0) for s in load),
            "proxy_cpu_s": load[-1].get("cpu_s"),
            "backends_at_end": end_state.get("sample", {}).get("backends") if end_state else None,
            "backends_max": max(sum(s.get("backends", {}).values()) for s in load),
            "pins_total": {k.split('reason="')[1].split('"')[0]: int(v) for k, v in m.items()
                           if k.startswith("concierge_session_pins_total")},
            "borrow_timeouts": int(sum(v for k, v in m.items() if k.startswith("concierge_borrow_timeouts_total"))),
            "backends_opened": int(sum(v for k, v in m.items()
                                       if k.startswith("concierge_database_connections_setup_succeeded_total"))),
            "client_connections_received": int(sum(v for k, v in m.items()
                                                   if k.startswith("concierge_client_connections_received_total"))),
            "proxy_log_warnings": self.proxy_log(10**9).count("level=warning"),
            "proxy_log_errors": self.proxy_log(10**9).count("level=error"),
        }
        checks.append((summary["backends_max"] <= CAP, f"backends never above the cap "
                                                       f"({summary['backends_max']} <= {CAP})"))
        summary["checks"] = [("ok  " if ok else "FAIL") + " " + text for ok, text in checks]
        text = json.dumps(summary, indent=2)
        (self.workdir / "summary.json").write_text(text + "\n")
        print(text, flush=True)
        failed = [text for ok, text in checks if not ok]
        if failed:
            for f in failed:
                print(f"SOAK FAILED: {f}", flush=True)
            for w in self.workloads:
                for f in w.failures[:5]:
                    print(f"  {w.name}: {f}", flush=True)
            if not proxy_alive:
                print(self.proxy_log(), flush=True)
            return 1
        log(f"soak passed: {summary['transactions_total']} transactions in {summary['duration_s']}s")
        return 0


def main() -> int:
    seconds = float(os.environ.get("CONCIERGE_SOAK_SECONDS", "1800"))
    binary = Path(os.environ.get("CONCIERGE_BIN") or REPO_ROOT / ".build" / "debug" / "concierge")
    if not os.access(binary, os.X_OK):
        print(f"soak: no concierge binary at {binary} (set CONCIERGE_BIN)", file=sys.stderr)
        return 2
    keep = os.environ.get("CONCIERGE_SOAK_KEEP") == "1"
    soak = Soak(seconds, binary)
    code = 1
    try:
        soak.start()
        code = soak.run()
    except Exception:
        traceback.print_exc()
        print(soak.proxy_log(), flush=True)
        code = 1
    finally:
        soak.teardown(keep=keep or code != 0)
        if keep or code != 0:
            print(f"soak: work directory kept: {soak.workdir}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
