"""IAM database authentication: clients log in with the SigV4 tokens `aws rds
generate-db-auth-token` / boto3 (and `concierge generate-db-auth-token`) mint, checked against
the identity store's keys and policies; over TLS only."""

import datetime
import json
import os
import subprocess

import psycopg
import pytest

from helpers import Proxy, clean_env, free_port, to_yaml, wait_for, write_secret
from tls_helpers import make_pki

pytestmark = pytest.mark.proxy_only

boto3 = pytest.importorskip("boto3")

REGION = "us-east-1"
ACCOUNT = "123456789012"
RESOURCE_ID = "prx-0123456789abcdef0"
KEYS = {
    "AKIDALLOWED000000001": "allowed/secret+key/0000000000000000000001",
    "AKIDDENIED0000000002": "denied/secret+key/00000000000000000000002",
    "AKIDOTHERPROXY000003": "other/secret+key/000000000000000000000003",
}


def policy(*statements) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.fixture(scope="module")
def iam_proxy(pg, concierge_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iam")
    pki = make_pki(tmp / "pki")
    cert, key = pki.issue("proxy", dns=["localhost"], ips=["127.0.0.1"])
    port, admin = free_port(), free_port()
    secrets = {u: write_secret(tmp / f"{u}.json", u, pg.passwords[u]) for u in ("app", "app_md5")}
    env = clean_env()
    identities = []
    for index, (key_id, secret) in enumerate(KEYS.items()):
        (tmp / f"key{index}").write_text(secret + "\n")
        identities.append({"access_key_id": key_id, "secret_access_key": f"file:key{index}"})
    identities[0].update(arn=f"arn:aws:iam::{ACCOUNT}:user/allowed", policy=policy(
        {"Effect": "Allow", "Action": "rds-db:connect", "Resource": f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{RESOURCE_ID}/*"}))
    identities[1].update(arn=f"arn:aws:iam::{ACCOUNT}:user/denied", policy=policy(
        {"Effect": "Allow", "Action": "rds-db:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "rds-db:connect", "Resource": f"arn:aws:rds-db:*:*:dbuser:*/app"}))
    identities[2].update(arn=f"arn:aws:iam::{ACCOUNT}:user/other", policy=policy(
        {"Effect": "Allow", "Action": "rds-db:connect", "Resource": f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:prx-0000000000000000f/*"}))
    config = {
        "iam": {"region": REGION, "account_id": ACCOUNT, "identities": identities},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "proxies": [{
            "name": "app", "resource_id": RESOURCE_ID, "engine_family": "POSTGRESQL",
            "listen": f"127.0.0.1:{port}", "hostnames": ["localhost"], "debug_logging": True,
            "tls": {"certificate_file": str(cert), "private_key_file": str(key)},
            "auth": [
                {"secret_arn": f"file:{secrets['app']}", "iam_auth": "REQUIRED"},
                {"secret_arn": f"file:{secrets['app_md5']}", "iam_auth": "REQUIRED"},
            ],
            "target_group": {"connection_pool_config": {"max_connections_percent": 10, "max_idle_connections_percent": 5},
                             "targets": [{"endpoint": f"127.0.0.1:{pg.port}"}]},
        }],
    }
    path = tmp / "concierge.yaml"
    path.write_text(to_yaml(config) + "\n")
    log_path = tmp / "concierge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    p = Proxy(host="localhost", port=port, passwords=pg.passwords, bindir=pg.bindir, proc=proc,
              config_path=path, log_path=log_path)
    p.admin_url = f"http://127.0.0.1:{admin}"
    p.ca = pki.ca_cert
    from helpers import port_accepts
    wait_for(lambda: port_accepts(port) or proc.poll() is not None, 20, "the proxy to listen")
    assert proc.poll() is None, log_path.read_text()
    yield p
    proc.terminate()
    proc.wait(timeout=20)
    log = log_path.read_text()
    for secret in KEYS.values():
        assert secret not in log


def boto3_token(user: str, key_id: str = "AKIDALLOWED000000001", host: str = "localhost", port: int | None = None,
                region: str = REGION, when: datetime.datetime | None = None, proxy=None) -> str:
    import botocore.auth
    client = boto3.client("rds", region_name=region, aws_access_key_id=key_id,
                          aws_secret_access_key=KEYS[key_id])
    original = botocore.auth.get_current_datetime
    if when is not None:
        botocore.auth.get_current_datetime = lambda *args, **kwargs: when
    try:
        return client.generate_db_auth_token(DBHostname=host, Port=port or proxy.port, DBUsername=user, Region=region)
    finally:
        botocore.auth.get_current_datetime = original


def login(p, user: str, token: str, sslmode: str = "verify-full", dbname: str = "app"):
    return psycopg.connect(host="localhost", port=p.port, user=user, password=token, dbname=dbname,
                           sslmode=sslmode, sslrootcert=str(p.ca), connect_timeout=10)


def refused(p, user: str, token: str, sslmode: str = "verify-full") -> str:
    with pytest.raises(psycopg.OperationalError) as exc:
        login(p, user, token, sslmode).close()
    return str(exc.value)


FAILED = "IAM authentication failed for user {user}. Check the IAM token for this user and try again."


def test_boto3_token_logs_in(iam_proxy):
    token = boto3_token("app", proxy=iam_proxy)
    assert token.startswith(f"localhost:{iam_proxy.port}/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256")
    with login(iam_proxy, "app", token) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app"
    # The same token again, within its 15 minutes: tokens are not single-use.
    with login(iam_proxy, "app", token) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_concierge_minted_token_logs_in(iam_proxy, concierge_bin):
    proc = subprocess.run(
        [str(concierge_bin), "generate-db-auth-token", "--hostname", "localhost", "--port", str(iam_proxy.port),
         "--username", "app_md5", "--region", REGION],
        capture_output=True, text=True, timeout=30,
        env=clean_env(AWS_ACCESS_KEY_ID="AKIDALLOWED000000001", AWS_SECRET_ACCESS_KEY=KEYS["AKIDALLOWED000000001"]))
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    with login(iam_proxy, "app_md5", token) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app_md5"


def test_refused_tokens(iam_proxy):
    p = iam_proxy
    good = boto3_token("app", proxy=p)
    # Tampered: one character of the signature changed.
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert FAILED.format(user="app") in refused(p, "app", tampered)
    # Tampered: the user changed in the signed query.
    assert FAILED.format(user="app_md5") in refused(p, "app_md5", good.replace("DBUser=app&", "DBUser=app_md5&"))
    # Expired: signed an hour ago (valid for 15 minutes).
    old = boto3_token("app", proxy=p, when=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    assert FAILED.format(user="app") in refused(p, "app", old)
    # Wrong user: a valid token for app presented as app_md5.
    assert FAILED.format(user="app_md5") in refused(p, "app_md5", good)
    # Minted for another host or port, or region.
    assert FAILED.format(user="app") in refused(p, "app", boto3_token("app", proxy=p, host="elsewhere.example.com"))
    assert FAILED.format(user="app") in refused(p, "app", boto3_token("app", proxy=p, port=p.port + 1))
    assert FAILED.format(user="app") in refused(p, "app", boto3_token("app", proxy=p, region="eu-west-1"))
    # Denied by policy (an explicit Deny wins over the Allow), and a policy for another proxy id.
    assert FAILED.format(user="app") in refused(p, "app", boto3_token("app", "AKIDDENIED0000000002", proxy=p))
    assert FAILED.format(user="app") in refused(p, "app", boto3_token("app", "AKIDOTHERPROXY000003", proxy=p))
    # The denied identity may still connect as another user (its Deny names only app).
    with login(p, "app_md5", boto3_token("app_md5", "AKIDDENIED0000000002", proxy=p)) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    # The password itself is not a token.
    assert FAILED.format(user="app") in refused(p, "app", p.passwords["app"])
    # Each refusal is logged with its real cause (the client only sees the one message).
    log = p.log(10**9)
    for cause in ["the token's signature does not match", "the token expired at",
                  "the token is for database user 'app', not 'app_md5'",
                  "the token is for host 'elsewhere.example.com', not this endpoint",
                  f"the token is for port {p.port + 1}, not {p.port}", "signed for region 'eu-west-1'",
                  "user/denied may not rds-db:connect", "user/other may not rds-db:connect",
                  "malformed IAM authentication token"]:
        assert cause in log, cause
    signature = good.rsplit("X-Amz-Signature=", 1)[1]
    assert signature not in log and good not in log


def test_iam_over_plaintext_is_refused(iam_proxy):
    message = refused(iam_proxy, "app", boto3_token("app", proxy=iam_proxy), sslmode="disable")
    assert "IAM authentication is allowed only with SSL connections." in message


def test_iam_failures_are_counted(iam_proxy):
    import urllib.request
    def failed_auth() -> float:
        text = urllib.request.urlopen(iam_proxy.admin_url + "/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("concierge_client_connections_setup_failed_auth_total{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no failed-auth counter")
    before = failed_auth()
    refused(iam_proxy, "app", "not a token")
    refused(iam_proxy, "app", boto3_token("app", proxy=iam_proxy), sslmode="disable")
    assert failed_auth() == before + 2
