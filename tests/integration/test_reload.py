"""SIGHUP reloads the configuration file: pool settings and auth entries change without
dropping clients; a bad file is refused, logged, and the running configuration stays."""

import json
import re
import signal
import urllib.request

import psycopg
import pytest

from helpers import free_port, wait_for

pytestmark = pytest.mark.proxy_only


def start(proxy, **overrides):
    admin_port = free_port()
    p = proxy(admin={"listen": f"127.0.0.1:{admin_port}"}, **overrides)
    return p, f"http://127.0.0.1:{admin_port}"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def pool_config(url: str) -> dict:
    return get(url + "/v1/db-proxies/app/target-groups")["TargetGroups"][0]["ConnectionPoolConfig"]


def reload(p, text: str, expect: str) -> None:
    """Writes the config, sends SIGHUP and waits for the log line `expect` (one more of them)."""
    seen = p.log(10**9).count(expect)
    p.config_path.write_text(text)
    p.signal(signal.SIGHUP)
    wait_for(lambda: p.log(10**9).count(expect) > seen, 10, f"the proxy to log {expect!r}")


def without_auth_entry(text: str, user: str) -> str:
    """The config text with the auth entry whose secret file is USER.json removed."""
    pattern = re.compile(r'      - auth_scheme: "SECRETS"\n        secret_arn: "file:[^"]*/' + re.escape(user)
                         + r'\.json"\n(        .*\n)*?(?=      - |    target_group)')
    new, count = pattern.subn("", text)
    assert count == 1, text
    return new


def test_reload_applies_pool_settings_and_auth_entries_without_dropping_clients(proxy, pg):
    p, url = start(proxy)
    original = p.config_path.read_text()
    idle = p.connect()
    in_tx = p.connect()
    trust = p.connect(user="app_trust")
    in_tx.execute("BEGIN")
    in_tx.execute("SELECT 1")

    text = original.replace("max_connections_percent: 10", "max_connections_percent: 4")
    text = text.replace("max_idle_connections_percent: 5", "max_idle_connections_percent: 2")
    text = text.replace("connection_borrow_timeout: 10", "connection_borrow_timeout: 7")
    text = text.replace("idle_client_timeout: 1800", "idle_client_timeout: 900")
    text = without_auth_entry(text, "app_trust")
    reload(p, text, "configuration reloaded")

    config = pool_config(url)
    assert config["MaxConnectionsPercent"] == 4
    assert config["ConnectionBorrowTimeout"] == 7
    proxy_json = get(url + "/v1/db-proxies/app")["DBProxies"][0]
    assert proxy_json["IdleClientTimeout"] == 900
    assert "app_trust" not in [a.get("UserName") for a in proxy_json["Auth"]]
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    assert 'concierge_max_database_connections_allowed{proxy="app",target_group="default"} 4.0' in metrics

    # No client was dropped: the open transaction finishes, the idle ones go on.
    assert in_tx.execute("SELECT 2").fetchone()[0] == 2
    in_tx.execute("COMMIT")
    assert idle.execute("SELECT 3").fetchone()[0] == 3
    assert trust.execute("SELECT 4").fetchone()[0] == 4  # its auth entry is gone, it stays
    # New logins follow the new auth entries.
    with pytest.raises(psycopg.OperationalError) as exc:
        p.connect(user="app_trust")
    assert "password authentication failed" in str(exc.value)

    # And back: the entry returns.
    reload(p, original, "configuration reloaded")
    p.connect(user="app_trust").close()
    assert pool_config(url)["MaxConnectionsPercent"] == 10
    for c in (idle, in_tx, trust):
        c.close()


def test_reload_refuses_a_bad_file_and_keeps_the_running_configuration(proxy):
    p, url = start(proxy)
    original = p.config_path.read_text()
    client = p.connect()
    reload(p, original.replace("max_connections_percent: 10", "max_connections_percent: 0"),
           "configuration not reloaded")
    log = p.log()
    assert "max_connections_percent" in log and "0" in log
    assert pool_config(url)["MaxConnectionsPercent"] == 10
    assert client.execute("SELECT 1").fetchone()[0] == 1

    reload(p, "proxies: [", "configuration not reloaded")  # not even YAML
    assert "malformed YAML" in p.log()
    assert client.execute("SELECT 1").fetchone()[0] == 1

    # 20,000 nested brackets appended to the file crashed the parser (signal 11), and the proxy.
    reload(p, original + "\nx: " + "[" * 20000 + "\n", "configuration not reloaded")
    assert "nested more than 64 levels deep" in p.log()
    assert p.proc.poll() is None
    assert client.execute("SELECT 1").fetchone()[0] == 1
    p.connect().close()
    client.close()


def test_reload_refuses_changes_that_need_a_restart(proxy):
    p, url = start(proxy)
    original = p.config_path.read_text()
    other = free_port()
    changed = original.replace(f'listen: "127.0.0.1:{p.port}"', f'listen: "127.0.0.1:{other}"')
    changed = changed.replace("connection_borrow_timeout: 10", "connection_borrow_timeout: 3")
    assert changed != original
    reload(p, changed, "configuration not reloaded")
    assert "proxies[0].listen" in p.log() and "restart" in p.log()
    assert pool_config(url)["ConnectionBorrowTimeout"] == 10  # nothing of it was applied
    p.connect().close()
