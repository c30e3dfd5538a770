"""Logins through a MySQL proxy with real clients: the `mariadb` command-line client with
mysql_native_password and caching_sha2_password (`--default-auth`; the client library ships
caching_sha2_password as a client plugin), with and without TLS (`--ssl`, the certificate checked
against the test CA); a wrong password and an unknown user get the same ERROR 1045. PyMySQL and
mysql-connector-python log in too.

Direct mode: the MariaDB server itself has the same CA's certificate; it has no caching_sha2
server plugin, so a caching_sha2 client is switched to mysql_native_password there (the login
still succeeds), and its 1045 names the client's address instead of RDS Proxy's `'%'`.
"""

import hashlib
import re
import ssl

import pytest

from helpers import DIRECT
from mysql_fixtures import CACHING_SHA2, NATIVE, MyTarget, SSLRequestCoalescer
from mywire import native_password_scramble, parse_err, ssl_request

AUTH_TYPES = [NATIVE, CACHING_SHA2]
PLUGIN = {NATIVE: "mysql_native_password", CACHING_SHA2: "caching_sha2_password"}
# How the server names the client's host in ERROR 1045: RDS Proxy says '%'.
DENIED_HOST = "127.0.0.1" if DIRECT else "%"


@pytest.fixture(scope="module")
def proxy_tls(mariadb):
    """The proxy's certificate (signed by the session's test CA, for localhost and 127.0.0.1)."""
    cert, key = mariadb.pki.issue("myproxy", dns=["localhost"], ips=["127.0.0.1"])
    return {"certificate_file": str(cert), "private_key_file": str(key)}


def tls_args(mariadb, tls: bool) -> list[str]:
    if not tls:
        return ["--skip-ssl"]
    return ["--ssl", f"--ssl-ca={mariadb.pki.ca_cert}", "--ssl-verify-server-cert"]


