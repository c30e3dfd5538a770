"""The `concierge` CLI's admin verbs (the `aws rds` RDS Proxy verbs) against a running proxy's
admin API: each verb in json and table output, where the endpoint and token come from, and
the aws CLI's exit statuses (252 bad arguments, 254 API errors, 255 unreachable)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from admin_helpers import admin_proxy_factory, aws_table, cli_json, run_cli
from helpers import free_port, wait_for

pytestmark = pytest.mark.proxy_only

USAGE, API_ERROR, UNREACHABLE = 252, 254, 255


@pytest.fixture
def admin_proxy(proxy):
    return admin_proxy_factory(proxy)


@pytest.fixture
def cli(admin_proxy, concierge_bin):
    """A proxy with the admin API, and `cli(*args)` running a verb against it."""
    p = admin_proxy()

    def run(*args: str, **kw):
        kw.setdefault("endpoint", p.admin.url)
        kw.setdefault("token", p.admin_token)
        return run_cli(concierge_bin, *args, **kw)
    run.proxy = p
    return run


def assert_aws_json(proc, api_body) -> None:
    """stdout is the API's body printed like the aws CLI prints JSON: 4-space indentation, keys
    in the server's order, non-ASCII as is, and a final newline."""
    assert proc.returncode == 0, proc
    assert proc.stdout == json.dumps(api_body, indent=4, ensure_ascii=False) + "\n", proc.stdout


def assert_table(proc, title: str, api_body, *cells: str) -> None:
    """stdout is a table like `aws --output table` prints (exactly that when awscli is
    installed): a rule, the title centred between bars, boxed sections, lines of one width."""
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) >= 3, proc.stdout
    width = len(lines[0])
    assert lines[0] == "-" * width, proc.stdout
    assert lines[1].startswith("|") and lines[1].endswith("|") and lines[1].strip("| ") == title, proc.stdout
    assert all(len(line) == width for line in lines), proc.stdout
    for cell in cells:
        assert cell in proc.stdout, f"{cell!r} not in:\n{proc.stdout}"
    expected = aws_table(title, api_body)
    if expected is not None:
        assert proc.stdout == expected, f"mine:\n{proc.stdout}\naws:\n{expected}"


# -- describe ----------------------------------------------------------------------------------

def test_describe_db_proxies(cli):
    p = cli.proxy
    api = p.admin.ok(p.admin.get("/v1/db-proxies"))
    proc = cli("describe-db-proxies")
    assert_aws_json(proc, api)
    assert cli_json(proc)["DBProxies"][0]["Port"] == p.port
    assert_aws_json(cli("describe-db-proxies", "--db-proxy-name", "app", "--output", "json"), api)
    assert_table(cli("describe-db-proxies", "--output", "table"), "DescribeDBProxies", api,
                 "DBProxies", "DBProxyName", "POSTGRESQL", "Auth", "app_md5")

    proc = cli("describe-db-proxies", "--db-proxy-name", "nope")
    assert proc.returncode == API_ERROR, proc
    assert proc.stdout == ""
    assert ("An error occurred (DBProxyNotFoundFault) when calling the DescribeDBProxies "
            "operation: ") in proc.stderr, proc.stderr


def test_describe_db_proxy_target_groups(cli):
    p = cli.proxy
    api = p.admin.ok(p.admin.get("/v1/db-proxies/app/target-groups"))
    assert_aws_json(cli("describe-db-proxy-target-groups", "--db-proxy-name", "app"), api)
    assert_aws_json(cli("describe-db-proxy-target-groups", "--db-proxy-name", "app",
                        "--target-group-name", "default"), api)
    assert_table(cli("describe-db-proxy-target-groups", "--db-proxy-name", "app", "--output", "table"),
                 "DescribeDBProxyTargetGroups", api, "TargetGroups", "ConnectionPoolConfig",
                 "MaxConnectionsPercent", "default")
    proc = cli("describe-db-proxy-target-groups", "--db-proxy-name", "app", "--target-group-name", "other")
    assert proc.returncode == API_ERROR, proc
    assert ("An error occurred (DBProxyTargetGroupNotFoundFault) when calling the "
            "DescribeDBProxyTargetGroups operation: ") in proc.stderr


