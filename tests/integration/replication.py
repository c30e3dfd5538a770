"""A PostgreSQL primary with a streaming standby, and the failover drill's client loop.

`make_pair()` builds, on loopback, separate from the session's `pg` cluster:

- a fresh primary (scripts/pg.sh start) with a replication role, user `app` (SCRAM) owning
  database `app` and its table `drill(id bigint primary key, writer text, at timestamptz)`;
- a standby made from it with `pg_basebackup -R` (run as the PostgreSQL OS user when root),
  started on its own port with pg_ctl, streaming from the primary;
- then synchronous replication on the primary (synchronous_standby_names names the standby's
  application_name, synchronous_commit = on): a commit is acknowledged only once the standby
  has flushed its WAL, so after a failover to that standby no acknowledged row may be missing.
  (With pg.sh's default synchronous_commit = off, or with asynchronous replication, an
  acknowledged commit could legitimately be lost at failover and the drill's comparison of
  acknowledged and present rows would prove nothing.)

`run_drill()` runs the drill's timeline against any endpoint (the proxy, or the primary then
the promoted standby directly) and returns what it measured.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg

from helpers import PG_SH, PgCluster, clean_env, conninfo, free_port, pg_bindir, run, wait_for

PG_OS_USER = "concierge-pg"  # scripts/pg.sh runs the server as this user when we are root
REPL_ROLE = "drill_repl"
STANDBY_NAME = "drill_standby"  # the standby's application_name (synchronous_standby_names)


def as_pg(cmd: list[str]) -> list[str]:
    """`cmd` run as the PostgreSQL OS user when we are root (as scripts/pg.sh's as_pg does)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return cmd


def _own(path: Path) -> None:
    """Give `path` to the PostgreSQL OS user (when root)."""
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


@dataclass
class ReplicationPair:
    primary: PgCluster
    standby: PgCluster
    bindir: Path
    superuser_password: str
    env: dict[str, str]
    app_password: str
    repl_password: str = ""
    extra_standbys: list = field(default_factory=list)

    # -- the failover's two steps --------------------------------------------------------

    def kill_primary(self) -> None:
        """`pg_ctl -m immediate stop`: the primary dies without a shutdown checkpoint."""
        run(as_pg([str(self.bindir / "pg_ctl"), "-D", str(self.primary.datadir), "-m", "immediate",
                   "-w", "-t", "30", "stop"]), timeout=40, env=self.env)

    def promote_standby(self) -> None:
        """`pg_ctl promote` (waits until the standby is out of recovery)."""
        run(as_pg([str(self.bindir / "pg_ctl"), "-D", str(self.standby.datadir), "-w", "-t", "30",
                   "promote"]), timeout=40, env=self.env)

    def replication_state(self) -> list[tuple]:
        return self.primary.query("select application_name, state, sync_state "
                                  "from pg_stat_replication", dbname="postgres")

    def add_standby(self) -> PgCluster:
        """Another (asynchronous) streaming standby of the primary, e.g. a second reader."""
        import dataclasses
        port = _free_ports(1)[0]
        root = Path(tempfile.mkdtemp(prefix="concierge-drill-standby-", dir="/tmp"))
        node = PgCluster(host="127.0.0.1", port=port, bindir=self.bindir, passwords=self.standby.passwords,
                         root=root, superuser_password=self.superuser_password)
        self.extra_standbys.append(node)
        _start_standby(dataclasses.replace(self, standby=node), self.repl_password)
        return node

    def stop(self) -> None:
        for node in self.extra_standbys:
            run(["bash", str(PG_SH), "stop", str(node.datadir)], check=False, env=self.env, timeout=90)
            shutil.rmtree(node.root, ignore_errors=True)
        for node in (self.standby, self.primary):
            run(["bash", str(PG_SH), "stop", str(node.datadir)], check=False, env=self.env, timeout=90)
        for node in (self.standby, self.primary):
            shutil.rmtree(node.root, ignore_errors=True)


def _standby_conf(root: Path, port: int) -> str:
    """The standby's concierge.conf: pg.sh's defaults with the standby's own port and socket.
    No synchronous_standby_names: once promoted it has no standby to wait for."""
    return "\n".join([
        "# written by tests/integration/replication.py for the failover drill's standby",
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{root}/socket'",
        "unix_socket_permissions = 0700",
        "max_connections = 100",
        "password_encryption = 'scram-sha-256'",
        "fsync = off",
        "full_page_writes = on",
        "hot_standby = on",
        "",
    ])


def make_pair(app_password: str) -> ReplicationPair:
    """A fresh primary and a streaming, synchronous standby (see the module docstring)."""
    bindir = pg_bindir()
    superuser_password = secrets.token_hex(16)
    repl_password = secrets.token_hex(12)
    env = clean_env(CONCIERGE_PG_PASSWORD=superuser_password)
    primary_port, standby_port = _free_ports(2)
    # Two cluster directories (pg.sh: DATADIR's parent is the cluster's own directory).
    p_root = Path(tempfile.mkdtemp(prefix="concierge-drill-primary-", dir="/tmp"))
    s_root = Path(tempfile.mkdtemp(prefix="concierge-drill-standby-", dir="/tmp"))
    passwords = {"app": app_password}
    primary = PgCluster(host="127.0.0.1", port=primary_port, bindir=bindir, passwords=passwords,
                        root=p_root, superuser_password=superuser_password)
    standby = PgCluster(host="127.0.0.1", port=standby_port, bindir=bindir, passwords=passwords,
                        root=s_root, superuser_password=superuser_password)
    pair = ReplicationPair(primary, standby, bindir, superuser_password, env, app_password, repl_password)
    try:
        _start_primary(pair, repl_password, app_password)
        _start_standby(pair, repl_password)
        _make_synchronous(pair)
    except BaseException:
        pair.stop()
        raise
    return pair


def _start_primary(pair: ReplicationPair, repl_password: str, app_password: str) -> None:
    p = pair.primary
    # wal_level = replica and max_wal_senders = 10 are PostgreSQL's defaults.
    run(["bash", str(PG_SH), "start", str(p.datadir), str(p.port), "max_connections=100",
         "full_page_writes=on"], env=pair.env, timeout=180)
    hba = p.datadir / "pg_hba.conf"
    hba.write_text(f"host replication {REPL_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with p.super_connect("postgres") as conn:
        conn.execute("select pg_reload_conf()")
        conn.execute(f"create role {REPL_ROLE} replication login password '{repl_password}'")
        conn.execute(f"create role app login password '{app_password}'")
        conn.execute("create database app owner app")
    p.query("create table drill (id bigint primary key, writer text, at timestamptz default now());"
            "alter table drill owner to app")


def _start_standby(pair: ReplicationPair, repl_password: str) -> None:
    p, s = pair.primary, pair.standby
    # The standby's cluster directory, as pg.sh lays one out.
    _own(s.root)
    s.root.chmod(0o755)
    (s.root / "socket").mkdir(mode=0o700)
    _own(s.root / "socket")
    (s.root / "port").write_text(f"{s.port}\n")
    pwfile = s.root / "superuser.password"
    pwfile.write_text(pair.superuser_password)
    pwfile.chmod(0o600)
    # -R writes standby.signal and primary_conninfo (with this connection's parameters, the
    # application_name included); -X stream (the default) streams the WAL written meanwhile;
    # -c fast: start at once instead of waiting for a spread checkpoint.
    source = conninfo(host=p.host, port=p.port, user=REPL_ROLE, application_name=STANDBY_NAME,
                      sslmode="disable", connect_timeout=10)
    run(as_pg([str(pair.bindir / "pg_basebackup"), "-R", "-X", "stream", "-c", "fast",
               "-D", str(s.datadir), "-d", source]),
        env=clean_env(PGPASSWORD=repl_password), timeout=120)
    auto_conf = (s.datadir / "postgresql.auto.conf").read_text()
    assert STANDBY_NAME in auto_conf, f"no application_name in primary_conninfo:\n{auto_conf}"
    assert (s.datadir / "standby.signal").exists()
    # The copied concierge.conf has the primary's port: rewrite it (pg.sh `start` would also
    # reset the superuser's password, which a read-only standby refuses, so pg_ctl directly).
    conf = s.datadir / "concierge.conf"
    conf.write_text(_standby_conf(s.root, s.port))
    _own(conf)
    run(as_pg([str(pair.bindir / "pg_ctl"), "-D", str(s.datadir), "-l", str(s.root / "postgres.log"),
               "-w", "-t", "60", "start"]), env=pair.env, timeout=90)
    assert s.scalar("select pg_is_in_recovery()", dbname="postgres") is True
    wait_for(lambda: any(name == STANDBY_NAME and state == "streaming"
                         for name, state, _ in pair.replication_state()),
             30, "the standby to stream from the primary")


def _make_synchronous(pair: ReplicationPair) -> None:
    """Synchronous replication from now on (postgresql.auto.conf wins over pg.sh's settings;
    the standby, already copied, does not get it)."""
    p, s = pair.primary, pair.standby
    with p.super_connect("postgres") as conn:
        conn.execute(f"alter system set synchronous_standby_names = '{STANDBY_NAME}'")
        conn.execute("alter system set synchronous_commit = 'on'")
        conn.execute("select pg_reload_conf()")
    wait_for(lambda: (STANDBY_NAME, "streaming", "sync") in pair.replication_state(), 30,
             "the standby to be the synchronous standby")
    with p.connect() as conn:  # as app, as the drill's clients
        assert conn.execute("show synchronous_commit").fetchone()[0] == "on"
        # A committed row is on the standby once the commit returns (remote_apply is not
        # asked for, so allow the standby a moment to replay it).
        conn.execute("insert into drill (id, writer) values (-1, 'setup')")
    wait_for(lambda: s.query("select writer from drill where id = -1") == [("setup",)], 10,
             "a row written on the primary to reach the standby")
    with p.connect() as conn:
        conn.execute("delete from drill where id = -1")
    wait_for(lambda: s.scalar("select count(*) from drill") == 0, 10, "the delete to replicate")


# -- the drill -------------------------------------------------------------------------------

Endpoint = Callable[[], tuple[str, int]]  # where a client (re)connects right now


@dataclass
class Writer:
    """A client inserting numbered rows, one per (autocommit) transaction, as fast as it can.

    After an error it keeps its connection if the connection is still usable (a proxy keeps
    client connections open across a failover); a closed connection is replaced (a reconnect),
    and a failed connection attempt is a refusal."""

    number: int
    endpoint: Endpoint
    password: str
    stop: threading.Event
    acked: list[tuple[int, float, float]] = field(default_factory=list)  # (id, sent, acked)
    attempted: list[int] = field(default_factory=list)
    errors: list[tuple[float, str | None, str]] = field(default_factory=list)  # (t, sqlstate, msg)
    refused: list[tuple[float, str]] = field(default_factory=list)
    connects: int = 0
    reconnects: int = 0
    conn: psycopg.Connection | None = None
    thread: threading.Thread | None = None

    def connect(self) -> psycopg.Connection:
        host, port = self.endpoint()
        # prepare_threshold=None: no named prepared statements, which a proxy may pin clients for.
        return psycopg.connect(conninfo(host=host, port=port, user="app", dbname="app",
                                        password=self.password, sslmode="disable",
                                        connect_timeout=10, application_name=f"drill{self.number}"),
                               autocommit=True, prepare_threshold=None)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if self.conn is None or self.conn.closed:
                try:
                    conn = self.connect()
                except psycopg.Error as e:
                    self.refused.append((time.monotonic(), str(e).strip()[:300]))
                    self.stop.wait(0.05)
                    continue
                if self.connects:
                    self.reconnects += 1
                self.connects += 1
                self.conn = conn
            i += 1
            row_id = self.number * 1_000_000 + i
            self.attempted.append(row_id)
            sent = time.monotonic()
            try:
                self.conn.execute("insert into drill (id, writer) values (%s, %s)",
                                  (row_id, f"w{self.number}"))
                self.acked.append((row_id, sent, time.monotonic()))
            except psycopg.Error as e:
                self.errors.append((time.monotonic(), e.sqlstate, str(e).strip()[:300]))
                self.stop.wait(0.01)
        if self.conn is not None:
            self.conn.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"writer{self.number}", daemon=True)
        self.thread.start()


@dataclass
class Connector:
    """A client that opens (and closes) a new connection every `interval` seconds: counts
    refusals (a failed connection attempt) while the failover happens."""

    endpoint: Endpoint
    password: str
    stop: threading.Event
    interval: float = 0.2
    ok: int = 0
    refused: list[tuple[float, str]] = field(default_factory=list)
    slowest: float = 0.0
    thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            host, port = self.endpoint()
            t0 = time.monotonic()
            try:
                psycopg.connect(conninfo(host=host, port=port, user="app", dbname="app",
                                         password=self.password, sslmode="disable",
                                         connect_timeout=10, application_name="drill_connector"),
                                autocommit=True).close()
                self.ok += 1
                self.slowest = max(self.slowest, time.monotonic() - t0)
            except psycopg.Error as e:
                self.refused.append((time.monotonic(), str(e).strip()[:300]))
            self.stop.wait(self.interval)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="connector", daemon=True)
        self.thread.start()


