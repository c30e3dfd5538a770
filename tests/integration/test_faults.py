"""Faults on the database side, and what clients of the proxy see of them.

Every test here runs against its module's own PostgreSQL cluster (`db`), not the session's: a
SIGKILLed backend makes PostgreSQL reset every session, and some tests restart or stop the
server. The cluster has `synchronous_commit = on` (scripts/pg.sh turns it off): with it off, a
crash may lose commits PostgreSQL has acknowledged, and "nothing committed is lost" would not
be the proxy's to keep.

- A backend killed (`pg_terminate_backend`, or SIGKILL and the crash restart it causes) while
  its client is idle between transactions, mid-statement, mid-COPY (in and out) and while a large
  result streams: an idle client does not notice; a busy one gets the proxy's
  `08006 the database connection serving this transaction was lost; ...` and keeps its
  connection; other clients are not disturbed (except by a crash restart, which ends every
  session); nothing committed is lost; no backend is left behind.
- PostgreSQL restarted (`pg_ctl restart -m fast`) under steady writers.
- PostgreSQL stopped for longer than `connection_borrow_timeout`.
- The path to the database blackholed (tests/integration/blackhole.py, a TCP forwarder that
  stops forwarding without closing anything), or slow (the same forwarder, 50 ms per hop): a
  cancel sent just after a statement must still cancel it.

Measured times are printed (pytest -s, lines starting `[faults]`).

Tests marked `found_bug` reproduce the proxy bugs these tests found (`BUGS` below); each failed
before its fix and guards it since.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from blackhole import Forwarder
from helpers import (PG_SH, PgCluster, Proxy, clean_env, free_port, port_accepts, proxy_config,
                     run, to_yaml, wait_for, write_secret)
from replication import as_pg

pytestmark = pytest.mark.proxy_only

LOST_TX = ("08006", "the database connection serving this transaction was lost; "
                    "the transaction was rolled back")
BORROW_TIMEOUT = ("53300", "Timed-out waiting to acquire database connection")
CAP = 10  # the proxies' cap: 10% of max_connections = 100

TIMINGS: dict[str, Any] = {}

# The proxy bugs these tests found, all fixed (see the module docstring): a test marked with one
# failed before its fix.
BUGS = {
    1: "a backend that PostgreSQL ends (pg_terminate_backend, fast shutdown) sends a FATAL; the "
       "proxy relays it and then adds its own 08006: two ErrorResponses for one query",
    2: "after one health check times out, the target is never checked again (stays AVAILABLE)",
    3: "no timeout on a backend that stops answering: clients mid-statement, in a transaction or "
       "leasing an idle backend wait for as long as the path is blackholed",
    4: "SIGTERM does not complete while a backend login hangs in a blackholed path",
    5: "a backend login refused with 57P03 (starting up, in recovery after a crash, shutting "
       "down) is the client's error: the transaction does not wait for the writer",
    6: "a cancel that arrives while the proxy brings the backend's session parameters to the "
       "client's (before the statement reaches the backend) is lost: the statement runs on",
    7: "a cancel forwarded to a backend can reach it after the backend has moved on to another "
       "client: it cancels that client's statement",
    8: "a transaction waiting out a database outage gets 08006 `could not connect to the "
       "database: ...` when the failover window closes, before its own borrow timeout, instead "
       "of 53300 after it",
}


def found_bug(*numbers: int):
    return pytest.mark.found_bug("; ".join(f"bug {n}: {BUGS[n]}" for n in numbers))


def record(name: str, **values: Any) -> None:
    TIMINGS[name] = values
    print(f"\n[faults] {name}: {json.dumps(values)}")


# -- the module's own cluster -------------------------------------------------------------

@dataclass
class Db(PgCluster):
    env: dict = field(default_factory=dict)

    @property
    def pg_ctl(self) -> str:
        return str(self.bindir / "pg_ctl")

    def ctl(self, *args: str, timeout: float = 90) -> None:
        run(as_pg([self.pg_ctl, "-D", str(self.datadir), "-l", str(self.root / "postgres.log"),
                   "-w", "-t", "60", *args]), env=self.env, timeout=timeout)

    def start(self) -> None:
        self.ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "restart")

    def backends(self, user: str = "app") -> list[tuple]:
        """(pid, state, query) of `user`'s client backends that are not health checks."""
        return self.query("select pid, state, query from pg_stat_activity "
                          "where backend_type = 'client backend' and usename = %s "
                          "and application_name <> 'concierge_health_check'", (user,))

    def pid_running(self, marker: str) -> int | None:
        """The pid of the backend running a statement containing `marker` (not this query)."""
        rows = self.query("select pid from pg_stat_activity where state = 'active' "
                          "and query like %s and pid <> pg_backend_pid()", (f"%{marker}%",))
        return rows[0][0] if rows else None

    def terminate(self, pid: int) -> None:
        """pg_terminate_backend, waiting (up to 10 s) until the backend is gone."""
        assert self.scalar("select pg_terminate_backend(%s, 10000)", (pid,)) is True


@pytest.fixture(scope="module")
def db() -> Db:
    root = Path(tempfile.mkdtemp(prefix="concierge-faults-", dir="/tmp"))
    port = free_port()
    superuser_password = secrets.token_hex(16)
    env = clean_env(CONCIERGE_PG_PASSWORD=superuser_password)
    run(["bash", str(PG_SH), "start", str(root / "data"), str(port), "max_connections=100",
         "synchronous_commit=on"], env=env, timeout=180)
    bindir = Path(run(["bash", str(PG_SH), "bindir"]).stdout.strip())
    cluster = Db(host="127.0.0.1", port=port, bindir=bindir, passwords={"app": secrets.token_hex(12)},
                 root=root, superuser_password=superuser_password, env=env)
    try:
        with cluster.super_connect("postgres") as conn:
            conn.execute(f"create role app login password '{cluster.passwords['app']}'")
            conn.execute("create database app owner app")
        yield cluster
    finally:
        run(["bash", str(PG_SH), "stop", str(root / "data")], check=False, env=env)
        shutil.rmtree(root, ignore_errors=True)


