#!/usr/bin/env python3
"""Run real drivers' own test suites directly against the database and through Concierge.

Each driver's test suite comes from its PyPI source distribution (pinned below), downloaded and
unpacked into a cache directory outside the repository; the driver itself and what its tests need
are pip-installed, pinned, into a virtualenv in that cache. Each driver has an engine: PostgreSQL
(asyncpg, psycopg2, pg8000) or MySQL (mysqlclient, against MariaDB, once as it is and once as
`mysqlclient-autocommit`, its connections in autocommit mode so that they multiplex: the plugin
concierge_autocommit.py). Per engine of the drivers asked for, two throwaway servers are started
(scripts/pg.sh: PostgreSQL clusters; scripts/mysql.sh: MariaDB servers), one for the direct run and
one behind the proxy, so the two runs of a suite go on at the same time without seeing each other.
Per driver, a fresh proxy ($CONCIERGE_BIN serve, engine_family POSTGRESQL or MYSQL) fronts the
server's superuser (`postgres`; MariaDB: scripts/mysql.sh's admin `concierge_admin`, logging in to
the proxy with mysql_native_password) in transaction mode with a cap of CONCIERGE_DRIVERS_CAP
backends (5% of max_connections=100), far fewer than the connections the suites open.

Every test's outcome is recorded by the pytest plugin concierge_outcomes.py. A test that passes
directly and fails, errors, hangs, is skipped or is missing through the proxy is a *difference*.
Differences listed in tests/drivers/inherent-differences.txt (each with its reason) are expected;
any other makes the run fail. Listed entries that no longer differ are reported, not failed.
Tests that fail directly too, from a race in the driver's own test (tests/drivers/flaky-directly.txt,
each with the failure's signature, the evidence and the cause), are reported and not counted when
they fail through the proxy with that signature; failing otherwise, they count as any other.
A difference not on the list is run again by itself, CONCIERGE_DRIVERS_RERUNS times directly (if
it fails there too, the test is flaky in itself and is reported, not counted) and once through a
fresh proxy (reported: does it need the tests before it?). A test that takes longer than
CONCIERGE_DRIVERS_TIMEOUT is ended by pytest-timeout (thread method: the process exits) and counts
as hung; the suite is then resumed after it.

  python3 tests/drivers/run.py                       every driver
  python3 tests/drivers/run.py --drivers asyncpg -k pool   one driver, a pytest -k filter
  python3 tests/drivers/run.py --drivers mysqlclient,mysqlclient-autocommit   MySQL's only

Environment (each also a flag; see --help):
  CONCIERGE_BIN            the proxy binary (default .build/debug/concierge)
  CONCIERGE_DRIVERS        comma-separated drivers to run (default: all)
  CONCIERGE_DRIVERS_CACHE  where the virtualenv and the unpacked sdists live
                           (default ~/.cache/concierge-driver-suites)
  CONCIERGE_DRIVERS_CAP    the proxy's cap of backends (default 5)
  CONCIERGE_DRIVERS_TIMEOUT  seconds one test may take before it counts as hung (default 120)
  CONCIERGE_DRIVERS_RERUNS  direct reruns of each unexpected difference (default 4)
  CONCIERGE_DRIVERS_BUDGET seconds the whole run may take (default 1800)
  CONCIERGE_DRIVERS_KEEP=1 keep the servers' data directories after the run

PyMySQL's sdists ship no test suite (1.0.3 to 1.2.4: only tests/test_auth.py, MySQL 8's sha256
accounts on port 3306), and mysql-connector-python's needs its own bootstrap (unittests.py) and
MySQL's server, so the MySQL engine runs mysqlclient's (pytest; libmariadb, MariaDB's C client).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PG_SH = REPO_ROOT / "scripts" / "pg.sh"
MY_SH = REPO_ROOT / "scripts" / "mysql.sh"
POSTGRESQL, MYSQL = "POSTGRESQL", "MYSQL"   # a driver's engine: the proxy's engine_family
SUPERUSER = {POSTGRESQL: "postgres", MYSQL: "concierge_admin"}  # scripts/mysql.sh's admin user
INHERENT_FILE = HERE / "inherent-differences.txt"
FLAKY_FILE = HERE / "flaky-directly.txt"

# Everything pip installs into the virtualenv, pinned: the drivers, then what their tests import
# (asyncpg: distro; pg8000: pytz, pytest-mock, pytest-benchmark; mysqlclient: SQLAlchemy, whose
# tests are skipped without it) and the runner's pytest plugins. mysqlclient is built from source
# against MariaDB Connector/C (Debian: libmariadb-dev, pkg-config, a C compiler).
REQUIREMENTS = [
    "asyncpg==0.32.0",
    "psycopg2-binary==2.9.13",
    "pg8000==1.31.6", "scramp==1.5.0", "asn1crypto==1.5.1", "python-dateutil==4.0.0",
    "tzdata==2026.6",
    "pytest==9.2.0", "pluggy==1.7.0", "iniconfig==2.3.1", "packaging==26.4", "Pygments==2.21.0",
    "pytest-timeout==2.4.0",
    "distro==1.9.0", "pytz==2026.6", "pytest-mock==3.17.0", "pytest-benchmark==5.3.1",
    "py-cpuinfo2==10.1.1",
    "mysqlclient==2.3.2", "SQLAlchemy==2.1.9", "typing_extensions==4.16.0",
]


@dataclass
class Target:
    """Where a suite connects: a cluster directly, or the proxy in front of the other one."""
    name: str          # "direct" or "concierge"
    host: str
    port: int
    password: str      # the superuser's
    user: str = "postgres"


@dataclass
class Driver:
    name: str
    sdist: str                      # pip requirement of the source distribution
    remove: list[str]               # paths of the unpacked sdist removed so they do not shadow
                                    # the installed package (python -m pytest puts cwd on sys.path)
    paths: list[str]                # what pytest collects
    env: Callable[[Target, Path], dict[str, str]]  # (target, the suite's output directory)
    options: list[str] = field(default_factory=list)     # more pytest arguments
    databases: list[str] = field(default_factory=list)    # created on each cluster
    extensions: dict[str, list[str]] = field(default_factory=dict)  # database -> extensions
    engine: str = POSTGRESQL

    @property
    def version(self) -> str:
        return self.sdist.split("==")[1]


DRIVERS = {
    # asyncpg's tests/_testbase use an existing server when PGHOST is set (RunningCluster) and
    # connect with libpq's variables. Its pyproject's pytest options apply (importlib mode).
    "asyncpg": Driver(
        name="asyncpg", sdist="asyncpg==0.32.0", remove=["asyncpg"], paths=["tests"],
        env=lambda t, _: {"PGHOST": t.host, "PGPORT": str(t.port), "PGUSER": "postgres",
                       "PGPASSWORD": t.password, "PGDATABASE": "asyncpg_test"},
        databases=["asyncpg_test"]),
    # psycopg2's sdist tests (unittest, run by pytest) read PSYCOPG2_TESTDB*; they run against
    # psycopg2-binary of the same version, which installs the same `psycopg2` package.
    "psycopg2": Driver(
        name="psycopg2", sdist="psycopg2==2.9.13", remove=[], paths=["tests"],
        env=lambda t, _: {"PSYCOPG2_TESTDB": "psycopg2_test", "PSYCOPG2_TESTDB_HOST": t.host,
                       "PSYCOPG2_TESTDB_PORT": str(t.port), "PSYCOPG2_TESTDB_USER": "postgres",
                       "PSYCOPG2_TESTDB_PASSWORD": t.password},
        databases=["psycopg2_test"], extensions={"psycopg2_test": ["hstore"]}),
    # pg8000's tests connect as user postgres to database postgres, with PGHOST, PGPORT and
    # PGPASSWORD; the benchmarks run once each instead of being timed.
    "pg8000": Driver(
        name="pg8000", sdist="pg8000==1.31.6", remove=[], paths=["test"],
        options=["--benchmark-disable"],
        env=lambda t, _: {"PGHOST": t.host, "PGPORT": str(t.port), "PGPASSWORD": t.password},
        extensions={"postgres": ["hstore"]}),
    # mysqlclient's tests (pytest) read the [MySQLdb-tests] group of the option file that
    # $TESTDB names (a path relative to tests/, or absolute): written per target, mode 600.
    "mysqlclient": Driver(
        name="mysqlclient", sdist="mysqlclient==2.3.2", remove=[], paths=["tests"],
        env=lambda t, outdir: {"TESTDB": str(mysql_option_file(t, outdir, "mysqldb_test"))},
        databases=["mysqldb_test"], engine=MYSQL),
    # The same suite with its connections in autocommit mode (the plugin concierge_autocommit.py):
    # with MySQLdb's default, autocommit off, each connection keeps its backend for its lifetime.
    "mysqlclient-autocommit": Driver(
        name="mysqlclient-autocommit", sdist="mysqlclient==2.3.2", remove=[], paths=["tests"],
        options=["-p", "concierge_autocommit"],
        env=lambda t, outdir: {"TESTDB": str(mysql_option_file(t, outdir, "mysqldb_test"))},
        engine=MYSQL),
}


def mysql_option_file(target: Target, outdir: Path, database: str) -> Path:
    """mysqlclient's option file for the target, in outdir."""
    path = outdir / f"{target.name}.cnf"
    outdir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(f"[MySQLdb-tests]\nhost = {target.host}\nport = {target.port}\n"
                    f"user = {target.user}\npassword = {target.password}\n"
                    f"database = {database}\ndefault-character-set = utf8mb4\n")
    return path

