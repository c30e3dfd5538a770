"""`concierge check-config` and `serve` on good and bad configuration files (no database needed).

Contract assumed: an invalid file exits 2 with one line per problem on stderr that names the key
path (`proxies[0].target_group.connection_pool_config.max_connections_percent: 150 is out of
range (allowed: 1...100)`); a valid one exits 0 and prints the effective settings, one
`key: value`-like line per setting (the key, then its value later on the same line).
"""

import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import clean_env, free_port, port_accepts, proxy_config, to_yaml, write_secret

pytestmark = pytest.mark.proxy_only  # needs the concierge binary


def check_config(concierge_bin: Path, config_path: Path) -> subprocess.CompletedProcess:
    # cwd elsewhere: relative secret paths must resolve against the config file's directory.
    return subprocess.run([str(concierge_bin), "check-config", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=30, cwd="/",
                          env=clean_env())


def base_config(tmp_path: Path) -> dict:
    secret = write_secret(tmp_path / "app.json", "app", "secret-password")
    return proxy_config(listen_port=free_port(), db_port=free_port(), secrets={"app": secret})


def write(tmp_path: Path, config: dict | str) -> Path:
    path = tmp_path / "concierge.yaml"
    path.write_text(config if isinstance(config, str) else to_yaml(config) + "\n")
    return path


def test_valid_config_prints_effective_settings_with_defaults(concierge_bin, tmp_path):
    write_secret(tmp_path / "app.json", "app", "secret-password")
    # Only the required keys; everything else must come out as its documented default.
    path = write(tmp_path, f"""\
proxies:
  - name: app
    engine_family: POSTGRESQL
    listen: "127.0.0.1:{free_port()}"
    auth:
      - auth_scheme: SECRETS
        secret_arn: "file:app.json"
        iam_auth: DISABLED
    target_group:
      targets:
        - endpoint: "127.0.0.1:{free_port()}"
""")
    proc = check_config(concierge_bin, path)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    defaults = {"drain_timeout": 30, "idle_client_timeout": 1800,
                "max_client_connections": 10000, "max_connections_percent": 100,
                "max_idle_connections_percent": 50, "connection_borrow_timeout": 120}
    for key, value in defaults.items():
        assert re.search(rf"\b{key}\b[^\n]*?\b{value}\b", proc.stdout), \
            f"{key} = {value} not in the effective settings"


def _unknown_key(c):
    c["proxies"][0]["bogus_key"] = 1


def _percent_150(c):
    c["proxies"][0]["target_group"]["connection_pool_config"]["max_connections_percent"] = 150


def _idle_timeout_0(c):
    c["proxies"][0]["idle_client_timeout"] = 0


def _borrow_timeout_4000(c):
    c["proxies"][0]["target_group"]["connection_pool_config"]["connection_borrow_timeout"] = 4000


def _missing_secret(c):
    c["proxies"][0]["auth"][0]["secret_arn"] = "file:/nonexistent/concierge/nope.json"


def _duplicate_listen(c):
    second = dict(c["proxies"][0], name="app2")
    c["proxies"].append(second)


BAD_CONFIGS = [
    ("unknown-key", _unknown_key, re.escape("proxies[0].bogus_key")),
    ("percent-150", _percent_150, re.escape(
        "proxies[0].target_group.connection_pool_config.max_connections_percent: "
        "150 is out of range (allowed: 1...100)")),
    ("idle-timeout-0", _idle_timeout_0, re.escape("proxies[0].idle_client_timeout") + ".*\\b0\\b"),
    ("borrow-timeout-4000", _borrow_timeout_4000, re.escape(
        "proxies[0].target_group.connection_pool_config.connection_borrow_timeout") + ".*4000"),
    ("missing-secret", _missing_secret, re.escape("proxies[0].auth[0].secret_arn")),
    ("duplicate-listen", _duplicate_listen, r"proxies\[[01]\]\.listen"),
]


@pytest.mark.parametrize("mutate,expected", [(m, e) for _, m, e in BAD_CONFIGS],
                         ids=[name for name, _, _ in BAD_CONFIGS])
def test_check_config_rejects_bad_values(concierge_bin, tmp_path, mutate, expected):
    config = base_config(tmp_path)
    mutate(config)
    proc = check_config(concierge_bin, write(tmp_path, config))
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert re.search(expected, proc.stderr), proc.stderr


def test_check_config_rejects_malformed_yaml(concierge_bin, tmp_path):
    path = write(tmp_path, "proxies:\n  - name: app\n    listen: [unclosed\n   bad: indent\n")
    proc = check_config(concierge_bin, path)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr.strip(), "no explanation on stderr"


def test_check_config_refuses_deep_nesting_without_crashing(concierge_bin, tmp_path):
    # A 40 KB file of nested brackets made check-config die with signal 11 in the YAML parser.
    for text in ("proxies: " + "[" * 20000, "proxies:\n" + "- " * 20000 + "x\n"):
        proc = check_config(concierge_bin, write(tmp_path, text))
        assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}"
        assert "nested more than 64 levels deep (allowed: at most 64)" in proc.stderr, proc.stderr[-2000:]


def test_serve_with_bad_config_exits_2_and_never_listens(concierge_bin, tmp_path):
    config = base_config(tmp_path)
    _percent_150(config)
    port = int(config["proxies"][0]["listen"].rsplit(":", 1)[1])
    proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(write(tmp_path, config))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            assert not port_accepts(port), "serve listened despite an invalid config"
            time.sleep(0.02)
        assert proc.poll() is not None, "serve kept running with an invalid config"
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "max_connections_percent" in stderr
    assert not port_accepts(port)


def test_serve_refuses_a_port_another_process_listens_on(concierge_bin, tmp_path):
    # Each event loop listens with SO_REUSEPORT; that must not let a second process (here a plain
    # listener, as a second proxy by mistake would be) share the port and split its clients.
    import socket
    config = base_config(tmp_path)
    port = int(config["proxies"][0]["listen"].rsplit(":", 1)[1])
    for reuseport in (False, True):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if reuseport:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind(("127.0.0.1", port))
            holder.listen(16)
            proc = subprocess.run([str(concierge_bin), "serve", "--threads", "2", "--config",
                                   str(write(tmp_path, config))],
                                  capture_output=True, text=True, timeout=30, env=clean_env())
        finally:
            holder.close()
        assert proc.returncode != 0, f"serve shared port {port} (reuseport={reuseport})\n{proc.stderr}"
        assert "Address already in use" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
