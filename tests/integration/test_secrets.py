"""Secrets: rotation without dropping clients, a wrong secret reported by name, never by value."""

import json
import secrets as pysecrets
import subprocess
import urllib.request

import psycopg
import pytest

from helpers import Proxy, clean_env, free_port, to_yaml, wait_for

pytestmark = pytest.mark.proxy_only


@pytest.fixture
def rotating_user(pg):
    name = "rot_" + pysecrets.token_hex(3)
    password = pysecrets.token_hex(12)
    with pg.super_connect("postgres") as conn:
        conn.autocommit = True
        conn.execute(f"create role {name} login password '{password}'")
        conn.execute(f"grant connect on database app to {name}")
    yield name, password
    with pg.super_connect("postgres") as conn:
        conn.autocommit = True
        conn.execute(f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{name}'")
        conn.execute(f"revoke connect on database app from {name}")
        conn.execute(f"drop role if exists {name}")


def start(pg, concierge_bin, tmp_path, user, password, refresh=1):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"username": user, "password": password}))
    port, admin = free_port(), free_port()
    config = {
        "secret_refresh_interval": refresh,
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "proxies": [{
            "name": "app", "engine_family": "POSTGRESQL", "listen": f"127.0.0.1:{port}", "debug_logging": True,
            "auth": [{"secret_arn": f"file:{secret}"}],
            "target_group": {"connection_pool_config": {"max_connections_percent": 10, "max_idle_connections_percent": 5,
                                                        "connection_borrow_timeout": 3},
                             "targets": [{"endpoint": f"127.0.0.1:{pg.port}"}]},
        }],
    }
    path = tmp_path / "concierge.yaml"
    path.write_text(to_yaml(config) + "\n")
    log_path = tmp_path / "concierge.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(path)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    p = Proxy(host="127.0.0.1", port=port, passwords={user: password}, bindir=pg.bindir, proc=proc,
              config_path=path, log_path=log_path)
    p.secret_path = secret
    p.admin_url = f"http://127.0.0.1:{admin}"
    wait_for(lambda: p.psql("select 1", user=user, check=False, timeout=5).returncode == 0, 20, "the proxy to serve")
    return p


def target_health(p) -> dict:
    with urllib.request.urlopen(p.admin_url + "/v1/db-proxies/app/targets", timeout=10) as response:
        return json.loads(response.read())["Targets"][0]["TargetHealth"]


def stop(p):
    p.proc.terminate()
    p.proc.wait(timeout=20)


def test_rotated_secret_takes_effect_without_dropping_clients(pg, concierge_bin, tmp_path, rotating_user):
    user, old_password = rotating_user
    p = start(pg, concierge_bin, tmp_path, user, old_password)
    try:
        client = p.connect(user=user)
        assert client.execute("select current_user").fetchone()[0] == user
        # Rotation, as a rotation job does it: the database first, then the secret.
        new_password = pysecrets.token_hex(12)
        with pg.super_connect("postgres") as conn:
            conn.autocommit = True
            conn.execute(f"alter role {user} password '{new_password}'")
            # Existing backends stay logged in; force new ones to be opened for the check below.
        p.secret_path.write_text(json.dumps({"username": user, "password": new_password}))
        wait_for(lambda: "secret rotated" in p.log(), 10, "the rotated secret to be read")
        # The client connected before the rotation keeps working.
        assert client.execute("select 1").fetchone()[0] == 1
        # New clients log in to the proxy with the new password; the old one no longer works.
        p.passwords[user] = new_password
        with p.connect(user=user) as fresh:
            assert fresh.execute("select 2").fetchone()[0] == 2
        with pytest.raises(psycopg.OperationalError):
            p.connect(user=user, password=old_password)
        # New backends log in to the database with the new password.
        with pg.super_connect("postgres") as conn:
            conn.autocommit = True
            conn.execute(f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{user}'")
        wait_for(lambda: p.psql("select 3", user=user, check=False, timeout=5).returncode == 0, 10,
                 "a new backend with the rotated password")
        assert target_health(p)["State"] == "AVAILABLE"
        client.close()
        log = p.log(10**9)
        assert old_password not in log and new_password not in log
        assert str(p.secret_path) in log  # the secret is named
    finally:
        stop(p)


def test_wrong_secret_marks_the_target_auth_failure(pg, concierge_bin, tmp_path, rotating_user):
    user, password = rotating_user
    p = start(pg, concierge_bin, tmp_path, user, password, refresh=3600)
    try:
        # The database's password changes but the secret is stale and stays so.
        changed = pysecrets.token_hex(12)
        with pg.super_connect("postgres") as conn:
            conn.autocommit = True
            conn.execute(f"alter role {user} password '{changed}'")
            conn.execute(f"select pg_terminate_backend(pid) from pg_stat_activity where usename = '{user}'")
        wait_for(lambda: p.psql("select 1", user=user, check=False, timeout=5).returncode != 0, 10,
                 "backend logins to fail")
        health = target_health(p)
        assert health["State"] == "UNAVAILABLE" and health["Reason"] == "AUTH_FAILURE", health
        log = p.log(10**9)
        assert "the database refused the credentials of a secret" in log
        assert f"secret=file:{p.secret_path}" in log
        assert password not in log and changed not in log
        # An auth failure makes the proxy re-read its secrets at once: fixing the secret heals it.
        p.secret_path.write_text(json.dumps({"username": user, "password": changed}))
        p.passwords[user] = changed
        wait_for(lambda: p.psql("select 1", user=user, check=False, timeout=5).returncode == 0, 15,
                 "the fixed secret to be used")
        assert target_health(p)["State"] == "AVAILABLE"
    finally:
        stop(p)
