"""Pool behaviour: borrow timeout, pinning, and startup parameters across shared backends."""

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import DIRECT, wait_for

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


def test_login_reports_the_servers_parameters_with_the_clients_own_values(proxy, pg):
    # The first client's login asks a backend what PostgreSQL reports; later ones are answered
    # from that template, with each client's own values in place of the template's. Every
    # client must see what a direct connection with the same settings sees.
    p = proxy()
    settings = [
        {},
        {"application_name": "first"},
        {"application_name": "second", "options": "-c DateStyle=German -c TimeZone=Asia/Tokyo"},
        {"options": "-c IntervalStyle=iso_8601"},
        {"application_name": "third", "options": "-c DateStyle=SQL -c TimeZone=UTC -c IntervalStyle=sql_standard"},
    ]
    for round_ in range(2):  # the second round is served from the template only
        for params in settings:
            with pg.connect(**params) as direct, p.connect(**params) as via:
                names = ("application_name", "DateStyle", "TimeZone", "IntervalStyle", "server_version",
                         "server_encoding", "client_encoding", "integer_datetimes",
                         "standard_conforming_strings", "is_superuser", "session_authorization")
                for name in names:
                    assert via.info.parameter_status(name) == direct.info.parameter_status(name), \
                        (round_, params, name)
                assert via.execute("show DateStyle").fetchone()[0] == direct.execute("show DateStyle").fetchone()[0]


def test_a_partial_startup_value_completes_from_the_defaults_not_from_the_last_client(proxy, pg):
    # `DateStyle=SQL` sets the output format and keeps the day/month order it applies to. At a
    # direct login that is the server's default order (MDY); through the proxy the login is
    # answered from a backend another client left at `German, DMY`, and must still give MDY.
    # (A CI run once saw `SQL, DMY` here: the value was applied to the previous client's.)
    p = proxy(max_connections_percent=1)  # one backend: the second login must reuse it
    german = {"options": "-c DateStyle=German"}
    sql = {"options": "-c DateStyle=SQL"}
    with pg.connect(**sql) as direct:
        expected = direct.info.parameter_status("DateStyle")
    assert expected == "SQL, MDY"
    with p.connect(**german) as first:
        assert first.execute("show DateStyle").fetchone()[0] == "German, DMY"
        for _ in range(2):  # the first login asks the backend; the second is answered from memory
            with p.connect(**sql) as second:
                assert second.info.parameter_status("DateStyle") == expected
                assert second.execute("show DateStyle").fetchone()[0] == expected
                assert first.execute("show DateStyle").fetchone()[0] == "German, DMY"


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
def test_protocol_prepared_statements_do_not_pin(proxy, pg):
    # Named protocol-level statements (psycopg prepares at once with prepare_threshold=0) are
    # multiplexed: two clients alternate on a single backend, each running its own statements
    # and one they share, and the backend holds one server-side statement per distinct query.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=0) as a, p.connect(prepare_threshold=0) as b:
        for i in range(5):
            assert a.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0] == i + 1
            assert b.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0] == i + 1
            assert b.execute("select %s::int * 10", (i,), prepare=True).fetchone()[0] == i * 10
            assert a.execute("select %s::text || 'a'", (str(i),), prepare=True).fetchone()[0] == f"{i}a"
        statements = a.execute("select count(*) from pg_prepared_statements "
                               "where name like 'concierge_%%'").fetchone()[0]
        assert statements == 3 or statements == 4, statements  # 3 queries (+ this one, if prepared)
        assert a.execute("select pg_backend_pid()").fetchone()[0] == \
            b.execute("select pg_backend_pid()").fetchone()[0]
    assert "pinned" not in p.log(), p.log()


@pytest.mark.proxy_only
def test_prepared_statement_follows_the_client_to_another_backend(proxy, pg):
    # A client's statement is prepared on whichever backend serves its next transaction, in
    # the same round trip. Two backends on one event loop: while the holder's transaction keeps
    # one, A runs on the other; once the holder is done, the idle backend used last (the
    # holder's) serves A, which has never prepared anything there.
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5, threads=1)
    with p.connect(prepare_threshold=0) as a, p.connect(prepare_threshold=None) as holder:
        pids = []
        for i in range(3):
            holder.execute("begin")
            held = holder.execute("select pg_backend_pid()").fetchone()[0]
            pid, value = a.execute("select pg_backend_pid(), %s::int", (i,), prepare=True).fetchone()
            assert (pid != held, value) == (True, i)
            pids.append(pid)
            holder.execute("rollback")
            pid, value = a.execute("select pg_backend_pid(), %s::int", (i,), prepare=True).fetchone()
            assert value == i
            pids.append(pid)
        assert len(set(pids)) == 2, pids
    assert "pinned" not in p.log(), p.log()