def log(msg: str) -> None:
    print(f"[drivers] {msg}", flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus libpq's, the MySQL clients' and the suites' own settings, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PSYCOPG2_", "CONCIERGE_DRIVERS_", "PYTEST_", "MYSQL_",
                                "MARIADB_", "CONCIERGE_MYSQL_"))
           and k not in ("PYTHONPATH", "USE_UVLOOP", "TESTDB")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list, *, timeout: float = 600, env: dict | None = None, **kw) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else clean_env(), **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


# -- the cache: a virtualenv and the unpacked sdists ---------------------------------------------

def ensure_venv(cache: Path) -> Path:
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()[:12]
    venv = cache / f"venv-{digest}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists() and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    log(f"creating {venv} and installing {len(REQUIREMENTS)} pinned packages with pip")
    run([sys.executable, "-m", "venv", venv])
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           *REQUIREMENTS]
    try:
        run(pip, timeout=900)
    except RuntimeError as e:  # one retry: a registry hiccup should not fail the run
        log(f"pip install failed, once more: {str(e)[-500:]}")
        run(pip, timeout=900)
    (venv / ".complete").write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def ensure_sdist(cache: Path, python: Path, driver: Driver) -> Path:
    """The unpacked source distribution of the driver (downloaded once)."""
    name, version = driver.sdist.split("==")
    tree = cache / "sdists" / f"{name}-{version}"
    if (tree / ".complete").exists():
        return tree
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = next(iter(downloads.glob(f"{name}-{version}.tar.gz")), None)
    if archive is None:
        log(f"downloading the {driver.sdist} source distribution with pip")
        # --no-binary for this package only: its build requirements may come as wheels.
        pip = [python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-input", "--no-deps", "--no-binary", name, "-d", downloads, driver.sdist]
        try:
            run(pip, timeout=900)
        except RuntimeError as e:
            log(f"pip download failed, once more: {str(e)[-500:]}")
            run(pip, timeout=900)
        archive = next(iter(downloads.glob(f"{name}-{version}.tar.gz")), None)
        if archive is None:
            raise RuntimeError(f"pip download {driver.sdist} left no {name}-{version}.tar.gz "
                               f"in {downloads}")
    (cache / "sdists").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache / "sdists"))
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(staging, filter="data")
        except TypeError:  # Python before 3.11.4 has no extraction filters
            tar.extractall(staging)
    top = staging / f"{name}-{version}"
    for rel in driver.remove:
        shutil.rmtree(top / rel, ignore_errors=True)
    (top / ".complete").write_text(f"{archive.name}\n")
    shutil.rmtree(tree, ignore_errors=True)
    top.rename(tree)
    shutil.rmtree(staging, ignore_errors=True)
    return tree


