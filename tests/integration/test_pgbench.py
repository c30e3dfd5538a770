"""Load through the proxy with pgbench: multiplexing under a backend cap, and connection churn."""

import pytest

from helpers import BackendSampler, parse_pgbench, wait_for


@pytest.mark.proxy_only  # 100 clients exceed the database's own slots without a proxy
def test_100_clients_share_10_backends(proxy, pg, pgbench_tables):
    # max_connections=100 and max_connections_percent=10: at most 10 backends, for 100 clients.
    p = proxy(max_connections_percent=10, connection_borrow_timeout=30)
    with BackendSampler(pg, user="app", interval=0.05) as sampler:
        result = parse_pgbench(p.pgbench("-S", "-c", "100", "-j", "2", "-T", "10", timeout=120))
    print(f"\nthrough the proxy: tps = {result.tps:.0f} ({result.processed} transactions, "
          f"max {sampler.max_seen} backends of app over {sampler.samples} samples)")
    assert result.returncode == 0, result.output
    assert result.failed == 0, result.output
    assert result.processed > 0, result.output
    assert sampler.samples >= 50, "the sampler hardly ran"
    assert 1 <= sampler.max_seen <= 10, f"saw {sampler.max_seen} backends of app (cap is 10)"

    # For the record only: the same command straight at the database, as the superuser (user
    # app would hit max_connections minus the reserved superuser slots). Not asserted.
    p.signal()
    p.wait(timeout=p.drain_timeout + 15)
    p.expect_exit = True
    wait_for(lambda: pg.app_backends() == 0, 10, "the proxy's backends to close")
    direct = pg.pgbench("-S", "-c", "100", "-j", "2", "-T", "10", user="postgres",
                        password=pg.superuser_password, timeout=120)
    direct_result = parse_pgbench(direct)
    if direct_result.returncode == 0:
        print(f"directly (for the record): tps = {direct_result.tps:.0f}")
    else:
        print(f"direct run (for the record) failed:\n{direct_result.output[-2000:]}")


def test_new_connection_per_transaction(proxy, pgbench_tables):
    # -C: every transaction opens and closes its own connection (authentication each time).
    p = proxy()
    result = parse_pgbench(p.pgbench("-C", "-S", "-c", "10", "-j", "2", "-T", "5", timeout=60))
    print(f"\n-C through the target: tps = {result.tps:.0f} ({result.processed} transactions)")
    assert result.returncode == 0, result.output
    assert result.failed == 0, result.output
    assert result.processed > 0, result.output


@pytest.mark.proxy_only
def test_pgbench_prepared_mode_multiplexes_without_pinning(proxy, pg, pgbench_tables):
    # -M prepared: named statements, prepared once per client, reused by every transaction.
    # More clients than backends, select-only and TPC-B (transactions of 7 statements): no
    # failures, no pinned client, never more backends than the cap.
    p = proxy(max_connections_percent=5, connection_borrow_timeout=30)
    for args in (["-S", "-c", "40"], ["-c", "20"]):
        with BackendSampler(pg, user="app", interval=0.05) as sampler:
            result = parse_pgbench(p.pgbench("-M", "prepared", *args, "-j", "2", "-T", "5", timeout=120))
        print(f"\n-M prepared {' '.join(args)}: tps = {result.tps:.0f}, max {sampler.max_seen} backends")
        assert result.returncode == 0, result.output
        assert result.failed == 0, result.output
        assert result.processed > 0, result.output
        assert sampler.max_seen <= 5, sampler.max_seen
    assert "pinned" not in p.log(), p.log()