@pytest.mark.proxy_only
def test_prepared_statements_at_the_wire_level(proxy):
    # Parse, Bind, Describe, Execute, Close and Sync as a driver sends them, checked message by
    # message: the proxy's own answers (ParseComplete, CloseComplete) come in PostgreSQL's order.
    from pgwire import message, ServerError
    import struct
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)

    def parse(name: str, sql: str) -> bytes:
        return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))

    def bind(name: str, *values: str) -> bytes:
        payload = b"\0" + name.encode() + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(values))
        for v in values:
            payload += struct.pack("!i", len(v)) + v.encode()
        return message(b"B", payload + struct.pack("!h", 0))

    execute = message(b"E", b"\0" + struct.pack("!i", 0))
    sync = message(b"S")

    with p.wire() as c, p.connect(prepare_threshold=None) as other:
        c.startup("app", p.passwords["app"])
        # Prepare (answered by the proxy: no backend needed), then use it twice.
        c.send(parse("s1", "select $1::int * 2") + sync)
        c.expect(b"1")
        c.expect(b"Z")
        for value in ("21", "5"):
            other.execute("select 1")  # the single backend serves someone else in between
            c.send(bind("s1", value) + message(b"D", b"P\0") + execute + sync)
            c.expect(b"2")
            c.expect(b"T")
            row = c.expect(b"D")
            assert row.payload.endswith(str(int(value) * 2).encode())
            c.expect(b"C")
            c.expect(b"Z")
        # Describe of the statement, then Close (answered by the proxy) in one batch.
        c.send(message(b"D", b"Ss1\0") + message(b"C", b"Ss1\0") + sync)
        c.expect(b"t")
        c.expect(b"T")
        c.expect(b"3")
        c.expect(b"Z")
        # Closed: PostgreSQL's own error, naming the client's statement; the session goes on.
        c.send(bind("s1", "1") + execute + sync)
        with pytest.raises(ServerError) as err:
            c.expect(b"2")
        assert err.value.sqlstate == "26000"
        assert 's1' in err.value.message
        c.expect(b"Z")
        # An error in a batch skips its later messages, local answers included, up to Sync.
        c.send(parse("s2", "select 1") + bind("nope") + parse("s3", "select 3") + sync)
        c.expect(b"1")
        with pytest.raises(ServerError):
            c.expect(b"2")
        c.expect(b"Z")
        assert c.query("select 7") == [("7",)]
    assert "pinned" not in p.log(), p.log()


def test_prepared_statement_after_a_result_type_change_fails_as_directly(proxy, pg):
    # After DDL changes a prepared query's result type, PostgreSQL fails every execution of it
    # with `cached plan must not change result type` until the client prepares it again (psycopg 3
    # does not). The proxy used to prepare it afresh after the first error, so the second
    # execution returned the new columns where a direct connection fails again.
    pg.create_table("ddl_t", "a int")
    pg.query("insert into ddl_t values (1)")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    outcomes = []
    with p.connect(prepare_threshold=0) as a:
        assert a.execute("select * from ddl_t", prepare=True).fetchall() == [(1,)]
        pg.query("alter table ddl_t add column b int default 2")
        for _ in range(3):
            try:
                outcomes.append(a.execute("select * from ddl_t", prepare=True).fetchall())
            except psycopg.Error as e:
                outcomes.append(e.sqlstate)
    assert outcomes == ["0A000", "0A000", "0A000"]


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


