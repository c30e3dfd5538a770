"""Prometheus metrics of a MySQL proxy at the admin listener's /metrics, exact under controlled
load, as for PostgreSQL's (test_metrics.py): client connections, queries, borrows and their
latency, backends borrowed, pinned and in a transaction, waiters and borrow timeouts, target
availability, failed logins.

PyMySQL's connect runs a statement (SET NAMES): counters of queries are taken after the clients
logged in."""

import threading
import urllib.request

import pymysql
import pytest

from helpers import free_port, wait_for
from mysql_fixtures import metric

pytestmark = pytest.mark.proxy_only


def query(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_exposition_format(mysql_proxy):
    p = mysql_proxy(metrics=True)
    with urllib.request.urlopen(p.admin_url + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert 'concierge_client_connections{endpoint="default",proxy="app"}' in text \
        or 'concierge_client_connections{proxy="app",endpoint="default"}' in text, text[:2000]


def test_gauges_and_counters_are_exact(mysql_proxy):
    # Cap 10 backends. 13 clients: 3 hold a transaction open (BEGIN), 1 has autocommit off and
    # a statement run, 2 are pinned by a user variable, 7 idle.
    p = mysql_proxy(metrics=True)
    before = p.metrics()
    clients = [p.connect() for _ in range(13)]  # autocommit: each statement is one COM_QUERY
    try:
        connected = p.metrics()

        def delta(samples, name, base=connected, **labels):
            return metric(samples, name, **labels) - metric(base, name, **labels)

        assert delta(connected, "concierge_client_connections_received_total", before, endpoint="default") == 13
        assert delta(connected, "concierge_client_connections_setup_succeeded_total", before, endpoint="default") == 13
        assert metric(connected, "concierge_client_connections", proxy="app", endpoint="default") == 13

        in_tx, autocommit_off, pinned = clients[:3], clients[3], clients[4:6]
        for c in in_tx:
            query(c, "BEGIN")
            query(c, "SELECT 1")
        query(autocommit_off, "SET autocommit = 0")
        query(autocommit_off, "INSERT INTO items (v) VALUES ('metrics')")
        for c in pinned:
            query(c, "SET @pinned = 1")
        s = p.metrics()
        assert metric(s, "concierge_client_connections", proxy="app", endpoint="default") == 13
        assert metric(s, "concierge_database_connections_currently_borrowed", proxy="app") == 6
        assert metric(s, "concierge_database_connections_currently_session_pinned", proxy="app") == 2
        assert metric(s, "concierge_database_connections_currently_in_transaction", proxy="app") == 4
        assert metric(s, "concierge_max_database_connections_allowed", proxy="app") == 10
        assert 6 <= metric(s, "concierge_database_connections", proxy="app") <= 10
        assert metric(s, "concierge_database_connection_borrow_waiters", proxy="app") == 0
        queries = 3 * 2 + 2 + 2
        assert delta(s, "concierge_query_requests_total") == queries
        assert delta(s, "concierge_session_pins_total", reason="user_variable") == 2
        assert delta(s, "concierge_database_connections_borrow_latency_seconds_count") >= 6
        assert delta(s, "concierge_query_database_response_latency_seconds_count") == queries
        assert delta(s, "concierge_query_database_response_latency_seconds_sum") > 0

        for c in in_tx:
            query(c, "COMMIT")
        autocommit_off.commit()
        query(autocommit_off, "SET autocommit = 1")
        for c in pinned:
            c.close()
        wait_for(lambda: metric(p.metrics(), "concierge_client_connections", endpoint="default") == 11, 5,
                 "the pinned clients' connections to be gone")
        s2 = p.metrics()
        assert metric(s2, "concierge_database_connections_currently_borrowed") == 0
        assert metric(s2, "concierge_database_connections_currently_session_pinned") == 0
        assert metric(s2, "concierge_database_connections_currently_in_transaction") == 0
        assert delta(s2, "concierge_client_connections_closed_total", before) == 2
        assert delta(s2, "concierge_query_requests_total") == queries + 3 + 1 + 1  # (commit() is COM_QUERY)
        assert delta(s2, "concierge_query_database_response_latency_seconds_count") == queries + 3 + 1 + 1

        with pytest.raises(pymysql.err.OperationalError) as exc:
            p.connect(password="wrong password")
        assert exc.value.args[0] == 1045
        with pytest.raises(pymysql.err.OperationalError):
            p.connect(user="nobody")
        s3 = p.metrics()
        assert delta(s3, "concierge_client_connections_setup_failed_auth_total", before) == 2
        assert delta(s3, "concierge_client_connections_setup_succeeded_total", before) == 13
    finally:
        for c in clients:
            if c.open:
                c.close()


def test_waiters_and_borrow_timeouts(mysql_proxy):
    # Cap 1 backend, borrow timeout 2 s: a second client waits, is counted, then times out.
    p = mysql_proxy(metrics=True, max_connections_percent=1, connection_borrow_timeout=2)
    holder = p.connect()
    waiter = p.connect()
    try:
        before = p.metrics()
        query(holder, "BEGIN")
        query(holder, "SELECT 1")
        errors = []

        def wait_for_backend():
            try:
                query(waiter, "SELECT 1")
            except pymysql.err.MySQLError as e:
                errors.append(e)

        thread = threading.Thread(target=wait_for_backend)
        thread.start()
        wait_for(lambda: metric(p.metrics(), "concierge_database_connection_borrow_waiters") == 1, 5,
                 "the waiting client to be counted")
        thread.join(10)
        assert errors and errors[0].args == (9501, "Timed-out waiting to acquire database connection"), errors
        s = p.metrics()
        assert metric(s, "concierge_borrow_timeouts_total") - metric(before, "concierge_borrow_timeouts_total") == 1
        assert metric(s, "concierge_database_connection_borrow_waiters") == 0
        # A timed-out wait is counted apart from the borrow latency; the holder's borrow is in it.
        assert (metric(s, "concierge_database_connections_borrow_latency_seconds_count")
                - metric(before, "concierge_database_connections_borrow_latency_seconds_count")) == 1
        query(holder, "COMMIT")
        assert query(waiter, "SELECT 2") == ((2,),)  # the waiter's connection stayed usable
    finally:
        holder.close()
        waiter.close()


def test_target_metrics(mysql_proxy, mariadb):
    p = mysql_proxy(metrics=True)
    with p.connect() as conn:
        assert query(conn, "SELECT 1") == ((1,),)
    target = f"127.0.0.1:{mariadb.port}"
    s = p.metrics()
    assert metric(s, "concierge_target_available", target=target, role="READ_WRITE") == 1
    assert metric(s, "concierge_database_connection_requests_total") >= 1
    assert metric(s, "concierge_database_connections_setup_succeeded_total") >= 1
    assert metric(s, "concierge_database_connections_setup_failed_total") == 0
    first = metric(s, "concierge_target_group_writer_available_duration_seconds_total")
    wait_for(lambda: metric(p.metrics(), "concierge_target_group_writer_available_duration_seconds_total")
             > first + 0.2, 5, "writer-available seconds to grow")


def test_unreachable_target_is_unavailable(mysql_proxy):
    dead = free_port()
    p = mysql_proxy(metrics=True, db_port=dead, wait_ready=False, connection_borrow_timeout=1)
    with pytest.raises(pymysql.err.OperationalError):
        with p.connect() as conn:
            query(conn, "SELECT 1")
    s = p.metrics()
    assert metric(s, "concierge_target_available", target=f"127.0.0.1:{dead}") == 0
    assert metric(s, "concierge_database_connections_setup_failed_total") >= 1
    assert metric(s, "concierge_target_group_writer_available_duration_seconds_total") == 0
