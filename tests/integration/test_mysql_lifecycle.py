"""The proxy's life around a MySQL proxy's clients, as for PostgreSQL's (test_reload.py,
test_drain.py, test_secrets.py, test_secrets_manager.py, test_client_lifecycle.py):

- SIGHUP reloads pool settings, timeouts and auth entries (a user added, then removed; the
  client auth plugin the greeting announces) without dropping clients; a bad file or a change
  that needs a restart (a listen address, the engine family) is refused and logged, and the
  running configuration stays.
- SIGTERM: new clients are refused, idle clients get ERROR 1053 (Server shutdown in progress)
  and are closed at once (pinned ones too), an open transaction may finish and commit, a
  statement waiting for a backend is served, one that never finishes is ended (and rolled back
  on the database) at drain_timeout; clients that came and went leave nothing that holds the
  shutdown up.
- Secrets: a rotated secret (the database's password changed first) takes effect without
  dropping clients: new logins are checked against it and new backends log in to MariaDB with
  it; a stale secret marks the target AUTH_FAILURE (named, never its value) and heals once
  fixed; a secret in Secrets Manager (moto_server) and its rotation.
- Clients that die leave no lock or transaction behind; a database that is down or a backend
  lost mid-transaction gives a clear ERR (never a client library's own 2000-2999 code, which the
  `mariadb` client shows as "Received malformed packet").
- idle_client_timeout (also changed live) closes a client idle between transactions (ERROR
  4031), pinned ones too (and closes their backend), but never one inside a transaction, running
  a long statement, or waiting for a backend; a client that does not finish its login within
  30 s is closed (ERROR 1043, Bad handshake, with the sequence id its client waits for).

MariaDB itself closes a timed-out or killed connection without a word (the `mariadb` client then
says "Server has gone away"); the proxy sends an ERR first, which a raw client reads here.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymysql
import pytest

from admin_helpers import AdminApi
from helpers import free_port, port_accepts, to_yaml, wait_for, write_secret
from mysql_fixtures import (CACHING_SHA2, NATIVE, MariaDB, MySQLProxy, metric, mysql_env)
from mywire import COM_QUERY, COM_QUIT, ErrPacket, MyWireClient, Packet, parse_err

pytestmark = pytest.mark.proxy_only


# -- helpers ---------------------------------------------------------------------------------

def admin_api(p: MySQLProxy) -> AdminApi:
    host, port = p.admin_url.removeprefix("http://").split(":")
    return AdminApi(host, int(port), None)


def reload(p: MySQLProxy, text: str, expect: str) -> None:
    """Writes the config, sends SIGHUP and waits for the log line `expect` (one more of them)."""
    seen = p.log(10**9).count(expect)
    p.config_path.write_text(text)
    p.signal(signal.SIGHUP)
    wait_for(lambda: p.log(10**9).count(expect) > seen, 10, f"the proxy to log {expect!r}")


def auth_entry(secret: Path, auth_type: str = NATIVE) -> str:
    """An auth entry as the fixture's YAML writes them."""
    return (f'      - auth_scheme: "SECRETS"\n        secret_arn: "file:{secret}"\n'
            f'        iam_auth: "DISABLED"\n        client_password_auth_type: "{auth_type}"\n')


def with_auth_entry(text: str, secret: Path, auth_type: str = NATIVE) -> str:
    assert text.count("    target_group:\n") == 1, text
    return text.replace("    target_group:\n", auth_entry(secret, auth_type) + "    target_group:\n")


def login(p: MySQLProxy, user: str = "app", password: str | None = None,
          database: str | None = "app") -> MyWireClient:
    """A raw client, logged in with mysql_native_password."""
    w = p.wire()
    w.login(user, p.passwords[user] if password is None else password, database)
    return w


def rows(result) -> list[list[str | None]]:
    assert isinstance(result, list), f"expected rows, got {result}"
    return result


def read_until_closed(w: MyWireClient, timeout: float, while_waiting=None) -> tuple[list[Packet], float]:
    """Reads what the server sends until it closes the connection; returns the packets and when
    (monotonic) the close was seen. `while_waiting` runs between reads (a busy client's work)."""
    packets: list[Packet] = []

    def closed() -> bool:
        if while_waiting:
            while_waiting()
        try:
            packet = w.read_packet(timeout=0.2)
        except TimeoutError:
            return False
        except OSError:
            return True
        if packet is None:
            return True
        packets.append(packet)
        return False

    wait_for(closed, timeout, "the server to close the connection", interval=0.0)
    return packets, time.monotonic()


def last_err(packets: list[Packet]) -> ErrPacket:
    assert packets and packets[-1].is_err, f"no ERR before the close: {packets}"
    return parse_err(packets[-1].payload)


def processlist_ids(db: MariaDB, user: str) -> set[int]:
    return {r[0] for r in db.query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))}


def kill_sessions(db: MariaDB, user: str) -> None:
    for session in processlist_ids(db, user):
        try:
            db.query(f"KILL CONNECTION {session}")
        except pymysql.err.OperationalError as e:
            if e.args[0] != 1094:  # Unknown thread id: it ended meanwhile
                raise


