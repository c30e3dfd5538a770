"""Client authentication against the secrets: SCRAM-SHA-256, md5, wrong passwords, unknown users,
unknown databases, and TLS negotiation (not offered yet)."""

import struct

import psycopg
import pytest

from pgwire import AUTH_MD5, AUTH_OK, AUTH_SASL, SSL_REQUEST_CODE, ServerError


def login_error(target, user: str, password: str, dbname: str = "app") -> ServerError:
    """Log in over the raw protocol and return the ErrorResponse (fails if login succeeds)."""
    with target.wire() as w:
        with pytest.raises(ServerError) as exc:
            w.startup(user, password, dbname)
        return exc.value


def test_scram_login(proxy):
    p = proxy()
    with p.wire() as w:
        w.startup("app", p.passwords["app"])
        assert w.auth_requests[0] == AUTH_SASL  # SCRAM-SHA-256 was asked for ...
        assert w.auth_requests[-1] == AUTH_OK   # ... and the server's signature verified
        assert w.backend_key is not None        # BackendKeyData, for cancel requests
        assert w.query("select current_user") == [("app",)]


def test_wrong_password(proxy):
    p = proxy()
    err = login_error(p, "app", "not-the-password")
    assert err.message == 'password authentication failed for user "app"'
    assert err.sqlstate == "28P01"
    # What a person sees in psql.
    proc = p.psql("select 1", password="not-the-password", check=False)
    assert proc.returncode != 0
    assert 'password authentication failed for user "app"' in proc.stderr


def test_unknown_user(proxy):
    # The same message as a wrong password: no hint whether the user exists.
    p = proxy()
    err = login_error(p, "nosuchuser", "whatever")
    assert err.message == 'password authentication failed for user "nosuchuser"'
    assert err.sqlstate == "28P01"


def test_md5_user(proxy):
    p = proxy()
    with p.wire() as w:
        w.startup("app_md5", p.passwords["app_md5"])
        assert w.auth_requests[0] == AUTH_MD5
        assert w.query("select current_user") == [("app_md5",)]
    with p.connect(user="app_md5") as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app_md5"

    err = login_error(p, "app_md5", "wrong")
    assert err.message == 'password authentication failed for user "app_md5"'
    assert err.sqlstate == "28P01"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.connect(user="app_md5", password="wrong")


def test_nonexistent_database(proxy):
    p = proxy()
    err = login_error(p, "app", p.passwords["app"], dbname="nope")
    assert err.message == 'database "nope" does not exist'
    assert err.sqlstate == "3D000"
    proc = p.psql("select 1", dbname="nope", check=False)
    assert proc.returncode != 0
    assert 'database "nope" does not exist' in proc.stderr


def test_ssl_prefer_works_and_require_fails(proxy):
    # TLS is not offered yet: an SSLRequest is answered 'N'; prefer falls back to plaintext.
    p = proxy()
    assert p.psql("select 1", sslmode="prefer").stdout.strip() == "1"
    proc = p.psql("select 1", sslmode="require", check=False)
    assert proc.returncode != 0
    assert "server does not support SSL" in proc.stderr

    with p.wire() as w:
        w.send(struct.pack("!II", 8, SSL_REQUEST_CODE))
        assert w.read_byte() == b"N"
        w.startup("app", p.passwords["app"])  # and the same connection goes on in plaintext
        assert w.query("select 1") == [("1",)]