def status_line(output: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.*)$", output, re.MULTILINE)
    assert match, f"no {name!r} line in the client's status:\n{output}"
    return match.group(1).strip()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_mariadb_client_logs_in(mysql_proxy, mariadb, proxy_tls, auth, tls):
    p = mysql_proxy(client_auth=auth, tls=proxy_tls)
    args = [f"--default-auth={PLUGIN[auth]}", *tls_args(mariadb, tls)]
    # Twice: a second login of the same user (caching_sha2's fast path on a real server).
    for _ in range(2):
        proc = p.cli(input="SELECT CURRENT_USER(), DATABASE(), 6 * 7;\nstatus\n", args=args, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "app@%\tapp\t42", proc.stdout
        ssl_status = status_line(proc.stdout, "SSL")
        if tls:
            assert ssl_status.startswith("Cipher in use is "), ssl_status
        else:
            assert ssl_status == "Not in use", ssl_status


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_wrong_password_and_unknown_user_get_the_same_1045(mysql_proxy, mariadb, proxy_tls, auth, tls):
    p = mysql_proxy(client_auth=auth, tls=proxy_tls)
    args = [f"--default-auth={PLUGIN[auth]}", *tls_args(mariadb, tls)]
    for user, password in [("app", "not the password"), ("app", p.passwords["app"] + "x"),
                           ("nobody", "not the password"), ("nobody", p.passwords["app"])]:
        proc = p.cli("SELECT 1", user=user, password=password, args=args, check=False)
        assert proc.returncode == 1, (user, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == (f"ERROR 1045 (28000): Access denied for user '{user}'@'{DENIED_HOST}' "
                                       f"(using password: YES)"), (user, proc.stderr)
        assert proc.stdout == ""
    # The right password still works afterwards.
    assert p.cli("SELECT 1", args=args).stdout.strip() == "1"


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_pymysql_and_mysql_connector_log_in(mysql_proxy, mariadb, proxy_tls, auth, tls):
    import mysql.connector
    import pymysql

    p = mysql_proxy(client_auth=auth, tls=proxy_tls)
    ssl_args = {"ssl": {"ca": str(mariadb.pki.ca_cert)}} if tls else {}
    with p.connect(**ssl_args) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == ("app@%", "app")
    with pytest.raises(pymysql.err.OperationalError) as exc:
        p.connect(password="wrong", **ssl_args)
    assert exc.value.args == (1045, f"Access denied for user 'app'@'{DENIED_HOST}' (using password: YES)")

    connector_args = {"ssl_ca": str(mariadb.pki.ca_cert), "ssl_verify_cert": True} if tls else {"ssl_disabled": True}
    conn = mysql.connector.connect(host=p.host, port=p.port, user="app", password=p.passwords["app"],
                                   database="app", auth_plugin=PLUGIN[auth], connection_timeout=10,
                                   **connector_args)
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), DATABASE(), 6 * 7")
        assert cur.fetchone() == ("app@%", "app", 42)
        cur.close()
    finally:
        conn.close()
    with pytest.raises(mysql.connector.errors.ProgrammingError) as exc2:
        mysql.connector.connect(host=p.host, port=p.port, user="nobody", password="wrong", database="app",
                                auth_plugin=PLUGIN[auth], connection_timeout=10, **connector_args)
    assert exc2.value.errno == 1045 and exc2.value.sqlstate == "28000"
    assert exc2.value.msg == f"Access denied for user 'nobody'@'{DENIED_HOST}' (using password: YES)"


@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_tls_client_hello_in_the_same_segment_as_the_ssl_request(mysql_proxy, mariadb, proxy_tls, auth):
    """A MySQL client sends its TLS ClientHello right after the SSLRequest without waiting for
    an answer (there is none), so the two often arrive together (PyMySQL's do, under load):
    the bytes after the SSLRequest are then the TLS handshake and must be served as such."""
    p = mysql_proxy(client_auth=auth, tls=proxy_tls)
    with SSLRequestCoalescer(p.host, p.port) as relay:
        via = MyTarget(p.host, relay.port, p.passwords)
        for _ in range(3):
            with via.connect(ssl_ca=str(mariadb.pki.ca_cert)) as conn, conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone() == ("app@%",)
        proc = via.cli(input="SELECT 42;\nstatus\n", args=[f"--default-auth={PLUGIN[auth]}", *tls_args(mariadb, True)],
                       check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "42"
        assert status_line(proc.stdout, "SSL").startswith("Cipher in use is ")
        assert relay.coalesced == 4


def caching_sha2_scramble(password: str, nonce: bytes) -> bytes:
    """caching_sha2_password's fast-path answer: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    h1 = hashlib.sha256(password.encode()).digest()
    h2 = hashlib.sha256(h1).digest()
    h3 = hashlib.sha256(h2 + nonce[:20]).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


@pytest.mark.proxy_only
@pytest.mark.parametrize("auth", AUTH_TYPES, ids=["native", "caching_sha2"])
def test_greeting_announces_the_configured_plugin(mysql_proxy, auth):
    """The proxy's greeting names the plugin of its client_password_auth_type, and a client that
    answers with that plugin's scramble is in (caching_sha2: the fast path, AuthMoreData 0x03)."""
    p = mysql_proxy(client_auth=auth)
    password = p.passwords["app"]
    with p.wire() as w:
        greeting = w.read_greeting()
        assert greeting.auth_plugin == PLUGIN[auth]
        assert len(greeting.salt) == 20
        if auth == NATIVE:
            response = native_password_scramble(password, greeting.salt)
        else:
            response = caching_sha2_scramble(password, greeting.salt)
        w.send_packet(w.handshake_response("app", password, plugin=PLUGIN[auth], auth_response=response), 1)
        answer = w.read_packet()
        if auth == CACHING_SHA2:
            assert answer.payload == b"\x01\x03", answer  # fast_auth_success
            assert answer.seq == 2
            answer = w.read_packet()
        assert answer.is_ok, answer
        assert w.query("SELECT CURRENT_USER()") == [["app@%"]]


@pytest.mark.proxy_only
@pytest.mark.parametrize("tls", [False, True], ids=["rsa", "tls"])
def test_caching_sha2_full_authentication(mysql_proxy, mariadb, proxy_tls, tls):
    """A caching_sha2 scramble that does not match gets full authentication (AuthMoreData 0x04):
    the password itself then logs in, sent in clear over TLS, or without TLS encrypted with the
    proxy's RSA public key (asked for with 0x02); a wrong one gets the 1045 of a wrong password."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    p = mysql_proxy(client_auth=CACHING_SHA2, tls=proxy_tls)
    for password, ok in [(p.passwords["app"], True), ("wrong", False)]:
        with p.wire() as w:
            greeting = w.read_greeting()
            seq = 1
            if tls:
                w.send_packet(ssl_request(), seq)
                seq += 1
                context = ssl.create_default_context(cafile=str(mariadb.pki.ca_cert))
                w.start_tls(context, server_hostname="localhost")
            w.send_packet(w.handshake_response("app", "", plugin=PLUGIN[CACHING_SHA2],
                                               auth_response=caching_sha2_scramble("not it", greeting.salt)), seq)
            answer = w.read_packet()
            assert answer.payload == b"\x01\x04", answer  # perform_full_authentication
            if tls:
                w.send_packet(password.encode() + b"\0", answer.seq + 1)
            else:
                w.send_packet(b"\x02", answer.seq + 1)  # request the public key
                key = w.read_packet()
                assert key.payload[:1] == b"\x01" and b"-----BEGIN PUBLIC KEY-----" in key.payload, key
                public_key = serialization.load_pem_public_key(key.payload[1:])
                clear = password.encode() + b"\0"
                mixed = bytes(c ^ greeting.salt[i % len(greeting.salt)] for i, c in enumerate(clear))
                encrypted = public_key.encrypt(mixed, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                                   algorithm=hashes.SHA1(), label=None))
                w.send_packet(encrypted, key.seq + 1)
            result = w.read_packet()
            if ok:
                assert result.is_ok, result
                assert w.query("SELECT CURRENT_USER()") == [["app@%"]]
            else:
                assert result.is_err, result
                assert str(parse_err(result.payload)) == ("ERROR 1045 (28000): Access denied for user "
                                                          "'app'@'%' (using password: YES)")


def test_a_login_naming_an_unknown_or_forbidden_schema_fails_as_it_does_directly(mysql_proxy, mariadb):
    """A MySQL server refuses a login whose schema is not there (1049, when the user has
    privileges on that name) or not the user's (1044). The proxy checks a login schema it has not
    seen on the database before answering the login, so clients fail at connect, with the
    server's error, as they do directly (before, the login succeeded and the client's first
    statement failed)."""
    import pymysql

    p = mysql_proxy()
    cases = [("app", "ghost_db", 1049, "42000", "Unknown database 'ghost_db'"),
             ("app", "no_such_db", 1044, "42000", "Access denied for user 'app'@'%' to database 'no_such_db'"),
             ("app_monitor", "app", 1044, "42000", "Access denied for user 'app_monitor'@'%' to database 'app'")]
    with mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("GRANT SELECT ON `ghost_db`.* TO 'app'@'%'")  # privileges on a schema not there
    try:
        for target in (mariadb, p):
            for user, schema, code, sqlstate, message in cases:
                proc = target.cli("SELECT 1", user=user, database=schema, check=False)
                assert proc.returncode == 1, (target, user, proc.stdout, proc.stderr)
                # At connect, not "at line 1" (the first statement).
                assert proc.stderr.strip() == f"ERROR {code} ({sqlstate}): {message}", (target, proc.stderr)
                with pytest.raises(pymysql.err.OperationalError) as exc:
                    target.connect(user=user, database=schema)
                assert exc.value.args == (code, message), target
    finally:
        with mariadb.admin() as conn, conn.cursor() as cur:
            cur.execute("REVOKE SELECT ON `ghost_db`.* FROM 'app'@'%'")
    # A schema that is there: checked once, then every login with it is answered at once.
    for _ in range(3):
        with p.connect(database="app2") as conn, conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == ("app2",)
    assert p.cli("SELECT DATABASE()", database="app").stdout.strip() == "app"
