"""Prometheus metrics at the admin listener's /metrics: exact under controlled load."""

import re
import threading
import urllib.request

import psycopg
import pytest

from helpers import free_port, wait_for

pytestmark = pytest.mark.proxy_only

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"unparseable exposition line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def start(proxy, **overrides):
    admin_port = free_port()
    p = proxy(admin={"listen": f"127.0.0.1:{admin_port}"}, **overrides)
    return p, f"http://127.0.0.1:{admin_port}"


def test_gauges_and_counters_are_exact(proxy):
    # Cap 10 backends. 12 clients: 3 hold a transaction open, 2 are pinned by a SET, 7 idle.
    p, url = start(proxy)
    before = scrape(url)
    clients = [p.connect() for _ in range(12)]  # autocommit: each execute is one Query
    try:
        in_tx, pinned = clients[:3], clients[3:5]
        for c in in_tx:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        for c in pinned:
            c.execute("SET search_path = public")
        s = scrape(url)
        assert value(s, "concierge_client_connections", proxy="app", endpoint="default") == 12
        assert value(s, "concierge_database_connections_currently_borrowed", proxy="app") == 5
        assert value(s, "concierge_database_connections_currently_session_pinned", proxy="app") == 2
        assert value(s, "concierge_database_connections_currently_in_transaction", proxy="app") == 3
        assert value(s, "concierge_max_database_connections_allowed", proxy="app") == 10
        assert 5 <= value(s, "concierge_database_connections", proxy="app") <= 10
        assert value(s, "concierge_database_connection_borrow_waiters", proxy="app") == 0

        def delta(name, **labels):
            return value(s, name, **labels) - value(before, name, **labels)

        assert delta("concierge_client_connections_received_total", endpoint="default") == 12
        assert delta("concierge_client_connections_setup_succeeded_total", endpoint="default") == 12
        assert delta("concierge_query_requests_total") == 3 * 2 + 2
        assert delta("concierge_session_pins_total", reason="set_variable") == 2
        assert delta("concierge_database_connections_borrow_latency_seconds_count") >= 5
        assert delta("concierge_query_database_response_latency_seconds_count") == 3 * 2 + 2

        for c in in_tx:
            c.execute("COMMIT")
        for c in pinned:
            c.close()
        s2 = scrape(url)
        assert value(s2, "concierge_client_connections", endpoint="default") == 10
        assert value(s2, "concierge_database_connections_currently_borrowed") == 0
        assert value(s2, "concierge_database_connections_currently_session_pinned") == 0
        assert value(s2, "concierge_database_connections_currently_in_transaction") == 0
        assert (value(s2, "concierge_client_connections_closed_total")
                - value(before, "concierge_client_connections_closed_total")) == 2

        with pytest.raises(psycopg.OperationalError):
            p.connect(password="wrong password")
        s3 = scrape(url)
        assert (value(s3, "concierge_client_connections_setup_failed_auth_total")
                - value(before, "concierge_client_connections_setup_failed_auth_total")) == 1
    finally:
        for c in clients:
            c.close()


def test_waiters_and_borrow_timeouts(proxy):
    # Cap 1 backend, borrow timeout 2 s: a second client waits, is counted, then times out.
    p, url = start(proxy, max_connections_percent=1, connection_borrow_timeout=2)
    holder = p.connect()
    waiter = p.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        errors = []

        def wait_for_backend():
            try:
                waiter.execute("SELECT 1")
            except psycopg.Error as e:
                errors.append(e)

        thread = threading.Thread(target=wait_for_backend)
        thread.start()
        wait_for(lambda: value(scrape(url), "concierge_database_connection_borrow_waiters") == 1, 5,
                 "the waiting client to be counted")
        thread.join(10)
        assert errors and errors[0].sqlstate == "53300"
        s = scrape(url)
        assert value(s, "concierge_borrow_timeouts_total") == 1
        assert value(s, "concierge_database_connection_borrow_waiters") == 0
        # The timed-out wait shows in the borrow latency histogram's top buckets only when it
        # succeeds; a timeout is counted separately. The holder's borrow is in the histogram.
        assert value(s, 'concierge_database_connections_borrow_latency_seconds_count') >= 1
        holder.execute("COMMIT")
    finally:
        holder.close()
        waiter.close()


def test_target_metrics(proxy, pg):
    p, url = start(proxy)
    p.connect().close()
    p.connect().execute("select 1")
    target = f"127.0.0.1:{pg.port}"
    s = scrape(url)
    assert value(s, "concierge_target_available", target=target, role="READ_WRITE") == 1
    assert value(s, "concierge_database_connections_setup_succeeded_total") >= 1
    first = value(s, "concierge_target_group_writer_available_duration_seconds_total")
    wait_for(lambda: value(scrape(url), "concierge_target_group_writer_available_duration_seconds_total") > first + 0.2,
             5, "writer-available seconds to grow")


def test_unreachable_target_is_unavailable(proxy):
    dead = free_port()
    p, url = start(proxy, db_port=dead, wait_ready=False, connection_borrow_timeout=1)
    with pytest.raises(psycopg.OperationalError):
        p.connect()
    s = scrape(url)
    assert value(s, "concierge_target_available", target=f"127.0.0.1:{dead}") == 0
    assert value(s, "concierge_database_connections_setup_failed_total") >= 1
    assert value(s, "concierge_target_group_writer_available_duration_seconds_total") == 0
