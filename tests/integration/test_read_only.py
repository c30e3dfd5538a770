"""READ_ONLY endpoints: transactions go to healthy readers (streaming standbys); with none,
clients get a clear error and the endpoint's targets show INVALID_REPLICATION_STATE; a reader
that fails or is promoted leaves the read-only set."""

import json
import secrets
import subprocess
import urllib.request

import psycopg
import pytest

from helpers import Proxy, clean_env, free_port, to_yaml, wait_for, write_secret
from replication import make_pair

pytestmark = pytest.mark.proxy_only


@pytest.fixture
def pair():
    p = make_pair(secrets.token_hex(12))
    try:
        yield p
    finally:
        p.stop()


def start(pair, concierge_bin, tmp_path, targets):
    secret = write_secret(tmp_path / "app.json", "app", pair.app_password)
    port, ro_port, admin = free_port(), free_port(), free_port()
    config = {
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "proxies": [{
            "name": "app", "engine_family": "POSTGRESQL", "listen": f"127.0.0.1:{port}",
            "endpoints": [{"name": "app-ro", "target_role": "READ_ONLY", "listen": f"127.0.0.1:{ro_port}"}],
            "auth": [{"secret_arn": f"file:{secret}"}],
            "target_group": {
                "connection_pool_config": {"max_connections_percent": 20, "max_idle_connections_percent": 10,
                                           "connection_borrow_timeout": 5},
                "health_check": {"interval_ms": 250, "timeout_ms": 1000},
                "targets": [{"endpoint": f"127.0.0.1:{t}"} for t in targets],
            },
        }],
    }
    path = tmp_path / "concierge.yaml"
    path.write_text(to_yaml(config) + "\n")
    log_path = tmp_path / "concierge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=tmp_path)
    rw = Proxy(host="127.0.0.1", port=port, passwords={"app": pair.app_password}, bindir=pair.bindir, proc=proc,
               config_path=path, log_path=log_path)
    ro = Proxy(host="127.0.0.1", port=ro_port, passwords={"app": pair.app_password}, bindir=pair.bindir)
    rw.admin_url = f"http://127.0.0.1:{admin}"
    wait_for(lambda: rw.psql("select 1", check=False, timeout=5).returncode == 0 or proc.poll() is not None, 20,
             "the proxy to serve")
    assert proc.poll() is None, rw.log()
    return rw, ro


def targets(p) -> list[dict]:
    with urllib.request.urlopen(p.admin_url + "/v1/db-proxies/app/targets", timeout=10) as response:
        return json.loads(response.read())["Targets"]


def in_recovery(p) -> bool:
    with p.connect() as conn:
        return conn.execute("select pg_is_in_recovery()").fetchone()[0]


