"""TLS on both sides: clients to the proxy (with psql's sslmodes, require_tls, certificate
reload) and the proxy to the database (target_group.tls: require, verify-full)."""

import os
import shutil
import socket
import struct
import time

import psycopg
import pytest

from helpers import free_port, wait_for
from tls_helpers import make_pki, peer_certificate

pytestmark = pytest.mark.proxy_only


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxy_cert(pki):
    # Names localhost only (no IP address): verify-full to 127.0.0.1 must fail the host check.
    return pki.issue("proxy", dns=["localhost"])


def tls_section(cert_and_key) -> dict:
    cert, key = cert_and_key
    return {"certificate_file": str(cert), "private_key_file": str(key)}


def psql_tls(p, sslmode: str, *, host: str = "127.0.0.1", rootcert=None, check: bool = False):
    params = {"sslmode": sslmode}
    if rootcert:
        params["sslrootcert"] = str(rootcert)
    saved = p.host
    p.host = host
    try:
        return p.psql("select ssl from pg_stat_ssl where pid = pg_backend_pid()", check=check, **params)
    finally:
        p.host = saved


def test_psql_sslmodes_including_the_hostname_check(proxy, pki, proxy_cert):
    p = proxy(tls=tls_section(proxy_cert))
    # The proxy terminates TLS: the client's session is encrypted to the proxy.
    for mode, host in [("require", "127.0.0.1"), ("verify-ca", "127.0.0.1"), ("verify-full", "localhost")]:
        proc = psql_tls(p, mode, host=host, rootcert=pki.ca_cert)
        assert proc.returncode == 0, f"{mode}: {proc.stderr}"
    with psycopg.connect(p.conninfo(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
    # verify-full checks the host name: the certificate names localhost, not 127.0.0.1.
    proc = psql_tls(p, "verify-full", host="127.0.0.1", rootcert=pki.ca_cert)
    assert proc.returncode != 0
    assert "does not match host name" in proc.stderr or "server certificate" in proc.stderr, proc.stderr
    # A client that does not trust the CA refuses the proxy's certificate.
    other = make_pki(pki.dir / "other")
    proc = psql_tls(p, "verify-ca", rootcert=other.ca_cert)
    assert proc.returncode != 0 and "certificate verify failed" in proc.stderr, proc.stderr
    # Plaintext still works when TLS is offered but not required.
    assert p.psql("select 1", sslmode="disable").stdout.strip() == "1"


def test_require_tls_refuses_plaintext_clients(proxy, proxy_cert, pki):
    p = proxy(tls=tls_section(proxy_cert), require_tls=True, wait_ready=False)
    wait_for(lambda: psql_tls(p, "require").returncode == 0, 20, "the proxy to serve TLS clients")
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(p.conninfo(sslmode="disable"))
    assert "This proxy requires TLS connections." in str(exc.value)
    proc = p.psql("select 1", sslmode="disable", check=False)
    assert proc.returncode != 0 and "This proxy requires TLS connections." in proc.stderr
    # sslmode=prefer falls back to TLS first and succeeds.
    assert p.psql("select 1", sslmode="prefer").stdout.strip() == "1"


def test_tls_is_at_least_1_2(proxy, proxy_cert):
    import ssl
    p = proxy(tls=tls_section(proxy_cert))
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    raw.sendall(struct.pack("!ii", 8, 80877103))
    assert raw.recv(1) == b"S"
    context = ssl._create_unverified_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")
    raw.close()


def test_bytes_after_ssl_request_are_refused(proxy, proxy_cert):
    # The CVE-2021-23214 class: a startup packet pipelined behind the SSLRequest would be read
    # as if it had come through TLS. The proxy refuses instead of answering S.
    p = proxy(tls=tls_section(proxy_cert))
    with p.wire() as w:
        w.send(struct.pack("!ii", 8, 80877103) + struct.pack("!ii", 8, 196608))
        data = w.read_bytes_until_eof()
    assert not data.startswith(b"S")
    assert b"unencrypted data after SSL request" in data
    p.assert_serves()


def test_certificate_files_are_reloaded_when_they_change(proxy, pki, tmp_path):
    first = pki.issue("first", dns=["localhost"], cn="first")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    p = proxy(tls={"certificate_file": str(cert), "private_key_file": str(key)})
    assert "CN = first" in peer_certificate("127.0.0.1", p.port)["text"]
    client = p.connect(sslmode="require")  # an open TLS session keeps its certificate

    second = pki.issue("second", dns=["localhost"], cn="second")
    # Written as a renewal tool would: new files moved into place.
    shutil.copy(second[0], tmp_path / "next.crt")
    shutil.copy(second[1], tmp_path / "next.key")
    os.replace(tmp_path / "next.key", key)
    os.replace(tmp_path / "next.crt", cert)
    wait_for(lambda: "CN = second" in peer_certificate("127.0.0.1", p.port)["text"], 15,
             "the renewed certificate to be served")
    assert client.execute("select 1").fetchone()[0] == 1
    client.close()
    assert "TLS certificate reloaded" in p.log()

    # A broken file is not loaded: the last good certificate stays.
    cert.write_text("not a certificate")
    time.sleep(3)  # two checks
    assert "CN = second" in peer_certificate("127.0.0.1", p.port)["text"]
    assert "TLS certificate not reloaded" in p.log()


def test_bad_certificate_files_are_refused_at_load(proxy, tmp_path, concierge_bin):
    import subprocess
    from helpers import proxy_config, to_yaml
    cert = tmp_path / "c.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = proxy_config(listen_port=free_port(), db_port=5432, secrets={},
                          tls={"certificate_file": str(cert), "private_key_file": str(tmp_path / "missing.key")})
    config["proxies"][0]["auth"] = [{"secret_arn": "env:X"}]
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(config) + "\n")
    proc = subprocess.run([str(concierge_bin), "check-config", "--config", str(path)], capture_output=True,
                          text=True, timeout=30, env={"X": '{"username":"a","password":"b"}', "PATH": os.environ["PATH"]})
    assert proc.returncode == 2
    assert "proxies[0].tls.private_key_file" in proc.stderr and "missing.key" in proc.stderr