@dataclass
class PromotionWatcher:
    """Polls pg_is_in_recovery() on the standby every few ms; `promoted_at` is the first time
    it answered false (pg_ctl promote -w itself only polls every 100 ms)."""

    standby: PgCluster
    on_promoted: Callable[[], None] | None = None
    promoted_at: float | None = None
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            with self.standby.super_connect("postgres") as conn:
                while not self._stop.is_set():
                    if conn.execute("select pg_is_in_recovery()").fetchone()[0] is False:
                        self.promoted_at = time.monotonic()
                        if self.on_promoted:
                            self.on_promoted()
                        return
                    time.sleep(0.005)
        except BaseException as e:
            self.error = e

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="promotion-watcher", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> float | None:
        assert self._thread is not None
        self._thread.join(timeout)
        self._stop.set()
        return self.promoted_at


@dataclass
class DrillResult:
    mode: str
    summary: dict[str, Any]
    acked: set[int]
    attempted: set[int]
    present: set[int]
    idle_results: list[tuple[bool, str]]  # per idle client: (its next query succeeded, detail)
    idle_same_objects: bool

    @property
    def lost(self) -> set[int]:
        return self.acked - self.present


def run_drill(pair: ReplicationPair, *, mode: str, endpoint: Endpoint,
              on_promoted: Callable[[], None] | None = None, writers: int = 4, idle: int = 5,
              before_kill: float = 2.0, kill_to_promote: float = 1.0, after_promotion: float = 3.0,
              app_password: str) -> DrillResult:
    """The drill's timeline: writers and idle clients on `endpoint`; after `before_kill` s the
    primary is killed (-m immediate), `kill_to_promote` s later the standby is promoted, and
    writing goes on until `after_promotion` s after the promotion. `on_promoted` is called as
    soon as the standby is out of recovery (e.g. to point direct clients at it)."""
    stop = threading.Event()

    def connect_idle() -> psycopg.Connection:
        host, port = endpoint()
        conn = psycopg.connect(conninfo(host=host, port=port, user="app", dbname="app",
                                        password=app_password, sslmode="disable",
                                        connect_timeout=10, application_name="drill_idle"),
                               autocommit=True, prepare_threshold=None)
        assert conn.execute("select 1").fetchone()[0] == 1
        return conn

    idle_conns = [connect_idle() for _ in range(idle)]
    idle_ids = [id(c) for c in idle_conns]
    ws = [Writer(n, endpoint, app_password, stop) for n in range(1, writers + 1)]
    connector = Connector(endpoint, app_password, stop)
    watcher = PromotionWatcher(pair.standby, on_promoted)
    watcher.start()
    t_start = time.monotonic()
    for w in ws:
        w.start()
    connector.start()
    try:
        time.sleep(before_kill)
        acked_before = sum(len(w.acked) for w in ws)
        assert acked_before > 0, (f"[{mode}] no write succeeded in the first {before_kill}s: "
                                  f"{[w.errors[:3] + w.refused[:3] for w in ws]}")

        t_kill = time.monotonic()
        pair.kill_primary()
        t_killed = time.monotonic()

        time.sleep(max(0.0, t_kill + kill_to_promote - time.monotonic()))
        t_promote_start = time.monotonic()
        pair.promote_standby()
        t_promote_returned = time.monotonic()
        watched = watcher.wait(10)
        assert watcher.error is None, f"promotion watcher failed: {watcher.error!r}"
        assert watched is not None, "pg_is_in_recovery() still true after pg_ctl promote returned"
        t_promoted = min(watched, t_promote_returned)

        time.sleep(max(0.0, t_promoted + after_promotion - time.monotonic()))
    finally:
        stop.set()
        for t in [w.thread for w in ws] + [connector.thread]:
            assert t is not None
            t.join(30)
        watcher._stop.set()
    stuck = [t.name for t in [w.thread for w in ws] + [connector.thread] if t and t.is_alive()]
    assert not stuck, f"[{mode}] clients still blocked 30 s after the drill ended: {stuck}"
    t_end = time.monotonic()

    # The idle clients' next query, on the connections they opened before the failover.
    idle_results: list[tuple[bool, str]] = []
    for conn in idle_conns:
        try:
            value = conn.execute("select 1").fetchone()[0]
            idle_results.append((value == 1, f"select 1 -> {value}"))
        except psycopg.Error as e:
            idle_results.append((False, f"{e.sqlstate}: {str(e).strip()[:200]}"))
    idle_same = [id(c) for c in idle_conns] == idle_ids and not any(c.closed for c in idle_conns
                                                                     if c is not None)
    for conn in idle_conns:
        conn.close()

    # What the promoted standby (the new primary) has.
    present = {r[0] for r in pair.standby.query("select id from drill")}
    acked_all = [a for w in ws for a in w.acked]
    acked = {a[0] for a in acked_all}
    attempted = {i for w in ws for i in w.attempted}
    after_kill = sorted(a for a in acked_all if a[2] > t_killed)
    # The first write acknowledged after the promotion began can only be the new primary's
    # (the old one is dead); acknowledgements between the kill and the promotion are old
    # writes whose answer was read late, if any.
    after_promotion_start = [a for a in acked_all if a[2] > t_promote_start]
    t_first_write = min((a[2] for a in after_promotion_start), default=None)
    first_sent = min((a for a in after_promotion_start), key=lambda a: a[2], default=None)

    errors = [e for w in ws for e in w.errors]
    by_state: dict[str, int] = {}
    for _, state, _ in errors:
        by_state[state or "none"] = by_state.get(state or "none", 0) + 1
    first_error_of = {}
    for t, state, msg in sorted(errors):
        first_error_of.setdefault(state or "none", f"{msg} (at kill{t - t_kill:+.3f}s)")
    refused = [r for w in ws for r in w.refused] + connector.refused
    rel = lambda t: None if t is None else round(t - t_kill, 3)  # noqa: E731
    summary: dict[str, Any] = {
        "mode": mode,
        "writers": writers,
        "idle_clients": idle,
        "timeline_s_from_kill": {
            "start": rel(t_start),
            "kill_returned": rel(t_killed),
            "promote_start": rel(t_promote_start),
            "promoted": rel(t_promoted),
            "promote_returned": rel(t_promote_returned),
            "first_write_after_kill": rel(t_first_write),
            "end": rel(t_end),
        },
        "kill_to_first_write_s": rel(t_first_write),
        "kill_to_promoted_s": round(t_promoted - t_kill, 3),
        "promotion_duration_s": round(t_promoted - t_promote_start, 3),
        # The stall the failover path itself adds: kill -> first write, minus kill -> promoted
        # (the time no writable database existed, our 1 s wait included).
        "stall_s": None if t_first_write is None else round(t_first_write - t_promoted, 3),
        "first_write_sent_s_from_kill": None if first_sent is None else rel(first_sent[1]),
        "acked": len(acked),
        "acked_before_kill": sum(1 for a in acked_all if a[2] <= t_kill),
        "acked_between_kill_and_promote_start": sum(1 for a in after_kill if a[2] <= t_promote_start),
        "acked_after_promotion": sum(1 for a in acked_all if a[2] > t_promoted),
        "attempted": len(attempted),
        "present": len(present),
        "lost_acked": len(acked - present),
        "present_not_acked": len(present - acked),  # in flight at the kill, committed anyway
        "present_never_attempted": len(present - attempted),
        "errors": len(errors),
        "errors_by_sqlstate": by_state,
        "first_error_by_sqlstate": first_error_of,
        "writer_connects": sum(w.connects for w in ws),
        "writer_reconnects": sum(w.reconnects for w in ws),
        "refused_connections": len(refused),
        "refused_writer_attempts": sum(len(w.refused) for w in ws),
        "connector_ok": connector.ok,
        "connector_refused": len(connector.refused),
        "connector_slowest_connect_s": round(connector.slowest, 3),
        "first_refusal": refused[0][1] if refused else None,
        "idle_ok": sum(1 for ok, _ in idle_results if ok),
        "idle_failed": [d for ok, d in idle_results if not ok][:3],
    }
    return DrillResult(mode=mode, summary=summary, acked=acked, attempted=attempted,
                       present=present, idle_results=idle_results, idle_same_objects=idle_same)
