"""Shared helpers for the integration tests: targets (the database or a proxy), clients, config.

A *target* is anything clients connect to: the PostgreSQL cluster itself or a Concierge proxy in
front of it. Tests talk to targets through the same helpers (psql, pgbench, psycopg, the raw wire
client), so the same test logic runs against the database directly (CONCIERGE_ITEST_DIRECT=1)
and through the proxy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg

from pgwire import WireClient

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_SH = REPO_ROOT / "scripts" / "pg.sh"
DIRECT = os.environ.get("CONCIERGE_ITEST_DIRECT") == "1"


# -- small utilities -------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus the caller's libpq settings (PGHOST, PGPASSWORD, ...), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connect to host:port succeeds right now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def conninfo(**params: Any) -> str:
    """A libpq key=value connection string with values quoted as libpq requires."""
    def quote(v: Any) -> str:
        s = str(v)
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={quote(v)}" for k, v in params.items() if v is not None)


def run(cmd: list[str], *, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured and a timeout; on check failure show output."""
    kw.setdefault("env", clean_env())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def pg_bindir() -> Path:
    return Path(run(["bash", str(PG_SH), "bindir"]).stdout.strip())


# -- targets ---------------------------------------------------------------------------------

@dataclass
class Target:
    """Something clients connect to: host/port plus the passwords of the test users."""

    host: str
    port: int
    passwords: dict[str, str]
    bindir: Path

    def conninfo(self, user: str = "app", dbname: str = "app", password: str | None = None,
                 **params: Any) -> str:
        if password is None:
            password = self.passwords.get(user)
        params.setdefault("connect_timeout", 10)
        params.setdefault("sslmode", "disable")
        return conninfo(host=self.host, port=self.port, user=user, dbname=dbname,
                        password=password, **params)

    def psql(self, sql: str | None = None, *, user: str = "app", dbname: str = "app",
             password: str | None = None, input: str | None = None, check: bool = True,
             timeout: float = 30, on_error_stop: bool = True, env: dict | None = None,
             **params: Any) -> subprocess.CompletedProcess:
        """Run psql (-X -At). With `sql`, it is sent as one Query (-c); else `input` is a script."""
        cmd = [str(self.bindir / "psql"), "-X", "-At",
               "-v", f"ON_ERROR_STOP={1 if on_error_stop else 0}",
               "-d", self.conninfo(user, dbname, password, **params)]
        if sql is not None:
            cmd += ["-c", sql]
        return run(cmd, input=input, check=check, timeout=timeout, env=clean_env(**(env or {})))

    def pgbench(self, *args: str, user: str = "app", dbname: str = "app",
                password: str | None = None, timeout: float = 120,
                check: bool = False) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / "pgbench"), "-h", self.host, "-p", str(self.port),
               "-U", user, *args, dbname]
        env = clean_env(PGPASSWORD=password or self.passwords[user], PGSSLMODE="disable",
                        PGCONNECT_TIMEOUT="10")
        return run(cmd, timeout=timeout, check=check, env=env)

    def connect(self, user: str = "app", dbname: str = "app", password: str | None = None,
                autocommit: bool = True, prepare_threshold: int | None = 5,
                **params: Any) -> psycopg.Connection:
        """A psycopg connection (autocommit by default: each statement its own transaction).

        psycopg prepares a statement (a named, protocol-level prepared statement) once it ran
        `prepare_threshold` times; None never prepares."""
        return psycopg.connect(self.conninfo(user, dbname, password, **params),
                               autocommit=autocommit, prepare_threshold=prepare_threshold)

    def wire(self, timeout: float = 10.0) -> WireClient:
        """A raw-socket protocol client, connected but not started up."""
        return WireClient(self.host, self.port, timeout=timeout)

    def assert_serves(self) -> None:
        """A normal client still gets `select 1` answered."""
        assert self.psql("select 1").stdout.strip() == "1"


