"""Fixtures for the Concierge integration tests.

- `pg` (session): a throwaway PostgreSQL cluster started with scripts/pg.sh on a free port
  (max_connections=100) with the users of `helpers.DB_USERS`: `app` (SCRAM), `app_md5` (md5),
  `app_clear` (cleartext password) and `app_trust` (trust); databases `app` and `app2` (both
  owned by app) and a `locktest` table in app. Torn down at the end of the session.
- `proxy` (function): a factory; `proxy(**overrides)` writes secrets and a config into a tmp dir,
  starts `$CONCIERGE_BIN serve --config FILE`, waits until a real psql `select 1` succeeds through
  it and returns a `helpers.Proxy`. Teardown sends SIGTERM and waits for the exit.
- `concierge_bin`: the binary under test ($CONCIERGE_BIN, else .build/debug/concierge).
- `mariadb` (session) and `mysql_proxy` (function): the same for MySQL proxies in front of a
  throwaway MariaDB (mysql_fixtures.py).

Direct mode (CONCIERGE_ITEST_DIRECT=1): `proxy()` starts nothing and returns the database's own
address, so the test logic can be checked against PostgreSQL itself. Tests marked `proxy_only`
(behaviour only a proxy has) are skipped in that mode.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import (DB_USERS, DIRECT, PG_SH, REPO_ROOT, PgCluster, Proxy, clean_env, free_port,
                     pg_bindir, port_accepts, proxy_config, run, to_yaml, wait_for, write_secret)


def pytest_collection_modifyitems(config, items):
    if not DIRECT:
        return
    skip = pytest.mark.skip(reason="proxy_only test (CONCIERGE_ITEST_DIRECT=1)")
    for item in items:
        if "proxy_only" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the log of every proxy the test started to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, p in enumerate(getattr(item, "_concierge_proxies", [])):
            status = "running" if p.alive() else f"exited {p.proc.returncode}"
            report.sections.append((f"concierge log #{i} ({status}, {p.log_path})", p.log()))


# -- the binary ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def concierge_bin() -> Path:
    path = Path(os.environ.get("CONCIERGE_BIN") or REPO_ROOT / ".build" / "debug" / "concierge")
    if DIRECT:
        return path
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(f"concierge binary not found at {path}: build it (swift build) or set "
                    f"CONCIERGE_BIN", returncode=1)
    return path


# -- the database ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg() -> PgCluster:
    root = Path(tempfile.mkdtemp(prefix="concierge-itest-", dir="/tmp"))
    port = free_port()
    superuser_password = secrets.token_hex(16)
    env = clean_env(CONCIERGE_PG_PASSWORD=superuser_password)
    # max_prepared_transactions: two-phase commit through the proxy is tested too.
    run(["bash", str(PG_SH), "start", str(root / "data"), str(port), "max_connections=100",
         "max_prepared_transactions=10"],
        env=env, timeout=180)
    cluster = PgCluster(host="127.0.0.1", port=port, bindir=pg_bindir(),
                        passwords={u.name: secrets.token_hex(12) for u in DB_USERS},
                        root=root, superuser_password=superuser_password)
    try:
        _provision(cluster)
        yield cluster
    finally:
        run(["bash", str(PG_SH), "stop", str(root / "data")], check=False, env=env)
        shutil.rmtree(root, ignore_errors=True)


def _provision(pg: PgCluster) -> None:
    """Users, database and tables the tests rely on."""
    # Each user logs in with its own pg_hba method (app_md5: md5, with its password stored as
    # an md5 hash; app_clear: a cleartext password; app_trust: none). pg_hba's first matching
    # line wins, so these lines go before the generic scram-sha-256 ones.
    hba = pg.datadir / "pg_hba.conf"
    own_lines = "".join(f"host all {u.name} 127.0.0.1/32 {u.hba_method}\n"
                        for u in DB_USERS if u.hba_method != "scram-sha-256")
    hba.write_text(own_lines + hba.read_text())
    pg.query("select pg_reload_conf()", dbname="postgres")
    with pg.super_connect("postgres") as conn:
        for u in DB_USERS:
            if u.password_encryption is None:
                conn.execute(f"create role {u.name} login")
            else:
                conn.execute(f"set password_encryption = '{u.password_encryption}'")
                conn.execute(f"create role {u.name} login password '{pg.passwords[u.name]}'")
        conn.execute("create database app owner app")
        conn.execute("create database app2 owner app")
    pg.create_table("locktest", "id int")
    others = ", ".join(u.name for u in DB_USERS if u.name != "app")
    pg.query(f"grant all on schema public to {others}")


@pytest.fixture(scope="session")
def pgbench_tables(pg: PgCluster) -> None:
    """pgbench's tables (scale 1) in database app, initialised directly (not via a proxy)."""
    proc = pg.pgbench("-i", "-q", "-s", "1")
    assert proc.returncode == 0, proc.stderr