def test_describe_db_proxy_targets(cli, pg):
    p = cli.proxy
    wait_for(lambda: p.admin.targets()[0]["TargetHealth"]["State"] == "AVAILABLE", 10,
             "the target to be AVAILABLE")
    api = p.admin.ok(p.admin.get("/v1/db-proxies/app/targets"))
    proc = cli("describe-db-proxy-targets", "--db-proxy-name", "app")
    assert_aws_json(proc, api)
    assert cli_json(proc)["Targets"][0]["RdsResourceId"] == f"127.0.0.1:{pg.port}"
    assert_table(cli("describe-db-proxy-targets", "--db-proxy-name", "app", "--target-group-name",
                     "default", "--output", "table"),
                 "DescribeDBProxyTargets", api, "Targets", "TargetHealth", "AVAILABLE",
                 f"127.0.0.1:{pg.port}")
    proc = cli("describe-db-proxy-targets", "--db-proxy-name", "nope")
    assert proc.returncode == API_ERROR, proc
    assert "(DBProxyNotFoundFault) when calling the DescribeDBProxyTargets operation" in proc.stderr


# -- modify ------------------------------------------------------------------------------------

def test_modify_db_proxy_target_group_json(cli):
    p = cli.proxy
    proc = cli("modify-db-proxy-target-group", "--db-proxy-name", "app", "--target-group-name",
               "default", "--connection-pool-config",
               '{"MaxConnectionsPercent": 50, "MaxIdleConnectionsPercent": 25, '
               '"InitQuery": "SET statement_timeout = \'5s\'"}')
    body = cli_json(proc)
    assert list(body) == ["DBProxyTargetGroup"]
    config = body["DBProxyTargetGroup"]["ConnectionPoolConfig"]
    assert config["MaxConnectionsPercent"] == 50
    assert config["MaxIdleConnectionsPercent"] == 25
    assert config["InitQuery"] == "SET statement_timeout = '5s'"
    assert p.admin.pool_config() == config
    # The output is the API's answer, printed like the aws CLI does.
    assert proc.stdout == json.dumps(body, indent=4, ensure_ascii=False) + "\n"


def test_modify_db_proxy_target_group_shorthand_and_table(cli):
    p = cli.proxy
    proc = cli("modify-db-proxy-target-group", "--db-proxy-name", "app", "--target-group-name",
               "default", "--connection-pool-config",
               "MaxConnectionsPercent=50,ConnectionBorrowTimeout=30,"
               "SessionPinningFilters=EXCLUDE_VARIABLE_SETS")
    config = cli_json(proc)["DBProxyTargetGroup"]["ConnectionPoolConfig"]
    assert config["MaxConnectionsPercent"] == 50
    assert config["ConnectionBorrowTimeout"] == 30
    assert config["SessionPinningFilters"] == ["EXCLUDE_VARIABLE_SETS"]
    assert p.admin.pool_config() == config

    proc = cli("modify-db-proxy-target-group", "--db-proxy-name", "app", "--target-group-name",
               "default", "--connection-pool-config",
               "SessionPinningFilters=[],InitQuery=\"SET statement_timeout = '7s', lock_timeout = '1s'\"",
               "--output", "table")
    api = {"DBProxyTargetGroup": p.admin.target_group()}
    assert api["DBProxyTargetGroup"]["ConnectionPoolConfig"]["SessionPinningFilters"] == []
    assert (api["DBProxyTargetGroup"]["ConnectionPoolConfig"]["InitQuery"]
            == "SET statement_timeout = '7s', lock_timeout = '1s'")
    assert_table(proc, "ModifyDBProxyTargetGroup", api, "DBProxyTargetGroup", "ConnectionPoolConfig",
                 "lock_timeout")