@dataclass
class PgCluster(Target):
    """The session's PostgreSQL cluster, reachable directly."""

    root: Path = Path("/nonexistent")
    superuser_password: str = ""

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def super_connect(self, dbname: str = "app") -> psycopg.Connection:
        return psycopg.connect(
            conninfo(host=self.host, port=self.port, user="postgres", dbname=dbname,
                     password=self.superuser_password, sslmode="disable", connect_timeout=10),
            autocommit=True)

    def query(self, sql: str, params: Any = None, dbname: str = "app") -> list[tuple]:
        """Run SQL as the superuser, directly on the database; returns the rows (if any)."""
        with self.super_connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None, dbname: str = "app") -> Any:
        return self.query(sql, params, dbname)[0][0]

    def app_backends(self, user: str = "app") -> int:
        """Client backends of `user` (what the proxy's cap limits)."""
        return self.scalar("select count(*) from pg_stat_activity "
                           "where backend_type = 'client backend' and usename = %s "
                           "and application_name <> 'concierge_health_check'", (user,))

    def create_table(self, name: str, columns: str = "id int primary key, v text") -> str:
        """A fresh table in database app owned by user app; returns its name."""
        self.query(f"drop table if exists {name}; create table {name} ({columns}); "
                   f"alter table {name} owner to app")
        return name


@dataclass
class Proxy(Target):
    """A running `concierge serve` (or, in direct mode, the database standing in for it)."""

    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    log_path: Path | None = None
    drain_timeout: float = 5
    expect_exit: bool = False  # a test that stops the proxy itself sets this

    def log(self, tail_chars: int = 20000) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail_chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None, "no proxy process (direct mode)"
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None, "no proxy process (direct mode)"
        return self.proc.wait(timeout=timeout)


# -- proxy configuration ---------------------------------------------------------------------

# connection_pool_config keys; any other override goes into the proxy's own entry.
POOL_KEYS = {"max_connections_percent", "max_idle_connections_percent",
             "connection_borrow_timeout", "session_pinning_filters", "init_query",
             "backend_idle_timeout"}

# The test defaults: a cap of 10 backends at max_connections=100, and short timeouts so a
# misbehaving proxy fails a test quickly instead of hanging it.
DEFAULT_POOL = {"max_connections_percent": 10, "max_idle_connections_percent": 5,
                "connection_borrow_timeout": 10, "session_pinning_filters": [], "init_query": ""}


@dataclass(frozen=True)
class DbUser:
    """A database user the session's cluster has (conftest._provision) and proxies have a secret
    for. Each exercises one way the database authenticates the proxy's backend logins."""

    name: str
    hba_method: str = "scram-sha-256"  # its pg_hba.conf method: what the database asks for
    # How its password is stored in the database (password_encryption); None: no password.
    password_encryption: str | None = "scram-sha-256"
    client_auth: str = "POSTGRES_SCRAM_SHA_256"  # how the proxy checks clients' passwords


DB_USERS = (
    DbUser("app"),
    DbUser("app_md5", hba_method="md5", password_encryption="md5", client_auth="POSTGRES_MD5"),
    DbUser("app_clear", hba_method="password"),  # cleartext password
    # The database lets it in without a password; its secret has one all the same, and clients
    # of the proxy must know it.
    DbUser("app_trust", hba_method="trust", password_encryption=None),
)


def write_secret(path: Path, username: str, password: str) -> Path:
    path.write_text(json.dumps({"username": username, "password": password}))
    path.chmod(0o600)
    return path