# -- the database servers and the proxy -----------------------------------------------------------

@dataclass
class Cluster:
    """A throwaway server of an engine: a PostgreSQL cluster (scripts/pg.sh, superuser `postgres`)
    or a MariaDB server (scripts/mysql.sh, admin user `concierge_admin`), max_connections=100."""
    engine: str
    root: Path
    port: int
    password: str      # the superuser's
    bindir: Path | None = None  # PostgreSQL's, for psql

    @property
    def user(self) -> str:
        return SUPERUSER[self.engine]

    def sql(self, sql: str, dbname: str | None = None) -> str:
        """Run SQL as the superuser (PostgreSQL: in dbname, default postgres)."""
        if self.engine == MYSQL:
            return run(["bash", MY_SH, "sql", self.port, sql, *([dbname] if dbname else [])],
                       env=clean_env(CONCIERGE_MYSQL_PASSWORD=self.password), timeout=60)
        return run([self.bindir / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                    "-p", self.port, "-U", "postgres", "-d", dbname or "postgres", "-c", sql],
                   env=clean_env(PGPASSWORD=self.password), timeout=60)

    def select_one(self, port: int) -> subprocess.CompletedProcess:
        """`select 1` as the superuser through whatever listens on port (the proxy)."""
        if self.engine == MYSQL:
            client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
            cmd = [client, "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(port),
                   "-u", self.user, "--batch", "--skip-column-names", "--connect-timeout=3",
                   "-e", "select 1"]
            env = clean_env(MYSQL_PWD=self.password)
        else:
            cmd = [str(self.bindir / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port),
                   "-U", "postgres", "-d", "postgres", "-c", "select 1"]
            env = clean_env(PGPASSWORD=self.password, PGCONNECT_TIMEOUT="3")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15, env=env)

    def stop(self) -> None:
        script = MY_SH if self.engine == MYSQL else PG_SH
        subprocess.run(["bash", str(script), "stop", str(self.root / "data")],
                       capture_output=True, text=True, timeout=120, env=clean_env())