# -- the proxy -------------------------------------------------------------------------------

@pytest.fixture
def proxy(request, pg: PgCluster, concierge_bin: Path, tmp_path: Path):
    """Factory: `proxy(**overrides)` -> a running, ready `Proxy` on a free port.

    Overrides are flat: pool keys (max_connections_percent, connection_borrow_timeout,
    session_pinning_filters, init_query, ...) go into connection_pool_config, `drain_timeout`
    to the top level, anything else (idle_client_timeout, max_client_connections, ...) into the
    proxy's entry. `wait_ready=False` only waits until the proxy listens, for configurations
    under which `select 1` is expected to fail (e.g. a failing init_query); `db_port` points
    the proxy at another port than the test cluster's; `threads` sets `--threads`; `admin` is
    the config's top-level `admin` section (e.g. {"listen": "127.0.0.1:PORT", "token": "..."});
    `nofile` runs the proxy with that open-file limit (soft and hard).
    """
    started: list[Proxy] = []
    request.node._concierge_proxies = started

    def start(*, drain_timeout: float = 5, wait_ready: bool = True, no_wait: bool = False, db_port: int | None = None,
              threads: int | None = None, admin: dict | None = None, nofile: int | None = None,
              **overrides) -> Proxy:
        if DIRECT:
            return Proxy(host=pg.host, port=pg.port, passwords=pg.passwords, bindir=pg.bindir)
        n = len(started)
        workdir = tmp_path / f"proxy{n}"
        workdir.mkdir()
        secret_files = {user: write_secret(workdir / f"{user}.json", user, password)
                        for user, password in pg.passwords.items()}
        port = free_port()
        config = proxy_config(listen_port=port, db_port=db_port or pg.port, secrets=secret_files,
                              drain_timeout=drain_timeout, **overrides)
        if admin is not None:
            config["admin"] = admin
        config_path = workdir / "concierge.yaml"
        config_path.write_text(to_yaml(config) + "\n")
        log_path = workdir / "concierge.log"
        with open(log_path, "wb") as log:
            extra = ["--threads", str(threads)] if threads else []
            if os.environ.get("CONCIERGE_ITEST_DEBUG") == "1":
                extra += ["--log-level", "trace"]
            def limit_descriptors() -> None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

            proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(config_path), *extra],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=clean_env(), cwd=workdir,
                                    preexec_fn=limit_descriptors if nofile else None)
        p = Proxy(host="127.0.0.1", port=port, passwords=pg.passwords, bindir=pg.bindir,
                  proc=proc, config_path=config_path, log_path=log_path,
                  drain_timeout=drain_timeout)
        started.append(p)
        if no_wait:
            return p
        if wait_ready:
            _wait_ready(p)
        else:
            _wait_listening(p)
        return p

    yield start

    errors = []
    # No secret in any log: the database users' passwords and the superuser's.
    leaked_values = [*pg.passwords.values(), pg.superuser_password]
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


def _wait_listening(p: Proxy, timeout: float = 20) -> None:
    """Wait until the proxy accepts TCP connections (or the process dies)."""
    def listening() -> bool:
        if p.proc.poll() is not None:
            p.expect_exit = True  # reported here; not again at teardown
            pytest.fail(f"concierge exited with {p.proc.returncode} before it listened:\n"
                        f"{p.log()}\nconfig:\n{p.config_path.read_text()}")
        return port_accepts(p.port)
    try:
        wait_for(listening, timeout, f"concierge to listen on port {p.port}", interval=0.1)
    except AssertionError as e:
        pytest.fail(f"{e}\nlog:\n{p.log()}")


def _wait_ready(p: Proxy, timeout: float = 20) -> None:
    """Wait until a real psql `select 1` succeeds through the proxy (or the process dies)."""
    def ready() -> bool:
        if p.proc.poll() is not None:
            p.expect_exit = True  # reported here; not again at teardown
            pytest.fail(f"concierge exited with {p.proc.returncode} before it was ready:\n"
                        f"{p.log()}\nconfig:\n{p.config_path.read_text()}")
        try:
            proc = p.psql("select 1", check=False, timeout=5, connect_timeout=2)
        except subprocess.TimeoutExpired:
            return False  # connected but no answer (yet): keep trying until the deadline
        return proc.returncode == 0 and proc.stdout.strip() == "1"
    try:
        wait_for(ready, timeout, f"concierge on port {p.port} to serve `select 1`", interval=0.1)
    except AssertionError as e:
        pytest.fail(f"{e}\nlog:\n{p.log()}")


# -- MySQL/MariaDB ---------------------------------------------------------------------------
# `mariadb` (session) and `mysql_proxy` (factory): see mysql_fixtures.py.
from mysql_fixtures import mariadb, mysql_proxy  # noqa: E402,F401