def proxy_config(*, listen_port: int, db_port: int, secrets: dict[str, Path],
                 md5_users: set[str] | None = None, drain_timeout: float | None = 5,
                 client_auth: dict[str, str] | None = None, **overrides: Any) -> dict:
    """The config dict for one proxy named `app`; overrides are flat keys (see POOL_KEYS).

    One auth entry per secret; clients of the users in `md5_users` log in with md5, the others
    with SCRAM-SHA-256. By default `md5_users` are those of DB_USERS with POSTGRES_MD5.
    `client_auth` (user -> client_password_auth_type) overrides both, e.g. for a MySQL proxy
    (`engine_family="MYSQL"`, `client_auth={"app": "MYSQL_NATIVE_PASSWORD"}`)."""
    if md5_users is None:
        md5_users = {u.name for u in DB_USERS if u.client_auth == "POSTGRES_MD5"}
    pool = dict(DEFAULT_POOL)
    entry: dict[str, Any] = {
        "name": "app",
        "engine_family": "POSTGRESQL",
        "listen": f"127.0.0.1:{listen_port}",
        "idle_client_timeout": 1800,
        "max_client_connections": 10000,
        "debug_logging": os.environ.get("CONCIERGE_ITEST_DEBUG") == "1",
        "auth": [
            {"auth_scheme": "SECRETS",
             "secret_arn": f"file:{path}",
             "iam_auth": "DISABLED",
             "client_password_auth_type": (client_auth or {}).get(user) or
                 ("POSTGRES_MD5" if user in md5_users else "POSTGRES_SCRAM_SHA_256")}
            for user, path in secrets.items()
        ],
    }
    # target_group_tls: the target group's `tls` section; target_endpoint_host: the target's host
    # (e.g. "localhost", for certificate host-name checks).
    target_tls = overrides.pop("target_group_tls", None)
    target_host = overrides.pop("target_endpoint_host", "127.0.0.1")
    for key, value in overrides.items():
        (pool if key in POOL_KEYS else entry)[key] = value
    if "max_idle_connections_percent" not in overrides:
        # Must not exceed max_connections_percent (e.g. when a test sets a cap of 1%).
        pool["max_idle_connections_percent"] = min(pool["max_idle_connections_percent"],
                                                   pool["max_connections_percent"])
    entry["target_group"] = {"connection_pool_config": pool,
                             "targets": [{"endpoint": f"{target_host}:{db_port}"}]}
    if target_tls is not None:
        entry["target_group"]["tls"] = target_tls
    config: dict[str, Any] = {}
    if drain_timeout is not None:
        config["drain_timeout"] = drain_timeout
    config["proxies"] = [entry]
    return config


def to_yaml(value: Any, indent: int = 0) -> str:
    """A tiny YAML emitter for dicts, lists and scalars (strings as JSON, i.e. YAML, quotes)."""
    pad = " " * indent

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, list) and not v:
            return "[]"
        if isinstance(v, dict) and not v:
            return "{}"
        return json.dumps(str(v))

    def nested(v: Any) -> bool:
        return isinstance(v, (dict, list)) and bool(v)

    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if nested(v):
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 2))
            else:
                lines.append(f"{pad}{k}: {scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if nested(v):
                body = to_yaml(v, indent + 2)
                lines.append(f"{pad}- " + body.lstrip())
            else:
                lines.append(f"{pad}- {scalar(v)}")
    else:
        lines.append(pad + scalar(value))
    return "\n".join(lines)


# -- pgbench ---------------------------------------------------------------------------------

@dataclass
class PgbenchResult:
    returncode: int
    processed: int
    failed: int
    tps: float
    output: str


def parse_pgbench(proc: subprocess.CompletedProcess) -> PgbenchResult:
    out = proc.stdout + proc.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+)", out)
    return PgbenchResult(
        returncode=proc.returncode,
        processed=int(processed.group(1)) if processed else 0,
        # pgbench before 15 prints no failure count: then any failure is a non-zero exit.
        failed=int(failed.group(1)) if failed else (0 if proc.returncode == 0 else -1),
        tps=float(tps.group(1)) if tps else 0.0,
        output=out)


# -- sampling pg_stat_activity -----------------------------------------------------------------

@dataclass
class BackendSampler:
    """Polls the database directly (as superuser) every `interval` seconds in a thread and
    records the most client backends of `user` ever seen at once, in total (`max_seen`) and per
    database (`max_by_database`)."""

    pg: PgCluster
    user: str = "app"
    interval: float = 0.05
    max_seen: int = 0
    max_by_database: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.pg.super_connect() as conn:
                while not self._stop.is_set():
                    rows = conn.execute(
                        "select datname, count(*) from pg_stat_activity "
                        "where backend_type = 'client backend' and usename = %s "
                        # The proxy's health-check connection (one per target) is not a pool
                        # backend and is outside the cap.
                        "and application_name <> 'concierge_health_check' "
                        "group by datname", (self.user,)).fetchall()
                    self.max_seen = max(self.max_seen, sum(n for _, n in rows))
                    for datname, n in rows:
                        self.max_by_database[datname] = max(self.max_by_database.get(datname, 0), n)
                    self.samples += 1
                    self._stop.wait(self.interval)
        except BaseException as e:  # surfaced by stop()
            self._error = e

    def __enter__(self) -> "BackendSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        if self._error and not exc[0]:
            raise self._error