# -- proxies ------------------------------------------------------------------------------

@pytest.fixture
def start_proxy(request, db: Db, concierge_bin: Path, tmp_path: Path):
    """Factory: `start_proxy(db_port=..., health_check={...}, **pool)` -> a ready `Proxy` with
    an admin listener (`p.admin_url`). Torn down (and checked to have survived) after the test."""
    started: list[Proxy] = []
    request.node._concierge_proxies = started

    def start(*, db_port: int | None = None, health_check: dict | None = None,
              wait_ready: bool = True, **overrides: Any) -> Proxy:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        secret = write_secret(workdir / "app.json", "app", db.passwords["app"])
        port, admin_port = free_port(), free_port()
        config = proxy_config(listen_port=port, db_port=db_port or db.port, secrets={"app": secret},
                              **overrides)
        config["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
        if health_check:
            config["proxies"][0]["target_group"]["health_check"] = health_check
        config_path = workdir / "concierge.yaml"
        config_path.write_text(to_yaml(config) + "\n")
        log_path = workdir / "concierge.log"
        extra = ["--log-level", "trace"] if os.environ.get("CONCIERGE_ITEST_DEBUG") == "1" else []
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(config_path), *extra],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=clean_env(), cwd=workdir)
        p = Proxy(host="127.0.0.1", port=port, passwords=db.passwords, bindir=db.bindir, proc=proc,
                  config_path=config_path, log_path=log_path)
        p.admin_url = f"http://127.0.0.1:{admin_port}"
        started.append(p)

        def ready() -> bool:
            if proc.poll() is not None:
                p.expect_exit = True
                pytest.fail(f"concierge exited with {proc.returncode}:\n{p.log()}")
            if not wait_ready:
                return port_accepts(port)
            try:
                return p.psql("select 1", check=False, timeout=5, connect_timeout=2).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        wait_for(ready, 20, f"the proxy on port {port} to be ready", interval=0.1)
        return p

    yield start

    errors = []
    for p in started:
        log = p.log(10**9)
        if db.passwords["app"] in log or db.superuser_password in log:
            errors.append(f"a password appears in the log of the proxy on port {p.port}")
        if p.proc.poll() is not None:
            if not p.expect_exit:
                errors.append(f"proxy on port {p.port} died during the test "
                              f"(exit {p.proc.returncode}):\n{p.log()}")
            continue
        p.proc.terminate()
        try:
            p.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
            errors.append(f"proxy on port {p.port} ignored SIGTERM:\n{p.log()}")
    if errors:
        pytest.fail("\n\n".join(errors))


def target_health(p: Proxy) -> str | None:
    """The (only) target's TargetHealth.State, from the admin API."""
    with urllib.request.urlopen(p.admin_url + "/v1/db-proxies/app/targets", timeout=5) as r:
        targets = json.loads(r.read())["Targets"]
    return (targets[0].get("TargetHealth") or {}).get("State") if targets else None


# -- clients ------------------------------------------------------------------------------

def connect(p: Proxy, **kw: Any) -> psycopg.Connection:
    kw.setdefault("prepare_threshold", None)
    return p.connect(**kw)


def sqlstate_and_message(e: psycopg.Error) -> tuple[str | None, str]:
    diag = e.diag
    return e.sqlstate, (diag.message_primary or str(e)).strip()