# -- SIGHUP reload -----------------------------------------------------------------------------

def temporary_user(db: MariaDB, prefix: str):
    """A database user of its own (not in the fixture's secrets) with every right on `app`, for
    the length of a test: yields (name, password); its sessions are killed and it is dropped."""
    name = prefix + pysecrets.token_hex(3)
    password = pysecrets.token_hex(12)
    db.query(f"CREATE USER '{name}'@'%%' IDENTIFIED VIA mysql_native_password USING PASSWORD(%s)",
             (password,))
    db.query(f"GRANT ALL PRIVILEGES ON `app`.* TO '{name}'@'%'")
    yield name, password
    kill_sessions(db, name)
    db.query(f"DROP USER IF EXISTS '{name}'@'%'")


@pytest.fixture
def extra_user(mariadb):
    """A third database user (not in the fixture's secrets): name, password."""
    yield from temporary_user(mariadb, "app_x")


def test_reload_applies_pool_settings_and_auth_entries_without_dropping_clients(mysql_proxy, mariadb, extra_user):
    p = mysql_proxy(metrics=True)
    api = admin_api(p)
    original = p.config_path.read_text()
    name, password = extra_user
    secret = write_secret(p.config_path.parent / f"{name}.json", name, password)
    with pytest.raises(pymysql.err.OperationalError) as exc:
        p.connect(user=name, password=password)  # no auth entry for it yet
    assert exc.value.args == (1045, f"Access denied for user '{name}'@'%' (using password: YES)")

    # Pool settings, the idle timeout, and one more auth entry.
    text = original.replace("max_connections_percent: 10", "max_connections_percent: 4")
    text = text.replace("max_idle_connections_percent: 5", "max_idle_connections_percent: 2")
    text = text.replace("connection_borrow_timeout: 10", "connection_borrow_timeout: 7")
    text = text.replace("idle_client_timeout: 1800", "idle_client_timeout: 900")
    text = with_auth_entry(text, secret)
    assert text.count("max_connections_percent: 4") == 1
    idle = p.connect()
    in_tx = p.connect(autocommit=False)
    with in_tx.cursor() as cur:
        cur.execute("INSERT INTO items (v) VALUES ('reload in a transaction')")
        row_id = cur.lastrowid
    reload(p, text, "configuration reloaded")

    config = api.pool_config()
    assert config["MaxConnectionsPercent"] == 4
    assert config["ConnectionBorrowTimeout"] == 7
    described = api.db_proxy()
    assert described["EngineFamily"] == "MYSQL"
    assert described["IdleClientTimeout"] == 900
    assert name in [a.get("UserName") for a in described["Auth"]]
    assert metric(p.metrics(), "concierge_max_database_connections_allowed") == 4
    # The new user logs in (and the proxy's backends for it with its secret).
    extra = p.connect(user=name, password=password)
    with extra.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == f"{name}@%"

    # No client was dropped: the open transaction finishes, the idle one goes on.
    with in_tx.cursor() as cur:
        cur.execute("SELECT v FROM items WHERE id = %s", (row_id,))
        assert cur.fetchone() == ("reload in a transaction",)
    in_tx.commit()
    assert mariadb.scalar("SELECT COUNT(*) FROM items WHERE id = %s", (row_id,)) == 1
    with idle.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)

    # The entry goes again: its connected client stays and is served, new logins are refused.
    reload(p, original, "configuration reloaded")
    assert name not in [a.get("UserName") for a in api.db_proxy()["Auth"]]
    with extra.cursor() as cur:
        cur.execute("SELECT 4")
        assert cur.fetchone() == (4,)
    with pytest.raises(pymysql.err.OperationalError) as exc:
        p.connect(user=name, password=password)
    assert exc.value.args == (1045, f"Access denied for user '{name}'@'%' (using password: YES)")
    proc = p.cli("SELECT 1", user=name, password=password, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ERROR 1045 (28000): Access denied for user '{name}'@'%' (using password: YES)"
    assert api.pool_config()["MaxConnectionsPercent"] == 10
    assert metric(p.metrics(), "concierge_max_database_connections_allowed") == 10
    for c in (idle, in_tx, extra):
        c.close()


def test_reload_changes_the_client_auth_plugin_for_new_logins(mysql_proxy):
    # client_password_auth_type is reloadable: the greeting of new clients announces the new
    # plugin, and clients log in with it; a client logged in before stays.
    p = mysql_proxy()
    before = p.connect()
    with p.wire() as w:
        assert w.read_greeting().auth_plugin == "mysql_native_password"
    original = p.config_path.read_text()
    assert original.count(f'"{NATIVE}"') == 2
    reload(p, original.replace(f'"{NATIVE}"', f'"{CACHING_SHA2}"'), "configuration reloaded")
    with p.wire() as w:
        assert w.read_greeting().auth_plugin == "caching_sha2_password"
    assert p.cli("SELECT CURRENT_USER()").stdout.strip() == "app@%"
    with p.connect() as after, after.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    with before.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    before.close()


def test_reload_refuses_a_bad_file_and_keeps_the_running_configuration(mysql_proxy):
    p = mysql_proxy(metrics=True)
    api = admin_api(p)
    original = p.config_path.read_text()
    client = p.connect()

    def still_served():
        with client.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)

    reload(p, original.replace("max_connections_percent: 10", "max_connections_percent: 0"),
           "configuration not reloaded")
    log = p.log()
    assert "max_connections_percent" in log and "0" in log
    assert api.pool_config()["MaxConnectionsPercent"] == 10
    still_served()

    # A MySQL proxy's clients cannot use a PostgreSQL auth type: refused, naming key and value.
    reload(p, original.replace(f'"{NATIVE}"', '"POSTGRES_SCRAM_SHA_256"', 1), "configuration not reloaded")
    assert "client_password_auth_type" in p.log() and "POSTGRES_SCRAM_SHA_256" in p.log()
    assert [a["ClientPasswordAuthType"] for a in api.db_proxy()["Auth"]] == [NATIVE, NATIVE]
    still_served()

    reload(p, "proxies: [", "configuration not reloaded")  # not even YAML
    assert "malformed YAML" in p.log()
    still_served()
    assert p.alive()
    p.connect().close()
    client.close()


