"""Helpers for the admin API tests (docs/admin-api.md): a proxy with an `admin:` section, a small
HTTP client for the API, and a runner for the `concierge` CLI verbs.

A test module makes its fixture with `admin_proxy_factory`:

    @pytest.fixture
    def admin_proxy(proxy):
        return admin_proxy_factory(proxy)
"""

from __future__ import annotations

import http.client
import json
import secrets
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import Proxy, clean_env, free_port, wait_for

_DEFAULT = object()  # "the client's own token"


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    text: str

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError as e:
            raise AssertionError(f"not JSON ({e}), status {self.status}: {self.text[:2000]!r}")

    @property
    def error(self) -> dict:
        body = self.json
        assert isinstance(body, dict) and isinstance(body.get("Error"), dict), \
            f"no Error object in the {self.status} response: {self.text[:2000]}"
        return body["Error"]

    def __repr__(self) -> str:
        return f"ApiResponse({self.status}, {self.text[:1000]!r})"


@dataclass
class AdminApi:
    """The admin API of one proxy: `host:port` and the bearer token it wants (None: none)."""

    host: str
    port: int
    token: str | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: Any = None, *, token: Any = _DEFAULT,
                raw: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10) -> ApiResponse:
        """One request on a fresh connection. `body` is sent as JSON; `raw` as bytes, as is."""
        token = self.token if token is _DEFAULT else token
        sent_headers = {"Accept": "application/json"}
        payload = None
        if raw is not None:
            payload = raw
        elif body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            sent_headers["Content-Type"] = "application/json"
        if token is not None:
            sent_headers["Authorization"] = f"Bearer {token}"
        sent_headers.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=payload, headers=sent_headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            return ApiResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> ApiResponse:
        return self.request("GET", path, **kw)

    def patch(self, path: str, body: Any = None, **kw) -> ApiResponse:
        return self.request("PATCH", path, body, **kw)

    def post(self, path: str, body: Any = None, **kw) -> ApiResponse:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, body: Any = None, **kw) -> ApiResponse:
        return self.request("DELETE", path, body, **kw)

    # -- the operations, asserting success ---------------------------------------------------

    def ok(self, resp: ApiResponse) -> Any:
        assert resp.status == 200, resp
        assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
        return resp.json

    def db_proxy(self, name: str = "app") -> dict:
        proxies = self.ok(self.get(f"/v1/db-proxies/{name}"))["DBProxies"]
        assert len(proxies) == 1, proxies
        return proxies[0]

    def target_group(self, name: str = "app") -> dict:
        groups = self.ok(self.get(f"/v1/db-proxies/{name}/target-groups"))["TargetGroups"]
        assert len(groups) == 1, groups
        return groups[0]

    def pool_config(self, name: str = "app") -> dict:
        return self.target_group(name)["ConnectionPoolConfig"]

    def targets(self, name: str = "app") -> list[dict]:
        return self.ok(self.get(f"/v1/db-proxies/{name}/targets"))["Targets"]

    def modify_target_group(self, config: dict, name: str = "app", group: str = "default") -> ApiResponse:
        return self.patch(f"/v1/db-proxies/{name}/target-groups/{group}",
                          {"ConnectionPoolConfig": config})

    def modify_proxy(self, changes: dict, name: str = "app") -> ApiResponse:
        return self.patch(f"/v1/db-proxies/{name}", changes)


def assert_error(resp: ApiResponse, status: int, code: str | tuple[str, ...],
                 field: str | None = None) -> dict:
    """`resp` is the documented error: `status`, a JSON body {"Error": {"Code", "Message",
    "Field"}} with this `Code` (or one of these) and, when given, this `Field`, which the message
    names too."""
    assert resp.status == status, f"expected {status}, got {resp}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    error = resp.error
    codes = (code,) if isinstance(code, str) else code
    assert error.get("Code") in codes, f"expected Code {codes}, got {error}"
    assert isinstance(error.get("Message"), str) and error["Message"], error
    if field is not None:
        assert error.get("Field") == field, f"expected Field {field!r}, got {error}"
        assert field in error["Message"], f"the message does not name {field}: {error}"
    return error


# -- a proxy with the admin API ---------------------------------------------------------------

