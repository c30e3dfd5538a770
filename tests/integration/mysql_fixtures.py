"""Fixtures and helpers for the MySQL/MariaDB integration tests (registered from conftest.py).

- `mariadb` (session): a throwaway MariaDB started with `scripts/mysql.sh start DIR PORT
  max_connections=100` (as the OS user concierge-mysql when root, on 127.0.0.1), with TLS (a test
  CA's certificate: `mariadb.pki` issues more), and the users of `MY_USERS` with random passwords:
  `app_monitor` (first in every proxy's auth list, so the proxy's health checks log in as it and
  never count as `app`'s connections) and `app` (mysql_native_password; all privileges on the
  databases `app` and `app2`, and RELOAD for FLUSH TABLES WITH READ LOCK). Database `app` has a
  table `items`. Stopped and removed at the end of the session.
- `mysql_proxy` (function): a factory like `proxy`; `mysql_proxy(**overrides)` writes a secret per
  user and a config with `engine_family: MYSQL` and the MariaDB as target, starts
  `$CONCIERGE_BIN serve`, waits until PyMySQL's `SELECT 1` succeeds through it and returns a
  `MySQLProxy`. After the test every proxy's log is searched for the users' and the admin's
  passwords, and each proxy is stopped (SIGTERM).

Direct mode (CONCIERGE_ITEST_DIRECT=1): `mysql_proxy()` starts nothing and returns the MariaDB's
own address; `proxy_only` tests are skipped. The server then allows 200 connections instead of
100 (100 clients at once, plus the test's own admin connection, meet no proxy cap there).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import (DIRECT, REPO_ROOT, free_port, port_accepts, proxy_config, run, to_yaml,
                     wait_for, write_secret)
from mywire import MyWireClient
from tls_helpers import Pki, make_pki

try:
    import pymysql
except ImportError:  # scripts/test.sh installs it; only the MySQL tests need it
    pymysql = None

MY_SH = REPO_ROOT / "scripts" / "mysql.sh"
ADMIN_USER = "concierge_admin"  # scripts/mysql.sh's admin user (every privilege)
# The database users: the first is the one the proxy's health checks log in as.
MY_USERS = ("app_monitor", "app")
# The server's max_connections: a proxy's default cap (10%) is then 10 backends.
MAX_CONNECTIONS = 200 if DIRECT else 100

NATIVE = "MYSQL_NATIVE_PASSWORD"
CACHING_SHA2 = "MYSQL_CACHING_SHA2_PASSWORD"


def mysql_env(**extra: str) -> dict[str, str]:
    """The environment minus the caller's client settings (MYSQL_PWD, MYSQL_HOST, PG*...)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MYSQL_", "MARIADB_", "PG"))}
    env.update(extra)
    return env


def mariadb_client() -> str:
    path = shutil.which("mariadb") or shutil.which("mysql")
    assert path, "the mariadb command-line client is not installed (scripts/mysql.sh install)"
    return path


def require_pymysql() -> None:
    if pymysql is None:
        pytest.fail("PyMySQL is not installed (scripts/test.sh installs pymysql)")


# -- targets ---------------------------------------------------------------------------------