class Bystander:
    """Another client, busy throughout: a short write transaction after another on its own
    connection. Counts what committed; any error is recorded (a fault must not reach it)."""

    def __init__(self, p: Proxy, table: str, base: int, name: str = "bystander"):
        self.p, self.table, self.next_id, self.name = p, table, base, name
        self.committed: list[int] = []
        self.errors: list[tuple[str | None, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        with connect(self.p, application_name=self.name) as conn:
            while not self.stop.is_set():
                self.next_id += 1
                try:
                    with conn.transaction():
                        conn.execute(f"insert into {self.table} (id, v) values (%s, %s)",
                                     (self.next_id, self.name))
                        conn.execute("select count(*) from pg_class")
                    self.committed.append(self.next_id)
                except psycopg.Error as e:
                    self.errors.append(sqlstate_and_message(e))
                    if conn.closed:
                        return
                self.stop.wait(0.005)

    def __enter__(self) -> "Bystander":
        self.thread.start()
        wait_for(lambda: len(self.committed) >= 3 or self.errors, 20, f"{self.name} to commit")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{self.name} is stuck"


def ids_in(db: Db, table: str) -> set[int]:
    return {r[0] for r in db.query(f"select id from {table}")}


def fresh_table(db: Db, name: str) -> str:
    db.query(f"drop table if exists {name}; create table {name} (id bigint primary key, v text); "
             f"alter table {name} owner to app")
    return name


def settle(db: Db, cap: int = CAP, timeout: float = 20) -> list[tuple]:
    """Waits until no backend of the app user is busy or idle in a transaction, and returns
    them; then checks there are no more than the pool allows."""
    def quiet():
        rows = db.backends()
        return (rows,) if all(state == "idle" for _, state, _ in rows) else None
    try:
        (rows,) = wait_for(quiet, timeout, "every backend of the pool to be idle")
    except AssertionError as e:
        raise AssertionError(f"{e}: {db.backends()}")
    assert len(rows) <= cap, f"{len(rows)} backends, more than the cap {cap}: {rows}"
    return rows


class Running:
    """A statement run in a thread on `conn`; `.result()` waits for its outcome (bounded)."""

    def __init__(self, fn: Callable[[], Any], name: str = "statement"):
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as e:
            self.error = e
        finally:
            self.ended_at = time.monotonic()

    def result(self, timeout: float) -> "Running":
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still blocked after {timeout}s"
        return self


# -- a backend killed ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["terminate", pytest.param("sigkill", marks=found_bug(5))])
def test_backend_killed_while_its_client_is_idle_goes_unnoticed(start_proxy, db, how):
    """Every pooled backend killed while the clients are between transactions (they hold none):
    their next queries just work, with no error and no pause on our side. pg_terminate_backend:
    five rounds. SIGKILL of one backend: PostgreSQL ends every session and recovers from the
    crash (two rounds); the clients' next transactions wait for it and then run."""
    rounds = 5 if how == "terminate" else 2
    t = fresh_table(db, f"fault_idle_{how}")
    p = start_proxy(health_check={"interval_ms": 250, "timeout_ms": 1000})
    clients = [connect(p) for _ in range(4)]
    slowest = 0.0
    try:
        for n, c in enumerate(clients):
            for i in range(5):
                c.execute(f"insert into {t} (id, v) values (%s, 'before')", (n * 100 + i,))
        committed = ids_in(db, t)
        killed = 0
        for round_ in range(rounds):
            victims = [pid for pid, _, _ in db.backends()]
            assert victims and all(state == "idle" for _, state, _ in db.backends())
            if how == "terminate":
                for pid in victims:
                    db.terminate(pid)
                killed += len(victims)
            else:
                # PostgreSQL then ends every other session: wait until they are all gone (a
                # query sent before that could meet its backend dying under it).
                everyone = [pid for (pid,) in db.query(
                    "select pid from pg_stat_activity where usename = 'app'")]
                os.kill(victims[0], signal.SIGKILL)
                wait_for(lambda: not any(_alive(pid) for pid in everyone), 20,
                         "every session to end after the crash")
                killed += 1
            # No pause: the very next queries must work.
            for n, c in enumerate(clients):
                t0 = time.monotonic()
                c.execute(f"insert into {t} (id, v) values (%s, 'after')", (10_000 + round_ * 100 + n,))
                slowest = max(slowest, time.monotonic() - t0)
                assert c.execute("select 1").fetchone()[0] == 1
            if how == "sigkill":
                _after_crash(db, p)
        present = ids_in(db, t)
        assert committed <= present
        assert len(present) == len(committed) + rounds * len(clients)
    finally:
        for c in clients:
            c.close()
    record(f"idle_{how}", rounds=rounds, backends_killed=killed,
           slowest_next_insert_s=round(slowest, 3))
    settle(db)
    p.assert_serves()


def _assert_lost(e: BaseException | None, what: str) -> None:
    assert isinstance(e, psycopg.Error), f"{what}: expected an error, got {e!r}"
    assert sqlstate_and_message(e) == LOST_TX, f"{what}: {sqlstate_and_message(e)}"


def _kill(db: Db, pid: int, how: str) -> None:
    if how == "terminate":
        db.terminate(pid)
    else:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _after_crash(db: Db, p: Proxy) -> None:
    """After a SIGKILLed backend: PostgreSQL ends every session and recovers; wait for it."""
    def accepting() -> bool:
        try:
            db.scalar("select 1")
            return True
        except psycopg.Error:
            return False
    wait_for(accepting, 60, "PostgreSQL to accept connections again after the crash", interval=0.1)


BIG_ROWS = "select g, repeat('x', 200) from generate_series(1, 3000000) g"


def _workload(kind: str, conn: psycopg.Connection, table: str, marker: str,
              progress: threading.Event, killed: threading.Event) -> Callable[[], Any]:
    """What the victim is busy with when its backend is killed (run in a thread)."""
    def statement():
        conn.execute(f"select pg_sleep(60) /* {marker} */")

    def copy_in():
        with conn.cursor() as cur, cur.copy(f"copy {table} (id, v) from stdin /* {marker} */") as cp:
            i = 0
            deadline = None
            while deadline is None or time.monotonic() < deadline:
                i += 1
                cp.write_row((2_000_000 + i, "copy"))
                if i % 500 == 0:
                    progress.set()
                    time.sleep(0.002)
                if deadline is None and killed.is_set():
                    deadline = time.monotonic() + 2  # go on writing a while after the kill

    def copy_out():
        with conn.cursor() as cur, cur.copy(f"copy ({BIG_ROWS}) to stdout /* {marker} */") as cp:
            for n, _ in enumerate(cp):
                if n % 200 == 0:
                    progress.set()
                    time.sleep(0.002)

    def result():
        with conn.cursor() as cur:
            for n, _ in enumerate(cur.stream(f"{BIG_ROWS} /* {marker} */")):
                if n % 200 == 0:
                    progress.set()
                    time.sleep(0.002)

    return {"statement": statement, "copy_in": copy_in, "copy_out": copy_out, "result": result}[kind]


@pytest.mark.parametrize("how", [pytest.param("terminate", marks=found_bug(1)), "sigkill"])
@pytest.mark.parametrize("kind", ["statement", "copy_in", "copy_out", "result"])
def test_backend_killed_while_busy(start_proxy, db, kind, how):
    """The victim's backend is killed mid-statement (`pg_sleep`), mid-COPY FROM STDIN, mid-COPY
    TO STDOUT, or while a large result streams to it: it gets 08006 (the proxy's message) within
    moments, keeps its connection, and its next transaction works; its lost transaction left
    nothing. With pg_terminate_backend a bystander busy throughout sees no error; a SIGKILL makes
    PostgreSQL end every session, but an idle client does not notice. Nothing committed is lost
    and no backend is left behind."""
    t = fresh_table(db, f"fault_{kind}_{how}")
    p = start_proxy()
    victim, idle = connect(p), connect(p)
    for i in range(1, 6):
        victim.execute(f"insert into {t} (id, v) values (%s, 'victim')", (i,))
    idle.execute("select 1")
    marker = f"victim_{kind}_{how}_{secrets.token_hex(4)}"
    bystander = Bystander(p, t, 1_000_000) if how == "terminate" else None
    progress, killed = threading.Event(), threading.Event()
    try:
        if bystander:
            bystander.__enter__()
        if kind == "statement":
            victim.execute("begin")
            victim.execute(f"insert into {t} (id, v) values (-1, 'uncommitted')")
        running = Running(_workload(kind, victim, t, marker, progress, killed))
        pid = wait_for(lambda: db.pid_running(marker) if progress.is_set() or kind == "statement" else None,
                       20, f"the victim's {kind} to be under way")
        t0 = time.monotonic()
        _kill(db, pid, how)
        killed.set()
        running.result(30)
        error_after = running.ended_at - t0
        error = running.error
        assert not victim.closed, f"the victim's connection was closed ({error!r})"
        _assert_lost(error, f"the client busy with {kind}")
        if how == "sigkill":
            _after_crash(db, p)
        # Its next transaction works, on the same connection.
        t1 = time.monotonic()
        with victim.transaction():
            victim.execute(f"insert into {t} (id, v) values (6, 'victim')")
        next_ok_after = time.monotonic() - t1
        assert idle.execute("select 2").fetchone()[0] == 2
    finally:
        if bystander:
            bystander.__exit__(None, None, None)
    if bystander:
        assert not bystander.errors, bystander.errors
    present = ids_in(db, t)
    assert set(range(1, 7)) <= present
    assert -1 not in present, "the lost transaction's row was committed"
    assert not any(i >= 2_000_000 for i in present), "rows of the lost COPY were committed"
    if bystander:
        assert set(bystander.committed) <= present
    victim.close()
    idle.close()
    settle(db)
    record(f"killed_{kind}_{how}", error_after_kill_s=round(error_after, 3),
           next_transaction_s=round(next_ok_after, 3),
           error=list(sqlstate_and_message(error)) if isinstance(error, psycopg.Error) else repr(error))


@found_bug(1)
def test_terminated_backend_gives_the_client_one_error(start_proxy, db):
    """On the wire: a backend ended by pg_terminate_backend during a Query is answered with one
    ErrorResponse, the proxy's 08006 (severity ERROR: the client's connection stays), and
    ReadyForQuery. (PostgreSQL's own FATAL for the backend is not the client's: relaying it
    as well gives two ErrorResponses for one Query, which drivers misread.)"""
    from pgwire import message, parse_error_fields
    p = start_proxy()
    marker = f"wire_{secrets.token_hex(4)}"
    with p.wire() as client:
        client.startup("app", p.passwords["app"])
        client.send(message(b"Q", f"select pg_sleep(60) /* {marker} */".encode() + b"\0"))
        pid = wait_for(lambda: db.pid_running(marker), 10, "pg_sleep to run")
        db.terminate(pid)
        answer = []
        while True:
            msg = client.recv(timeout=10)
            assert msg is not None, f"the proxy closed the client's connection after {answer}"
            if msg.type == b"E":
                f = parse_error_fields(msg.payload)
                answer.append(("E", f.get("S"), f.get("C"), f.get("M")))
            elif msg.type == b"Z":
                answer.append(("Z", msg.payload.decode()))
                break
            elif msg.type != b"N":
                answer.append((msg.type.decode(),))
        errors = [a for a in answer if a[0] == "E"]
        assert errors == [("E", "ERROR", *LOST_TX)], answer
        assert answer[-1] == ("Z", "I")
        assert client.query("select 1") == [("1",)]
    settle(db)


# -- PostgreSQL restarted, stopped ----------------------------------------------------------

def _drill_table(db: Db) -> None:
    db.query("drop table if exists drill; create table drill (id bigint primary key, writer text, "
             "at timestamptz default now()); alter table drill owner to app")


@found_bug(1, 5)
def test_fast_restart_under_steady_writers(start_proxy, db):
    """`pg_ctl restart -m fast` while 4 clients write as fast as they can: every acknowledged
    commit is there afterwards; the writes in flight get 08006 and nothing else; no writer
    reconnects (none is refused); writing resumes once the server is back; an idle client and a
    client idle in a transaction (its transaction lost: 08006 at its next statement) go on."""
    from replication import Writer
    _drill_table(db)
    fresh_table(db, "fault_restart_tx")
    p = start_proxy(health_check={"interval_ms": 250, "timeout_ms": 1000})
    stop = threading.Event()
    writers = [Writer(n, lambda: ("127.0.0.1", p.port), db.passwords["app"], stop) for n in range(1, 5)]
    idle, in_tx = connect(p), connect(p)
    idle.execute("select 1")
    in_tx.execute("begin")
    in_tx.execute("insert into fault_restart_tx (id, v) values (1, 'lost')")
    for w in writers:
        w.start()
    try:
        wait_for(lambda: all(len(w.acked) >= 20 for w in writers), 30, "every writer to commit")
        t0 = time.monotonic()
        db.restart("fast")
        t_back = time.monotonic()
        wait_for(lambda: all(any(a[2] > t_back for a in w.acked) for w in writers), 30,
                 "every writer to commit after the restart")
        time.sleep(0.5)  # a little more steady writing after the restart
    finally:
        stop.set()
        for w in writers:
            w.thread.join(30)
    assert not any(w.thread.is_alive() for w in writers), "a writer is stuck"
    acked = {a[0] for w in writers for a in w.acked}
    present = {r[0] for r in db.query("select id from drill")}
    errors = [e for w in writers for e in w.errors]
    first_after = min(a[2] for w in writers for a in w.acked if a[2] > t_back)
    # The longest time without any acknowledged commit, from the restart on.
    times = sorted([t0] + [a[2] for w in writers for a in w.acked if a[2] > t0])
    stall = max(b - a for a, b in zip(times, times[1:]))
    summary = dict(
        restart_s=round(t_back - t0, 3), longest_stall_s=round(stall, 3),
        first_commit_after_pg_ctl_returned_s=round(first_after - t_back, 3),
        acked=len(acked), lost_acked=len(acked - present), errors=len(errors),
        errors_by_kind=sorted({(e[1], e[2]) for e in errors}),
        reconnects=sum(w.reconnects for w in writers), refused=sum(len(w.refused) for w in writers))
    record("fast_restart", **summary)
    assert not acked - present, f"acknowledged commits lost: {sorted(acked - present)[:10]}"
    assert summary["reconnects"] == 0 and summary["refused"] == 0, summary
    assert idle.execute("select 3").fetchone()[0] == 3
    with pytest.raises(psycopg.Error) as exc:
        in_tx.execute("insert into fault_restart_tx (id, v) values (2, 'lost')")
    assert sqlstate_and_message(exc.value) == LOST_TX
    with in_tx.transaction():
        in_tx.execute("insert into fault_restart_tx (id, v) values (3, 'kept')")
    assert ids_in(db, "fault_restart_tx") == {3}
    for c in (idle, in_tx):
        c.close()
    settle(db)
    # Last, so that a failure here comes after everything else was checked.
    unexpected = sorted({(sqlstate, msg) for _, sqlstate, msg in errors} - {LOST_TX})
    assert not unexpected, f"writers got other errors than {LOST_TX[0]}: {unexpected}"


def test_database_stopped_longer_than_the_borrow_timeout(start_proxy, db):
    """PostgreSQL stopped (fast) for twice `connection_borrow_timeout` (3 s): a transaction
    started at once, and one from a client that logs in during the outage, each get an error
    within about the borrow timeout, not a hang, and keep their connections (which error it is:
    the next test); the proxy keeps running; once PostgreSQL is back (and the health check has
    seen it), existing clients (idle, and those that got the error) and new ones work, and no
    backend is left behind."""
    borrow_timeout = 3
    fresh_table(db, "fault_stopped")
    p = start_proxy(connection_borrow_timeout=borrow_timeout,
                    health_check={"interval_ms": 250, "timeout_ms": 1000})
    idle, waiter = connect(p), connect(p)
    idle.execute("insert into fault_stopped (id, v) values (1, 'before')")
    waiter.execute("select 1")
    db.stop("fast")
    t_stop = time.monotonic()
    try:
        outcomes = []
        for name in ("first", "logged_in_during_outage"):
            c = waiter if name == "first" else connect(p)
            t0 = time.monotonic()
            with pytest.raises(psycopg.Error) as exc:
                c.execute("insert into fault_stopped (id, v) values (2, 'during')")
            outcomes.append((name, round(t0 - t_stop, 3), round(time.monotonic() - t0, 3),
                             sqlstate_and_message(exc.value)))
            assert not c.closed
            if c is not waiter:
                c.close()
        assert p.alive()
        t_down = time.monotonic() - t_stop
        time.sleep(max(0.0, 2 * borrow_timeout - t_down))  # down for twice the borrow timeout
    finally:
        db.start()
    t_start = time.monotonic()
    wait_for(lambda: target_health(p) == "AVAILABLE", 20, "the health check to see PostgreSQL again")
    seen_after = time.monotonic() - t_start
    record("stopped", borrow_timeout_s=borrow_timeout,
           errors=[dict(client=n, asked_s_after_stop=a, error_after_s=d, error=list(e))
                   for n, a, d, e in outcomes],
           health_available_after_start_s=round(seen_after, 3))
    for name, _, after, _ in outcomes:
        assert after <= borrow_timeout + 2, f"{name}: error only after {after}s: {outcomes}"
    assert p.alive()
    # Everyone works again, on the connections they had.
    assert idle.execute("select count(*) from fault_stopped").fetchone()[0] == 1
    waiter.execute("insert into fault_stopped (id, v) values (3, 'after')")
    with connect(p) as new:
        new.execute("insert into fault_stopped (id, v) values (4, 'after')")
    assert ids_in(db, "fault_stopped") == {1, 3, 4}
    for c in (idle, waiter):
        c.close()
    settle(db)


@found_bug(8)
def test_waiting_out_a_database_outage_gives_the_borrow_timeout_error(start_proxy, db):
    """While PostgreSQL is down, a transaction waits for it up to `connection_borrow_timeout`
    (3 s) and then gets `53300 Timed-out waiting to acquire database connection` (README, "Errors
    clients may see from the proxy itself"; SPEC: "or no writer is available during failover").
    Two clients: one asks as PostgreSQL stops, one 1 s after the proxy has seen it down. Each
    should wait its 3 s and get 53300; the proxy ends the wait when the failover window (3 s from
    the loss) closes and answers `08006 could not connect to the database: ...` instead, after
    less than 3 s: always for the second client, for the first one depending on a race."""
    borrow_timeout = 3
    p = start_proxy(connection_borrow_timeout=borrow_timeout,
                    health_check={"interval_ms": 250, "timeout_ms": 1000})
    first, second = connect(p), connect(p)
    first.execute("select 1")
    second.execute("select 1")
    outcomes = {}
    try:
        db.stop("fast")
        t_stop = time.monotonic()
        r1 = Running(lambda: first.execute("select 1"), "first")
        wait_for(lambda: target_health(p) == "UNAVAILABLE", 10, "the proxy to see PostgreSQL down")
        time.sleep(1.0)
        t2 = time.monotonic()
        r2 = Running(lambda: second.execute("select 1"), "second")
        for name, r, t0 in (("first", r1, t_stop), ("second", r2, t2)):
            r.result(borrow_timeout + 10)
            e = r.error
            outcomes[name] = {"asked_s_after_stop": round(t0 - t_stop, 3),
                              "error_after_s": round(r.ended_at - t0, 3),
                              "error": list(sqlstate_and_message(e)) if isinstance(e, psycopg.Error) else repr(e)}
    finally:
        db.start()
    record("waited_out_outage", borrow_timeout_s=borrow_timeout, **outcomes)
    wait_for(lambda: target_health(p) == "AVAILABLE", 20, "the health check to see PostgreSQL again")
    for c in (first, second):
        assert c.execute("select 1").fetchone()[0] == 1
        c.close()
    for name, o in outcomes.items():
        assert o["error"] == list(BORROW_TIMEOUT), f"{name}: {outcomes}"
        assert borrow_timeout - 0.5 <= o["error_after_s"] <= borrow_timeout + 2, f"{name}: {outcomes}"
    settle(db)


# -- the network path blackholed --------------------------------------------------------------

@found_bug(2, 3)
def test_blackholed_database_path(start_proxy, db):
    """The path between the proxy and PostgreSQL stops answering, without closing anything (a
    forwarder that stops forwarding). With short health checks (every 250 ms, 1 s timeout) and
    a 3 s borrow timeout: a client mid-statement, a client in a transaction and a new client each
    get a clear error within a few seconds, not a hang; the target shows UNAVAILABLE; idle clients
    (no transaction) keep their connections and work again once the path is back; so do the
    clients that got an error; nothing committed is lost, nothing uncommitted is kept, and no
    backend is left behind."""
    interval_ms, timeout_ms, borrow_timeout = 250, 1000, 3
    bound = (interval_ms + timeout_ms) / 1000 + borrow_timeout + 2  # plus slack for a loaded machine
    t = fresh_table(db, "fault_blackhole")
    with Forwarder(db.port) as fwd:
        p = start_proxy(db_port=fwd.port, connection_borrow_timeout=borrow_timeout,
                        health_check={"interval_ms": interval_ms, "timeout_ms": timeout_ms})
        idle = [connect(p) for _ in range(3)]
        for n, c in enumerate(idle):
            c.execute(f"insert into {t} (id, v) values (%s, 'committed')", (n + 1,))
        in_tx, busy = connect(p), connect(p)
        in_tx.execute("begin")
        in_tx.execute(f"insert into {t} (id, v) values (-1, 'uncommitted')")
        marker = f"blackhole_{secrets.token_hex(4)}"
        busy_run = Running(lambda: busy.execute(f"select pg_sleep(0.5) /* {marker} */"), "busy")
        wait_for(lambda: db.pid_running(marker), 10, "the busy client's statement to run")
        assert target_health(p) == "AVAILABLE"

        fwd.blackhole()
        t0 = time.monotonic()
        tx_run = Running(lambda: in_tx.execute(f"insert into {t} (id, v) values (-2, 'uncommitted')"),
                         "in_tx")

        def new_client():
            with connect(p) as c:
                return c.execute("select 1").fetchone()
        new_run = Running(new_client, "new")
        runs = {"mid_statement": busy_run, "in_transaction": tx_run, "new_client": new_run}

        def outcome(r: Running) -> dict:
            if r.ended_at is None:
                return {"blocked": True}
            e = r.error
            return {"after_s": round(r.ended_at - t0, 3),
                    "error": list(sqlstate_and_message(e)) if isinstance(e, psycopg.Error) else repr(e)}

        health_down = None
        deadline = t0 + bound + 10  # how long we watch before healing the path in any case
        while time.monotonic() < deadline:
            if health_down is None and target_health(p) == "UNAVAILABLE":
                health_down = time.monotonic() - t0
            if health_down is not None and all(r.ended_at is not None for r in runs.values()):
                break
            time.sleep(0.05)
        outcomes = {name: outcome(r) for name, r in runs.items()}
        fwd.heal()
        t_heal = time.monotonic()
        for r in runs.values():
            r.result(60)  # once the path is back, nothing may stay blocked
        wait_for(lambda: target_health(p) == "AVAILABLE", 20, "the target to be AVAILABLE again")
        available_after_heal = time.monotonic() - t_heal
        record("blackhole", bound_s=bound, health_unavailable_after_s=health_down and round(health_down, 3),
               available_after_heal_s=round(available_after_heal, 3), **outcomes)

        assert p.alive()
        assert health_down is not None and health_down <= bound, (health_down, outcomes)
        for name, o in outcomes.items():
            assert not o.get("blocked"), f"{name}: still blocked {bound + 10:.1f}s into the blackhole: {outcomes}"
            assert o["after_s"] <= bound, f"{name}: error only after {o['after_s']}s: {outcomes}"
            assert "error" in o and o["error"] != "None", f"{name}: no error: {outcomes}"
        # Idle clients kept their connections and work; so do the others, on theirs.
        for c in idle:
            assert c.execute("select 1").fetchone()[0] == 1
        for c in (in_tx, busy):
            assert not c.closed
            with c.transaction():
                c.execute("select 1")
        with connect(p) as c:
            c.execute(f"insert into {t} (id, v) values (10, 'after')")
        present = ids_in(db, t)
        assert {1, 2, 3, 10} <= present
        assert not present & {-1, -2}, present
        for c in (*idle, in_tx, busy):
            c.close()
        settle(db)


@found_bug(2)
def test_health_check_goes_on_after_a_check_times_out(start_proxy, db):
    """A health check that times out (the path blackholed for twice `timeout_ms`) must not end
    the checking: once the path is back, a PostgreSQL that then stops is seen as UNAVAILABLE
    within an interval and a timeout or so, as it is without the blackhole first (checked at the
    start of this test), and AVAILABLE again once it is back."""
    interval_ms, timeout_ms = 250, 1000
    bound = (interval_ms + timeout_ms) / 1000 + 2

    def seconds_until(state: str, limit: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if target_health(p) == state:
                return round(time.monotonic() - t0, 3)
            time.sleep(0.05)
        return None

    with Forwarder(db.port) as fwd:
        p = start_proxy(db_port=fwd.port, health_check={"interval_ms": interval_ms, "timeout_ms": timeout_ms})
        # Without a blackhole first: a stop is seen.
        db.stop("fast")
        try:
            control = seconds_until("UNAVAILABLE", bound + 5)
        finally:
            db.start()
        assert control is not None and control <= bound, f"stop not seen without a blackhole: {control}"
        assert seconds_until("AVAILABLE", 20) is not None

        fwd.blackhole()
        time.sleep(2 * timeout_ms / 1000)
        during = target_health(p)
        fwd.heal()
        assert seconds_until("AVAILABLE", 20) is not None
        db.stop("fast")
        try:
            after = seconds_until("UNAVAILABLE", bound + 10)
        finally:
            db.start()
        back = seconds_until("AVAILABLE", 20)
        record("health_check_after_timeout", stop_seen_without_blackhole_s=control,
               state_during_blackhole=during, stop_seen_after_blackhole_s=after, available_again_s=back)
        assert after is not None, ("after one timed-out health check the target stays AVAILABLE "
                                   f"while PostgreSQL is stopped ({bound + 10:.1f}s)")
        assert after <= bound
        assert back is not None
        p.assert_serves()
    settle(db)


@found_bug(4)
def test_shutdown_completes_while_the_database_path_is_blackholed(start_proxy, db):
    """SIGTERM while the path to the database is blackholed, with backend logins hanging in it
    (new clients whose borrow opened a backend): the proxy still exits, within `drain_timeout`
    (5 s) and a little, as the README says ("then closes everything and exits 0")."""
    drain_timeout = 5
    with Forwarder(db.port) as fwd:
        p = start_proxy(db_port=fwd.port, connection_borrow_timeout=2, drain_timeout=drain_timeout,
                        health_check={"interval_ms": 250, "timeout_ms": 1000})
        with connect(p) as c:
            c.execute("select 1")
        fwd.blackhole()
        # Clients whose first transaction opens a backend (a login into the blackhole), plus one
        # that leases the idle pooled backend (its query goes into the blackhole).
        clients = [connect(p) for _ in range(3)]
        runs = [Running(lambda c=c: c.execute("select 1")) for c in clients]
        time.sleep(2.5)  # past the borrow timeout: the logins are still hanging
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        try:
            code = p.wait(drain_timeout + 10)
            exited_after = round(time.monotonic() - t0, 3)
        except subprocess.TimeoutExpired:
            code, exited_after = None, None
        finally:
            fwd.heal()
        p.expect_exit = True
        record("shutdown_during_blackhole", drain_timeout_s=drain_timeout, exited_after_s=exited_after,
               exit_code=code)
        for r in runs:
            r.result(30)
        for c in clients:
            c.close()
        assert exited_after is not None, (f"the proxy did not exit within {drain_timeout + 10}s of "
                                          "SIGTERM while the database path was blackholed")
        assert code == 0 and exited_after <= drain_timeout + 3, (code, exited_after)


@found_bug(5)
def test_transaction_begun_while_the_database_shuts_down_waits_for_it(start_proxy, db):
    """A restart seen from a transaction that begins during it. PostgreSQL is shutting down
    (`pg_ctl stop -m smart`, held in that state by sessions still open) and refuses new logins
    with 57P03 `the database system is shutting down`; the pool's idle backends have ended, the
    health check's session still answers. A new transaction needs a new backend: it should wait
    for the writer, as in a failover ("New transactions wait, up to connection_borrow_timeout,
    for a writer"; the health check itself counts 57P03 as the target being down), and run once
    PostgreSQL is back, instead of failing at once with the login error of the backend the proxy
    tried to open. (The fast-restart test hits the same window by chance.)"""
    borrow_timeout = 10
    fresh_table(db, "fault_shutting_down")
    p = start_proxy(connection_borrow_timeout=borrow_timeout,
                    health_check={"interval_ms": 250, "timeout_ms": 1000})
    client = connect(p)
    client.execute("insert into fault_shutting_down (id, v) values (1, 'before')")
    lingering = db.super_connect("postgres")
    try:
        run(as_pg([db.pg_ctl, "-D", str(db.datadir), "-m", "smart", "-W", "stop"]), env=db.env)
        def refusing() -> bool:
            try:
                db.super_connect("postgres").close()
                return False
            except psycopg.OperationalError as e:
                return "the database system is shutting down" in str(e)
        wait_for(refusing, 10, "PostgreSQL to refuse logins: shutting down")
        # The pool's idle backends end (as a restart ends them): the next transaction needs a
        # new backend, which PostgreSQL refuses for now. The health check's session goes on
        # answering, as it would for a moment in a fast restart.
        lingering.execute("select pg_terminate_backend(pid, 10000) from pg_stat_activity "
                          "where usename = 'app' and application_name <> 'concierge_health_check'")
        t0 = time.monotonic()
        insert = Running(lambda: client.execute(
            "insert into fault_shutting_down (id, v) values (2, 'during the restart')"))
        time.sleep(1.0)
        still_waiting = insert.ended_at is None
    finally:
        # The shutdown completes once the last sessions are gone.
        lingering.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                          "where usename = 'app'")
        lingering.close()
    wait_for(lambda: not (db.datadir / "postmaster.pid").exists(), 30, "PostgreSQL to stop")
    db.start()
    insert.result(borrow_timeout + 5)
    e = insert.error
    record("begun_while_shutting_down", waiting_after_1s=still_waiting,
           outcome_after_s=round(insert.ended_at - t0, 3),
           error=list(sqlstate_and_message(e)) if isinstance(e, psycopg.Error) else repr(e))
    assert e is None, f"the transaction failed instead of waiting for the database: {sqlstate_and_message(e)}"
    assert ids_in(db, "fault_shutting_down") == {1, 2}
    client.close()
    settle(db)


# -- a slow path: a cancel right after the statement ---------------------------------------------

def _cancel_soon_after(conn: psycopg.Connection, after: float) -> tuple[str, float]:
    """Runs `select pg_sleep(3)` on `conn` and cancels it `after` seconds after libpq sent it:
    (outcome, seconds the statement took)."""
    done: list[tuple[str, float]] = []

    def sleep() -> None:
        t0 = time.monotonic()
        try:
            conn.execute("select pg_sleep(3)")
            done.append(("completed", time.monotonic() - t0))
        except psycopg.Error as e:
            done.append((e.sqlstate or repr(e), time.monotonic() - t0))
    t = threading.Thread(target=sleep, daemon=True)
    t.start()
    wait_for(lambda: conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE or done,
             10, "the statement to be sent", interval=0.001)
    time.sleep(after)
    conn.cancel_safe(timeout=10)
    t.join(15)
    assert done, "pg_sleep(3) still running 15 s after the cancel"
    return done[0][0], round(done[0][1], 3)


@pytest.mark.parametrize("parameters", ["same", pytest.param("different", marks=found_bug(6))])
def test_cancel_right_after_a_statement_cancels_it_on_a_slow_path(start_proxy, db, parameters):
    """Each hop between the proxy and PostgreSQL takes 50 ms (a distant database). A client
    cancels its `pg_sleep(3)` 20 ms after sending it: the statement is cancelled (57014), as it
    is when the client talks to PostgreSQL through the same slow path (checked first). With
    one backend for two clients whose application_name differs, the proxy must first bring the
    backend's session parameters to the client's: the cancel must not be lost in that round
    trip (with the same application_name there is none)."""
    with Forwarder(db.port, delay=0.05) as to_proxy, Forwarder(db.port, delay=0.05) as direct:
        # Directly through the slow path: PostgreSQL gets the cancel after the statement.
        import dataclasses
        via = dataclasses.replace(db, port=direct.port)
        with psycopg.connect(via.conninfo(), autocommit=True) as conn:
            control = _cancel_soon_after(conn, 0.02)
        assert control[0] == "57014", f"directly through the slow path: {control}"

        p = start_proxy(db_port=to_proxy.port, max_connections_percent=1, max_idle_connections_percent=1)
        other_name = "other" if parameters == "different" else "client"
        outcomes = []
        for _ in range(3):
            with connect(p, application_name="client") as client, \
                    connect(p, application_name=other_name) as other:
                other.execute("select 1")  # the one backend now has the other's parameters
                outcomes.append(_cancel_soon_after(client, 0.02))
                assert client.execute("select 1").fetchone()[0] == 1
        record(f"cancel_slow_path_{parameters}", direct=list(control), proxy=[list(o) for o in outcomes])
        assert all(o[0] == "57014" for o in outcomes), \
            f"cancel lost (the statement ran to its end): {outcomes}; directly: {control}"
    settle(db, cap=1)


@found_bug(7)
def test_a_cancel_never_cancels_another_clients_statement(start_proxy, db):
    """Two clients share one backend over the slow path (50 ms per hop; a new connection's first
    bytes 150 ms, as its handshake costs a round trip). Client C runs `pg_sleep(0.1)` and
    cancels it while it is still running as far as the proxy can tell; client V's
    `pg_sleep(1)` waits for the backend and runs on it next. V never cancelled anything: its
    statement must not be cancelled, however late C's cancel reaches the database. (In the soak,
    a pgbench client, which never cancels, once got `canceling statement due to user request`.)"""
    with Forwarder(db.port, delay=0.05) as path:
        p = start_proxy(db_port=path.port, max_connections_percent=1, max_idle_connections_percent=1)
        outcomes = []
        for after in (0.10, 0.12, 0.14):
            with connect(p) as c, connect(p) as v:
                c.execute("select 1")
                v.execute("select 1")
                c_run = Running(lambda: c.execute("select pg_sleep(0.1)"), "c")
                wait_for(lambda: c.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE,
                         10, "C's statement to be sent", interval=0.001)
                time.sleep(0.01)
                v_run = Running(lambda: v.execute("select pg_sleep(1)"), "v")  # queued behind C
                time.sleep(after - 0.01)
                c.cancel_safe(timeout=10)
                c_run.result(15)
                v_run.result(15)
                e = v_run.error
                outcomes.append({"cancel_after_s": after,
                                 "c": "ok" if c_run.error is None else sqlstate_and_message(c_run.error)[0],
                                 "v": "ok" if e is None else sqlstate_and_message(e)[0]
                                 if isinstance(e, psycopg.Error) else repr(e)})
                assert v.execute("select 1").fetchone()[0] == 1
        record("cancel_reaches_another_client", outcomes=outcomes)
        assert all(o["v"] == "ok" for o in outcomes), \
            f"another client's cancel cancelled V's statement: {outcomes}"
    settle(db, cap=1)


def test_a_health_check_whose_own_connection_was_ended_does_not_mark_the_target_down(start_proxy, db):
    """The health check keeps its connection between checks. When the database ends that
    connection (pg_terminate_backend of the role's sessions, as a password rotation does), the
    next check failed on it and reported the target UNAVAILABLE for a whole interval, though the
    database was up (test_secrets' rotation test caught it in CI). A fresh connection decides."""
    p = start_proxy(health_check={"interval_ms": 200, "timeout_ms": 2000})
    wait_for(lambda: target_health(p) == "AVAILABLE", 10, "the target to be AVAILABLE")
    seen = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        db.query("select pg_terminate_backend(pid) from pg_stat_activity "
                 "where application_name = 'concierge_health_check'")
        for _ in range(5):
            seen.add(target_health(p))
            time.sleep(0.05)
    assert seen == {"AVAILABLE"}, seen
