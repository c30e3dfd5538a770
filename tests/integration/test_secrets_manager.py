"""Secrets from AWS Secrets Manager (arn:aws:secretsmanager:...), fetched with SigV4-signed
GetSecretValue calls, against moto_server standing in for AWS; rotation through it."""

import json
import socket
import subprocess
import sys

import psycopg
import pytest

from helpers import Proxy, clean_env, free_port, port_accepts, to_yaml, wait_for

pytestmark = pytest.mark.proxy_only

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDMOTOTEST00000001", "AWS_SECRET_ACCESS_KEY": "moto/secret/key/for/tests/000000000001"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=clean_env(**CREDENTIALS))
    try:
        wait_for(lambda: port_accepts(port) or proc.poll() is not None, 30, "moto_server to listen")
        assert proc.poll() is None, "moto_server exited"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def secretsmanager(url):
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=url,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def start(pg, concierge_bin, tmp_path, arn, moto_url, *, expect_ready=True):
    port = free_port()
    config = {
        "secret_refresh_interval": 1,
        "secrets_manager": {"endpoint": moto_url},
        "proxies": [{
            "name": "app", "engine_family": "POSTGRESQL", "listen": f"127.0.0.1:{port}", "debug_logging": True,
            "auth": [{"secret_arn": arn}],
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
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env(**CREDENTIALS))
    p = Proxy(host="127.0.0.1", port=port, passwords=dict(pg.passwords), bindir=pg.bindir, proc=proc,
              config_path=path, log_path=log_path)
    if expect_ready:
        wait_for(lambda: p.psql("select 1", check=False, timeout=5).returncode == 0 or proc.poll() is not None,
                 20, "the proxy to serve")
        assert proc.poll() is None, p.log()
    return p


def test_secret_from_secrets_manager_and_its_rotation(pg, concierge_bin, tmp_path, moto):
    sm = secretsmanager(moto)
    name = f"concierge-test-{free_port()}"
    arn = sm.create_secret(Name=name, SecretString=json.dumps(
        {"username": "app", "password": "stale-password", "engine": "postgres"}))["ARN"]
    # Stale at first: the proxy starts (the secret is readable) but the database refuses it.
    p = start(pg, concierge_bin, tmp_path, arn, moto, expect_ready=False)
    try:
        wait_for(lambda: port_accepts(p.port) or p.proc.poll() is not None, 20, "the proxy to listen")
        assert p.proc.poll() is None, p.log()
        with pytest.raises(psycopg.OperationalError):
            p.connect(password="stale-password")
        # Rotation in Secrets Manager: the proxy re-reads it and new logins use it.
        sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "app", "password": pg.passwords["app"]}))
        wait_for(lambda: p.psql("select 1", check=False, timeout=5).returncode == 0, 15,
                 "the rotated secret to be fetched and used")
        client = p.connect()
        assert client.execute("select current_user").fetchone()[0] == "app"
        log = p.log(10**9)
        assert "stale-password" not in log and pg.passwords["app"] not in log
        assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log
        assert arn in log  # the AUTH_FAILURE line names the secret
        client.close()
    finally:
        p.proc.terminate()
        p.proc.wait(timeout=20)


def test_missing_secret_refuses_to_start(pg, concierge_bin, tmp_path, moto):
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:does-not-exist-AbCdEf"
    p = start(pg, concierge_bin, tmp_path, arn, moto, expect_ready=False)
    assert p.proc.wait(timeout=30) == 2
    log = p.log()
    assert "proxies[0].auth[0].secret_arn" in log and arn in log
    assert "ResourceNotFoundException" in log