def test_reload_refuses_changes_that_need_a_restart(mysql_proxy):
    p = mysql_proxy(metrics=True)
    api = admin_api(p)
    original = p.config_path.read_text()
    other = free_port()
    changed = original.replace(f'listen: "127.0.0.1:{p.port}"', f'listen: "127.0.0.1:{other}"')
    changed = changed.replace("connection_borrow_timeout: 10", "connection_borrow_timeout: 3")
    assert changed != original
    reload(p, changed, "configuration not reloaded")
    assert "proxies[0].listen" in p.log() and "restart" in p.log()
    assert api.pool_config()["ConnectionBorrowTimeout"] == 10  # nothing of it was applied
    assert not port_accepts(other)

    # The engine family too (with auth types valid for the new one, so only that is refused).
    postgres = original.replace('engine_family: "MYSQL"', 'engine_family: "POSTGRESQL"')
    postgres = postgres.replace(f'"{NATIVE}"', '"POSTGRES_SCRAM_SHA_256"')
    reload(p, postgres, "configuration not reloaded")
    assert "proxies[0].engine_family" in p.log()
    assert api.db_proxy()["EngineFamily"] == "MYSQL"
    p.assert_serves()


# -- SIGTERM drain -----------------------------------------------------------------------------

def test_open_transaction_can_commit_during_drain(mysql_proxy, mariadb):
    table = mariadb.create_table(f"drain_{uuid.uuid4().hex[:8]}")
    p = mysql_proxy(drain_timeout=30)
    busy = p.connect(autocommit=False)
    idle = login(p)  # an idle client must not hold the shutdown up
    try:
        with busy.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1, 'before SIGTERM')")
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()

        # The idle client is told and closed at once.
        packets, _ = read_until_closed(idle, 5)
        assert last_err(packets) == ErrPacket(1053, "08S01", "Server shutdown in progress")
        # New connections are refused ...
        wait_for(lambda: p.cli("SELECT 1", check=False, timeout=10).returncode != 0,
                 5, "new connections to be refused after SIGTERM")
        # ... while the open transaction goes on and commits.
        assert p.alive(), "the proxy exited with a transaction still open"
        with busy.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2, 'after SIGTERM')")
        busy.commit()
        committed_at = time.monotonic()
        assert mariadb.scalar(f"SELECT COUNT(*) FROM {table}") == 2

        # With no transaction left open the proxy exits, long before drain_timeout (30 s).
        rc = p.wait(timeout=p.drain_timeout + 5)
        exited_at = time.monotonic()
        print(f"\nexited {rc} {exited_at - sigterm_at:.2f}s after SIGTERM, "
              f"{exited_at - committed_at:.2f}s after the last commit")
        assert rc == 0
        assert exited_at - committed_at < 10, "the proxy waited on after the last transaction"
        assert not port_accepts(p.port)
        # The client that committed was closed after its transaction, with the reason.
        with pytest.raises(pymysql.err.OperationalError) as exc:
            with busy.cursor() as cur:
                cur.execute("SELECT 1")
        assert exc.value.args == (1053, "Server shutdown in progress")
    finally:
        busy.close()
        idle.close()


def test_drain_timeout_ends_a_transaction_that_never_finishes(mysql_proxy, mariadb):
    table = mariadb.create_table(f"drain_{uuid.uuid4().hex[:8]}")
    p = mysql_proxy(drain_timeout=2)
    stuck = login(p)
    try:
        assert isinstance(stuck.query("BEGIN"), Packet)
        assert isinstance(stuck.query(f"INSERT INTO {table} VALUES (1, 'never committed')"), Packet)
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()
        rc = p.wait(timeout=p.drain_timeout + 10)
        elapsed = time.monotonic() - sigterm_at
        print(f"\nexited {rc} {elapsed:.2f}s after SIGTERM (drain_timeout 2)")
        assert rc == 0
        assert 1.5 <= elapsed <= p.drain_timeout + 3
        # The client was told before its connection closed.
        packets, _ = read_until_closed(stuck, 5)
        assert last_err(packets) == ErrPacket(1053, "08S01", "Server shutdown in progress")
        # The abandoned transaction was rolled back on the database.
        wait_for(lambda: mariadb.connections("app") == 0, 10, "the abandoned transaction's backend to go")
        assert mariadb.scalar("SELECT COUNT(*) FROM information_schema.INNODB_TRX") == 0
        assert mariadb.scalar(f"SELECT COUNT(*) FROM {table}") == 0
    finally:
        stuck.close()


