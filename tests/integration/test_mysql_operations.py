"""The rest of the product for a MySQL proxy: the admin API shows its engine and a live
modify-db-proxy-target-group changes its cap; TLS from the proxy to the database; require_tls."""

import pymysql
import pytest

from admin_helpers import AdminApi
from helpers import wait_for
from mysql_fixtures import metric

pytestmark = pytest.mark.proxy_only


def hold_transaction(p):
    """A client inside a transaction (it holds a backend), or the error it got instead. PyMySQL's
    connect already runs a statement (SET autocommit), which needs a backend: a full pool can
    answer it with the 9501."""
    try:
        conn = p.connect()
    except pymysql.err.OperationalError as e:
        return e
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
    except pymysql.err.OperationalError as e:
        conn.close()
        return e
    return conn


def test_admin_api_shows_the_engine_and_a_live_modify_changes_the_cap(mysql_proxy, mariadb):
    p = mysql_proxy(metrics=True, connection_borrow_timeout=2)  # cap 10 of max_connections 100
    host, port = p.admin_url.removeprefix("http://").split(":")
    api = AdminApi(host, int(port), None)
    described = api.db_proxy()
    assert described["EngineFamily"] == "MYSQL"
    assert [a["ClientPasswordAuthType"] for a in described["Auth"]] == ["MYSQL_NATIVE_PASSWORD"] * 2
    assert metric(p.metrics(), "concierge_max_database_connections_allowed") == 10

    held = []
    try:
        for _ in range(10):
            c = hold_transaction(p)
            assert not isinstance(c, Exception), c
            held.append(c)
        assert mariadb.connections("app") == 10
        err = hold_transaction(p)
        assert isinstance(err, pymysql.err.OperationalError) and err.args[0] == 9501, err

        # Raise the cap live: the next client gets an eleventh backend.
        api.ok(api.modify_target_group({"MaxConnectionsPercent": 12}))
        wait_for(lambda: metric(p.metrics(), "concierge_max_database_connections_allowed") == 12, 5,
                 "the new cap of 12")
        for _ in range(2):
            c = hold_transaction(p)
            assert not isinstance(c, Exception), c
            held.append(c)
        assert mariadb.connections("app") == 12
        for c in held:
            c.commit()

        # Lower it: the idle backends beyond it are closed, and no more than 3 are used.
        api.ok(api.modify_target_group({"MaxConnectionsPercent": 3, "MaxIdleConnectionsPercent": 3}))
        wait_for(lambda: mariadb.connections("app") <= 3, 5, "at most 3 backends after lowering the cap")
        for c in held:
            c.close()
        held = []
        for _ in range(3):
            c = hold_transaction(p)
            assert not isinstance(c, Exception), c
            held.append(c)
        err = hold_transaction(p)
        assert isinstance(err, pymysql.err.OperationalError) and err.args[0] == 9501, err
        assert mariadb.connections("app") == 3
    finally:
        for c in held:
            c.close()


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_tls_to_the_database(mysql_proxy, mariadb, mode):
    """With target_group.tls the proxy's backends are TLS sessions (the server says so)."""
    tls = {"mode": mode}
    if mode == "verify-full":
        tls["ca_file"] = str(mariadb.pki.ca_cert)
    p = mysql_proxy(target_group_tls=tls)
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        name, version = cur.fetchone()
        assert version.startswith("TLSv1."), version
    # A certificate the proxy cannot verify: no backend, and the client is told.
    if mode == "verify-full":
        from tls_helpers import make_pki
        other = make_pki(p.config_path.parent / "other-ca")
        q = mysql_proxy(target_group_tls={"mode": "verify-full", "ca_file": str(other.ca_cert)},
                        wait_ready=False, connection_borrow_timeout=3)
        with pytest.raises(pymysql.err.OperationalError):
            with q.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")


def test_require_tls_refuses_plaintext_clients(mysql_proxy, mariadb):
    cert, key = mariadb.pki.issue("myproxy-require", dns=["localhost"], ips=["127.0.0.1"])
    p = mysql_proxy(tls={"certificate_file": str(cert), "private_key_file": str(key)}, require_tls=True,
                    wait_ready=False)
    ssl = {"ssl": {"ca": str(mariadb.pki.ca_cert)}}

    def served_over_tls() -> bool:
        try:
            with p.connect(**ssl) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                return True
        except pymysql.err.OperationalError:
            return False
    wait_for(served_over_tls, 20, "the proxy to serve TLS clients")
    with pytest.raises(pymysql.err.OperationalError) as exc:
        p.connect()
    assert exc.value.args[0] == 3159, exc.value.args
    proc = p.cli("SELECT 1", args=["--skip-ssl"], check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("ERROR 3159 (HY000)"), proc.stderr
    assert p.cli("SELECT 1", args=["--ssl", f"--ssl-ca={mariadb.pki.ca_cert}"]).stdout.strip() == "1"


def test_a_read_only_endpoint_without_a_reader_says_so(mysql_proxy, mariadb):
    """A READ_ONLY endpoint in front of a writer alone has no reader: each statement gets the
    proxy's "No reader is available" (as PostgreSQL clients do), not a connect error naming no
    cause, and the client's connection stays usable; the read/write listener serves."""
    from helpers import free_port
    from mysql_fixtures import MySQLProxy

    ro_port = free_port()
    p = mysql_proxy(endpoints=[{"name": "app-ro", "target_role": "READ_ONLY", "listen": f"127.0.0.1:{ro_port}"}])
    ro = MySQLProxy(host="127.0.0.1", port=ro_port, passwords=mariadb.passwords)
    wait_for(lambda: ro.cli("SELECT 1", check=False).returncode == 1, 10, "the READ_ONLY endpoint to listen")
    proc = ro.cli("SELECT 1", check=False)
    assert proc.stderr.strip() == ("ERROR 1429 (HY000) at line 1: No reader is available for this "
                                   "read-only endpoint"), proc.stderr
    # PyMySQL's connect runs SET NAMES, which needs a backend.
    for _ in range(2):
        with pytest.raises(pymysql.err.OperationalError) as exc:
            ro.connect()
        assert exc.value.args == (1429, "No reader is available for this read-only endpoint")
    # The connection stays usable: one `mariadb` session, two statements, two errors.
    proc = ro.cli(input="SELECT 1;\nSELECT 2;\n", args=("--force",), check=False)
    assert proc.stderr.strip().splitlines() == [
        f"ERROR 1429 (HY000) at line {n}: No reader is available for this read-only endpoint" for n in (1, 2)], proc.stderr
    with p.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