@dataclass
class MyTarget:
    """Something MySQL clients connect to: the MariaDB itself or a proxy in front of it."""

    host: str
    port: int
    passwords: dict[str, str]

    def connect(self, user: str = "app", database: str | None = "app", password: str | None = None,
                *, autocommit: bool = True, **kw: Any) -> "pymysql.connections.Connection":
        """A PyMySQL connection (autocommit by default: each statement its own transaction).

        Plaintext unless TLS is asked for (`ssl=...`, `ssl_ca=...`): PyMySQL's own default is
        to use TLS whenever the server offers it."""
        require_pymysql()
        if password is None:
            password = self.passwords.get(user, "")
        if not any(k == "ssl" or k.startswith("ssl_") for k in kw):
            kw["ssl_disabled"] = True
        kw.setdefault("connect_timeout", 10)
        kw.setdefault("read_timeout", 60)
        kw.setdefault("write_timeout", 60)
        return pymysql.connect(host=self.host, port=self.port, user=user, password=password,
                               database=database, autocommit=autocommit, **kw)

    def cli(self, sql: str | None = None, *, user: str = "app", password: str | None = None,
            database: str | None = "app", args: tuple[str, ...] | list[str] = (),
            input: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run the `mariadb` command-line client (--batch --skip-column-names) over TCP; the
        password goes in MYSQL_PWD. With `sql`, it runs that (-e); else `input` is a script."""
        if password is None:
            password = self.passwords.get(user, "")
        cmd = [mariadb_client(), "--no-defaults", "--protocol=tcp", "-h", self.host, "-P", str(self.port),
               "-u", user, "--batch", "--skip-column-names", "--skip-print-query-on-error",
               "--connect-timeout=10", *args]
        if database:
            cmd += ["-D", database]
        if sql is not None:
            cmd += ["-e", sql]
        return run(cmd, input=input, check=check, timeout=timeout, env=mysql_env(MYSQL_PWD=password))

    def wire(self, timeout: float = 10.0) -> MyWireClient:
        """A raw-socket client, connected (the greeting not read yet)."""
        return MyWireClient(self.host, self.port, timeout=timeout)

    def assert_serves(self) -> None:
        """A new client still gets `SELECT 1` answered."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


@dataclass
class MariaDB(MyTarget):
    """The session's MariaDB server, reachable directly."""

    root: Path = Path("/nonexistent")
    admin_password: str = ""
    pki: Pki | None = None

    def admin(self, database: str | None = None, **kw: Any) -> "pymysql.connections.Connection":
        """A connection as the admin user (every privilege), autocommit."""
        return self.connect(ADMIN_USER, database, self.admin_password, **kw)

    def query(self, sql: str, args: Any = None, database: str | None = "app") -> list[tuple]:
        """Run SQL as the admin, directly on the server; returns the rows (if any)."""
        with self.admin(database) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []

    def scalar(self, sql: str, args: Any = None, database: str | None = "app") -> Any:
        return self.query(sql, args, database)[0][0]

    def connections(self, user: str = "app") -> int:
        """The server's sessions of `user` (what a proxy's cap limits)."""
        return self.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))

    def create_table(self, name: str, columns: str = "id INT PRIMARY KEY, v VARCHAR(200)",
                     database: str = "app") -> str:
        """A fresh table (dropped first if it exists); returns its name."""
        self.query(f"DROP TABLE IF EXISTS `{name}`", database=database)
        self.query(f"CREATE TABLE `{name}` ({columns})", database=database)
        return name


@dataclass
class MySQLProxy(MyTarget):
    """A running `concierge serve` with a MYSQL proxy (or, in direct mode, the MariaDB)."""

    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    log_path: Path | None = None
    drain_timeout: float = 5
    expect_exit: bool = False  # a test that stops the proxy itself sets this
    admin_url: str | None = None  # http://127.0.0.1:PORT when started with an admin listener

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

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        assert self.admin_url, "start the proxy with metrics=True"
        return scrape(self.admin_url)


# -- metrics ---------------------------------------------------------------------------------

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of the admin listener's /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"unparseable exposition line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric(samples, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (fails if there is none)."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    assert found, f"no sample {name}{labels}"
    return sum(found)


# -- sampling the server's processlist ---------------------------------------------------------

@dataclass
class ProcesslistSampler:
    """Polls information_schema.PROCESSLIST directly (as the admin) every `interval` seconds in a
    thread and records the most sessions of `user` ever seen at once (`max_seen`)."""

    db: MariaDB
    user: str = "app"
    interval: float = 0.02
    max_seen: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.db.admin() as conn, conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                                (self.user,))
                    self.max_seen = max(self.max_seen, cur.fetchone()[0])
                    self.samples += 1
                    self._stop.wait(self.interval)
        except BaseException as e:  # surfaced by __exit__
            self._error = e

    def __enter__(self) -> "ProcesslistSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        if self._error and not exc[0]:
            raise self._error


# -- a relay that sends an SSLRequest and the ClientHello in one write ---------------------------