def test_read_only_endpoint_routes_to_the_standby(pair, concierge_bin, tmp_path):
    rw, ro = start(pair, concierge_bin, tmp_path, [pair.primary.port, pair.standby.port])
    try:
        wait_for(lambda: ro.psql("select 1", check=False, timeout=5).returncode == 0, 10, "a reader")
        assert in_recovery(rw) is False
        # Every transaction of the read-only endpoint runs on the standby.
        with ro.connect() as conn:
            for _ in range(20):
                assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("create table nope (id int)")
        roles = {t["Port"]: t["Role"] for t in targets(rw)}
        assert roles == {pair.primary.port: "READ_WRITE", pair.standby.port: "READ_ONLY"}
        # The CLI shows the same, live.
        cli = subprocess.run([str(concierge_bin), "describe-db-proxy-targets", "--db-proxy-name", "app",
                              "--endpoint-url", rw.admin_url], capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        assert {t["Port"]: (t["Role"], t["TargetHealth"]["State"]) for t in json.loads(cli.stdout)["Targets"]} == {
            pair.primary.port: ("READ_WRITE", "AVAILABLE"), pair.standby.port: ("READ_ONLY", "AVAILABLE")}
        table = subprocess.run([str(concierge_bin), "describe-db-proxy-targets", "--db-proxy-name", "app",
                                "--endpoint-url", rw.admin_url, "--output", "table"],
                               capture_output=True, text=True, timeout=30)
        assert "READ_ONLY" in table.stdout and "READ_WRITE" in table.stdout, table.stdout

        # The standby is promoted (its primary gone): it leaves the read-only set, and the
        # read-only endpoint has no reader left.
        idle_ro = ro.connect()
        pair.kill_primary()
        pair.promote_standby()
        wait_for(lambda: {t["Port"]: t["Role"] for t in targets(rw) if "DBProxyEndpointName" not in t}
                 .get(pair.standby.port) == "READ_WRITE", 10, "the promoted standby to be the writer")
        cli = subprocess.run([str(concierge_bin), "describe-db-proxy-targets", "--db-proxy-name", "app",
                              "--endpoint-url", rw.admin_url], capture_output=True, text=True, timeout=30)
        after = {t["Port"]: (t["Role"], t["TargetHealth"]["State"]) for t in json.loads(cli.stdout)["Targets"]
                 if "DBProxyEndpointName" not in t}
        assert after[pair.standby.port] == ("READ_WRITE", "AVAILABLE")
        assert after[pair.primary.port][1] == "UNAVAILABLE"
        with pytest.raises(psycopg.OperationalError) as exc:
            idle_ro.execute("select 1")
        assert "No reader is available for this read-only endpoint" in str(exc.value)
        # The client's connection stays usable (the error is not fatal).
        assert idle_ro.closed is False
        unusable = [t for t in targets(rw) if t.get("DBProxyEndpointName") == "app-ro"]
        assert unusable and all(t["TargetHealth"]["Reason"] == "INVALID_REPLICATION_STATE" for t in unusable)
        assert in_recovery(rw) is False  # writes go to the promoted standby
        idle_ro.close()
    finally:
        rw.proc.terminate()
        rw.proc.wait(timeout=20)


def test_without_reader_clients_get_a_clear_error(pair, concierge_bin, tmp_path):
    rw, ro = start(pair, concierge_bin, tmp_path, [pair.primary.port])
    try:
        # The login itself may succeed (it needs no backend once the proxy knows the server's
        # parameters); every transaction gets the error, and the connection stays usable.
        try:
            conn = ro.connect()
        except psycopg.OperationalError as e:
            assert "No reader is available for this read-only endpoint" in str(e)
        else:
            for _ in range(2):
                with pytest.raises(psycopg.OperationalError) as exc:
                    conn.execute("select 1")
                assert "No reader is available for this read-only endpoint" in str(exc.value)
                assert exc.value.sqlstate == "08001"
            conn.close()
        unusable = [t for t in targets(rw) if t.get("DBProxyEndpointName") == "app-ro"]
        assert unusable and unusable[0]["TargetHealth"] == {
            "State": "UNAVAILABLE", "Reason": "INVALID_REPLICATION_STATE",
            "Description": "No reader is available for the read-only endpoint app-ro."}
        rw.assert_serves()
    finally:
        rw.proc.terminate()
        rw.proc.wait(timeout=20)


def test_a_failed_reader_is_removed(pair, concierge_bin, tmp_path):
    rw, ro = start(pair, concierge_bin, tmp_path, [pair.primary.port, pair.standby.port])
    try:
        wait_for(lambda: ro.psql("select 1", check=False, timeout=5).returncode == 0, 10, "a reader")
        conn = ro.connect()
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
        # The standby dies: the read-only endpoint stops sending transactions to it.
        subprocess.run(["bash", "scripts/pg.sh", "stop", str(pair.standby.datadir)], env=pair.env, timeout=60,
                       capture_output=True)
        wait_for(lambda: {t["Port"]: t["TargetHealth"]["State"] for t in targets(rw)
                          if "DBProxyEndpointName" not in t}.get(pair.standby.port) == "UNAVAILABLE",
                 10, "the standby to be reported unavailable")
        with pytest.raises(psycopg.OperationalError) as exc:
            conn.execute("select 1")
        assert ("No reader is available" in str(exc.value) or "lost" in str(exc.value)), exc.value
        rw.assert_serves()
    finally:
        rw.proc.terminate()
        rw.proc.wait(timeout=20)


def test_transactions_are_balanced_over_readers_least_busy_first(pair, concierge_bin, tmp_path):
    second = pair.add_standby()
    rw, ro = start(pair, concierge_bin, tmp_path, [pair.primary.port, pair.standby.port, second.port])
    clients = []
    try:
        wait_for(lambda: sum(1 for t in targets(rw) if t["Role"] == "READ_ONLY"
                             and t["TargetHealth"]["State"] == "AVAILABLE") == 2, 10, "two readers")
        # Six clients each hold a transaction open: each new one goes to the reader with fewer
        # transactions in progress, so they split three and three.
        ports = []
        for _ in range(6):
            conn = ro.connect(autocommit=False)
            ports.append(int(conn.execute("select setting from pg_settings where name = 'port'").fetchone()[0]))
            clients.append(conn)
        assert sorted(ports.count(p) for p in (pair.standby.port, second.port)) == [3, 3], ports
        # Both readers are standbys; the writer serves none of them.
        assert pair.primary.port not in ports
    finally:
        for conn in clients:
            conn.close()
        rw.proc.terminate()
        rw.proc.wait(timeout=20)
