"""Structured logs: logfmt (default) or JSON lines; with debug_logging one line per pin with its
reason and statement; never a password."""

import json
import subprocess

import pytest

from helpers import clean_env, free_port, proxy_config, to_yaml, wait_for, write_secret

pytestmark = pytest.mark.proxy_only


def pin_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "session pinned" in line]


def test_debug_logging_logs_each_pin_with_reason_and_statement(proxy, pg):
    p = proxy(debug_logging=True)
    with p.connect() as c:
        c.execute("SET search_path = public")
        c.execute("SELECT pg_advisory_lock(42)")  # a second reason for the same session
        c.execute("SELECT pg_advisory_unlock(42)")
    wait_for(lambda: pin_lines(p.log()), 5, "the pin to be logged")
    line = pin_lines(p.log())[0]
    assert "pin_reason=set_variable" in line
    assert 'statement="SET search_path = public"' in line
    assert "user=app" in line and "client_id=" in line
    added = [l for l in p.log().splitlines() if "session pin reason added" in l]
    assert added and "pin_reason=advisory_lock" in added[0] and "pg_advisory_lock(42)" in added[0]


def test_without_debug_logging_no_sql_text_is_logged(proxy):
    p = proxy(debug_logging=False)
    with p.connect() as c:
        c.execute("SET search_path = public")
    wait_for(lambda: pin_lines(p.log()), 5, "the pin to be logged")
    line = pin_lines(p.log())[0]
    assert "pin_reason=set_variable" in line
    assert "statement=" not in line and "search_path" not in line


def test_passwords_never_reach_the_log(proxy, pg):
    # Debug logging on, a statement carrying a password literal that pins, a failed login and
    # ordinary traffic: neither the secrets' passwords nor the literal appear anywhere.
    p = proxy(debug_logging=True)
    with p.connect() as c:
        c.execute("SET my.password = 'hunter2-not-logged'")
        c.execute("select 1")
    try:
        p.connect(password="wrong-password-not-logged").close()
    except Exception:
        pass
    for user in ("app", "app_md5"):
        with p.connect(user=user) as c:
            c.execute("select 1")
    wait_for(lambda: pin_lines(p.log()), 5, "the pin to be logged")
    log = p.log(10**9)
    assert "SET my.password = '***'" in log
    for secret in ["hunter2-not-logged", "wrong-password-not-logged", *pg.passwords.values()]:
        assert secret not in log


def test_literals_that_fooled_the_old_redaction_never_reach_the_log(proxy, pg):
    # Each of these pins (search_path, or a custom setting) and carries a secret that the
    # hand-written quote matching let through: an escaped quote in E'', a quote in a comment, in a
    # quoted identifier, a backslash with standard_conforming_strings off.
    p = proxy(debug_logging=True)
    statements = [
        ("SET search_path=public; SET my.password = E'ab\\'sekrit1'", None),
        ("SET search_path=public; SET my.password = /* don't log it */ 'sekrit2'", None),
        ("-- set victim's password\nSET my.password = 'sekrit3'", None),
        ('SET search_path = "o\'neil", public; SET my.password = \'sekrit4\'', None),
        ("SET my.password = 'xy\\'sekrit5'", "off"),
    ]
    for sql, scs in statements:
        with p.connect() as c:
            if scs:
                c.execute(f"SET standard_conforming_strings = {scs}")
            c.execute(sql)
    wait_for(lambda: len(pin_lines(p.log())) >= len(statements), 5, "the pins to be logged")
    log = p.log(10**9)
    for n in range(1, 6):
        assert f"sekrit{n}" not in log, log


def test_json_log_format(pg, concierge_bin, tmp_path):
    secrets = {user: write_secret(tmp_path / f"{user}.json", user, password)
               for user, password in pg.passwords.items()}
    port = free_port()
    config = proxy_config(listen_port=port, db_port=pg.port, secrets=secrets, debug_logging=True)
    config_path = tmp_path / "concierge.yaml"
    config_path.write_text(to_yaml(config) + "\n")
    log_path = tmp_path / "concierge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(concierge_bin), "serve", "--config", str(config_path), "--log-format", "json"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    try:
        from helpers import Proxy
        p = Proxy(host="127.0.0.1", port=port, passwords=pg.passwords, bindir=pg.bindir, proc=proc,
                  config_path=config_path, log_path=log_path)
        wait_for(lambda: p.psql("select 1", check=False, timeout=5).returncode == 0, 20, "the proxy to serve")
        with p.connect() as c:
            c.execute('SET search_path = "quoted \\ path", public')
        wait_for(lambda: "session pinned" in log_path.read_text(), 5, "the pin to be logged")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "no log lines"
    for entry in lines:
        assert {"ts", "level", "msg"} <= entry.keys()
        assert entry["ts"].endswith("Z") and entry["level"] in {"trace", "debug", "info", "notice", "warning", "error", "critical"}
    pinned = [e for e in lines if e["msg"] == "session pinned"]
    assert pinned and pinned[0]["pin_reason"] == "set_variable"
    assert pinned[0]["statement"] == 'SET search_path = "quoted \\ path", public'
    assert any(e["msg"] == "listening" and e["proxy"] == "app" for e in lines)