def test_modify_db_proxy_target_group_errors(cli):
    p = cli.proxy
    before = p.admin.pool_config()

    def modify(config: str, group: str = "default", name: str = "app"):
        return cli("modify-db-proxy-target-group", "--db-proxy-name", name,
                   "--target-group-name", group, "--connection-pool-config", config)

    # Arguments the CLI itself rejects: 252, naming the flag, nothing sent.
    for bad in ('{"MaxConnectionsPercent": 50', "{not json}", '{"Bogus": 1}',
                '{"MaxConnectionsPercent": "50"}', '["MaxConnectionsPercent"]',
                "MaxConnectionsPercent", "MaxConnectionsPercent=abc", "Bogus=1",
                "MaxConnectionsPercent=50,MaxConnectionsPercent=60"):
        proc = modify(bad)
        assert proc.returncode == USAGE, (bad, proc)
        assert "--connection-pool-config" in proc.stderr, (bad, proc.stderr)
        assert proc.stdout == ""
    # Values the API rejects: 254 with the API's code and message.
    proc = modify('{"MaxConnectionsPercent": 0}')
    assert proc.returncode == API_ERROR, proc
    assert ("An error occurred (InvalidParameterValue) when calling the ModifyDBProxyTargetGroup "
            "operation: ") in proc.stderr
    assert "ConnectionPoolConfig.MaxConnectionsPercent" in proc.stderr
    proc = modify("MaxConnectionsPercent=20,MaxIdleConnectionsPercent=30")
    assert proc.returncode == API_ERROR, proc
    assert "(InvalidParameterCombination)" in proc.stderr
    proc = modify("MaxConnectionsPercent=20", group="other")
    assert proc.returncode == API_ERROR, proc
    assert "(DBProxyTargetGroupNotFoundFault)" in proc.stderr
    proc = modify("MaxConnectionsPercent=20", name="nope")
    assert proc.returncode == API_ERROR, proc
    assert "(DBProxyNotFoundFault)" in proc.stderr
    assert p.admin.pool_config() == before


def test_modify_db_proxy(cli):
    p = cli.proxy
    proc = cli("modify-db-proxy", "--db-proxy-name", "app", "--idle-client-timeout", "900",
               "--debug-logging", "--no-require-tls")
    body = cli_json(proc)
    assert list(body) == ["DBProxy"]
    assert body["DBProxy"]["IdleClientTimeout"] == 900
    assert body["DBProxy"]["DebugLogging"] is True
    assert body["DBProxy"]["RequireTLS"] is False
    assert p.admin.db_proxy() == body["DBProxy"]
    assert proc.stdout == json.dumps(body, indent=4, ensure_ascii=False) + "\n"

    proc = cli("modify-db-proxy", "--db-proxy-name", "app", "--no-debug-logging", "--output", "table")
    api = {"DBProxy": p.admin.db_proxy()}
    assert api["DBProxy"]["DebugLogging"] is False
    assert_table(proc, "ModifyDBProxy", api, "DBProxy", "IdleClientTimeout", "900")

    for seconds in ("0", "28801"):
        proc = cli("modify-db-proxy", "--db-proxy-name", "app", "--idle-client-timeout", seconds)
        assert proc.returncode == API_ERROR, proc
        assert ("An error occurred (InvalidParameterValue) when calling the ModifyDBProxy "
                "operation: ") in proc.stderr
        assert "IdleClientTimeout" in proc.stderr
    proc = cli("modify-db-proxy", "--db-proxy-name", "app", "--idle-client-timeout", "soon")
    assert proc.returncode == USAGE, proc
    assert "--idle-client-timeout" in proc.stderr
    proc = cli("modify-db-proxy", "--db-proxy-name", "nope", "--debug-logging")
    assert proc.returncode == API_ERROR, proc
    assert "(DBProxyNotFoundFault) when calling the ModifyDBProxy operation" in proc.stderr
    assert p.admin.db_proxy()["IdleClientTimeout"] == 900


# -- targets -----------------------------------------------------------------------------------

