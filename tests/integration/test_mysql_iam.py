"""IAM database authentication through a MySQL proxy, as RDS Proxy does it: the token boto3's
`generate_db_auth_token` mints is the password, over TLS only. It reaches the proxy through
`mysql_clear_password` (the `mariadb` client, PyMySQL, mysql-connector-python) or, for clients that keep that plugin disabled, as the password of
caching_sha2_password's full authentication over TLS (the proxy answers a caching_sha2 scramble
of an IAM user with "perform full authentication", 0x04, and the client sends its password in
clear: TLS protects it). A tampered or expired token, or one sent without TLS, is refused with
RDS Proxy's MySQL errors: `ERROR 1045 (28000): Access denied for user 'app'@'%' (using password:
YES)`, and `IAM authentication is allowed only with SSL connections.` (3159, HY000).

`app` is the IAM user (`iam_auth: REQUIRED`); `app_monitor`, the health checks' user, logs in
with its password. The identity store holds the keys the tokens are signed with.
"""

import datetime
import json

import pytest

from mysql_fixtures import CACHING_SHA2, NATIVE
from helpers import wait_for

pytestmark = pytest.mark.proxy_only

boto3 = pytest.importorskip("boto3")

REGION = "us-east-1"
ACCOUNT = "123456789012"
RESOURCE_ID = "prx-0123456789abcdef0"
KEY_ID = "AKIDMYSQLALLOWED0001"
SECRET_KEY = "mysql/allowed+secret/000000000000000000001"
DENIED = "Access denied for user 'app'@'%' (using password: YES)"
IAM_NEEDS_TLS = "IAM authentication is allowed only with SSL connections."


@pytest.fixture(scope="module")
def iam_keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("mysql-iam") / "key"
    path.write_text(SECRET_KEY + "\n")
    return path