def admin_proxy_factory(proxy):
    """For conftest's `proxy` factory, a factory: `admin_proxy(token=..., **overrides)` -> a running `Proxy` (see conftest's
    `proxy`) whose config has `admin: {listen: 127.0.0.1:FREE_PORT, token: ...}`, with
    `.admin` (an `AdminApi`) and `.admin_token` set. `token` defaults to a random one; None
    leaves the token out (the API is then open, on loopback only); `token_ref` puts this
    string in the config instead (e.g. "file:/path"), while `token` stays what clients send.
    Waits until GET /healthz answers 200."""

    def start(*, token: str | None | object = _DEFAULT, token_ref: str | None = None,
              **overrides) -> Proxy:
        if token is _DEFAULT:
            token = secrets.token_hex(16)
        port = free_port()
        section: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
        if token_ref is not None:
            section["token"] = token_ref
        elif token is not None:
            section["token"] = token
        p = proxy(admin=section, **overrides)
        api = AdminApi("127.0.0.1", port, token)

        def healthy() -> bool:
            if not p.alive():
                pytest.fail(f"concierge exited with {p.proc.returncode}:\n{p.log()}")
            try:
                return api.get("/healthz", token=None, timeout=2).status == 200
            except OSError:
                return False
        wait_for(healthy, 20, f"the admin API on port {port} to answer /healthz", interval=0.1)
        p.admin = api
        p.admin_token = token
        return p

    return start


# -- the CLI -----------------------------------------------------------------------------------

def run_cli(concierge_bin: Path, *args: str, endpoint: str | None = None, token: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`concierge ARGS...` with `--endpoint-url endpoint` and `--admin-token token` when given;
    the caller's CONCIERGE_ENDPOINT_URL and CONCIERGE_ADMIN_TOKEN are not passed on (use `env`)."""
    base = {k: v for k, v in clean_env().items()
            if k not in ("CONCIERGE_ENDPOINT_URL", "CONCIERGE_ADMIN_TOKEN")}
    base.update(env or {})
    cmd = [str(concierge_bin), *args]
    if endpoint is not None:
        cmd += ["--endpoint-url", endpoint]
    if token is not None:
        cmd += ["--admin-token", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=base,
                          stdin=subprocess.DEVNULL)


def cli_json(proc: subprocess.CompletedProcess) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(f"stdout is not JSON ({e}):\n{proc.stdout}")


def aws_table(title: str, response: Any) -> str | None:
    """What `aws ... --output table` prints for `response` (stdout not a terminal: 80 columns),
    using the installed aws CLI's own formatter; None when awscli is not installed."""
    try:
        import io
        from awscli.formatter import TableFormatter
        from awscli.table import MultiTable, Styler
    except ImportError:
        return None

    class Args:
        color = "off"
        query = None

    formatter = TableFormatter(Args())
    formatter.table = MultiTable(initial_section=False, column_separator="|", styler=Styler())
    formatter.table._terminal_width = 80
    out = io.StringIO()
    formatter(title, response, out)
    return out.getvalue()


# -- psycopg clients the proxy closes ------------------------------------------------------------

def wait_closed_by_peer(conn: psycopg.Connection, timeout: float) -> bool:
    """Whether the server side closes (or writes to) the idle connection within `timeout`
    seconds, without sending anything that would make it busy."""
    sock = conn.pgconn.socket
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def backend_count(conn: psycopg.Connection, user: str = "app", dbname: str = "app") -> int:
    """Client backends of `user` in `dbname`, not counting the asking connection."""
    return conn.execute(
        "select count(*) from pg_stat_activity where backend_type = 'client backend' "
        "and usename = %s and datname = %s and pid <> pg_backend_pid()", (user, dbname)).fetchone()[0]


def max_connections(conn: psycopg.Connection) -> int:
    return int(conn.execute("show max_connections").fetchone()[0])


def percent_for_cap(cap: int, max_conns: int) -> int:
    """The smallest MaxConnectionsPercent whose cap, floor(percent * max_connections / 100), is
    `cap`."""
    for percent in range(1, 101):
        if percent * max_conns // 100 >= cap:
            assert percent * max_conns // 100 == cap, \
                f"no percent gives a cap of exactly {cap} at max_connections={max_conns}"
            return percent
    raise AssertionError(f"a cap of {cap} is out of reach at max_connections={max_conns}")


