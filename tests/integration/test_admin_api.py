"""The admin HTTP API (docs/admin-api.md): every route, its JSON shapes and values, its errors,
the bearer token, and live changes that really change what the proxy does."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from admin_helpers import (admin_proxy_factory, assert_error, backend_count, max_connections,
                           percent_for_cap, wait_closed_by_peer)
from helpers import DB_USERS, free_port, parse_pgbench, wait_for

pytestmark = pytest.mark.proxy_only


@pytest.fixture
def admin_proxy(proxy):
    return admin_proxy_factory(proxy)

ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

# The keys of each shape, in the order docs/admin-api.md shows them (the server may add others).
DB_PROXY_KEYS = ["DBProxyName", "DBProxyArn", "Status", "EngineFamily", "Endpoint", "Port",
                 "Endpoints", "RequireTLS", "IdleClientTimeout", "DebugLogging",
                 "MaxClientConnections", "Auth", "CreatedDate", "UpdatedDate"]
AUTH_KEYS = ["AuthScheme", "SecretArn", "IAMAuth", "ClientPasswordAuthType", "Description", "UserName"]
TARGET_GROUP_KEYS = ["DBProxyName", "TargetGroupName", "TargetGroupArn", "IsDefault", "Status",
                     "ConnectionPoolConfig", "CreatedDate", "UpdatedDate"]
POOL_KEYS = ["MaxConnectionsPercent", "MaxIdleConnectionsPercent", "ConnectionBorrowTimeout",
             "SessionPinningFilters", "InitQuery"]
TARGET_KEYS = ["Endpoint", "Port", "Type", "Role", "RdsResourceId", "TargetArn", "TargetHealth"]
HEALTH_KEYS = ["State", "Reason", "Description"]


def assert_keys_in_order(obj: dict, keys: list[str], what: str) -> None:
    """Every documented key is there, in the documented order (other keys may come between)."""
    missing = [k for k in keys if k not in obj]
    assert not missing, f"{what} lacks {missing}: {obj}"
    present = [k for k in obj if k in keys]
    assert present == keys, f"{what} keys out of the documented order: {list(obj)}"


# -- access ------------------------------------------------------------------------------------

def test_healthz_needs_no_token(admin_proxy):
    p = admin_proxy()
    for token in (None, "wrong", p.admin_token):
        r = p.admin.get("/healthz", token=token)
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("application/json")
        assert r.json == {"Status": "ok"}


PROTECTED = [("GET", "/metrics"), ("GET", "/v1/db-proxies"), ("GET", "/v1/db-proxies/app"),
             ("GET", "/v1/db-proxies/app/target-groups"), ("GET", "/v1/db-proxies/app/targets")]


def test_bearer_token_required(admin_proxy):
    p = admin_proxy()
    for method, path in PROTECTED:
        assert_error(p.admin.request(method, path, token=None), 401, "Unauthorized")
        assert_error(p.admin.request(method, path, token="not-" + p.admin_token), 401, "Unauthorized")
        assert_error(p.admin.request(method, path, token=None,
                                     headers={"Authorization": f"Basic {p.admin_token}"}),
                     401, "Unauthorized")
        assert_error(p.admin.request(method, path, token=None,
                                     headers={"Authorization": p.admin_token}), 401, "Unauthorized")
        r = p.admin.request(method, path)
        assert r.status == 200, (method, path, r)


def test_changes_without_token_are_refused_and_change_nothing(admin_proxy):
    p = admin_proxy()
    before_pool = p.admin.pool_config()
    before_proxy = p.admin.db_proxy()
    assert_error(p.admin.patch("/v1/db-proxies/app/target-groups/default",
                               {"ConnectionPoolConfig": {"MaxConnectionsPercent": 50}}, token=None),
                 401, "Unauthorized")
    assert_error(p.admin.patch("/v1/db-proxies/app", {"IdleClientTimeout": 60}, token="wrong"),
                 401, "Unauthorized")
    assert_error(p.admin.post("/v1/db-proxies/app/targets",
                              {"DBInstanceIdentifiers": [f"127.0.0.1:{free_port()}"]}, token=None),
                 401, "Unauthorized")
    assert_error(p.admin.delete("/v1/db-proxies/app/targets",
                                {"DBInstanceIdentifiers": [p.admin.targets()[0]["RdsResourceId"]]},
                                token=None),
                 401, "Unauthorized")
    assert p.admin.pool_config() == before_pool
    assert p.admin.db_proxy() == before_proxy
    assert len(p.admin.targets()) == 1
    p.assert_serves()


def test_without_token_the_api_is_open_on_loopback(admin_proxy):
    p = admin_proxy(token=None)
    assert p.admin.db_proxy()["DBProxyName"] == "app"
    assert p.admin.get("/metrics").status == 200


def test_token_from_a_file_reference(admin_proxy, tmp_path):
    token = "file-token-" + "x" * 20
    path = tmp_path / "admin_token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    p = admin_proxy(token=token, token_ref=f"file:{path}")
    assert p.admin.get("/v1/db-proxies").status == 200
    assert_error(p.admin.get("/v1/db-proxies", token=f"file:{path}"), 401, "Unauthorized")


def test_metrics_is_prometheus_text(admin_proxy):
    p = admin_proxy()
    p.assert_serves()
    r = p.admin.get("/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert "# TYPE" in r.text, r.text[:2000]


def test_unknown_route_and_wrong_method(admin_proxy):
    p = admin_proxy()
    for path in ("/", "/v1", "/v2/db-proxies", "/v1/db-proxy", "/v1/db-proxies/app/nothing",
                 "/v1/db-proxies/app/targets/extra/more"):
        assert_error(p.admin.get(path), 404, "NotFound")
    for method, path in [("POST", "/v1/db-proxies"), ("DELETE", "/v1/db-proxies"),
                         ("DELETE", "/v1/db-proxies/app"),
                         ("PUT", "/v1/db-proxies/app/targets"),
                         ("PATCH", "/v1/db-proxies/app/targets"),
                         ("POST", "/v1/db-proxies/app/target-groups"),
                         ("DELETE", "/v1/db-proxies/app/target-groups/default"),
                         ("POST", "/metrics"), ("DELETE", "/metrics"),
                         ("POST", "/healthz")]:
        assert_error(p.admin.request(method, path, {}), 405, "MethodNotAllowed")


def test_body_over_1_mib_is_refused(admin_proxy):
    p = admin_proxy()
    big = b'{"ConnectionPoolConfig": {"InitQuery": "' + b"x" * (1 << 20) + b'"}}'
    assert_error(p.admin.patch("/v1/db-proxies/app/target-groups/default", raw=big),
                 413, "RequestTooLarge")
    assert p.admin.pool_config()["InitQuery"] == ""
    assert p.admin.get("/healthz").status == 200  # the listener is still fine


# -- DescribeDBProxies -------------------------------------------------------------------------

def test_describe_db_proxies(admin_proxy):
    p = admin_proxy(idle_client_timeout=900, max_client_connections=500)
    body = p.admin.ok(p.admin.get("/v1/db-proxies"))
    assert list(body) == ["DBProxies"]
    assert len(body["DBProxies"]) == 1
    proxy = body["DBProxies"][0]
    assert proxy == p.admin.db_proxy("app")
    assert_keys_in_order(proxy, DB_PROXY_KEYS, "DBProxy")

    assert proxy["DBProxyName"] == "app"
    assert proxy["DBProxyArn"].startswith("arn:concierge:rds:"), proxy["DBProxyArn"]
    assert ":db-proxy:" in proxy["DBProxyArn"]
    assert proxy["Status"] == "available"
    assert proxy["EngineFamily"] == "POSTGRESQL"
    assert proxy["Endpoint"] == "127.0.0.1"
    assert proxy["Port"] == p.port
    assert proxy["Endpoints"] == []
    assert proxy["RequireTLS"] is False
    assert proxy["IdleClientTimeout"] == 900
    assert proxy["DebugLogging"] is (p.config_path.read_text().find("debug_logging: true") >= 0)
    assert proxy["MaxClientConnections"] == 500
    for key in ("CreatedDate", "UpdatedDate"):
        assert ISO_DATE.match(proxy[key]), proxy[key]
    assert proxy["UpdatedDate"] >= proxy["CreatedDate"]

    # One auth entry per secret, in config order.
    auth = proxy["Auth"]
    assert [a["UserName"] for a in auth] == list(p.passwords)
    workdir = p.config_path.parent
    for entry in auth:
        assert_keys_in_order(entry, AUTH_KEYS, "Auth entry")
        user = next(u for u in DB_USERS if u.name == entry["UserName"])
        assert entry["AuthScheme"] == "SECRETS"
        assert entry["SecretArn"] == f"file:{workdir / (user.name + '.json')}"
        assert entry["IAMAuth"] == "DISABLED"
        assert entry["ClientPasswordAuthType"] == user.client_auth
        assert entry["Description"] == ""


def test_describe_one_db_proxy_and_unknown_proxy(admin_proxy):
    p = admin_proxy()
    assert p.admin.db_proxy("app")["Port"] == p.port
    for path in ("/v1/db-proxies/nope", "/v1/db-proxies/nope/target-groups",
                 "/v1/db-proxies/nope/targets"):
        assert_error(p.admin.get(path), 404, "DBProxyNotFoundFault")


def test_debug_logging_from_config(admin_proxy):
    p = admin_proxy(debug_logging=True)
    assert p.admin.db_proxy()["DebugLogging"] is True


# -- DescribeDBProxyTargetGroups -----------------------------------------------------------------

def test_describe_target_groups(admin_proxy):
    p = admin_proxy(max_connections_percent=40, max_idle_connections_percent=20,
                    connection_borrow_timeout=45, session_pinning_filters=["EXCLUDE_VARIABLE_SETS"],
                    init_query="SET application_name = 'from_config'")
    body = p.admin.ok(p.admin.get("/v1/db-proxies/app/target-groups"))
    assert list(body) == ["TargetGroups"]
    [group] = body["TargetGroups"]
    assert_keys_in_order(group, TARGET_GROUP_KEYS, "DBProxyTargetGroup")
    assert group["DBProxyName"] == "app"
    assert group["TargetGroupName"] == "default"
    assert group["TargetGroupArn"].startswith("arn:concierge:rds:"), group["TargetGroupArn"]
    assert ":target-group:" in group["TargetGroupArn"]
    assert group["IsDefault"] is True
    assert group["Status"] == "available"
    assert_keys_in_order(group["ConnectionPoolConfig"], POOL_KEYS, "ConnectionPoolConfig")
    assert group["ConnectionPoolConfig"] == {
        "MaxConnectionsPercent": 40, "MaxIdleConnectionsPercent": 20,
        "ConnectionBorrowTimeout": 45, "SessionPinningFilters": ["EXCLUDE_VARIABLE_SETS"],
        "InitQuery": "SET application_name = 'from_config'"}
    for key in ("CreatedDate", "UpdatedDate"):
        assert ISO_DATE.match(group[key]), group[key]

    # TargetGroupName: `default` is the one there is.
    r = p.admin.get("/v1/db-proxies/app/target-groups?TargetGroupName=default")
    assert p.admin.ok(r)["TargetGroups"] == [group]
    assert_error(p.admin.get("/v1/db-proxies/app/target-groups?TargetGroupName=other"),
                 404, "DBProxyTargetGroupNotFoundFault")


def test_describe_target_groups_defaults_of_the_test_config(admin_proxy):
    p = admin_proxy()
    assert p.admin.pool_config() == {
        "MaxConnectionsPercent": 10, "MaxIdleConnectionsPercent": 5, "ConnectionBorrowTimeout": 10,
        "SessionPinningFilters": [], "InitQuery": ""}


# -- DescribeDBProxyTargets ------------------------------------------------------------------------

def test_describe_targets(admin_proxy, pg):
    p = admin_proxy()  # ready: a `select 1` went through, so the target was reached

    def available():
        targets = p.admin.targets()
        return targets if targets[0]["TargetHealth"]["State"] == "AVAILABLE" else None
    targets = wait_for(available, 10, "the target to be AVAILABLE")
    body = p.admin.ok(p.admin.get("/v1/db-proxies/app/targets"))
    assert list(body) == ["Targets"]
    [target] = targets
    assert_keys_in_order(target, TARGET_KEYS, "DBProxyTarget")
    assert target["Endpoint"] == "127.0.0.1"
    assert target["Port"] == pg.port
    assert target["Type"] == "RDS_INSTANCE"
    assert target["Role"] == "READ_WRITE"
    assert target["RdsResourceId"] == f"127.0.0.1:{pg.port}"
    assert isinstance(target["TargetArn"], str) and target["TargetArn"]
    assert_keys_in_order(target["TargetHealth"], HEALTH_KEYS, "TargetHealth")
    assert target["TargetHealth"]["State"] == "AVAILABLE"
    assert target["TargetHealth"]["Reason"] is None

    r = p.admin.get("/v1/db-proxies/app/targets?TargetGroupName=default")
    assert len(p.admin.ok(r)["Targets"]) == 1
    assert_error(p.admin.get("/v1/db-proxies/app/targets?TargetGroupName=other"),
                 404, "DBProxyTargetGroupNotFoundFault")


def test_unreachable_target_is_unavailable(admin_proxy):
    dead = free_port()
    p = admin_proxy(db_port=dead, wait_ready=False)
    [target] = p.admin.targets()
    assert target["TargetHealth"]["State"] in ("REGISTERING", "UNAVAILABLE"), target
    # A client makes the proxy try the database.
    p.psql("select 1", check=False, timeout=30, connect_timeout=15)

    def unavailable():
        health = p.admin.targets()[0]["TargetHealth"]
        return health if health["State"] == "UNAVAILABLE" else None
    health = wait_for(unavailable, 20, "the dead target to be UNAVAILABLE")
    assert health["Reason"] == "CONNECTION_FAILURE", health
    assert isinstance(health["Description"], str) and health["Description"], health


# -- ModifyDBProxyTargetGroup ----------------------------------------------------------------------

def test_modify_target_group_each_key(admin_proxy):
    p = admin_proxy()
    expected = p.admin.pool_config()
    before = p.admin.target_group()
    changes = [
        {"MaxConnectionsPercent": 20},
        {"MaxIdleConnectionsPercent": 15},
        {"ConnectionBorrowTimeout": 30},
        {"SessionPinningFilters": ["EXCLUDE_VARIABLE_SETS"]},
        {"InitQuery": "SET application_name = 'via_admin_api'"},
        {"SessionPinningFilters": []},
        {"InitQuery": ""},
        {"MaxIdleConnectionsPercent": 0},
        {"ConnectionBorrowTimeout": 0},
        {"MaxConnectionsPercent": 100, "MaxIdleConnectionsPercent": 100, "ConnectionBorrowTimeout": 3600},
        {"MaxConnectionsPercent": 1, "MaxIdleConnectionsPercent": 1, "ConnectionBorrowTimeout": 10},
        {},  # any subset of the keys, even none
    ]
    for change in changes:
        r = p.admin.modify_target_group(change)
        body = p.admin.ok(r)
        assert list(body) == ["DBProxyTargetGroup"], body
        expected.update(change)
        group = body["DBProxyTargetGroup"]
        assert_keys_in_order(group, TARGET_GROUP_KEYS, "DBProxyTargetGroup")
        assert group["ConnectionPoolConfig"] == expected, (change, group)
        assert p.admin.pool_config() == expected, change
    after = p.admin.target_group()
    assert after["CreatedDate"] == before["CreatedDate"]
    assert after["UpdatedDate"] >= before["UpdatedDate"]
    # The proxy still serves with its last settings (a cap of 1 backend).
    p.assert_serves()


def test_modify_target_group_all_keys_at_once(admin_proxy):
    p = admin_proxy()
    config = {"MaxConnectionsPercent": 50, "MaxIdleConnectionsPercent": 25,
              "ConnectionBorrowTimeout": 30, "SessionPinningFilters": ["EXCLUDE_VARIABLE_SETS"],
              "InitQuery": "SET application_name = 'all_at_once'"}
    group = p.admin.ok(p.admin.modify_target_group(config))["DBProxyTargetGroup"]
    assert group["ConnectionPoolConfig"] == config
    assert group["DBProxyName"] == "app" and group["TargetGroupName"] == "default"
    p.assert_serves()


def test_modify_target_group_init_query_reaches_new_backends(admin_proxy):
    p = admin_proxy()
    p.assert_serves()
    assert p.psql("show statement_timeout").stdout.strip() == "0"
    p.admin.ok(p.admin.modify_target_group({"InitQuery": "SET statement_timeout = '4321ms'"}))
    # Backends opened from now on run it; the ones there were are retired, so every client's
    # transaction soon runs on one that ran it.
    wait_for(lambda: p.psql("show statement_timeout").stdout.strip() == "4321ms", 10,
             "a backend that ran the new init query")


BAD_POOL_VALUES = [
    ("MaxConnectionsPercent", 0), ("MaxConnectionsPercent", 101), ("MaxConnectionsPercent", -1),
    ("MaxConnectionsPercent", "50"), ("MaxConnectionsPercent", 50.5), ("MaxConnectionsPercent", True),
    ("MaxConnectionsPercent", None),
    ("MaxIdleConnectionsPercent", -1), ("MaxIdleConnectionsPercent", 101),
    ("MaxIdleConnectionsPercent", "5"),
    ("ConnectionBorrowTimeout", -1), ("ConnectionBorrowTimeout", 3601),
    ("ConnectionBorrowTimeout", "30"), ("ConnectionBorrowTimeout", [30]),
    ("SessionPinningFilters", ["BOGUS"]), ("SessionPinningFilters", "EXCLUDE_VARIABLE_SETS"),
    ("SessionPinningFilters", [1]),
    ("InitQuery", 5), ("InitQuery", ["SET a = 1"]),
]


def test_modify_target_group_bad_values(admin_proxy):
    p = admin_proxy()
    before = p.admin.target_group()
    for key, value in BAD_POOL_VALUES:
        r = p.admin.modify_target_group({key: value})
        assert_error(r, 400, "InvalidParameterValue", field=f"ConnectionPoolConfig.{key}")
    # A request with one bad value changes nothing, not even its good values.
    r = p.admin.modify_target_group({"MaxConnectionsPercent": 20, "ConnectionBorrowTimeout": -5})
    assert_error(r, 400, "InvalidParameterValue", field="ConnectionPoolConfig.ConnectionBorrowTimeout")
    r = p.admin.modify_target_group({"MaxConnectionsPercent": 20, "Bogus": 1})
    assert_error(r, 400, "MalformedRequest")
    assert p.admin.target_group() == before
    p.assert_serves()


def test_modify_target_group_idle_above_max(admin_proxy):
    p = admin_proxy()  # MaxConnectionsPercent 10, MaxIdleConnectionsPercent 5
    before = p.admin.pool_config()
    error = assert_error(p.admin.modify_target_group(
        {"MaxConnectionsPercent": 20, "MaxIdleConnectionsPercent": 30}), 400, "InvalidParameterCombination")
    assert "MaxIdleConnectionsPercent" in error["Message"], error
    # Also against the current value of the key not sent.
    assert_error(p.admin.modify_target_group({"MaxIdleConnectionsPercent": 11}),
                 400, "InvalidParameterCombination")
    assert p.admin.pool_config() == before
    # An idle percentage set explicitly (not half of MaxConnectionsPercent) stays, and is checked.
    p.admin.ok(p.admin.modify_target_group({"MaxIdleConnectionsPercent": 6}))
    assert_error(p.admin.modify_target_group({"MaxConnectionsPercent": 4}),
                 400, "InvalidParameterCombination")
    p.admin.ok(p.admin.modify_target_group({"MaxIdleConnectionsPercent": 5}))
    assert p.admin.pool_config() == before
    # Equal is fine.
    p.admin.ok(p.admin.modify_target_group({"MaxConnectionsPercent": 30, "MaxIdleConnectionsPercent": 30}))


def test_idle_percentage_defaults_to_half_of_max_connections_percent(admin_proxy):
    # RDS Proxy's default: unset, MaxIdleConnectionsPercent is half of MaxConnectionsPercent, and
    # lowering MaxConnectionsPercent is not refused over a value nobody set (it was: "50 is
    # greater than max_connections_percent (10)").
    p = admin_proxy()  # MaxConnectionsPercent 10, MaxIdleConnectionsPercent 5: the default
    p.admin.ok(p.admin.modify_target_group({"MaxConnectionsPercent": 4}))
    assert p.admin.pool_config()["MaxIdleConnectionsPercent"] == 2
    p.admin.ok(p.admin.modify_target_group({"MaxConnectionsPercent": 30}))
    assert p.admin.pool_config()["MaxIdleConnectionsPercent"] == 2  # only the keys sent change
    p.assert_serves()


def test_init_query_with_a_nul_is_refused(admin_proxy):
    # PostgreSQL would run only what came before the NUL; the API answered 200.
    p = admin_proxy()
    before = p.admin.pool_config()
    r = p.admin.modify_target_group({"InitQuery": "SET application_name = 'a'\u0000; DROP TABLE x"})
    error = assert_error(r, 400, ("InvalidParameterValue", "InvalidParameterCombination"),
                         field="ConnectionPoolConfig.InitQuery")
    assert "NUL" in error["Message"], error
    assert p.admin.pool_config() == before
    p.assert_serves()


def test_modify_target_group_malformed_bodies(admin_proxy):
    p = admin_proxy()
    path = "/v1/db-proxies/app/target-groups/default"
    before = p.admin.pool_config()
    for raw in (b"not json", b"{", b"[]", b'"text"', b"42", b"null",
                b'{"ConnectionPoolConfig": {"MaxConnectionsPercent": 50}} trailing'):
        assert_error(p.admin.patch(path, raw=raw), 400, "MalformedRequest")
    # Unknown fields, at the top and inside ConnectionPoolConfig.
    error = assert_error(p.admin.patch(path, {"Bogus": 1}), 400, "MalformedRequest")
    assert "Bogus" in error["Message"]
    error = assert_error(p.admin.modify_target_group({"MaxConnections": 50}), 400, "MalformedRequest")
    assert "MaxConnections" in error["Message"]
    # ConnectionPoolConfig must be an object.
    assert_error(p.admin.patch(path, {"ConnectionPoolConfig": [1]}), 400,
                 ("InvalidParameterValue", "MalformedRequest"))
    assert p.admin.pool_config() == before


def test_modify_target_group_unknown_group_or_proxy(admin_proxy):
    p = admin_proxy()
    change = {"MaxConnectionsPercent": 20}
    assert_error(p.admin.modify_target_group(change, group="other"), 404,
                 "DBProxyTargetGroupNotFoundFault")
    assert_error(p.admin.modify_target_group(change, name="nope"), 404, "DBProxyNotFoundFault")
    assert p.admin.pool_config()["MaxConnectionsPercent"] == 10


@pytest.mark.timeout(120)
def test_lower_max_connections_percent_under_pgbench(admin_proxy, pg, pgbench_tables):
    # Start with a cap of 10 backends; lower it to 3 while 20 pgbench clients run: no client
    # fails, and within 5 s the database has at most 3 backends of the proxy's user.
    with pg.super_connect() as checker:
        max_conns = max_connections(checker)
        high, low_cap = percent_for_cap(10, max_conns), 3
        low = percent_for_cap(low_cap, max_conns)
        p = admin_proxy(max_connections_percent=high, max_idle_connections_percent=low,
                        connection_borrow_timeout=60)
        results = []
        bench = threading.Thread(target=lambda: results.append(
            p.pgbench("-S", "-c", "20", "-j", "2", "-T", "8", timeout=90)))
        bench.start()
        try:
            # Under load the pool grows past the lower cap first.
            wait_for(lambda: backend_count(checker) > low_cap, 6,
                     f"the pool to grow past {low_cap} backends under pgbench")
            r = p.admin.modify_target_group({"MaxConnectionsPercent": low,
                                             "MaxIdleConnectionsPercent": low})
            modified = time.monotonic()
            assert p.admin.ok(r)["DBProxyTargetGroup"]["ConnectionPoolConfig"]["MaxConnectionsPercent"] == low
            seen = []

            def within_cap() -> bool:
                seen.append(backend_count(checker))
                return seen[-1] <= low_cap
            wait_for(within_cap, 5, f"at most {low_cap} backends after the modify (seen: {seen[-20:]})",
                     interval=0.05)
            reached = time.monotonic() - modified
            # ... and it stays there while pgbench goes on.
            over = []
            while bench.is_alive():
                n = backend_count(checker)
                if n > low_cap:
                    over.append(n)
                time.sleep(0.05)
        finally:
            bench.join(timeout=100)
        [proc] = results
        result = parse_pgbench(proc)
        print(f"\ncap {10} -> {low_cap} (percent {high} -> {low} of max_connections={max_conns}): "
              f"within cap after {reached:.2f}s; pgbench tps = {result.tps:.0f}, "
              f"{result.processed} transactions")
        assert result.returncode == 0, result.output
        assert result.failed == 0, result.output
        assert result.processed > 0, result.output
        assert not over, f"backends above the new cap of {low_cap} after it was reached: {over}"

        # Raise it back: the pool may grow again.
        r = p.admin.modify_target_group({"MaxConnectionsPercent": high})
        assert p.admin.ok(r)["DBProxyTargetGroup"]["ConnectionPoolConfig"]["MaxConnectionsPercent"] == high
        results.clear()
        bench = threading.Thread(target=lambda: results.append(
            p.pgbench("-S", "-c", "20", "-j", "2", "-T", "4", timeout=60)))
        bench.start()
        try:
            peak = 0

            def grown() -> bool:
                nonlocal peak
                peak = max(peak, backend_count(checker))
                return peak > low_cap
            wait_for(grown, 4, f"the pool to grow past {low_cap} again after raising the cap")
        finally:
            bench.join(timeout=60)
        result = parse_pgbench(results[0])
        assert result.returncode == 0 and result.failed == 0, result.output
        assert peak <= 10, peak


# -- ModifyDBProxy ---------------------------------------------------------------------------------

def test_modify_db_proxy(admin_proxy):
    p = admin_proxy()
    before = p.admin.db_proxy()
    for change in ({"IdleClientTimeout": 900}, {"IdleClientTimeout": 1}, {"IdleClientTimeout": 28800},
                   {"DebugLogging": True}, {"DebugLogging": False}, {"RequireTLS": False},
                   {"IdleClientTimeout": 600, "DebugLogging": True, "RequireTLS": False}, {}):
        body = p.admin.ok(p.admin.modify_proxy(change))
        assert list(body) == ["DBProxy"], body
        assert_keys_in_order(body["DBProxy"], DB_PROXY_KEYS, "DBProxy")
        for key, value in change.items():
            assert body["DBProxy"][key] == value, (change, body)
        assert body["DBProxy"] == p.admin.db_proxy()
    after = p.admin.db_proxy()
    assert after["IdleClientTimeout"] == 600 and after["DebugLogging"] is True
    assert after["CreatedDate"] == before["CreatedDate"]
    assert after["UpdatedDate"] >= before["UpdatedDate"]
    # Everything else is as it was.
    for key in ("DBProxyName", "DBProxyArn", "Endpoint", "Port", "Auth", "MaxClientConnections"):
        assert after[key] == before[key], key
    p.assert_serves()


def test_modify_db_proxy_require_tls(admin_proxy):
    # TLS may not be supported yet: then RequireTLS true is refused, naming the field.
    p = admin_proxy()
    r = p.admin.modify_proxy({"RequireTLS": True})
    if r.status == 200:
        assert r.json["DBProxy"]["RequireTLS"] is True
        assert p.admin.db_proxy()["RequireTLS"] is True
    else:
        assert_error(r, 400, ("InvalidParameterValue", "InvalidParameterCombination"), field="RequireTLS")
        assert p.admin.db_proxy()["RequireTLS"] is False
        p.assert_serves()


def test_modify_db_proxy_bad_values(admin_proxy):
    p = admin_proxy()
    before = p.admin.db_proxy()
    for key, value in [("IdleClientTimeout", 0), ("IdleClientTimeout", 28801),
                       ("IdleClientTimeout", -5), ("IdleClientTimeout", "900"),
                       ("IdleClientTimeout", 1.5), ("IdleClientTimeout", None),
                       ("DebugLogging", "true"), ("DebugLogging", 1), ("RequireTLS", "false"),
                       ("RequireTLS", None)]:
        assert_error(p.admin.modify_proxy({key: value}), 400, "InvalidParameterValue", field=key)
    assert_error(p.admin.modify_proxy({"IdleClientTimeout": 60, "DebugLogging": "yes"}),
                 400, "InvalidParameterValue", field="DebugLogging")
    error = assert_error(p.admin.modify_proxy({"MaxConnectionsPercent": 5}), 400, "MalformedRequest")
    assert "MaxConnectionsPercent" in error["Message"]
    for raw in (b"", b"nope", b"[1]"):
        assert_error(p.admin.patch("/v1/db-proxies/app", raw=raw), 400, "MalformedRequest")
    assert_error(p.admin.modify_proxy({"IdleClientTimeout": 60}, name="nope"), 404, "DBProxyNotFoundFault")
    assert p.admin.db_proxy() == before


def test_lowered_idle_client_timeout_closes_idle_clients(admin_proxy):
    p = admin_proxy(idle_client_timeout=1800)
    with p.connect() as before, p.connect() as busy:
        before.execute("select 1")
        p.admin.ok(p.admin.modify_proxy({"IdleClientTimeout": 1}))
        with p.connect() as after:
            after.execute("select 1")
            started = time.monotonic()
            # Both idle clients, the one from before the change too, are closed by the proxy
            # (the busy one keeps working meanwhile).
            for conn in (before, after):
                deadline = started + 10
                while time.monotonic() < deadline and not wait_closed_by_peer(conn, 0.2):
                    busy.execute("select 1")
                assert time.monotonic() < deadline, "an idle client outlived IdleClientTimeout=1 by 9 s"
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("select 1")
            busy.execute("select 1")

    # Raised again, an idle client is left alone.
    p.admin.ok(p.admin.modify_proxy({"IdleClientTimeout": 1800}))
    with p.connect() as idle:
        idle.execute("select 1")
        assert not wait_closed_by_peer(idle, 3), "an idle client was closed after IdleClientTimeout=1800"
        assert idle.execute("select 1").fetchone() == (1,)


# -- RegisterDBProxyTargets / DeregisterDBProxyTargets -------------------------------------------

def test_register_and_deregister_targets(admin_proxy, pg):
    p = admin_proxy()
    original = f"127.0.0.1:{pg.port}"
    extra_port = free_port()
    extra = f"127.0.0.1:{extra_port}"

    body = p.admin.ok(p.admin.post("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": [extra]}))
    assert list(body) == ["DBProxyTargets"], body
    [registered] = body["DBProxyTargets"]
    assert_keys_in_order(registered, TARGET_KEYS, "DBProxyTarget")
    assert registered["RdsResourceId"] == extra
    assert registered["Endpoint"] == "127.0.0.1" and registered["Port"] == extra_port
    assert registered["Type"] == "RDS_INSTANCE"
    assert registered["TargetHealth"]["State"] in ("REGISTERING", "AVAILABLE", "UNAVAILABLE")

    ids = [t["RdsResourceId"] for t in p.admin.targets()]
    assert ids == [original, extra]
    # The first target stays the one in use.
    p.assert_serves()

    # Twice: 409, for the new one and the original alike; nothing is added.
    assert_error(p.admin.post("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": [extra]}),
                 409, "DBProxyTargetAlreadyRegisteredFault")
    assert_error(p.admin.post("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": [original]}),
                 409, "DBProxyTargetAlreadyRegisteredFault")
    assert len(p.admin.targets()) == 2

    r = p.admin.delete("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": [extra]})
    assert p.admin.ok(r) == {}
    assert [t["RdsResourceId"] for t in p.admin.targets()] == [original]
    assert_error(p.admin.delete("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": [extra]}),
                 404, "DBProxyTargetNotFoundFault")
    p.assert_serves()


def test_register_several_targets_at_once(admin_proxy):
    p = admin_proxy()
    ports: list[int] = []
    while len(ports) < 2:
        if (port := free_port()) not in ports:
            ports.append(port)
    new = [f"127.0.0.1:{port}" for port in ports]
    body = p.admin.ok(p.admin.post("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": new}))
    assert [t["RdsResourceId"] for t in body["DBProxyTargets"]] == new
    assert [t["RdsResourceId"] for t in p.admin.targets()][1:] == new
    r = p.admin.delete("/v1/db-proxies/app/targets", {"DBInstanceIdentifiers": new})
    assert p.admin.ok(r) == {}
    assert len(p.admin.targets()) == 1


def test_target_errors(admin_proxy):
    p = admin_proxy()
    path = "/v1/db-proxies/app/targets"
    some = f"127.0.0.1:{free_port()}"
    assert_error(p.admin.post("/v1/db-proxies/nope/targets", {"DBInstanceIdentifiers": [some]}),
                 404, "DBProxyNotFoundFault")
    assert_error(p.admin.delete("/v1/db-proxies/nope/targets", {"DBInstanceIdentifiers": [some]}),
                 404, "DBProxyNotFoundFault")
    assert_error(p.admin.post(path + "?TargetGroupName=other", {"DBInstanceIdentifiers": [some]}),
                 404, "DBProxyTargetGroupNotFoundFault")
    assert_error(p.admin.delete(path, {"DBInstanceIdentifiers": ["127.0.0.1:1"]}),
                 404, "DBProxyTargetNotFoundFault")
    for bad in ("127.0.0.1:99999", "127.0.0.1:port", ""):
        assert_error(p.admin.post(path, {"DBInstanceIdentifiers": [bad]}), 400,
                     "InvalidParameterValue", field="DBInstanceIdentifiers")
    for body in ({"DBInstanceIdentifiers": "127.0.0.1:5432"}, {"DBInstanceIdentifiers": [5432]},
                 {"DBInstanceIdentifiers": []}, {}):
        assert_error(p.admin.post(path, body), 400, ("InvalidParameterValue", "MalformedRequest"))
    assert_error(p.admin.post(path, {"DBInstanceIdentifiers": [some], "Bogus": 1}), 400, "MalformedRequest")
    assert_error(p.admin.post(path, raw=b"nope"), 400, "MalformedRequest")
    assert_error(p.admin.delete(path, raw=b"[]"), 400, "MalformedRequest")
    assert len(p.admin.targets()) == 1
    p.assert_serves()


def test_new_borrow_timeout_applies_to_the_next_waiter(admin_proxy):
    # Cap 1 backend, borrow timeout 10 s in the config; lowered to 1 s live, a waiter gets its
    # error after about 1 s, and its connection stays usable.
    p = admin_proxy(max_connections_percent=1, connection_borrow_timeout=10)
    holder = p.connect()
    waiter = p.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        p.admin.ok(p.admin.modify_target_group({"ConnectionBorrowTimeout": 1}))
        started = time.monotonic()
        with pytest.raises(psycopg.Error) as exc:
            waiter.execute("SELECT 1")
        elapsed = time.monotonic() - started
        assert exc.value.sqlstate == "53300"
        assert 0.8 <= elapsed <= 3.0, f"the waiter timed out after {elapsed:.2f}s, expected ~1s"
        holder.execute("COMMIT")
        assert waiter.execute("SELECT 2").fetchone()[0] == 2
    finally:
        holder.close()
        waiter.close()
