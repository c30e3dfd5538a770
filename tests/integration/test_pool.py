"""Pool behaviour: borrow timeout, pinning, and startup parameters across shared backends."""

import threading
import time

import psycopg
import pytest

from helpers import wait_for

DEFAULT_SEARCH_PATH = '"$user", public'


@pytest.mark.proxy_only
def test_borrow_timeout_then_connection_still_usable(proxy):
    # Cap 1 backend (1% of 100); a second transaction waits 1 s for it, then gets an error.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=1)
    a = p.connect(autocommit=False)
    b = p.connect()
    try:
        a.execute("select 1")  # psycopg opened a transaction: A now holds the only backend
        started = time.monotonic()
        with pytest.raises(psycopg.Error) as exc:
            b.execute("select 1")
        elapsed = time.monotonic() - started
        assert exc.value.sqlstate == "53300", exc.value
        assert "Timed-out waiting to acquire database connection" in str(exc.value)
        assert 0.8 <= elapsed <= 3.0, f"borrow timeout fired after {elapsed:.2f}s, expected ~1s"

        a.commit()  # the backend goes back to the pool ...
        assert b.execute("select 1").fetchone()[0] == 1  # ... and B's same connection uses it
    finally:
        a.close()
        b.close()


def test_set_pins_the_session(proxy):
    # Cap 2: once A is pinned to one backend, B's transactions all run on the other one. Were A
    # not pinned, B would soon be served by the backend A changed and see its search_path.
    p = proxy(max_connections_percent=2)
    with p.connect() as a, p.connect() as b:
        a.execute("SET search_path TO pinned_schema, public")
        first_pid = a.execute("select pg_backend_pid()").fetchone()[0]
        for _ in range(5):
            assert a.execute("show search_path").fetchone()[0] == "pinned_schema, public"
            assert a.execute("select pg_backend_pid()").fetchone()[0] == first_pid
            assert b.execute("show search_path").fetchone()[0] == DEFAULT_SEARCH_PATH
            b.execute("select 1")


def test_exclude_variable_sets_filter(proxy):
    # With EXCLUDE_VARIABLE_SETS the SET does not pin: A may move between backends (and then
    # lose the setting; the user accepted that). Only check that nothing breaks.
    p = proxy(max_connections_percent=2, session_pinning_filters=["EXCLUDE_VARIABLE_SETS"])
    with p.connect() as a, p.connect() as b:
        a.execute("SET search_path TO pinned_schema, public")
        for _ in range(5):
            a.execute("select pg_backend_pid()").fetchone()
            a.execute("show search_path").fetchone()
            b.execute("select pg_backend_pid()").fetchone()


def test_application_name_from_startup(proxy):
    p = proxy()
    out = p.psql("show application_name", application_name="itest_app").stdout.strip()
    assert out == "itest_app"
    with p.connect(application_name="itest_psycopg") as conn:
        assert conn.execute("show application_name").fetchone()[0] == "itest_psycopg"


def test_pgoptions_from_startup(proxy):
    # PGOPTIONS travels in the startup packet's `options` parameter.
    p = proxy()
    proc = p.psql("show search_path", env={"PGOPTIONS": "-c search_path=foo"})
    assert proc.stdout.strip() == "foo"


def test_startup_parameters_follow_each_client_on_a_shared_backend(proxy):
    # Cap 1: both clients' transactions run on the same single backend, one after the other;
    # each must still see its own application_name.
    p = proxy(max_connections_percent=1)
    # (No prepared statements here: they have their own test below.)
    with p.connect(application_name="alpha", prepare_threshold=None) as a, \
            p.connect(application_name="beta", prepare_threshold=None) as b:
        for _ in range(5):
            assert a.execute("show application_name").fetchone()[0] == "alpha"
            assert b.execute("show application_name").fetchone()[0] == "beta"
        # The same in explicit transactions, interleaved one after the other.
        for _ in range(3):
            with a.transaction():
                assert a.execute("show application_name").fetchone()[0] == "alpha"
            with b.transaction():
                assert b.execute("show application_name").fetchone()[0] == "beta"


@pytest.mark.proxy_only
def test_protocol_prepared_statements_pin_and_work(proxy):
    # A named protocol-level prepared statement lives in the backend's session, so until the
    # proxy can re-prepare statements on any backend it pins the client (reason
    # protocol_prepared_statement). The statements must keep working across transactions, on the
    # same backend, while an unpinned client shares the rest of the pool.
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=0) as a, p.connect() as b:
        pid = a.execute("select pg_backend_pid()").fetchone()[0]
        for i in range(5):
            assert a.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0] == i + 1
            assert b.execute("select %s::int + 2", (i,)).fetchone()[0] == i + 2
            assert a.execute("select pg_backend_pid()", prepare=True).fetchone()[0] == pid
    assert "protocol_prepared_statement" in p.log()


@pytest.mark.proxy_only
def test_unnamed_extended_protocol_does_not_pin(proxy):
    # The extended protocol with the unnamed statement (what psycopg does without preparing) is
    # fully multiplexed: two clients alternate on a single backend.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=2)
    with p.connect(prepare_threshold=None) as a, p.connect(prepare_threshold=None) as b:
        for i in range(5):
            assert a.execute("select %s::int + 1", (i,)).fetchone()[0] == i + 1
            assert b.execute("select %s::int + 2", (i,)).fetchone()[0] == i + 2


def test_cancel_only_cancels_that_clients_query(proxy, pg):
    p = proxy()
    results: dict[str, object] = {}

    def run(name: str, conn, sql: str) -> None:
        started = time.monotonic()
        try:
            conn.execute(sql)
            results[name] = ("ok", time.monotonic() - started)
        except psycopg.Error as e:
            results[name] = (e.sqlstate, time.monotonic() - started)

    with p.connect() as a, p.connect() as b:
        ta = threading.Thread(target=run, args=("a", a, "select pg_sleep(30)"))
        tb = threading.Thread(target=run, args=("b", b, "select pg_sleep(3)"))
        ta.start()
        tb.start()
        # Await both queries running on the database, then cancel A's only.
        wait_for(lambda: pg.scalar("select count(*) from pg_stat_activity where state = 'active' "
                                   "and query in ('select pg_sleep(30)', 'select pg_sleep(3)')") == 2,
                 10, "both pg_sleep queries to run")
        a.cancel()
        ta.join(timeout=10)
        tb.join(timeout=10)
        assert not ta.is_alive() and not tb.is_alive()
        state, elapsed = results["a"]
        assert state == "57014", f"A ended with {state}"
        assert elapsed < 10, f"A's cancel took {elapsed:.1f}s"
        assert results["b"][0] == "ok", f"B ended with {results['b']}"
        # A's connection is still good.
        assert a.execute("select 1").fetchone()[0] == 1