def test_register_and_deregister_targets(cli, pg):
    p = cli.proxy
    extra = f"127.0.0.1:{free_port()}"
    proc = cli("register-db-proxy-targets", "--db-proxy-name", "app", "--db-instance-identifiers", extra)
    body = cli_json(proc)
    assert [t["RdsResourceId"] for t in body["DBProxyTargets"]] == [extra]
    assert [t["RdsResourceId"] for t in p.admin.targets()] == [f"127.0.0.1:{pg.port}", extra]
    assert proc.stdout == json.dumps(body, indent=4, ensure_ascii=False) + "\n"

    proc = cli("register-db-proxy-targets", "--db-proxy-name", "app", "--target-group-name", "default",
               "--db-instance-identifiers", extra)
    assert proc.returncode == API_ERROR, proc
    assert ("An error occurred (DBProxyTargetAlreadyRegisteredFault) when calling the "
            "RegisterDBProxyTargets operation: ") in proc.stderr

    # Like the aws CLI, an empty answer ({}) prints nothing.
    proc = cli("deregister-db-proxy-targets", "--db-proxy-name", "app", "--db-instance-identifiers", extra)
    assert proc.returncode == 0, proc
    assert proc.stdout == ""
    assert len(p.admin.targets()) == 1

    proc = cli("deregister-db-proxy-targets", "--db-proxy-name", "app", "--db-instance-identifiers", extra)
    assert proc.returncode == API_ERROR, proc
    assert ("An error occurred (DBProxyTargetNotFoundFault) when calling the "
            "DeregisterDBProxyTargets operation: ") in proc.stderr

    # Several at once, in table output.
    two = [f"127.0.0.1:{free_port()}", "localhost:5999"]
    proc = cli("register-db-proxy-targets", "--db-proxy-name", "app", "--db-instance-identifiers", *two,
               "--output", "table")
    assert proc.returncode == 0, proc
    targets = p.admin.targets()
    assert [t["RdsResourceId"] for t in targets][1:] == two
    assert "RegisterDBProxyTargets" in proc.stdout.splitlines()[1]
    for ident in two:
        assert ident in proc.stdout
    proc = cli("deregister-db-proxy-targets", "--db-proxy-name", "app", "--db-instance-identifiers", *two,
               "--output", "table")
    assert proc.returncode == 0 and proc.stdout == "", proc
    assert len(p.admin.targets()) == 1

    proc = cli("register-db-proxy-targets", "--db-proxy-name", "app", "--target-group-name", "other",
               "--db-instance-identifiers", extra)
    assert proc.returncode == API_ERROR, proc
    assert "(DBProxyTargetGroupNotFoundFault)" in proc.stderr
    proc = cli("register-db-proxy-targets", "--db-proxy-name", "app")
    assert proc.returncode == USAGE, proc
    assert "--db-instance-identifiers" in proc.stderr
    p.assert_serves()


# -- endpoint, token, exit statuses -------------------------------------------------------------

