"""The proxy's side of the database: how it logs in to it, how its pools share the backend cap,
how surplus idle backends are closed, init_query, session parameters on shared backends, and
many idle clients multiplexed over a few backends."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from helpers import DB_USERS, DIRECT, BackendSampler, parse_pgbench, wait_for
from pgwire import AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, ServerError

# The first authentication request a client sees, per pg_hba method / client_password_auth_type.
HBA_AUTH_REQUEST = {"scram-sha-256": AUTH_SASL, "md5": AUTH_MD5, "password": AUTH_CLEARTEXT,
                    "trust": AUTH_OK}
CLIENT_AUTH_REQUEST = {"POSTGRES_SCRAM_SHA_256": AUTH_SASL, "POSTGRES_MD5": AUTH_MD5}

DEFAULT_SEARCH_PATH = '"$user", public'
DEFAULT_DATESTYLE = "ISO, MDY"  # scripts/pg.sh runs initdb with --locale=C


# -- 1. backend authentication methods -------------------------------------------------------

@pytest.mark.parametrize("user", DB_USERS, ids=lambda u: f"{u.name}-{u.hba_method}")
def test_backend_login_with_each_auth_method(proxy, pg, user):
    # The proxy logs in to the database with the user's secret, answering whatever the database
    # asks for (SCRAM-SHA-256, md5, a cleartext password, or nothing at all for trust).
    # First make sure the database really asks for that method (the suite's own pg_hba setup).
    with pg.wire() as w:
        w.startup(user.name, pg.passwords[user.name])
        assert w.auth_requests[0] == HBA_AUTH_REQUEST[user.hba_method], w.auth_requests

    p = proxy()
    with p.wire() as w:
        w.startup(user.name, p.passwords[user.name])
        if not DIRECT:
            # Clients log in to the proxy as configured, whatever the database wants.
            assert w.auth_requests[0] == CLIENT_AUTH_REQUEST[user.client_auth], w.auth_requests
        assert w.query("select current_user") == [(user.name,)]
    with p.connect(user=user.name) as conn:
        assert conn.execute("select current_user").fetchone()[0] == user.name


@pytest.mark.parametrize("user", ["app_clear", "app_trust"])
def test_wrong_client_password_for_cleartext_and_trust_users(proxy, user):
    # The proxy checks client passwords itself (SCRAM here), even when the database would take
    # the user without one (trust) or asks the proxy for the password in clear.
    if DIRECT and user == "app_trust":
        pytest.skip("the database itself lets app_trust in with any password")
    p = proxy()
    with p.wire() as w:
        with pytest.raises(ServerError) as exc:
            w.startup(user, "not-the-password")
    assert exc.value.message == f'password authentication failed for user "{user}"'
    assert exc.value.sqlstate == "28P01"
    with pytest.raises(psycopg.OperationalError,
                       match=f'password authentication failed for user "{user}"'):
        p.connect(user=user, password="not-the-password")
    # The right password still works afterwards.
    with p.connect(user=user) as conn:
        assert conn.execute("select current_user").fetchone()[0] == user


# -- 2. one pool per (user, database), one shared cap ----------------------------------------

@pytest.mark.proxy_only  # 8 clients straight at the database are 8 backends
def test_pools_per_database_share_one_cap(proxy, pg):
    # Cap 3 (3% of max_connections=100), shared by the pools of (app, app) and (app, app2):
    # 4 clients per database run short transactions for a few seconds. The proxy must move
    # backends between the two pools (close an idle one of one database to open one for the
    # other) without ever exceeding 3 in total, and serve both databases.
    p = proxy(max_connections_percent=3, connection_borrow_timeout=10)
    databases = ("app", "app2")
    clients_per_database, duration = 4, 3.0
    lock = threading.Lock()
    errors: list[str] = []
    served = dict.fromkeys(databases, 0)

    def client(dbname: str) -> None:
        n = 0
        try:
            # No protocol-level prepared statements: they would pin (and so hold) a backend.
            with p.connect(dbname=dbname, prepare_threshold=None) as conn:
                deadline = time.monotonic() + duration
                while time.monotonic() < deadline:
                    # An autocommit statement, then an explicit two-statement transaction.
                    assert conn.execute("select current_database()").fetchone()[0] == dbname
                    with conn.transaction():
                        conn.execute("select pg_backend_pid()")
                        assert conn.execute("select current_database()").fetchone()[0] == dbname
                    n += 2
        except BaseException as e:  # reported below, with the database it happened on
            with lock:
                errors.append(f"{dbname}: {e!r}")
        with lock:
            served[dbname] += n

    threads = [threading.Thread(target=client, args=(db,))
               for db in databases for _ in range(clients_per_database)]
    with BackendSampler(pg, user="app", interval=0.02) as sampler:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=duration + 60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    print(f"\nserved {served} transactions; max {sampler.max_seen} backends of app in total, "
          f"per database {sampler.max_by_database}, over {sampler.samples} samples")
    assert not errors, "\n".join(errors)
    assert sampler.samples >= 20, "the sampler hardly ran"
    assert sampler.max_seen <= 3, f"saw {sampler.max_seen} backends of app (cap is 3)"
    for db in databases:
        assert served[db] > 0, f"no transaction on {db} was served"
        assert sampler.max_by_database.get(db, 0) >= 1, f"never saw a backend on {db}"


# -- 3. surplus idle backends are closed -------------------------------------------------------

def test_idle_backends_above_max_idle_are_closed(proxy, pg, pgbench_tables):
    # Cap 10, at most 2 idle backends kept warm, surplus idle ones closed after 1 s.
    p = proxy(max_connections_percent=10, max_idle_connections_percent=2, backend_idle_timeout=1,
              connection_borrow_timeout=30)
    # A burst of 20 clients opens (up to) 10 backends ...
    with BackendSampler(pg, user="app", interval=0.02) as sampler:
        result = parse_pgbench(p.pgbench("-S", "-c", "20", "-j", "2", "-T", "2", timeout=60))
    assert result.returncode == 0 and result.failed == 0, result.output
    assert sampler.max_seen > 2, (f"the burst opened only {sampler.max_seen} backends: nothing "
                                  f"to trim, the test proves nothing")
    # ... which, now idle, are closed down to 2 soon after backend_idle_timeout.
    wait_for(lambda: pg.app_backends() <= 2, 15,
             f"the idle backends of app (max {sampler.max_seen} during the burst) to drop to 2")
    assert pg.app_backends() <= 2
    # A new client is served at once.
    p.assert_serves()


# -- 4. init_query -----------------------------------------------------------------------------

@pytest.mark.proxy_only
def test_init_query_runs_on_new_backends_and_is_restored(proxy):
    # Cap 1: every client below is served by the same single backend, one after the other.
    p = proxy(max_connections_percent=1, init_query="SET statement_timeout = '1234ms'")

    def show(conn) -> tuple[str, int]:
        return conn.execute("select current_setting('statement_timeout'), "
                            "pg_backend_pid()").fetchone()

    with p.connect(prepare_threshold=None) as a:
        # A fresh client sees the init_query's value, not the server default (0).
        timeout_a, pid = show(a)
        assert timeout_a == "1234ms"
        # A client that sets the parameter at startup sees its own value ...
        with p.connect(prepare_threshold=None, options="-c statement_timeout=5s") as b:
            assert show(b) == ("5s", pid)
            # ... and a client without it, on the very backend B just used, sees the
            # init_query's value again (restored, not reset to the server default).
            with p.connect(prepare_threshold=None) as c:
                assert show(c) == ("1234ms", pid)
                for _ in range(3):  # interleaved, in every transaction
                    assert show(b) == ("5s", pid)
                    assert show(a) == ("1234ms", pid)
                    with c.transaction():
                        assert show(c) == ("1234ms", pid)
    # After B left, a new client (psql) still sees the init_query's value.
    assert p.psql("show statement_timeout").stdout.strip() == "1234ms"


@pytest.mark.proxy_only
def test_failing_init_query_reports_the_database_error(proxy):
    # A broken init_query fails every new backend: clients must get the database's error
    # (not hang until some timeout, nor get a vague one), and the proxy must keep running.
    p = proxy(init_query="select * from no_such_table", connection_borrow_timeout=30,
              wait_ready=False)
    expected = 'relation "no_such_table" does not exist'
    for attempt in range(2):  # not only the first client
        # The error may come at login or at the first query: run both under one expectation.
        with p.wire(timeout=15) as w:
            with pytest.raises(ServerError) as exc:
                w.startup("app", p.passwords["app"])
                w.query("select 1")
        assert expected in (exc.value.message or ""), f"attempt {attempt}: {exc.value.fields}"
    started = time.monotonic()
    proc = p.psql("select 1", check=False, timeout=20)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert time.monotonic() - started < 15, "psql waited for the borrow timeout"
    assert p.alive(), "the proxy exited"


# -- 5. session parameters are not leaked between clients -------------------------------------

def test_startup_parameters_do_not_leak_between_clients(proxy, pg):
    # Cap 1: A (with its own application_name, search_path and DateStyle) and B (with none)
    # take turns on the single backend. B must see the server defaults in every transaction,
    # even though the backend ran A's transaction just before, and A its own settings.
    a_params = {"application_name": "a",
                "options": "-c search_path=s_a,public -c DateStyle=German"}
    settings = ("select current_setting('application_name'), current_setting('DateStyle'), "
                "current_setting('search_path'), pg_backend_pid()")

    # What PostgreSQL itself shows each client (A's DateStyle reads "German, DMY").
    with pg.connect(**a_params) as direct_a, pg.connect() as direct_b:
        want_a = direct_a.execute(settings).fetchone()[:3]
        want_b = direct_b.execute(settings).fetchone()[:3]
    assert want_a == ("a", "German, DMY", "s_a,public")
    assert want_b == ("", DEFAULT_DATESTYLE, DEFAULT_SEARCH_PATH)

    p = proxy(max_connections_percent=1)
    with p.connect(prepare_threshold=None, **a_params) as a:
        *got, pid = a.execute(settings).fetchone()
        assert tuple(got) == want_a
        # B logs in after A used the backend, then they alternate, in autocommit statements
        # and explicit transactions.
        with p.connect(prepare_threshold=None) as b:
            for i in range(4):
                for conn, want, name in ((b, want_b, "B"), (a, want_a, "A")):
                    if i % 2:
                        with conn.transaction():
                            conn.execute("select 1")
                            row = conn.execute(settings).fetchone()
                    else:
                        row = conn.execute(settings).fetchone()
                    assert tuple(row[:3]) == want, f"{name}, round {i}"
                    if not DIRECT:
                        assert row[3] == pid, f"{name} was not served by the only backend"
                assert b.execute("show DateStyle").fetchone()[0] == DEFAULT_DATESTYLE
                assert b.execute("show search_path").fetchone()[0] == DEFAULT_SEARCH_PATH
        # A new client logging in after A's last transaction: the defaults from its first one.
        with p.connect(prepare_threshold=None) as b2:
            assert tuple(b2.execute(settings).fetchone()[:3]) == want_b


# -- 6. many idle clients over a few backends ----------------------------------------------------

@pytest.mark.proxy_only  # 200 clients exceed the database's own max_connections=100
def test_200_idle_clients_over_5_backends(proxy, pg):
    # A client holds no backend between transactions: 200 logged-in, idle clients need no more
    # than the cap of 5 backends, and each of them is then served in turn.
    p = proxy(max_connections_percent=5, connection_borrow_timeout=30)
    n_clients = 200
    conns: list[psycopg.Connection] = []
    failures: list[str] = []
    try:
        with BackendSampler(pg, user="app", interval=0.05) as sampler:
            with ThreadPoolExecutor(max_workers=20) as pool:
                futures = [pool.submit(p.connect, prepare_threshold=None)
                           for _ in range(n_clients)]
                for i, f in enumerate(futures):
                    try:
                        conns.append(f.result(timeout=120))
                    except Exception as e:
                        failures.append(f"client {i}: {e!r}")
            assert not failures, f"{len(failures)} logins failed:\n" + "\n".join(failures[:10])
            assert len(conns) == n_clients
            idle_backends = pg.app_backends()
            assert idle_backends <= 5, f"{idle_backends} backends of app for idle clients (cap 5)"
            for i, conn in enumerate(conns):
                assert conn.execute("select 1").fetchone()[0] == 1, f"client {i}"
        print(f"\n{n_clients} clients: max {sampler.max_seen} backends of app "
              f"over {sampler.samples} samples")
        assert sampler.max_seen <= 5, f"saw {sampler.max_seen} backends of app (cap is 5)"
    finally:
        for conn in conns:
            conn.close()
    p.assert_serves()