def test_pinned_idle_client_does_not_hold_the_shutdown_up(mysql_proxy):
    # A pinned client between transactions has nothing to finish: it is closed at once (and its
    # backend with it), so the proxy exits long before drain_timeout.
    p = mysql_proxy(drain_timeout=30)
    pinned = login(p)
    try:
        assert isinstance(pinned.query("SET @pinned = 1"), Packet)
        wait_for(lambda: "pinned" in p.log(), 5, "the pin to be logged")
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()
        packets, _ = read_until_closed(pinned, 10)
        assert last_err(packets) == ErrPacket(1053, "08S01", "Server shutdown in progress")
        rc = p.wait(timeout=p.drain_timeout + 5)
        assert rc == 0
        assert time.monotonic() - sigterm_at < 10, "a pinned idle client held the shutdown up"
    finally:
        pinned.close()


def test_a_client_waiting_for_a_backend_during_drain(mysql_proxy):
    # One backend, held by a transaction; another client's statement waits for it when SIGTERM
    # comes. The transaction finishes; the waiting statement gets an answer (not silence, not a
    # wait until drain_timeout), then both clients are told and closed, and the proxy exits.
    p = mysql_proxy(drain_timeout=30, max_connections_percent=1, connection_borrow_timeout=20, metrics=True)
    holder, waiter = login(p), login(p)
    try:
        assert isinstance(holder.query("BEGIN"), Packet)
        assert rows(holder.query("SELECT 1")) == [["1"]]
        waiter.command(COM_QUERY, b"SELECT 'served'")
        wait_for(lambda: metric(p.metrics(), "concierge_database_connection_borrow_waiters") == 1, 5,
                 "the waiting client to be counted")
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()
        assert isinstance(holder.query("COMMIT"), Packet)
        packets, _ = read_until_closed(holder, 5)
        assert last_err(packets) == ErrPacket(1053, "08S01", "Server shutdown in progress")
        answer = waiter.read_result()
        print(f"\nthe waiting statement's answer: {answer}")
        assert answer == [["served"]], answer
        packets, _ = read_until_closed(waiter, 5)
        assert last_err(packets) == ErrPacket(1053, "08S01", "Server shutdown in progress")
        assert p.wait(timeout=p.drain_timeout + 5) == 0
        assert time.monotonic() - sigterm_at < 10, "the drain waited on"
    finally:
        holder.close()
        waiter.close()