def start_cluster(engine: str, root: Path, bindir: Path | None) -> Cluster:
    password = secrets.token_hex(16)
    port = free_port()
    if engine == MYSQL:
        root.mkdir(parents=True, exist_ok=True)
        run(["bash", MY_SH, "start", root / "data", port, "max_connections=100"],
            env=clean_env(CONCIERGE_MYSQL_PASSWORD=password), timeout=300)
    else:
        run(["bash", PG_SH, "start", root / "data", port, "max_connections=100"],
            env=clean_env(CONCIERGE_PG_PASSWORD=password), timeout=300)
    cluster = Cluster(engine=engine, root=root, port=port, password=password, bindir=bindir)
    for driver in DRIVERS.values():
        if driver.engine != engine:
            continue
        for db in driver.databases:
            cluster.sql(f"create database {db}")
        for db, extensions in driver.extensions.items():
            for ext in extensions:
                cluster.sql(f"create extension if not exists {ext}", dbname=db)
    return cluster


@dataclass
class Proxy:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait; the exit status (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


RUNNING_PROXIES: list[Proxy] = []  # stopped at exit, whatever happened


def start_proxy(binary: Path, workdir: Path, cluster: Cluster, cap_percent: int) -> Proxy:
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / f"{cluster.user}.json"
    secret.touch(mode=0o600)
    secret.write_text(json.dumps({"username": cluster.user, "password": cluster.password}))
    port = free_port()
    client_auth = "MYSQL_NATIVE_PASSWORD" if cluster.engine == MYSQL else "POSTGRES_SCRAM_SHA_256"
    (workdir / "concierge.yaml").write_text(f"""\
drain_timeout: 5
proxies:
  - name: drivers
    engine_family: {cluster.engine}
    listen: "127.0.0.1:{port}"
    debug_logging: true
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:{secret.name}"
        iam_auth: DISABLED
        client_password_auth_type: {client_auth}
    target_group:
      connection_pool_config:
        max_connections_percent: {cap_percent}
        max_idle_connections_percent: {cap_percent}
        connection_borrow_timeout: 20
      targets:
        - endpoint: "127.0.0.1:{cluster.port}"
""")
    log_path = workdir / "concierge.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "--config", "concierge.yaml"], cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env())
    proxy = Proxy(proc=proc, port=port, log_path=log_path)
    RUNNING_PROXIES.append(proxy)
    deadline = time.monotonic() + 30
    while True:
        if not proxy.alive():
            raise RuntimeError(f"concierge exited {proc.returncode} at start:\n{proxy.log_tail()}")
        check = cluster.select_one(port)
        if check.returncode == 0 and check.stdout.strip() == "1":
            return proxy
        if time.monotonic() > deadline:
            proxy.stop()
            raise RuntimeError(f"concierge did not serve select 1 within 30 s:\n{check.stderr}\n"
                               f"{proxy.log_tail()}")
        time.sleep(0.2)


# -- running one suite against one target ----------------------------------------------------------

@dataclass
class TestResult:
    status: str       # passed, failed, error, skipped, hung, missing
    message: str = ""


@dataclass
class SuiteRun:
    target: str
    results: dict[str, TestResult]
    seconds: float
    restarts: int
    log_path: Path
    note: str = ""

    def count(self, status: str) -> int:
        return sum(1 for r in self.results.values() if r.status == status)


def read_outcomes(path: Path) -> tuple[dict[str, list[dict]], list[str], bool]:
    """Reports per node id, the node ids started in order, and whether the session finished."""
    reports: dict[str, list[dict]] = {}
    started: list[str] = []
    finished = False
    if not path.exists():
        return reports, started, finished
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short when the process was killed
        if "start" in rec:
            started.append(rec["start"])
        elif "finished" in rec:
            finished = True
        elif "collect" in rec:
            reports.setdefault(rec["collect"], []).append(
                {"when": "collect", "outcome": "failed", "message": rec.get("message", "")})
        elif "nodeid" in rec:
            reports.setdefault(rec["nodeid"], []).append(rec)
    return reports, started, finished


def summarize(reports: list[dict]) -> TestResult:
    failed = [r for r in reports if r["outcome"] == "failed"]
    if failed:
        first = failed[0]
        status = "failed" if first["when"] == "call" else "error"
        return TestResult(status, f"{first['when']}: {first.get('message', '')}".strip())
    skipped = [r for r in reports if r["outcome"] == "skipped"]
    if skipped:
        return TestResult("skipped", skipped[0].get("message", ""))
    if any(r["when"] == "call" and r["outcome"] == "passed" for r in reports):
        return TestResult("passed")
    return TestResult("error", "no call report")


def run_suite(python: Path, tree: Path, driver: Driver, target: Target, outdir: Path,
              per_test_timeout: int, deadline_s: float, extra: list[str], tag: str = "",
              selection: list[str] | None = None) -> SuiteRun:
    """Run the suite, resuming after a test that hung (pytest-timeout's thread method ends the
    process), until pytest finishes, the deadline passes or it has been resumed 10 times."""
    outdir.mkdir(parents=True, exist_ok=True)
    outcomes = outdir / f"{target.name}{tag}.outcomes.jsonl"
    done_file = outdir / f"{target.name}{tag}.done"
    log_path = outdir / f"{target.name}{tag}.log"
    for p in (outcomes, done_file, log_path):
        p.unlink(missing_ok=True)
    hung: dict[str, TestResult] = {}
    start = time.monotonic()
    restarts = 0
    note = ""
    env = clean_env(PYTHONPATH=str(HERE), CONCIERGE_DRIVERS_OUTCOMES=str(outcomes),
                    CONCIERGE_DRIVERS_DONE=str(done_file), PYTHONDONTWRITEBYTECODE="1",
                    **driver.env(target, outdir))
    cmd = [str(python), "-m", "pytest", "-p", "concierge_outcomes", "-p", "no:cacheprovider",
           "-q", "-rN", f"--timeout={per_test_timeout}", "--timeout-method=thread",
           *driver.options, *(driver.paths if selection is None else selection), *extra]
    while True:
        with open(log_path, "ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            remaining = deadline_s - (time.monotonic() - start)
            try:
                proc.wait(timeout=max(remaining, 1))
                killed = False
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                killed = True
        reports, started, finished = read_outcomes(outcomes)
        if finished:
            break
        # Killed (by pytest-timeout or our deadline): the last test started without a teardown
        # report is the one that hung.
        culprit = next((n for n in reversed(started)
                        if not any(r["when"] == "teardown" for r in reports.get(n, []))), None)
        if culprit is not None:
            why = (f"the suite passed its {deadline_s:.0f} s deadline" if killed else
                   f"no result within {per_test_timeout} s (pytest-timeout ended the process)")
            hung[culprit] = TestResult("hung", why)
        if killed or culprit is None or restarts >= 10:
            note = ("deadline passed" if killed else
                    "pytest died outside a test" if culprit is None else "resumed 10 times")
            break
        restarts += 1
        done_file.write_text("".join(f"{n}\n" for n in {*reports, *hung, *started}))
    reports, _, _ = read_outcomes(outcomes)
    results = {nodeid: summarize(reps) for nodeid, reps in reports.items()}
    for nodeid, res in hung.items():
        results[nodeid] = res
    return SuiteRun(target=target.name, results=results, seconds=time.monotonic() - start,
                    restarts=restarts, log_path=log_path, note=note)


# -- comparing --------------------------------------------------------------------------------------

def load_inherent(path: Path) -> dict[tuple[str, str], str]:
    """(driver, test id) -> reason, from lines `DRIVER TEST-ID REASON...` (# comments)."""
    entries: dict[tuple[str, str], str] = {}
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise SystemExit(f"{path}:{number}: expected `DRIVER TEST-ID REASON`, got {raw!r}")
        entries[(parts[0], parts[1])] = parts[2]
    return entries


def load_flaky(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(driver, test id) -> (signature, reason), from lines `DRIVER TEST-ID "SIGNATURE" REASON`."""
    entries: dict[tuple[str, str], tuple[str, str]] = {}
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        driver, test, rest = (line.split(None, 2) + ["", ""])[:3]
        if not rest.startswith('"') or rest.find('"', 1) < 0:
            raise SystemExit(f"{path}:{number}: expected `DRIVER TEST-ID \"SIGNATURE\" REASON`, got {raw!r}")
        end = rest.find('"', 1)
        entries[(driver, test)] = (rest[1:end], rest[end + 1:].strip())
    return entries


def compare(direct: SuiteRun, proxied: SuiteRun) -> list[tuple[str, TestResult, TestResult]]:
    """Tests that passed directly and did not pass through the proxy."""
    diffs = []
    for nodeid, d in sorted(direct.results.items()):
        if d.status != "passed":
            continue
        p = proxied.results.get(nodeid, TestResult("missing", "no result through the proxy"))
        if p.status != "passed":
            diffs.append((nodeid, d, p))
    return diffs


@dataclass
class DriverResult:
    direct: SuiteRun
    proxied: SuiteRun
    # For each difference not in the inherent list: its outcomes when run again by itself,
    # directly (several times: a test that fails there too is flaky in itself) and through a
    # fresh proxy (once: does it fail in isolation, or only after what ran before it?).
    direct_reruns: dict[str, list[str]] = field(default_factory=dict)
    proxy_rerun: dict[str, str] = field(default_factory=dict)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drivers", default=os.environ.get("CONCIERGE_DRIVERS", ",".join(DRIVERS)))
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "CONCIERGE_DRIVERS_CACHE", Path.home() / ".cache" / "concierge-driver-suites")))
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get(
        "CONCIERGE_BIN") or REPO_ROOT / ".build" / "debug" / "concierge"))
    ap.add_argument("--cap", type=int, default=int(os.environ.get("CONCIERGE_DRIVERS_CAP", "5")),
                    help="backends the proxy may open (its cluster has max_connections=100)")
    ap.add_argument("--timeout", type=int,
                    default=int(os.environ.get("CONCIERGE_DRIVERS_TIMEOUT", "120")),
                    help="seconds one test may take before it counts as hung")
    ap.add_argument("--deadline", type=int, default=900, help="seconds one suite run may take")
    ap.add_argument("--budget", type=int,
                    default=int(os.environ.get("CONCIERGE_DRIVERS_BUDGET", "1800")),
                    help="seconds the whole run may take (suites still running then are ended "
                         "and count as hung; drivers not started are reported and fail the run)")
    ap.add_argument("--reruns", type=int,
                    default=int(os.environ.get("CONCIERGE_DRIVERS_RERUNS", "4")),
                    help="direct reruns of each unexpected difference (one failure there: the "
                         "test is flaky in itself and the difference does not count)")
    ap.add_argument("--keep", action="store_true",
                    default=os.environ.get("CONCIERGE_DRIVERS_KEEP") == "1",
                    help="keep the servers' data directories")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression for every suite")
    args = ap.parse_args()

    names = [n.strip() for n in args.drivers.split(",") if n.strip()]
    unknown = [n for n in names if n not in DRIVERS]
    if unknown:
        ap.error(f"unknown driver(s) {unknown}; known: {', '.join(DRIVERS)}")
    if not (1 <= args.cap <= 100):
        ap.error("--cap must be 1..100 (the proxy's cluster has max_connections=100)")
    if not args.bin.is_file() or not os.access(args.bin, os.X_OK):
        log(f"concierge binary not found at {args.bin}: build it or set CONCIERGE_BIN")
        return 2
    inherent = load_inherent(INHERENT_FILE)
    extra = ["-k", args.keyword] if args.keyword else []

    t0 = time.monotonic()
    end = t0 + args.budget

    def suite_deadline(cap: float = args.deadline) -> float:
        return max(0.0, min(cap, end - time.monotonic()))

    args.cache.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.cache)
    trees = {n: ensure_sdist(args.cache, python, DRIVERS[n]) for n in names}
    engines = [e for e in (POSTGRESQL, MYSQL) if any(DRIVERS[n].engine == e for n in names)]
    bindir = Path(run(["bash", PG_SH, "bindir"]).strip()) if POSTGRESQL in engines else None
    work = Path(tempfile.mkdtemp(prefix="concierge-drivers-", dir="/tmp"))
    work.chmod(0o755)  # the servers inside run as another OS user when we are root
    log(f"work directory {work} (suite logs, outcomes, proxy logs); proxy {args.bin}")

    # (engine, "direct" | "proxied") -> its server; all started at once.
    clusters: dict[tuple[str, str], Cluster] = {}
    errors: list[str] = []

    def start(key: tuple[str, str]) -> None:
        engine, which = key
        prefix = "my" if engine == MYSQL else "pg"
        try:
            clusters[key] = start_cluster(engine, work / f"{prefix}-{which}", bindir)
        except Exception as e:  # reported below
            errors.append(f"{engine} server {which}: {e}")

    parallel(start, [(e, w) for e in engines for w in ("direct", "proxied")])
    results: dict[str, DriverResult] = {}
    proxy_problems: dict[str, str] = {}
    try:
        if errors:
            for e in errors:
                log(e)
            return 2
        log(f"setup took {time.monotonic() - t0:.0f} s; " + "; ".join(
            f"direct {'MariaDB' if e == MYSQL else 'PostgreSQL'} on port "
            f"{clusters[e, 'direct'].port}, the proxied one on {clusters[e, 'proxied'].port}"
            for e in engines) + f"; cap {args.cap} backends")
        for name in names:
            driver = DRIVERS[name]
            direct_c, proxied_c = clusters[driver.engine, "direct"], clusters[driver.engine, "proxied"]
            direct_t = Target("direct", "127.0.0.1", direct_c.port, direct_c.password, direct_c.user)
            outdir = work / name
            if suite_deadline() < 60:
                proxy_problems[name] = (f"{name} was not run: the run's budget of {args.budget} s "
                                        f"(--budget, CONCIERGE_DRIVERS_BUDGET) is used up")
                continue
            proxy = start_proxy(args.bin, outdir / "proxy", proxied_c, args.cap)
            proxy_t = Target("concierge", "127.0.0.1", proxy.port, proxied_c.password,
                             proxied_c.user)
            got: dict[str, SuiteRun] = {}

            def one(target: Target) -> None:
                got[target.name] = run_suite(python, trees[name], driver, target, outdir,
                                             args.timeout, suite_deadline(), extra)

            log(f"{name} {driver.version}: running its suite directly and through the proxy")
            parallel(one, [direct_t, proxy_t])
            problem = check_proxy(proxy, f"the {name} suite")
            if problem:
                proxy_problems[name] = problem
            result = results[name] = DriverResult(got["direct"], got["concierge"])
            for r in (result.direct, result.proxied):
                log(f"  {r.target}: {len(r.results)} tests in {r.seconds:.0f} s"
                    + (f", resumed {r.restarts}x after hung tests" if r.restarts else "")
                    + (f" ({r.note})" if r.note else ""))

            suspects = [n for n, _, _ in compare(result.direct, result.proxied)
                        if (name, n) not in inherent]
            if suspects and args.reruns > 0 and len(suspects) <= 100:
                log(f"  {len(suspects)} unexpected difference(s): running them again by "
                    f"themselves, {args.reruns}x directly and once through a fresh proxy")
                rerun(python, trees[name], driver, direct_t, proxied_c, args,
                      lambda: suite_deadline(300), outdir, suspects, result, proxy_problems)
    finally:
        for p in RUNNING_PROXIES:
            p.stop()
        for c in clusters.values():
            c.stop()
        if not args.keep:
            for c in clusters.values():
                shutil.rmtree(c.root, ignore_errors=True)

    return report(results, inherent, proxy_problems, work, time.monotonic() - t0,
                  filtered=bool(args.keyword))


def parallel(fn: Callable, items: list) -> None:
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def check_proxy(proxy: Proxy, during: str) -> str:
    """Stops the proxy; what went wrong with it, if anything."""
    if not proxy.alive():
        return (f"the proxy died during {during} (exit {proxy.proc.returncode}); "
                f"log {proxy.log_path}:\n{proxy.log_tail()}")
    status = proxy.stop()
    if status != 0:
        return (f"the proxy exited {status} on SIGTERM after {during}; "
                f"log {proxy.log_path}:\n{proxy.log_tail()}")
    return ""


def rerun(python: Path, tree: Path, driver: Driver, direct_t: Target, proxied: Cluster,
          args, deadline: Callable[[], float], outdir: Path, suspects: list[str],
          result: DriverResult,
          proxy_problems: dict[str, str]) -> None:
    def directly(_) -> None:
        for i in range(args.reruns):
            if deadline() < 30:
                break
            r = run_suite(python, tree, driver, direct_t, outdir, args.timeout, deadline(),
                          [], tag=f".rerun{i + 1}", selection=suspects)
            for n in suspects:
                res = r.results.get(n, TestResult("missing"))
                # Ended by the run's budget rather than by its own timeout: no evidence either way.
                cut = res.status == "hung" and "deadline" in res.message
                result.direct_reruns.setdefault(n, []).append("cut short" if cut else res.status)

    def through_proxy(_) -> None:
        if deadline() < 30:
            return
        proxy = start_proxy(args.bin, outdir / "proxy-rerun", proxied, args.cap)
        target = Target("concierge", "127.0.0.1", proxy.port, proxied.password, proxied.user)
        r = run_suite(python, tree, driver, target, outdir, args.timeout, deadline(), [],
                      tag=".rerun", selection=suspects)
        for n in suspects:
            result.proxy_rerun[n] = r.results.get(n, TestResult("missing")).status
        problem = check_proxy(proxy, f"the {driver.name} reruns")
        if problem:
            proxy_problems[driver.name + " reruns"] = problem

    parallel(lambda f: f(None), [directly, through_proxy])


def report(results: dict[str, DriverResult], inherent: dict[tuple[str, str], str],
           proxy_problems: dict[str, str], work: Path, seconds: float, filtered: bool) -> int:
    flaky_directly = load_flaky(FLAKY_FILE)
    print()
    print("==== driver test suites: directly vs through Concierge ====")
    width = max([16] + [len(f"{n} {DRIVERS[n].version}") for n in results])
    header = f"{'driver':<{width}} {'target':<10} {'run':>5} {'passed':>7} {'failed':>7} " \
             f"{'errors':>7} {'skipped':>8} {'hung':>5} {'time':>6}"
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        for r in (res.direct, res.proxied):
            print(f"{name + ' ' + DRIVERS[name].version if r.target == 'direct' else '':<{width}} "
                  f"{r.target:<10} {len(r.results):>5} {r.count('passed'):>7} "
                  f"{r.count('failed'):>7} {r.count('error'):>7} {r.count('skipped'):>8} "
                  f"{r.count('hung'):>5} {r.seconds:>5.0f}s")
    unexpected: list[str] = []
    flaky: list[str] = []
    expected: list[str] = []
    seen_keys: set[tuple[str, str]] = set()
    for name, res in results.items():
        for nodeid, d, p in compare(res.direct, res.proxied):
            key = (name, nodeid)
            seen_keys.add(key)
            message = " ".join(p.message.split())
            message = message if len(message) <= 300 else message[:297] + "..."
            line = f"  {name} {nodeid}\n      direct: passed; concierge: {p.status}: {message}"
            if key in inherent:
                expected.append(f"{line}\n      inherent: {inherent[key]}")
                continue
            if key in flaky_directly and flaky_directly[key][0] in message:
                flaky.append(f"{line}\n      fails directly too, with this failure ({FLAKY_FILE.name}): "
                             f"{flaky_directly[key][1]}")
                continue
            reruns = res.direct_reruns.get(nodeid, [])
            alone = res.proxy_rerun.get(nodeid)
            if alone is not None:
                line += f"\n      by itself through a fresh proxy: {alone}"
            if any(s in ("failed", "error", "hung") for s in reruns):
                flaky.append(f"{line}\n      by itself directly: {', '.join(reruns)}: "
                             f"flaky without the proxy too, not counted")
            else:
                if reruns:
                    line += f"\n      by itself directly: {', '.join(reruns)}"
                unexpected.append(line)
        if res.direct.count("passed") == 0:
            unexpected.append(f"  {name}: no test passed directly (see {res.direct.log_path})")
    print()
    print(f"differences (passed directly, not through Concierge): "
          f"{len(expected) + len(unexpected) + len(flaky)}: {len(expected)} inherent (listed in "
          f"{INHERENT_FILE.relative_to(REPO_ROOT)}), {len(flaky)} flaky without the proxy too, "
          f"{len(unexpected)} unexpected")
    if expected:
        print("inherent differences:")
        print("\n".join(expected))
    if flaky:
        print("flaky tests (they also fail directly):")
        print("\n".join(flaky))
    if unexpected:
        print("UNEXPECTED differences (not in the list):")
        print("\n".join(unexpected))
    if not filtered:
        stale = [f"  {d} {t}" for (d, t) in inherent if d in results and (d, t) not in seen_keys]
        if stale:
            print(f"listed inherent differences that did not differ this time ({len(stale)}; "
                  f"not a failure, but check whether the entry is still needed):")
            print("\n".join(stale))
    for problem in proxy_problems.values():
        print(f"PROBLEM: {problem}")
    print(f"logs: {work} ({seconds:.0f} s in all)")
    ok = not unexpected and not proxy_problems
    print(f"driver suites: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
