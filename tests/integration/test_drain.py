"""Graceful shutdown: on SIGTERM the proxy stops accepting, lets open transactions finish (up to
drain_timeout), then exits 0."""

import signal
import struct
import time
import uuid

import pytest

from helpers import port_accepts, wait_for
from pgwire import CANCEL_REQUEST_CODE

pytestmark = pytest.mark.proxy_only


def test_open_transaction_can_commit_during_drain(proxy, pg):
    table = pg.create_table(f"draintest_{uuid.uuid4().hex[:8]}")
    p = proxy(drain_timeout=30)
    busy = p.connect(autocommit=False)
    idle = p.connect()  # an idle client must not hold the shutdown up
    try:
        busy.execute(f"insert into {table} values (1, 'before SIGTERM')")
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()

        # New connections are refused ...
        wait_for(lambda: p.psql("select 1", check=False, connect_timeout=2).returncode != 0,
                 5, "new connections to be refused after SIGTERM")
        # ... while the open transaction goes on and commits.
        assert p.alive(), "the proxy exited with a transaction still open"
        busy.execute(f"insert into {table} values (2, 'after SIGTERM')")
        busy.commit()
        committed_at = time.monotonic()
        assert pg.scalar(f"select count(*) from {table}") == 2

        # With no transaction left open the proxy exits, long before drain_timeout (30 s).
        rc = p.wait(timeout=p.drain_timeout + 5)
        exited_at = time.monotonic()
        print(f"\nexited {rc} {exited_at - sigterm_at:.2f}s after SIGTERM, "
              f"{exited_at - committed_at:.2f}s after the last commit")
        assert rc == 0
        assert exited_at - committed_at < 10, "the proxy waited on after the last transaction"
        assert not port_accepts(p.port)
    finally:
        busy.close()
        idle.close()


def test_drain_timeout_ends_a_transaction_that_never_finishes(proxy, pg):
    table = pg.create_table(f"draintest_{uuid.uuid4().hex[:8]}")
    p = proxy(drain_timeout=2)
    stuck = p.connect(autocommit=False)
    try:
        stuck.execute(f"insert into {table} values (1, 'never committed')")
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()
        rc = p.wait(timeout=p.drain_timeout + 10)
        elapsed = time.monotonic() - sigterm_at
        print(f"\nexited {rc} {elapsed:.2f}s after SIGTERM (drain_timeout 2)")
        assert rc == 0
        assert 1.5 <= elapsed <= p.drain_timeout + 3
        # The abandoned transaction was rolled back on the database.
        wait_for(lambda: pg.scalar("select count(*) from pg_stat_activity where datname = 'app' "
                                   "and state like 'idle in transaction%'") == 0,
                 10, "the abandoned transaction's backend to go")
        assert pg.scalar(f"select count(*) from {table}") == 0
    finally:
        stuck.close()


def test_pinned_idle_client_does_not_hold_the_shutdown_up(proxy):
    # A pinned client between transactions has nothing to finish: it is closed at once (and its
    # backend with it), so the proxy exits long before drain_timeout.
    p = proxy(drain_timeout=30)
    pinned = p.connect()
    try:
        pinned.execute("set search_path to public")
        assert "session pinned" in p.log()
        p.signal(signal.SIGTERM)
        p.expect_exit = True
        sigterm_at = time.monotonic()
        rc = p.wait(timeout=p.drain_timeout + 5)
        assert rc == 0
        assert time.monotonic() - sigterm_at < 10, "a pinned idle client held the shutdown up"
    finally:
        pinned.close()


@pytest.mark.parametrize("how", ["bogus-key", "real-key"])
def test_cancel_request_connections_are_not_left_behind(proxy, how):
    # A CancelRequest arrives on a connection of its own, which the server closes at once; it
    # must not count as a client afterwards (else the drain below would wait for it).
    p = proxy(drain_timeout=10)
    if how == "bogus-key":
        with p.wire() as w:
            w.send(struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, 12345, 67890))
            assert w.read_bytes_until_eof(timeout=5) == b""
    else:
        with p.connect() as conn:
            conn.cancel()  # nothing running: a no-op for the database
            assert conn.execute("select 1").fetchone()[0] == 1
    p.signal(signal.SIGTERM)
    p.expect_exit = True
    started = time.monotonic()
    assert p.wait(timeout=p.drain_timeout + 5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"with no client left, the proxy took {elapsed:.1f}s to exit"