# -- the database side -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_ssl(pg, pki):
    """The test cluster with ssl=on and a certificate for localhost from the test CA."""
    cert, key = pki.issue("database", dns=["localhost"], cn="database")
    owner = pg.datadir.stat().st_uid
    files = []
    for source, name in [(cert, "server.crt"), (key, "server.key")]:
        target = pg.root / name
        shutil.copy(source, target)
        os.chown(target, owner, -1)
        target.chmod(0o600)
        files.append(target)
    with pg.super_connect("postgres") as conn:
        conn.autocommit = True
        conn.execute(f"alter system set ssl_cert_file = '{files[0]}'")
        conn.execute(f"alter system set ssl_key_file = '{files[1]}'")
        conn.execute("alter system set ssl = on")
        conn.execute("select pg_reload_conf()")
    wait_for(lambda: pg.scalar("show ssl") == "on", 10, "PostgreSQL to turn ssl on")
    yield pg
    with pg.super_connect("postgres") as conn:
        conn.autocommit = True
        conn.execute("alter system reset ssl")
        conn.execute("alter system reset ssl_cert_file")
        conn.execute("alter system reset ssl_key_file")
        conn.execute("select pg_reload_conf()")


def backend_ssl(p) -> list[bool]:
    """Whether each backend serving the proxy's clients is encrypted (as PostgreSQL sees it)."""
    with p.connect() as conn:
        return [conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]]


def test_backend_tls_verify_full(proxy, pg_ssl, pki):
    p = proxy(target_endpoint_host="localhost", target_group_tls={"mode": "verify-full", "ca_file": str(pki.ca_cert)})
    assert backend_ssl(p) == [True]


def test_backend_tls_require(proxy, pg_ssl):
    p = proxy(target_group_tls={"mode": "require"})
    assert backend_ssl(p) == [True]


def test_backend_tls_verify_full_refuses_an_untrusted_certificate(proxy, pg_ssl, pki):
    other = make_pki(pki.dir / "untrusted")
    p = proxy(target_endpoint_host="localhost", connection_borrow_timeout=2, wait_ready=False,
              target_group_tls={"mode": "verify-full", "ca_file": str(other.ca_cert)})
    with pytest.raises(psycopg.OperationalError) as exc:
        p.connect()
    assert "TLS with the database failed" in str(exc.value), exc.value


def test_backend_tls_verify_full_checks_the_host_name(proxy, pg_ssl, pki):
    # The database's certificate names localhost; reached as 127.0.0.1 it does not match.
    p = proxy(connection_borrow_timeout=2, wait_ready=False,
              target_group_tls={"mode": "verify-full", "ca_file": str(pki.ca_cert)})
    with pytest.raises(psycopg.OperationalError) as exc:
        p.connect()
    assert "TLS with the database failed" in str(exc.value), exc.value
    assert "127.0.0.1" in str(exc.value) or "hostname" in str(exc.value).lower() or "certificate" in str(exc.value).lower()


def test_backend_tls_required_but_not_offered(proxy):
    # A server that answers N to SSLRequest: the proxy does not fall back to plaintext.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    import threading

    def answer_no():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(8)
            conn.sendall(b"N")
            conn.close()
    threading.Thread(target=answer_no, daemon=True).start()
    try:
        p = proxy(db_port=port, connection_borrow_timeout=2, wait_ready=False,
                  target_group_tls={"mode": "require"})
        with pytest.raises(psycopg.OperationalError) as exc:
            p.connect()
        assert "does not accept TLS" in str(exc.value)
    finally:
        server.close()