@pytest.mark.proxy_only
def test_tracked_parameters_do_not_pin_and_follow_the_client(proxy):
    # SET of a parameter PostgreSQL reports (TimeZone, DateStyle, application_name, ...) does
    # not pin: the proxy reads the reported value and brings each backend that serves the
    # client to it. Two clients alternate on one backend and never see each other's values.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=None) as a, p.connect(prepare_threshold=None) as b:
        default_tz = b.execute("show timezone").fetchone()[0]
        a.execute("set timezone = 'America/New_York'")
        a.execute("set datestyle to sql, dmy")
        a.execute("set application_name = 'alpha'")
        a.execute("set intervalstyle = 'iso_8601'")
        for _ in range(3):
            assert b.execute("show timezone").fetchone()[0] == default_tz
            assert b.execute("show datestyle").fetchone()[0] == "ISO, MDY"
            assert b.execute("show application_name").fetchone()[0] != "alpha"
            assert a.execute("show timezone").fetchone()[0] == "America/New_York"
            assert a.execute("show datestyle").fetchone()[0] == "SQL, DMY"
            assert a.execute("show application_name").fetchone()[0] == "alpha"
            assert a.execute("show intervalstyle").fetchone()[0] == "iso_8601"
        # The client saw PostgreSQL's own ParameterStatus for each, and nothing else since.
        assert a.info.parameter_status("TimeZone") == "America/New_York"
        assert a.info.parameter_status("DateStyle") == "SQL, DMY"
        assert b.info.parameter_status("TimeZone") == default_tz
        # SET LOCAL lasts for its transaction only; RESET goes back to the default.
        with a.transaction():
            a.execute("set local timezone = 'Asia/Tokyo'")
            assert a.execute("show timezone").fetchone()[0] == "Asia/Tokyo"
        assert a.execute("show timezone").fetchone()[0] == "America/New_York"
        assert b.execute("show timezone").fetchone()[0] == default_tz
        a.execute("reset timezone")
        assert b.execute("select 1").fetchone()[0] == 1
        assert a.execute("show timezone").fetchone()[0] == default_tz
        assert a.info.parameter_status("TimeZone") == default_tz
        # A parameter that is not reported still pins.
        a.execute("set work_mem = '8MB'")
    log = p.log()
    assert log.count("session pinned") == 1, log
    assert "set_variable" in log


JDBC_JAR = "/usr/share/java/postgresql.jar"


@pytest.mark.skipif(not os.path.exists(JDBC_JAR) or not shutil.which("java"),
                    reason="needs java and Debian's libpostgresql-jdbc-java (scripts/test.sh installs it)")
def test_jdbc_driver_defaults_multiplex_without_pinning(proxy, pg):
    # The PostgreSQL JDBC driver with its defaults (server-side prepare from the 5th execution)
    # and 8 connections sharing 2 backends: every result checked, no pinned client.
    pg.query("grant create on schema public to app")
    p = proxy(max_connections_percent=2, connection_borrow_timeout=30, debug_logging=True)
    source = Path(__file__).parent / "java" / "JdbcWorkload.java"
    url = f"jdbc:postgresql://{p.host}:{p.port}/app"
    proc = subprocess.run(["java", "-cp", JDBC_JAR, str(source), url, "app", p.passwords["app"], "8", "40"],
                          capture_output=True, text=True, timeout=240)
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok 320"
    if not DIRECT:
        assert "pinned" not in p.log(), p.log()


def test_startup_parameters_are_reported_in_postgresqls_spelling(proxy):
    # What a client asks for at startup comes back in ParameterStatus as PostgreSQL spells it,
    # for the first such client (the proxy asks a backend) and the next ones (it remembers).
    p = proxy()
    expected = {"DateStyle": "ISO, DMY", "TimeZone": "UTC", "IntervalStyle": "iso_8601",
                "client_encoding": "UTF8", "application_name": "spelling"}
    for _ in range(3):
        with p.connect(client_encoding="utf-8", application_name="spelling",
                       options="-c datestyle=iso,dmy -c timezone=utc -c intervalstyle=ISO_8601") as c:
            seen = {name: c.info.parameter_status(name) for name in expected}
            assert seen == expected
            assert c.execute("show datestyle").fetchone()[0] == "ISO, DMY"
            assert c.execute("show timezone").fetchone()[0] == "UTC"


@pytest.mark.proxy_only
def test_a_lone_set_of_a_driver_setting_does_not_pin(proxy):
    # `SET extra_float_digits = 3` alone, outside a transaction (JDBC sends it after login, with
    # the extended protocol): kept by the proxy and carried to every backend, not pinned. In a
    # transaction, or failing, it is not recorded as a success: the former pins, the latter
    # leaves the client's value as it was.
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=None) as a, p.connect(prepare_threshold=None) as b:
        default = b.execute("show extra_float_digits").fetchone()[0]
        a.execute("set extra_float_digits = 3")           # extended protocol (psycopg)
        with a.cursor() as cur:
            cur.execute("set statement_timeout to '7s'", prepare=False)
        a.execute("select 1")
        with pytest.raises(psycopg.Error):
            a.execute("set lock_timeout = 'not a duration'")
        for _ in range(3):
            assert b.execute("show extra_float_digits").fetchone()[0] == default
            assert b.execute("show statement_timeout").fetchone()[0] == "0"
            assert a.execute("show extra_float_digits").fetchone()[0] == "3"
            assert a.execute("show statement_timeout").fetchone()[0] == "7s"
            assert a.execute("show lock_timeout").fetchone()[0] == "0"
        a.execute("reset extra_float_digits")
        assert b.execute("select 1").fetchone()[0] == 1
        assert a.execute("show extra_float_digits").fetchone()[0] == default
        assert "pinned" not in p.log(), p.log()
        with a.transaction():
            a.execute("set extra_float_digits = 2")
    assert "session pinned" in p.log()