def test_clients_that_left_are_not_left_behind(mysql_proxy, mariadb):
    # Clients that came and went every way a MySQL client does (COM_QUIT, a dropped socket
    # before or during the login, a failed login, the command-line client) must not count as
    # clients afterwards, or the drain below would wait for them.
    p = mysql_proxy(drain_timeout=10, metrics=True)
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert p.cli("SELECT 1").stdout.strip() == "1"
    with p.wire() as w:
        w.read_greeting()  # then the socket is closed without a word
    with p.wire() as w:
        w.read_greeting()
        w.send(b"\x40\x00\x00\x01\x00")  # half a handshake response
    with p.wire() as w:
        w.login("app", p.passwords["app"])
        w.command(COM_QUIT)
        assert w.read_bytes_until_eof() == b""
    with pytest.raises(pymysql.err.OperationalError):
        p.connect(password="wrong password")
    wait_for(lambda: metric(p.metrics(), "concierge_client_connections") == 0, 10, "no client left")
    p.signal(signal.SIGTERM)
    p.expect_exit = True
    started = time.monotonic()
    assert p.wait(timeout=p.drain_timeout + 5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"with no client left, the proxy took {elapsed:.1f}s to exit"


# -- secrets -----------------------------------------------------------------------------------

@pytest.fixture
def rotating_user(mariadb):
    """A user whose password the secrets tests change: name, password."""
    yield from temporary_user(mariadb, "rot_")


def set_password(db: MariaDB, user: str, password: str) -> None:
    db.query(f"SET PASSWORD FOR '{user}'@'%%' = PASSWORD(%s)", (password,))


def start_single_user(mariadb: MariaDB, concierge_bin: Path, tmp_path: Path, user: str, password: str, *,
                      refresh: int = 1, arn: str | None = None, moto_url: str | None = None,
                      env: dict[str, str] | None = None, expect_ready: bool = True) -> MySQLProxy:
    """A MySQL proxy with one auth entry (a secret file, or `arn` in Secrets Manager) whose user
    is also its health checks' user, secrets re-read every `refresh` seconds, an admin listener.
    Stopped by `stop`."""
    secret = tmp_path / "secret.json"
    if arn is None:
        write_secret(secret, user, password)
    port, admin = free_port(), free_port()
    config = {
        "secret_refresh_interval": refresh,
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "proxies": [{
            "name": "app", "engine_family": "MYSQL", "listen": f"127.0.0.1:{port}", "debug_logging": True,
            "auth": [{"secret_arn": arn or f"file:{secret}", "client_password_auth_type": NATIVE}],
            "target_group": {"connection_pool_config": {"max_connections_percent": 10,
                                                        "max_idle_connections_percent": 5,
                                                        "connection_borrow_timeout": 3},
                             "targets": [{"endpoint": f"127.0.0.1:{mariadb.port}"}]},
        }],
    }
    if moto_url:
        config["secrets_manager"] = {"endpoint": moto_url}
    path = tmp_path / "concierge.yaml"
    path.write_text(to_yaml(config) + "\n")
    log_path = tmp_path / "concierge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=mysql_env(**(env or {})), cwd=tmp_path)
    p = MySQLProxy(host="127.0.0.1", port=port, passwords={user: password}, proc=proc, config_path=path,
                   log_path=log_path, admin_url=f"http://127.0.0.1:{admin}")
    p.secret_path = secret
    if expect_ready:
        wait_for(lambda: serves(p, user) or proc.poll() is not None, 20, "the proxy to serve")
        assert proc.poll() is None, p.log()
    return p


def serves(p: MySQLProxy, user: str, password: str | None = None) -> bool:
    """Whether a new client of `user` logs in and gets `SELECT 1` answered."""
    try:
        with p.connect(user=user, password=password, connect_timeout=5, read_timeout=10) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    except pymysql.err.MySQLError:
        return False


def target_health(p: MySQLProxy) -> dict:
    return admin_api(p).targets()[0]["TargetHealth"]


def stop(p: MySQLProxy) -> None:
    p.proc.terminate()
    p.proc.wait(timeout=20)


def test_rotated_secret_takes_effect_without_dropping_clients(mariadb, concierge_bin, tmp_path, rotating_user):
    user, old_password = rotating_user
    p = start_single_user(mariadb, concierge_bin, tmp_path, user, old_password)
    try:
        client = p.connect(user=user)
        with client.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{user}@%"
        # Rotation, as a rotation job does it: the database first, then the secret.
        new_password = pysecrets.token_hex(12)
        set_password(mariadb, user, new_password)
        p.secret_path.write_text(json.dumps({"username": user, "password": new_password}))
        wait_for(lambda: "secret rotated" in p.log(), 10, "the rotated secret to be read")
        # The client connected before the rotation keeps working.
        with client.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        # New clients log in to the proxy with the new password; the old one no longer works.
        p.passwords[user] = new_password
        with p.connect(user=user) as fresh, fresh.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
        with pytest.raises(pymysql.err.OperationalError) as exc:
            p.connect(user=user, password=old_password)
        assert exc.value.args == (1045, f"Access denied for user '{user}'@'%' (using password: YES)")
        # New backends log in to the database with the new password: end every session of the
        # user on the server (the pool's backends and the health check's), then use the proxy.
        before = processlist_ids(mariadb, user)
        assert before, "no backend of the user on the server"
        kill_sessions(mariadb, user)
        wait_for(lambda: serves(p, user), 10, "a new backend with the rotated password")
        with client.cursor() as cur:  # the old client, on a new backend
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{user}@%"
        after = processlist_ids(mariadb, user)
        assert after and not after & before, (before, after)
        wait_for(lambda: target_health(p)["State"] == "AVAILABLE", 10, "the target to be AVAILABLE")
        client.close()
        log = p.log(10**9)
        assert old_password not in log and new_password not in log
        assert str(p.secret_path) in log  # the secret is named
    finally:
        stop(p)


def test_wrong_secret_marks_the_target_auth_failure(mariadb, concierge_bin, tmp_path, rotating_user):
    user, password = rotating_user
    p = start_single_user(mariadb, concierge_bin, tmp_path, user, password, refresh=3600)
    try:
        # The database's password changes but the secret is stale and stays so.
        changed = pysecrets.token_hex(12)
        set_password(mariadb, user, changed)
        kill_sessions(mariadb, user)
        wait_for(lambda: not serves(p, user), 10, "backend logins to fail")
        # What a client sees: it logged in to the proxy, the database refused the proxy: RDS's
        # words (not the server's, which name the proxy's host).
        proc = p.cli("SELECT 1", user=user, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() == (f"ERROR 1045 (28000) at line 1: Access denied for user '{user}'@'%' "
                                       f"(using password: YES)"), proc.stderr
        wait_for(lambda: target_health(p)["State"] == "UNAVAILABLE", 10, "the target to be UNAVAILABLE")
        health = target_health(p)
        assert health["Reason"] == "AUTH_FAILURE", health
        log = p.log(10**9)
        assert "the database refused the credentials of a secret" in log
        assert f"secret=file:{p.secret_path}" in log
        assert password not in log and changed not in log
        # An auth failure makes the proxy re-read its secrets at once: fixing the secret heals it.
        p.secret_path.write_text(json.dumps({"username": user, "password": changed}))
        p.passwords[user] = changed
        wait_for(lambda: serves(p, user), 15, "the fixed secret to be used")
        wait_for(lambda: target_health(p)["State"] == "AVAILABLE", 10, "the target to be AVAILABLE")
    finally:
        stop(p)


REGION = "us-east-1"
AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDMOTOTEST00000002",
                   "AWS_SECRET_ACCESS_KEY": "moto/secret/key/for/tests/000000000002"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=mysql_env(**AWS_CREDENTIALS))
    try:
        wait_for(lambda: port_accepts(port) or proc.poll() is not None, 30, "moto_server to listen")
        assert proc.poll() is None, "moto_server exited"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_secret_from_secrets_manager_and_its_rotation(mariadb, concierge_bin, tmp_path, moto, rotating_user):
    import boto3
    user, password = rotating_user
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto,
                      aws_access_key_id=AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    arn = sm.create_secret(Name=f"concierge-mysql-test-{free_port()}", SecretString=json.dumps(
        {"username": user, "password": "stale-password", "engine": "mysql", "port": 3306}))["ARN"]
    # Stale at first: the proxy starts (the secret is readable) but the database refuses it.
    p = start_single_user(mariadb, concierge_bin, tmp_path, user, "stale-password", arn=arn, moto_url=moto,
                          env=AWS_CREDENTIALS, expect_ready=False)
    try:
        wait_for(lambda: port_accepts(p.port) or p.proc.poll() is not None, 20, "the proxy to listen")
        assert p.proc.poll() is None, p.log()
        assert not serves(p, user, "stale-password")
        # Rotation in Secrets Manager: the proxy re-reads it and new logins use it.
        sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": user, "password": password}))
        p.passwords[user] = password
        wait_for(lambda: serves(p, user), 15, "the rotated secret to be fetched and used")
        with p.connect(user=user) as client, client.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{user}@%"
        wait_for(lambda: target_health(p)["State"] == "AVAILABLE", 10, "the target to be AVAILABLE")
        log = p.log(10**9)
        assert "stale-password" not in log and password not in log
        assert AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log
        assert arn in log  # the AUTH_FAILURE line names the secret
    finally:
        stop(p)


# -- idle clients and logins that never finish ---------------------------------------------------

IDLE_TIMEOUT_ERR = ErrPacket(4031, "HY000", "The client was disconnected by the server because of inactivity. "
                                            "See wait_timeout and interactive_timeout for configuring this behavior.")


def test_database_down_gives_a_clear_error_and_the_proxy_keeps_running(mysql_proxy):
    # Nothing listens on the target: a logged-in client's statement gets an ERR naming the
    # problem (not a hang), its connection stays usable, and the proxy stays up for the next one.
    # The `mariadb` client shows a server's ERR with a client-side code (2000-2999, such as 2003)
    # as "ERROR 2027 (HY000): Received malformed packet": the proxy must not send those.
    p = mysql_proxy(db_port=free_port(), wait_ready=False, connection_borrow_timeout=2)
    for _ in range(2):
        proc = p.cli("SELECT 1", check=False)
        assert proc.returncode == 1
        assert re.fullmatch(r"ERROR \d{4} \(HY000\) at line 1: Can't connect to MySQL server: .*Connection refused.*",
                            proc.stderr.strip()), proc.stderr
        assert not proc.stderr.startswith("ERROR 2"), proc.stderr
    with login(p) as w:
        for _ in range(2):
            err = w.query("SELECT 1")
            assert isinstance(err, ErrPacket) and not 2000 <= err.code < 3000, err
            assert "Can't connect to MySQL server" in err.message
    assert p.alive()


def test_backend_lost_in_a_transaction_closes_the_client_with_a_clear_error(mysql_proxy, mariadb):
    # The database ends the session serving a client's open transaction (KILL, a crash): the
    # transaction is gone, so the client is told and closed; other clients go on.
    p = mysql_proxy()
    with login(p) as w:
        assert isinstance(w.query("BEGIN"), Packet)
        backend_id = int(rows(w.query("SELECT CONNECTION_ID() + 0"))[0][0])
        mariadb.query(f"KILL CONNECTION {backend_id}")
        packets, _ = read_until_closed(w, 10)
        err = last_err(packets)
        assert err.sqlstate == "08S01" and not 2000 <= err.code < 3000, err
        assert "Lost connection" in err.message, err
    # A PyMySQL client in the same situation sees it at its next statement: the proxy's ERR, or
    # (if the closed socket was reset first) PyMySQL's own 2013.
    conn = p.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID() + 0")
            seen = p.log(10**9).count("database connection lost while serving this client")
            mariadb.query(f"KILL CONNECTION {cur.fetchone()[0]}")
            wait_for(lambda: p.log(10**9).count("database connection lost while serving this client") > seen, 10,
                     "the proxy to notice")
            with pytest.raises(pymysql.err.OperationalError) as exc:
                cur.execute("SELECT 1")
            assert exc.value.args[0] in (err.code, 2013), exc.value.args
    finally:
        conn.close()
    p.assert_serves()


# A child process that takes a row lock in an open transaction, says so on stdout, and then
# either idles (in the transaction) or runs a long SLEEP, until it is SIGKILLed.
LOCK_HOLDER = """
import sys, time, pymysql
host, port, password, table, mode = sys.argv[1:]
conn = pymysql.connect(host=host, port=int(port), user="app", password=password, database="app",
                       autocommit=True, ssl_disabled=True)
cur = conn.cursor()
cur.execute("BEGIN")
cur.execute(f"UPDATE {table} SET v = 'locked' WHERE id = 1")
print("locked", flush=True)
if mode == "sleep":
    cur.execute("SELECT SLEEP(60)")
else:
    time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["idle", "sleep"])
def test_killed_client_releases_its_lock(mysql_proxy, mariadb, mode):
    p = mysql_proxy()
    table = mariadb.create_table(f"lock_{uuid.uuid4().hex[:8]}")
    mariadb.query(f"INSERT INTO {table} VALUES (1, 'free')")
    locks_held = "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_rows_locked > 0"
    sleeping = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'"
    child = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, p.host, str(p.port), p.passwords["app"], table, mode],
                             stdout=subprocess.PIPE, text=True, env=mysql_env())
    try:
        assert child.stdout.readline().strip() == "locked"
        assert mariadb.scalar(locks_held) == 1
        if mode == "sleep":
            wait_for(lambda: mariadb.scalar(sleeping) == 1, 10, "SLEEP(60) to be running")
    finally:
        child.kill()
        child.wait()

    # (InnoDB refreshes what INNODB_TRX shows only when it was not read for 100 ms: poll slower.)
    wait_for(lambda: mariadb.scalar(locks_held) == 0, 10, "the dead client's lock to go", interval=0.25)
    wait_for(lambda: mariadb.scalar(sleeping) == 0, 10, "no sleeping backend left")
    # Another client can take the lock at once.
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION innodb_lock_wait_timeout = 5")
        cur.execute(f"UPDATE {table} SET v = 'mine' WHERE id = 1")
    assert mariadb.scalar(f"SELECT v FROM {table} WHERE id = 1") == "mine"


def test_idle_client_timeout(mysql_proxy):
    p = mysql_proxy(idle_client_timeout=1)
    with login(p) as idle, p.connect() as busy:
        started = time.monotonic()
        cur = busy.cursor()

        def keep_busy():  # never idle for 1 s
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)

        packets, closed_at = read_until_closed(idle, 15, keep_busy)
        elapsed = closed_at - started
        print(f"\nidle client closed after {elapsed:.2f}s; packets: {packets}")
        assert elapsed >= 0.9, f"closed after {elapsed:.2f}s, before the 1s idle timeout"
        assert last_err(packets) == IDLE_TIMEOUT_ERR
        assert packets[-1].seq == 0  # not the answer to a command: the client sent none
        # Other clients are unaffected.
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert "closing idle client" in p.log()
    p.assert_serves()


def test_idle_client_timeout_changed_live_applies_to_connected_clients(mysql_proxy):
    # modify-db-proxy --idle-client-timeout through the admin API: clients already connected
    # (idle for less than the old timeout) are closed by the new one.
    p = mysql_proxy(metrics=True)  # idle_client_timeout 1800
    with login(p) as idle:
        assert rows(idle.query("SELECT 1")) == [["1"]]
        api = admin_api(p)
        api.ok(api.modify_proxy({"IdleClientTimeout": 1}))
        assert api.db_proxy()["IdleClientTimeout"] == 1
        packets, _ = read_until_closed(idle, 15)
        assert last_err(packets) == IDLE_TIMEOUT_ERR


def test_idle_client_timeout_seen_by_the_command_line_client(mysql_proxy):
    # The mariadb client idles after a first statement; its next one finds the connection gone.
    p = mysql_proxy(idle_client_timeout=1)
    from mysql_fixtures import mariadb_client
    cmd = [mariadb_client(), "--no-defaults", "--protocol=tcp", "-h", p.host, "-P", str(p.port), "-u", "app",
           "--batch", "--skip-column-names", "-D", "app"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mysql_env(MYSQL_PWD=p.passwords["app"]))
    try:
        seen = p.log(10**9).count("closing idle client")
        proc.stdin.write("SELECT 1;\n")
        proc.stdin.flush()
        wait_for(lambda: p.log(10**9).count("closing idle client") > seen, 15, "the idle client to be closed")
        out, err = proc.communicate("SELECT 2;\n", timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nstdout {out!r} stderr {err!r}")
    assert out.splitlines()[0] == "1"
    assert "2" not in out.splitlines()
    assert proc.returncode == 1
    assert err.strip().endswith(f"ERROR 4031 (HY000) at line 2: {IDLE_TIMEOUT_ERR.message}"), err


def test_idle_timeout_closes_pinned_clients_and_frees_their_backend(mysql_proxy, mariadb):
    # A pinned client idle between transactions is closed like any other, and its dedicated
    # backend is closed with it (its session state must not reach anyone else).
    p = mysql_proxy(idle_client_timeout=1)
    with login(p) as pinned:
        assert isinstance(pinned.query("SET @pinned = 1"), Packet)
        backend_id = int(rows(pinned.query("SELECT CONNECTION_ID() + 0"))[0][0])
        assert backend_id in processlist_ids(mariadb, "app")
        packets, _ = read_until_closed(pinned, 15)
        assert last_err(packets) == IDLE_TIMEOUT_ERR
    wait_for(lambda: backend_id not in processlist_ids(mariadb, "app"), 10, "the pinned backend to be closed")
    p.assert_serves()


def test_idle_timeout_spares_transactions_long_statements_and_waiting_clients(mysql_proxy, mariadb):
    # Idleness is time between requests, outside a transaction: a client inside a transaction
    # (however long it thinks), one whose statement runs longer than the timeout, and one
    # waiting for a backend are not idle.
    p = mysql_proxy(idle_client_timeout=2, max_connections_percent=2, max_idle_connections_percent=2,
                    connection_borrow_timeout=4)  # two backends
    table = mariadb.create_table(f"idle_{uuid.uuid4().hex[:8]}")
    in_tx = login(p)
    sleeper = login(p)
    waiter = login(p)
    try:
        assert isinstance(in_tx.query("BEGIN"), Packet)
        assert isinstance(in_tx.query(f"INSERT INTO {table} VALUES (1, 'idle in a transaction')"), Packet)
        # The sleeper's statement takes longer than the idle timeout; then it idles for less.
        sleeper.command(COM_QUERY, b"SELECT SLEEP(3)")
        wait_for(lambda: mariadb.scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                        "WHERE INFO = 'SELECT SLEEP(3)'") == 1, 5, "the sleeper's statement to run")
        # Both backends are taken: the waiter's statement waits (up to 4 s) for one.
        waiter.command(COM_QUERY, b"SELECT 'waited'")
        assert rows(sleeper.read_result()) == [["0"]]
        waited = waiter.read_result()
        assert waited == [["waited"]], waited  # the sleeper's backend, once free
        time.sleep(1)  # idle, but for less than the timeout
        assert rows(sleeper.query("SELECT 'still here'")) == [["still here"]]

        # Meanwhile, idle clients were closed: proof that the sweeps ran past the timeout (twice,
        # on every event loop) while in_tx sat in its transaction.
        for _ in range(2):
            with login(p) as idle:
                packets, _ = read_until_closed(idle, 15)
                assert last_err(packets) == IDLE_TIMEOUT_ERR
        assert isinstance(in_tx.query(f"INSERT INTO {table} VALUES (2, 'still in it')"), Packet)
        assert isinstance(in_tx.query("COMMIT"), Packet)
        assert mariadb.scalar(f"SELECT COUNT(*) FROM {table}") == 2
    finally:
        for w in (in_tx, sleeper, waiter):
            w.close()


def test_a_login_that_never_finishes_is_closed(mysql_proxy):
    # A client has 30 s to log in: one that never answers the greeting, one that sends half a
    # handshake response, and one that stops after a wrong plugin's auth switch are closed then
    # with ERROR 1043 (Bad handshake); logged-in clients meanwhile are served.
    p = mysql_proxy(metrics=True)
    silent = p.wire(timeout=60)
    silent.read_greeting()
    partial = p.wire(timeout=60)
    partial.read_greeting()
    partial.send(b"\x40\x00\x00\x01\x0f\x00")
    switched = p.wire(timeout=60)
    switched.read_greeting()
    switched.send_packet(switched.handshake_response("app", "", plugin="caching_sha2_password",
                                                     auth_response=b"\x01" * 32), 1)
    started = time.monotonic()
    with p.connect() as served, served.cursor() as cur:
        try:
            results = {}

            def closed_all() -> bool:
                cur.execute("SELECT 1")  # a logged-in client is not affected
                for name, w in (("silent", silent), ("partial", partial), ("switched", switched)):
                    if name in results:
                        continue
                    try:
                        packet = w.read_packet(timeout=0.1)
                    except TimeoutError:
                        continue
                    except OSError:
                        packet = None
                    if packet is None:
                        results[name] = (time.monotonic() - started, results.get(name + "-packets", []))
                    elif name == "switched" and packet.payload[:1] == b"\xfe":
                        continue  # the AuthSwitchRequest to mysql_native_password: left unanswered
                    else:
                        results.setdefault(name + "-packets", []).append(packet)
                return all(n in results for n in ("silent", "partial", "switched"))

            wait_for(closed_all, 45, "the stalled logins to be closed", interval=0.5)
        finally:
            for w in (silent, partial, switched):
                w.close()
    print(f"\n{results}")
    # Each ERR carries the sequence id of the answer its client waits for: to its handshake
    # response (2), to its answer to the AuthSwitchRequest (4).
    for name, seq in (("silent", 2), ("partial", 2), ("switched", 4)):
        elapsed, packets = results[name]
        assert 29 <= elapsed <= 35, f"{name}: closed after {elapsed:.1f}s"
        assert last_err(packets) == ErrPacket(1043, "08S01", "Bad handshake"), (name, packets)
        assert packets[-1].seq == seq, (name, packets)
    wait_for(lambda: metric(p.metrics(), "concierge_client_connections") == 0, 10, "no client left")
