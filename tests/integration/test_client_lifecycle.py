"""Clients that die, idle out, or exceed the limit: nothing is left behind on the database."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from helpers import DIRECT, wait_for

# A child process that takes an ACCESS EXCLUSIVE lock in an open transaction, says so on stdout,
# and then either idles (in the transaction) or runs a long pg_sleep, until it is SIGKILLed.
LOCK_HOLDER = textwrap.dedent("""
    import sys, time, psycopg
    conninfo, mode = sys.argv[1], sys.argv[2]
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("BEGIN")
    conn.execute("LOCK TABLE locktest IN ACCESS EXCLUSIVE MODE")
    print("locked", flush=True)
    if mode == "sleep":
        conn.execute("select pg_sleep(60)")
    else:
        time.sleep(600)
""")

LOCK_HELD_SQL = ("select count(*) from pg_locks where relation = 'locktest'::regclass "
                 "and mode = 'AccessExclusiveLock' and granted")
IDLE_IN_TX_SQL = ("select count(*) from pg_stat_activity where datname = 'app' "
                  "and state like 'idle in transaction%'")
SLEEPING_SQL = ("select count(*) from pg_stat_activity where state = 'active' "
                "and query = 'select pg_sleep(60)'")


@pytest.mark.parametrize("mode", ["idle", "sleep"])
def test_killed_client_releases_its_lock(proxy, pg, mode):
    p = proxy()
    params = {}
    if DIRECT and mode == "sleep":
        # PostgreSQL alone notices a vanished client during a query only with this setting;
        # the proxy must manage without it (cancel the query or end the backend).
        params["options"] = "-c client_connection_check_interval=200"
    child = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, p.conninfo(**params), mode],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert pg.scalar(LOCK_HELD_SQL) == 1
        if mode == "sleep":
            wait_for(lambda: pg.scalar(SLEEPING_SQL) == 1, 10, "pg_sleep(60) to be running")
        else:
            wait_for(lambda: pg.scalar(IDLE_IN_TX_SQL) == 1, 10, "an idle-in-transaction backend")
    finally:
        child.kill()
        child.wait()

    wait_for(lambda: pg.scalar(LOCK_HELD_SQL) == 0, 10, "the dead client's lock to go")
    wait_for(lambda: pg.scalar(IDLE_IN_TX_SQL) == 0 and pg.scalar(SLEEPING_SQL) == 0, 10,
             "no idle-in-transaction or sleeping backend left")
    # Another client can take the lock at once.
    out = p.psql(input="SET lock_timeout = '5s';\nBEGIN;\n"
                       "LOCK TABLE locktest IN ACCESS EXCLUSIVE MODE;\nCOMMIT;\n").stdout
    assert out.splitlines()[-1] == "COMMIT"


def test_idle_client_timeout(proxy):
    p = proxy(idle_client_timeout=1)
    params = {}
    if DIRECT:
        # PostgreSQL's own equivalent, so this test's logic can be checked without a proxy.
        params["options"] = "-c idle_session_timeout=1000"
    with p.wire() as idle, p.connect() as busy:
        idle.startup("app", p.passwords["app"], **params)
        started = time.monotonic()
        # The busy client keeps working (never idle for 1 s) while we await the idle one's EOF.
        messages = []

        def idle_closed() -> bool:
            assert busy.execute("select 1").fetchone()[0] == 1
            try:
                msg = idle.recv(timeout=0.2)
            except TimeoutError:
                return False
            if msg is None:
                return True  # EOF: the server closed the idle connection
            messages.append(msg)
            return False

        wait_for(idle_closed, 15, "the idle client to be disconnected", interval=0.0)
        elapsed = time.monotonic() - started
        print(f"\nidle client closed after {elapsed:.2f}s; last messages: {messages}")
        assert elapsed >= 0.9, f"closed after {elapsed:.2f}s, before the 1s idle timeout"
        # Other clients are unaffected.
        assert busy.execute("select 2").fetchone()[0] == 2
    p.assert_serves()


@pytest.mark.proxy_only
def test_max_client_connections(proxy):
    p = proxy(max_client_connections=2)
    a, b = p.connect(), p.connect()
    try:
        with pytest.raises(psycopg.OperationalError) as exc:
            p.connect()
        assert "The maximum number of client connections to the proxy exceeded" in str(exc.value)
        proc = p.psql("select 1", check=False)
        assert "The maximum number of client connections to the proxy exceeded" in proc.stderr
        # The admitted clients still work; once one leaves, a new client gets in.
        assert a.execute("select 1").fetchone()[0] == 1
        assert b.execute("select 1").fetchone()[0] == 1
        a.close()
        wait_for(lambda: p.psql("select 1", check=False).returncode == 0, 10,
                 "a free client slot after one client left")
    finally:
        a.close()
        b.close()


@pytest.mark.proxy_only
def test_idle_timeout_closes_pinned_clients_and_frees_their_backend(proxy, pg):
    # A pinned client idle between transactions is closed like any other, and its dedicated
    # backend is closed with it (its session state must not reach anyone else).
    p = proxy(idle_client_timeout=1)
    with p.wire() as pinned:
        # application_name (tracked, no pin) names the backend; work_mem pins it.
        pinned.startup("app", p.passwords["app"], application_name="pinned_idle")
        pinned.query("set work_mem = '5MB'")
        assert pg.scalar("select count(*) from pg_stat_activity where application_name = 'pinned_idle'") == 1

        def closed() -> bool:
            try:
                return pinned.recv(timeout=0.2) is None
            except TimeoutError:
                return False
            except OSError:
                return True

        wait_for(closed, 15, "the pinned idle client to be disconnected", interval=0.0)
    wait_for(lambda: pg.scalar("select count(*) from pg_stat_activity "
                               "where application_name = 'pinned_idle'") == 0,
             10, "the pinned backend to be closed")
    p.assert_serves()


@pytest.mark.proxy_only
def test_database_down_gives_a_clear_error_and_the_proxy_keeps_running(proxy):
    # Nothing listens on the target: a client gets a FATAL naming the problem (not a hang),
    # and the proxy stays up for the next one.
    from helpers import free_port
    p = proxy(db_port=free_port(), wait_ready=False)
    for _ in range(2):
        proc = p.psql("select 1", check=False)
        assert proc.returncode != 0
        assert "could not connect to the database" in proc.stderr, proc.stderr
    assert p.alive()


@pytest.mark.proxy_only
def test_client_and_backend_sockets_disable_nagle_and_keep_alive(proxy):
    # Every connected TCP socket of the proxy (clients and backends) has TCP_NODELAY: small
    # protocol messages must not wait for the peer's ACK. (A bug set SO_DEBUG instead.) And
    # SO_KEEPALIVE, so that a peer that vanished is noticed; client sockets inherit both from the
    # listener, which also defers accepting until the client's first bytes arrive.
    import ctypes
    import socket
    p = proxy()
    with p.connect() as a, p.connect() as b:
        a.execute("select 1")
        b.execute("select 1")
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(p.proc.pid)
        checked = listeners = 0
        try:
            for entry in os.listdir(f"/proc/{p.proc.pid}/fd"):
                if not os.readlink(f"/proc/{p.proc.pid}/fd/{entry}").startswith("socket:"):
                    continue
                fd = libc.syscall(438, pidfd, int(entry), 0)  # pidfd_getfd
                if fd < 0:
                    pytest.skip(f"pidfd_getfd: errno {ctypes.get_errno()}")
                s = socket.socket(fileno=fd)
                try:
                    if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                        continue
                    try:
                        s.getpeername()
                    except OSError:
                        if s.getsockname()[1] == p.port:
                            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0, \
                                f"listener fd {entry} does not defer accepting"
                            listeners += 1
                        continue  # a listener
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, \
                        f"fd {entry} {s.getsockname()} -> {s.getpeername()} has Nagle on"
                    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0, \
                        f"fd {entry} {s.getsockname()} -> {s.getpeername()} has no keepalive"
                    checked += 1
                finally:
                    s.close()
        finally:
            os.close(pidfd)
        assert checked >= 3, f"only {checked} connected sockets found"
        assert listeners >= 1, "no listening socket found"


@pytest.mark.proxy_only
def test_serves_when_run_as_an_unprivileged_user(pg, concierge_bin, tmp_path):
    # Operators run the proxy as a plain user. A socket option that needs privileges (a bug set
    # SO_DEBUG, allowed only to root, on every client socket) must not break it.
    import pwd
    import shutil
    import tempfile
    from helpers import clean_env, free_port, proxy_config, to_yaml, write_secret
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    user = "concierge-pg"  # created by scripts/pg.sh for PostgreSQL itself
    entry = pwd.getpwnam(user)
    workdir = Path(tempfile.mkdtemp(prefix="concierge-unprivileged-"))
    try:
        secrets = {name: write_secret(workdir / f"{name}.json", name, password)
                   for name, password in pg.passwords.items()}
        port = free_port()
        config = proxy_config(listen_port=port, db_port=pg.port, secrets=secrets)
        (workdir / "concierge.yaml").write_text(to_yaml(config) + "\n")
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        binary = workdir / "concierge"
        shutil.copy(concierge_bin, binary)
        os.chown(binary, entry.pw_uid, entry.pw_gid)
        proc = subprocess.Popen(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                                 str(binary), "serve", "--config", str(workdir / "concierge.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env(), cwd=workdir)
        try:
            def served() -> bool:
                try:
                    with psycopg.connect(host="127.0.0.1", port=port, user="app", dbname="app",
                                         password=pg.passwords["app"], sslmode="disable",
                                         connect_timeout=2) as c:
                        return c.execute("select current_user").fetchone()[0] == "app"
                except psycopg.OperationalError:
                    assert proc.poll() is None, proc.stdout.read().decode()
                    return False
            wait_for(served, 20, "a query through the proxy run as an unprivileged user")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.proxy_only
@pytest.mark.parametrize("threads", [None, 3])
def test_event_loop_threads(proxy, threads):
    # By default one event loop per core serves clients; --threads overrides it. The log says how
    # many, and the process runs exactly that many event-loop threads.
    import re
    p = proxy(threads=threads)
    with p.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    line = re.search(r'msg="event loops".*', p.log())
    assert line, p.log()
    logged_threads = int(re.search(r"threads=(\d+)", line.group(0)).group(1))
    cores = int(re.search(r"cores=(\d+)", line.group(0)).group(1))
    assert cores >= 1
    expected = threads if threads else cores
    assert logged_threads == expected
    names = [Path(f"/proc/{p.proc.pid}/task/{t}/comm").read_text().strip()
             for t in os.listdir(f"/proc/{p.proc.pid}/task")]
    assert sum(1 for n in names if n.startswith("NIO-ELT")) == expected, names


@pytest.mark.proxy_only
def test_a_client_that_connects_as_the_proxy_starts_is_served(proxy):
    # The first connection that the port accepts must be served. Before listening on every event
    # loop (SO_REUSEPORT), the proxy checked the address with a socket that listened for a moment:
    # a client accepted there got no answer at all (the differential fuzzer found it).
    for attempt in range(8):
        p = proxy(no_wait=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = p.wire(timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the proxy never listened"
                time.sleep(0.001)
        with client:
            client.startup("app", p.passwords["app"])  # TimeoutError if nobody serves it
            assert client.query("select 1") == [("1",)]