@pytest.mark.proxy_only
def test_cursors_and_advisory_locks_pin_only_when_they_outlive_the_transaction(proxy):
    # DECLARE without HOLD and the _xact_ advisory locks end with their transaction: no pin.
    # WITH HOLD cursors and session-level advisory locks outlive it: they pin (and work).
    p = proxy(max_connections_percent=2, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=None) as a:
        with a.transaction():
            a.execute("declare c1 cursor for select generate_series(1, 3)")
            assert a.execute("fetch 2 from c1").fetchall() == [(1,), (2,)]
            a.execute("select pg_advisory_xact_lock(42)")
        assert a.execute("select pg_try_advisory_xact_lock(43)").fetchone()[0] is True
        assert "pinned" not in p.log()
    with p.connect(prepare_threshold=None) as b:
        b.execute("declare c2 cursor with hold for select generate_series(1, 3)")
        assert b.execute("fetch 1 from c2").fetchall() == [(1,)]
        assert b.execute("fetch 1 from c2").fetchall() == [(2,)]
    wait_for(lambda: "cursor_with_hold" in p.log(), 5, "the WITH HOLD pin to be logged")
    with p.connect(prepare_threshold=None) as c:
        c.execute("select pg_advisory_lock(44)")
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        assert c.execute("select count(*) from pg_locks where locktype = 'advisory' and pid = %s",
                         (pid,)).fetchone()[0] == 1
    wait_for(lambda: "advisory_lock" in p.log(), 5, "the advisory lock pin to be logged")
    # SQL-level PREPARE still pins (its statement lives in the backend's session).
    with p.connect(prepare_threshold=None) as d:
        d.execute("prepare sql_level as select 41 + 1")
        assert d.execute("execute sql_level").fetchone()[0] == 42
        assert d.execute("execute sql_level").fetchone()[0] == 42
    wait_for(lambda: "sql_prepare" in p.log(), 5, "the PREPARE pin to be logged")


@pytest.mark.proxy_only
def test_a_forged_or_stale_cancel_key_cancels_nothing(proxy):
    # The proxy issues each client's BackendKeyData. A CancelRequest with a wrong secret for a
    # live client's process id, or with the key of a client that has left, cancels nothing.
    import struct
    from pgwire import message
    p = proxy()
    with p.wire() as gone:
        gone.startup("app", p.passwords["app"])
        stale = gone.backend_key
    with p.wire() as c:
        c.startup("app", p.passwords["app"])
        pid, secret = c.backend_key
        c.send(message(b"Q", b"select pg_sleep(1.5), 'survived'\0"))
        time.sleep(0.3)  # the query is running on a backend (a cancel would hit it now)
        for key in [(pid, (secret + 1) & 0xFFFFFFFF), stale]:
            with p.wire() as w:
                w.send(struct.pack("!IIII", 16, 80877102, *key))
                assert w.read_bytes_until_eof(timeout=5) == b""
        c.expect(b"T")
        row = c.expect(b"D")
        assert row.payload.endswith(b"survived")
        c.expect(b"C")
        c.expect(b"Z")


@pytest.mark.proxy_only
def test_parameters_the_server_reports_are_tracked_whatever_their_name(proxy, pg):
    # PostgreSQL 14+ also reports default_transaction_read_only: on such a server its SET does
    # not pin either (the proxy takes the list from what the server reports at login).
    if pg.scalar("show server_version_num") < "140000":
        pytest.skip("default_transaction_read_only is reported from PostgreSQL 14")
    p = proxy(max_connections_percent=1, connection_borrow_timeout=5)
    with p.connect(prepare_threshold=None) as a, p.connect(prepare_threshold=None) as b:
        a.execute("set default_transaction_read_only = on")
        for _ in range(2):
            assert b.execute("show default_transaction_read_only").fetchone()[0] == "off"
            assert a.execute("show default_transaction_read_only").fetchone()[0] == "on"
        assert a.info.parameter_status("default_transaction_read_only") == "on"
    assert "pinned" not in p.log(), p.log()