def test_endpoint_and_token_from_the_environment(admin_proxy, concierge_bin):
    p = admin_proxy()
    env = {"CONCIERGE_ENDPOINT_URL": p.admin.url, "CONCIERGE_ADMIN_TOKEN": p.admin_token}
    proc = run_cli(concierge_bin, "describe-db-proxies", env=env)
    assert cli_json(proc)["DBProxies"][0]["DBProxyName"] == "app"
    # The flags win over the environment.
    proc = run_cli(concierge_bin, "describe-db-proxies", endpoint=p.admin.url, token=p.admin_token,
                   env={"CONCIERGE_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                        "CONCIERGE_ADMIN_TOKEN": "wrong"})
    assert cli_json(proc)["DBProxies"][0]["DBProxyName"] == "app"
    # A trailing slash on the URL is fine.
    proc = run_cli(concierge_bin, "describe-db-proxies", endpoint=p.admin.url + "/", token=p.admin_token)
    assert proc.returncode == 0, proc

    for env in ({"CONCIERGE_ENDPOINT_URL": p.admin.url},
                {"CONCIERGE_ENDPOINT_URL": p.admin.url, "CONCIERGE_ADMIN_TOKEN": "wrong"}):
        proc = run_cli(concierge_bin, "describe-db-proxies", env=env)
        assert proc.returncode == API_ERROR, proc
        assert ("An error occurred (Unauthorized) when calling the DescribeDBProxies operation: "
                in proc.stderr), proc.stderr
    proc = run_cli(concierge_bin, "describe-db-proxies", endpoint=p.admin.url, token="wrong",
                   env={"CONCIERGE_ADMIN_TOKEN": p.admin_token})
    assert proc.returncode == API_ERROR, proc


def test_default_endpoint_without_token(admin_proxy, concierge_bin):
    # No token configured: the CLI needs none either.
    p = admin_proxy(token=None)
    proc = run_cli(concierge_bin, "describe-db-proxy-targets", "--db-proxy-name", "app",
                   env={"CONCIERGE_ENDPOINT_URL": p.admin.url})
    assert cli_json(proc)["Targets"][0]["Type"] == "RDS_INSTANCE"


def test_unreachable_api(concierge_bin):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for args in (["describe-db-proxies"], ["modify-db-proxy", "--db-proxy-name", "app", "--debug-logging"],
                 ["deregister-db-proxy-targets", "--db-proxy-name", "app",
                  "--db-instance-identifiers", "127.0.0.1:5432"]):
        proc = run_cli(concierge_bin, *args, endpoint=url)
        assert proc.returncode == UNREACHABLE, proc
        assert f"concierge: could not connect to the admin API at {url}: " in proc.stderr, proc.stderr
        assert proc.stdout == ""
    proc = run_cli(concierge_bin, "describe-db-proxies", env={"CONCIERGE_ENDPOINT_URL": url})
    assert proc.returncode == UNREACHABLE, proc
    assert url in proc.stderr


def test_api_that_never_answers_times_out(concierge_bin):
    # Accepts the connection (the kernel does, from the backlog) but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        proc = run_cli(concierge_bin, "describe-db-proxies", endpoint=url, timeout=30)
        elapsed = time.monotonic() - started
    assert proc.returncode == UNREACHABLE, proc
    assert url in proc.stderr, proc.stderr
    assert 9 <= elapsed <= 20, elapsed


def test_bad_arguments(concierge_bin):
    url = f"http://127.0.0.1:{free_port()}"  # never reached: the arguments are checked first
    cases = [
        (["describe-db-proxies", "--output", "xml"], "--output"),
        (["describe-db-proxies", "--endpoint-url", "https://127.0.0.1:9187"], "--endpoint-url"),
        (["describe-db-proxies", "--endpoint-url", "127.0.0.1:9187"], "--endpoint-url"),
        (["describe-db-proxies", "--endpoint-url", "http://127.0.0.1:99999"], "--endpoint-url"),
        (["modify-db-proxy-target-group", "--db-proxy-name", "app", "--target-group-name", "default",
          "--connection-pool-config", "{"], "--connection-pool-config"),
        (["modify-db-proxy", "--db-proxy-name", "app", "--idle-client-timeout", "1.5"],
         "--idle-client-timeout"),
        (["register-db-proxy-targets", "--db-proxy-name", "app"], "--db-instance-identifiers"),
        (["deregister-db-proxy-targets", "--db-proxy-name", "app"], "--db-instance-identifiers"),
    ]
    for args, flag in cases:
        extra = {} if "--endpoint-url" in args else {"endpoint": url}
        proc = run_cli(concierge_bin, *args, **extra)
        assert proc.returncode == USAGE, (args, proc)
        assert flag in proc.stderr, (args, proc.stderr)
        assert "could not connect" not in proc.stderr, (args, proc.stderr)
    # A missing required flag, an unknown flag: a usage error from the argument parser (its own
    # status), naming the flag.
    for args, flag in ((["describe-db-proxy-targets"], "--db-proxy-name"),
                       (["describe-db-proxies", "--no-such-flag"], "--no-such-flag")):
        proc = run_cli(concierge_bin, *args, endpoint=url)
        assert proc.returncode not in (0, API_ERROR, UNREACHABLE), (args, proc)
        assert flag in proc.stderr, (args, proc.stderr)


def test_help_lists_the_verbs(concierge_bin):
    proc = run_cli(concierge_bin, "--help")
    assert proc.returncode == 0, proc
    for verb in ("describe-db-proxies", "describe-db-proxy-target-groups", "describe-db-proxy-targets",
                 "modify-db-proxy", "modify-db-proxy-target-group", "register-db-proxy-targets",
                 "deregister-db-proxy-targets"):
        assert verb in proc.stdout, proc.stdout