@pytest.fixture
def iam_proxy(mysql_proxy, mariadb, iam_keys):
    """Factory: a MySQL proxy with TLS whose user `app` logs in with IAM tokens."""
    cert, key = mariadb.pki.issue("myproxy-iam", dns=["localhost"], ips=["127.0.0.1"])
    started = []

    def start(auth: str = NATIVE):
        p = mysql_proxy(
            client_auth=auth, wait_ready=False, iam_users=("app",), resource_id=RESOURCE_ID, hostnames=["localhost"],
            tls={"certificate_file": str(cert), "private_key_file": str(key)},
            top_level={"iam": {"region": REGION, "account_id": ACCOUNT, "identities": [{
                "access_key_id": KEY_ID, "secret_access_key": f"file:{iam_keys}",
                "arn": f"arn:aws:iam::{ACCOUNT}:user/app",
                "policy": json.dumps({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "rds-db:connect",
                    "Resource": f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{RESOURCE_ID}/*"}]}),
            }]}})
        p.ca = str(mariadb.pki.ca_cert)
        started.append(p)
        # Ready once a token logs in (the target's first health check may still be under way).
        wait_for(lambda: _logs_in(p), 20, "an IAM login through the proxy", interval=0.2)
        return p

    yield start
    for p in started:
        log = p.log(10**9)
        assert SECRET_KEY not in log
        assert "X-Amz-Signature" not in log, "a token in the proxy's log"


def _logs_in(p) -> bool:
    try:
        with pymysql_login(p, token(p)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return True
    except Exception:
        return False


def token(p, user: str = "app", when: datetime.datetime | None = None) -> str:
    import botocore.auth
    client = boto3.client("rds", region_name=REGION, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY)
    original = botocore.auth.get_current_datetime
    if when is not None:
        botocore.auth.get_current_datetime = lambda *args, **kwargs: when
    try:
        return client.generate_db_auth_token(DBHostname="localhost", Port=p.port, DBUsername=user, Region=REGION)
    finally:
        botocore.auth.get_current_datetime = original


def tampered(good: str) -> str:
    return good[:-1] + ("0" if good[-1] != "0" else "1")


def expired(p) -> str:
    return token(p, when=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))


def pymysql_login(p, password: str, tls: bool = True, **kw):
    ssl_args = {"ssl": {"ca": p.ca}} if tls else {}
    return p.connect(password=password, **ssl_args, **kw)


def connector_login(p, password: str, plugin: str, tls: bool = True):
    import mysql.connector
    tls_args = {"ssl_ca": p.ca, "ssl_verify_cert": True} if tls else {"ssl_disabled": True}
    return mysql.connector.connect(host=p.host, port=p.port, user="app", password=password, database="app",
                                   auth_plugin=plugin, connection_timeout=10, use_pure=True, **tls_args)


def cli(p, password: str, *args: str, tls: bool = True):
    tls_args = ["--ssl", f"--ssl-ca={p.ca}", "--ssl-verify-server-cert"] if tls else ["--skip-ssl"]
    return p.cli("SELECT CURRENT_USER(), DATABASE(), 6 * 7", password=password, args=[*tls_args, *args], check=False)


WHO = ("app@%", "app", 42)


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
def test_mariadb_client_logs_in_with_a_token(iam_proxy, auth):
    """The `mariadb` client (MariaDB's client library always has mysql_clear_password: its
    --enable-cleartext-plugin is obsolete) is switched to mysql_clear_password by a native proxy;
    with a caching_sha2 proxy it answers with caching_sha2 and sends the token in that plugin's
    full authentication over TLS."""
    p = iam_proxy(auth)
    proc = cli(p, token(p))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "app@%\tapp\t42"
    if auth == CACHING_SHA2:
        proc = cli(p, token(p), "--default-auth=caching_sha2_password")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "app@%\tapp\t42"


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
def test_pymysql_logs_in_with_a_token(iam_proxy, auth):
    """PyMySQL follows the greeting's plugin: switched to mysql_clear_password by a native
    proxy; its caching_sha2 scramble gets full authentication from a caching_sha2 proxy."""
    p = iam_proxy(auth)
    good = token(p)
    for _ in range(2):  # a token is not single-use within its 15 minutes
        with pymysql_login(p, good) as conn, conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE(), 6 * 7")
            assert cur.fetchone() == WHO


@pytest.mark.parametrize("plugin", ["mysql_clear_password", "caching_sha2_password"])
def test_mysql_connector_logs_in_with_a_token(iam_proxy, plugin):
    """mysql-connector-python, with the token sent with the cleartext plugin at once, or as
    caching_sha2's full-authentication password."""
    p = iam_proxy(CACHING_SHA2)
    conn = connector_login(p, token(p), plugin)
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE(), 6 * 7")
        assert cur.fetchone() == WHO
        cur.close()
    finally:
        conn.close()


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
def test_tampered_and_expired_tokens_get_1045(iam_proxy, auth):
    import pymysql
    import mysql.connector

    p = iam_proxy(auth)
    good = token(p)
    # Tampered: the signature, or the user in the signed query (a token for app_monitor, as app).
    other_user = token(p, user="app_monitor").replace("DBUser=app_monitor&", "DBUser=app&")
    for bad in (tampered(good), other_user, expired(p), "", "not a token"):
        with pytest.raises(pymysql.err.OperationalError) as exc:
            pymysql_login(p, bad)
        assert exc.value.args == (1045, DENIED), bad[:40]
    proc = cli(p, tampered(good))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ERROR 1045 (28000): {DENIED}"
    with pytest.raises(mysql.connector.errors.ProgrammingError) as exc2:
        connector_login(p, expired(p), "caching_sha2_password")
    assert (exc2.value.errno, exc2.value.sqlstate, exc2.value.msg) == (1045, "28000", DENIED)
    # The right token still works.
    with pymysql_login(p, good) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("app@%",)


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
def test_a_token_without_tls_is_refused(iam_proxy, auth):
    import pymysql

    p = iam_proxy(auth)
    with pytest.raises(pymysql.err.OperationalError) as exc:
        pymysql_login(p, token(p), tls=False)
    assert exc.value.args == (3159, IAM_NEEDS_TLS)
    proc = cli(p, token(p), tls=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ERROR 3159 (HY000): {IAM_NEEDS_TLS}"


def test_the_password_user_still_logs_in_with_its_password(iam_proxy, mariadb):
    """IAM is per user: app_monitor (iam_auth DISABLED) logs in with its password."""
    p = iam_proxy(CACHING_SHA2)
    with p.connect(user="app_monitor", database=None, ssl={"ca": p.ca}) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("app_monitor@%",)


def test_change_user_to_the_iam_user_with_a_token(iam_proxy):
    """COM_CHANGE_USER checks a token as a login does (mysql-connector-python's
    cmd_change_user: caching_sha2's full authentication over TLS)."""
    import mysql.connector

    p = iam_proxy(CACHING_SHA2)
    conn = mysql.connector.connect(host=p.host, port=p.port, user="app_monitor", password=p.passwords["app_monitor"],
                                   auth_plugin="caching_sha2_password", connection_timeout=10, use_pure=True,
                                   ssl_ca=p.ca, ssl_verify_cert=True)
    try:
        conn.cmd_change_user(username="app", password=token(p), database="app")
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE(), 6 * 7")
        assert cur.fetchone() == WHO
        cur.close()
        with pytest.raises(mysql.connector.errors.ProgrammingError) as exc:
            conn.cmd_change_user(username="app", password=expired(p), database="app")
        assert (exc.value.errno, exc.value.msg) == (1045, DENIED)
    finally:
        try:
            conn.close()
        except Exception:
            pass


@pytest.mark.parametrize("auth", [NATIVE, CACHING_SHA2], ids=["native", "caching_sha2"])
def test_the_exchange_on_the_wire(iam_proxy, auth):
    """Packet by packet, over TLS: an IAM user's caching_sha2 scramble (even the secret
    password's) gets "perform full authentication" (0x01 0x04), and the token then logs in; a
    native answer is switched to mysql_clear_password (a native proxy) or to caching_sha2 (a
    caching_sha2 proxy, then full authentication)."""
    import hashlib
    import ssl

    from mywire import CLIENT_SSL, DEFAULT_CAPABILITIES, native_password_scramble, ssl_request

    p = iam_proxy(auth)
    good = token(p)

    def sha2_scramble(password: str, nonce: bytes) -> bytes:
        h1 = hashlib.sha256(password.encode()).digest()
        h3 = hashlib.sha256(hashlib.sha256(h1).digest() + nonce[:20]).digest()
        return bytes(a ^ b for a, b in zip(h1, h3))

    for client_plugin in ("caching_sha2_password", "mysql_native_password"):
        for password, ok in ((good, True), (tampered(good), False)):
            with p.wire() as w:
                greeting = w.read_greeting()
                w.send_packet(ssl_request(), 1)
                w.start_tls(ssl.create_default_context(cafile=p.ca), server_hostname="localhost")
                if client_plugin == "caching_sha2_password":
                    scramble = sha2_scramble(p.passwords["app"], greeting.salt)
                else:
                    scramble = native_password_scramble(p.passwords["app"], greeting.salt)
                w.send_packet(w.handshake_response("app", "", plugin=client_plugin, auth_response=scramble,
                                                   capabilities=DEFAULT_CAPABILITIES | CLIENT_SSL), 2)
                answer = w.read_packet()
                if client_plugin == "mysql_native_password":
                    name, _, nonce = answer.payload[1:].partition(b"\0")
                    assert answer.payload[:1] == b"\xfe" and answer.seq == 3, answer
                    if auth == NATIVE:
                        assert name == b"mysql_clear_password"
                        w.send_packet(password.encode() + b"\0", 4)
                        result = w.read_packet()
                        assert result.seq == 5
                        check(w, result, ok)
                        continue
                    assert name == b"caching_sha2_password"
                    w.send_packet(sha2_scramble("whatever", nonce.rstrip(b"\0")), 4)
                    answer = w.read_packet()
                assert answer.payload == b"\x01\x04", answer  # perform_full_authentication
                w.send_packet(password.encode() + b"\0", answer.seq + 1)
                result = w.read_packet()
                assert result.seq == answer.seq + 2
                check(w, result, ok)


def check(w, result, ok: bool) -> None:
    from mywire import parse_err

    if ok:
        assert result.is_ok, result
        assert w.query("SELECT CURRENT_USER()") == [["app@%"]]
    else:
        assert result.is_err, result
        assert str(parse_err(result.payload)) == f"ERROR 1045 (28000): {DENIED}"