class SSLRequestCoalescer:
    """A TCP relay in front of a MySQL server that holds each client's SSLRequest until the
    client's next bytes (its TLS ClientHello) arrive and forwards both in one write. A MySQL
    client does not wait for anything after its SSLRequest, so a server may always read the two
    together; this makes it happen every time. `coalesced` counts the SSLRequests so sent."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.coalesced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "SSLRequestCoalescer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)  # to see `_stop` (closing does not wake accept())
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (sink, source):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=30) as upstream:
            upstream.settimeout(None)
            down = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            down.start()
            buffer = b""
            try:
                while len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[:3], "little"):
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                length = int.from_bytes(buffer[:3], "little")
                if length == 32:  # an SSLRequest: with the bytes after it (waited for if need be)
                    if len(buffer) == 4 + length:
                        buffer += client.recv(65536)
                    self.coalesced += 1
                upstream.sendall(buffer)
            except OSError:
                return
            self._pipe(client, upstream)
            down.join(timeout=10)


# -- the database ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mariadb() -> MariaDB:
    require_pymysql()
    root = Path(tempfile.mkdtemp(prefix="concierge-itest-my-", dir="/tmp"))
    port = free_port()
    admin_password = secrets.token_hex(16)
    env = mysql_env(CONCIERGE_MYSQL_PASSWORD=admin_password)
    # TLS for direct clients and for the proxy's backend connections. The server runs as its own
    # OS user and must read its key: a throwaway test key, readable by all.
    pki = make_pki(root / "pki")
    cert, key = pki.issue("mariadb", dns=["localhost"], ips=["127.0.0.1"])
    for path in (root, pki.dir):
        path.chmod(0o755)
    for path in (pki.ca_cert, cert, key):
        path.chmod(0o644)
    run(["bash", str(MY_SH), "start", str(root / "data"), str(port), f"max_connections={MAX_CONNECTIONS}",
         "max_allowed_packet=64M", f"ssl_cert={cert}", f"ssl_key={key}", f"ssl_ca={pki.ca_cert}"],
        env=env, timeout=180)
    db = MariaDB(host="127.0.0.1", port=port, passwords={u: secrets.token_hex(12) for u in MY_USERS},
                 root=root, admin_password=admin_password, pki=pki)
    try:
        _provision(db)
        yield db
    finally:
        run(["bash", str(MY_SH), "stop", str(root / "data")], check=False, env=env, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _provision(db: MariaDB) -> None:
    """Users, databases and the table the tests rely on."""
    with db.admin() as conn, conn.cursor() as cur:
        for user in MY_USERS:
            cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED VIA mysql_native_password "
                        f"USING PASSWORD(%s)", (db.passwords[user],))
        for database in ("app", "app2"):
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO 'app'@'%'")
        cur.execute("GRANT RELOAD ON *.* TO 'app'@'%'")  # FLUSH TABLES WITH READ LOCK
        cur.execute("CREATE TABLE app.items (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100))")


# -- the proxy -------------------------------------------------------------------------------

@pytest.fixture
def mysql_proxy(request, mariadb: MariaDB, concierge_bin: Path, tmp_path: Path):
    """Factory: `mysql_proxy(**overrides)` -> a running, ready `MySQLProxy` on a free port.

    `client_auth` is the client_password_auth_type of every user (MYSQL_NATIVE_PASSWORD, the
    default, or MYSQL_CACHING_SHA2_PASSWORD), or a dict user -> type. Other overrides are flat as
    for `proxy` (pool keys such as max_connections_percent or connection_borrow_timeout go into
    connection_pool_config; `tls`, `require_tls`, `max_client_connections`, ... into the proxy's
    entry; `target_group_tls` is the target group's `tls`). `metrics=True` adds an admin listener
    (`p.admin_url`, `p.metrics()`); `admin` gives the admin section itself; `top_level` adds sections beside
    `proxies` (e.g. `iam`); the users of `iam_users` get `iam_auth: REQUIRED`. `wait_ready=False`
    only waits until the proxy listens; `no_wait=True` does not wait at all; `db_port` points it
    at another server.
    """
    started: list[MySQLProxy] = []
    reported = getattr(request.node, "_concierge_proxies", None)
    if reported is None:  # conftest attaches the logs of these proxies to a failure's report
        reported = request.node._concierge_proxies = []

    def start(*, client_auth: str | dict[str, str] = NATIVE, drain_timeout: float = 5,
              wait_ready: bool = True, no_wait: bool = False, db_port: int | None = None,
              threads: int | None = None, admin: dict | None = None, metrics: bool = False,
              top_level: dict | None = None, iam_users: tuple[str, ...] = (), **overrides) -> MySQLProxy:
        if DIRECT:
            return MySQLProxy(host=mariadb.host, port=mariadb.port, passwords=mariadb.passwords)
        n = len(started)
        workdir = tmp_path / f"myproxy{n}"
        workdir.mkdir()
        # In MY_USERS order: the first (app_monitor) is the health checks' user.
        secret_files = {user: write_secret(workdir / f"{user}.json", user, mariadb.passwords[user])
                        for user in MY_USERS}
        auth = client_auth if isinstance(client_auth, dict) else {u: client_auth for u in MY_USERS}
        port = free_port()
        config = proxy_config(listen_port=port, db_port=db_port or mariadb.port, secrets=secret_files,
                              client_auth=auth, drain_timeout=drain_timeout, engine_family="MYSQL",
                              **overrides)
        config.update(top_level or {})
        for user, entry in zip(MY_USERS, config["proxies"][0]["auth"]):
            if user in iam_users:
                entry["iam_auth"] = "REQUIRED"
        admin_url = None
        if metrics and admin is None:
            admin = {"listen": f"127.0.0.1:{free_port()}"}
        if admin is not None:
            config["admin"] = admin
            if "listen" in admin:
                admin_url = f"http://{admin['listen']}"
        config_path = workdir / "concierge.yaml"
        config_path.write_text(to_yaml(config) + "\n")
        log_path = workdir / "concierge.log"
        with open(log_path, "wb") as log:
            extra = ["--threads", str(threads)] if threads else []
            if os.environ.get("CONCIERGE_ITEST_DEBUG") == "1":
                extra += ["--log-level", "trace"]
            proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(config_path), *extra],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=mysql_env(), cwd=workdir)
        p = MySQLProxy(host="127.0.0.1", port=port, passwords=mariadb.passwords, proc=proc,
                       config_path=config_path, log_path=log_path, drain_timeout=drain_timeout,
                       admin_url=admin_url)
        started.append(p)
        reported.append(p)
        if no_wait:
            return p
        if wait_ready:
            _wait_ready(p)
        else:
            _wait_listening(p)
        return p

    yield start

    errors = []
    # No secret in any log: the database users' passwords and the admin's.
    leaked_values = [*mariadb.passwords.values(), mariadb.admin_password]
    for p in started:
        log = p.log(10**9)
        for value in leaked_values:
            if value and value in log:
                errors.append(f"a password appears in the log of the proxy on port {p.port}")
    for p in started:
        if p.proc.poll() is not None:
            if not p.expect_exit:
                errors.append(f"proxy on port {p.port} died during the test "
                              f"(exit {p.proc.returncode}):\n{p.log()}")
            continue
        p.proc.terminate()
        try:
            p.proc.wait(timeout=p.drain_timeout + 15)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
            errors.append(f"proxy on port {p.port} ignored SIGTERM for "
                          f"{p.drain_timeout + 15}s:\n{p.log()}")
    if errors:
        pytest.fail("\n\n".join(errors))


def _died(p: MySQLProxy, what: str) -> None:
    p.expect_exit = True  # reported here; not again at teardown
    pytest.fail(f"concierge exited with {p.proc.returncode} before it {what}:\n"
                f"{p.log()}\nconfig:\n{p.config_path.read_text()}")


def _wait_listening(p: MySQLProxy, timeout: float = 20) -> None:
    """Wait until the proxy accepts TCP connections (or the process dies)."""
    def listening() -> bool:
        if p.proc.poll() is not None:
            _died(p, "listened")
        return port_accepts(p.port)
    try:
        wait_for(listening, timeout, f"concierge to listen on port {p.port}", interval=0.1)
    except AssertionError as e:
        pytest.fail(f"{e}\nlog:\n{p.log()}")


def _wait_ready(p: MySQLProxy, timeout: float = 20) -> None:
    """Wait until PyMySQL's `SELECT 1` succeeds through the proxy (or the process dies)."""
    last_error: list[str] = []

    def ready() -> bool:
        if p.proc.poll() is not None:
            _died(p, "was ready")
        try:
            with p.connect(connect_timeout=2, read_timeout=5) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except Exception as e:  # not listening yet, or not serving yet: keep trying
            last_error[:] = [f"{type(e).__name__}: {e}"]
            return False
    try:
        wait_for(ready, timeout, f"concierge on port {p.port} to serve `SELECT 1`", interval=0.1)
    except AssertionError as e:
        pytest.fail(f"{e} (last error: {last_error[0] if last_error else 'none'})\nlog:\n{p.log()}")
