"""The operations files: Prometheus alerting rules and the Grafana dashboard (docs/metrics.md).

Static checks need only PyYAML: every rule is complete, the runbook's alarms are there with their
thresholds, every metric named in a rule or a dashboard panel is one the proxy exports. With
promtool on PATH (scripts/test.sh installs Debian's `prometheus` package for it), the rules are
also checked and unit-tested by promtool (ops/prometheus/concierge-alerts.test.yml), and so is
the PromQL of every dashboard panel. Uses no fixture of conftest.py: no database, no proxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "ops" / "prometheus" / "concierge-alerts.yml"
RULES_TEST = REPO_ROOT / "ops" / "prometheus" / "concierge-alerts.test.yml"
DASHBOARD = REPO_ROOT / "ops" / "grafana" / "concierge-dashboard.json"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"

# What /metrics exports (docs/metrics.md), by type.
COUNTERS = {
    "concierge_client_connections_received_total",
    "concierge_client_connections_setup_succeeded_total",
    "concierge_client_connections_setup_failed_auth_total",
    "concierge_client_connections_closed_total",
    "concierge_query_requests_total",
    "concierge_database_connection_requests_total",
    "concierge_database_connections_setup_succeeded_total",
    "concierge_database_connections_setup_failed_total",
    "concierge_target_group_writer_available_duration_seconds_total",
    "concierge_session_pins_total",
    "concierge_borrow_timeouts_total",
}
GAUGES = {
    "concierge_client_connections",
    "concierge_max_database_connections_allowed",
    "concierge_database_connections",
    "concierge_database_connections_currently_borrowed",
    "concierge_database_connections_currently_session_pinned",
    "concierge_database_connections_currently_in_transaction",
    "concierge_database_connection_borrow_waiters",
    "concierge_target_available",
}
HISTOGRAMS = {
    "concierge_database_connections_borrow_latency_seconds",
    "concierge_query_database_response_latency_seconds",
}
EXPORTED = COUNTERS | GAUGES | HISTOGRAMS
# The series names a query may use: a histogram only through its _bucket, _sum and _count.
SERIES = COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# The runbook's alarm table: alert name -> (what the expression must contain, `for`).
TABLE_ALARMS = {
    "ConciergeSessionPinningHigh": (
        ["concierge_database_connections_currently_session_pinned", "concierge_client_connections",
         "> 0.2"], "5m"),
    "ConciergeBorrowLatencyHigh": (
        ["histogram_quantile(0.95", "concierge_database_connections_borrow_latency_seconds_bucket",
         "> 0.05"], "5m"),
    "ConciergePoolSaturated": (
        ["concierge_database_connections_currently_borrowed",
         "concierge_max_database_connections_allowed", "> 0.9"], None),
    "ConciergeClientConnectionsSurge": (
        ["concierge_client_connections offset 10m", "> 2"], None),
    "ConciergeTargetUnavailable": (["concierge_target_available", "< 1"], "2m"),
}
SEVERITIES = {"info", "warning", "critical"}

SLO_BEGIN = "# --- BEGIN QUERY LATENCY SLO TEMPLATE ---"
SLO_END = "# --- END QUERY LATENCY SLO TEMPLATE ---"


# -- helpers ---------------------------------------------------------------------------------

def rules_text(uncomment_slo: bool = False) -> str:
    """The rules file, optionally with the commented-out query-latency SLO rule enabled."""
    text = RULES.read_text()
    if not uncomment_slo:
        return text
    lines, inside, out = text.splitlines(), False, []
    for line in lines:
        if line.strip() == SLO_BEGIN:
            inside = True
        elif line.strip() == SLO_END:
            inside = False
        elif inside:
            line = re.sub(r"^(\s*)# ?", r"\1", line)
        out.append(line)
    assert not inside, "SLO template has no end marker"
    return "\n".join(out) + "\n"


def alert_rules(uncomment_slo: bool = False) -> list[dict]:
    doc = yaml.safe_load(rules_text(uncomment_slo))
    return [r for g in doc["groups"] for r in g["rules"]]


def normalize(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"(?<![A-Za-z0-9_:])concierge_[A-Za-z0-9_:]*", expr))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in all_panels(dash) for t in p.get("targets", [])]


def denominators(expr: str) -> list[str]:
    """The text of the parenthesized operand that follows each `/` (None if not parenthesized)."""
    out = []
    for m in re.finditer(r"/", expr):
        i = m.end()
        while i < len(expr) and expr[i].isspace():
            i += 1
        if i >= len(expr) or expr[i] != "(":
            out.append(None)
            continue
        depth = 0
        for j in range(i, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[j], 0)
            if depth == 0:
                out.append(expr[i + 1:j])
                break
    return out


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is not on PATH in CI: scripts/test.sh should have installed "
                    "Debian's prometheus package")
    pytest.skip("promtool not on PATH (scripts/test.sh installs it: apt-get install prometheus)")


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# -- the alerting rules ----------------------------------------------------------------------

@pytest.mark.parametrize("uncomment_slo", [False, True], ids=["shipped", "with-slo-template"])
def test_every_rule_is_complete(uncomment_slo):
    rules = alert_rules(uncomment_slo)
    assert len(rules) >= len(TABLE_ALARMS) + (1 if uncomment_slo else 0)
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for r in rules:
        name = r.get("alert")
        assert name and name.startswith("Concierge"), r
        assert isinstance(r.get("expr"), str) and r["expr"].strip(), name
        assert re.fullmatch(r"\d+[smh]", str(r.get("for", ""))), f"{name}: for={r.get('for')!r}"
        assert r.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = r.get("annotations", {})
        for key in ("summary", "description"):
            assert annotations.get(key, "").strip(), f"{name}: no {key}"
        # The annotations show the measured value (for a target's health, which target) and
        # which proxy.
        text = annotations["summary"] + annotations["description"]
        assert "$value" in text or "$labels.target " in text, name
        assert "$labels.proxy" in annotations["summary"], name
        # Aggregated per proxy, so one alert per proxy (not per scraped series).
        assert re.search(r"\bby \(proxy\b", normalize(r["expr"])), f"{name}: not aggregated by proxy"


def test_slo_template_is_present_but_not_enabled():
    assert "ConciergeQueryLatencyAboveSLO" not in {r["alert"] for r in alert_rules()}
    assert "ConciergeQueryLatencyAboveSLO" in {r["alert"] for r in alert_rules(uncomment_slo=True)}


@pytest.mark.parametrize("name", sorted(TABLE_ALARMS))
def test_runbook_alarm_and_threshold(name):
    rules = {r["alert"]: r for r in alert_rules()}
    assert name in rules, f"missing alert {name}"
    rule = rules[name]
    expr = normalize(rule["expr"])
    fragments, for_ = TABLE_ALARMS[name]
    for fragment in fragments:
        assert fragment in expr, f"{name}: {fragment!r} not in {expr!r}"
    if for_ is not None:
        assert rule["for"] == for_, f"{name}: for={rule['for']}"


def test_client_growth_has_a_floor():
    """2x of a handful of clients (1 -> 3) is not a storm: the rule also needs an absolute rise."""
    expr = normalize({r["alert"]: r for r in alert_rules()}["ConciergeClientConnectionsSurge"]["expr"])
    assert re.search(r"\) >= \d+", expr), expr
    floor = int(re.search(r"\) >= (\d+)", expr).group(1))
    assert floor >= 5, expr


@pytest.mark.parametrize("uncomment_slo", [False, True], ids=["shipped", "with-slo-template"])
def test_no_division_by_zero(uncomment_slo):
    """Every denominator is parenthesized and filtered with `> 0` (no NaN or +Inf samples)."""
    for r in alert_rules(uncomment_slo):
        for d in denominators(r["expr"]):
            assert d is not None, f"{r['alert']}: unparenthesized denominator in {r['expr']!r}"
            assert re.search(r">\s*0\s*$", d), f"{r['alert']}: denominator {d!r} is not guarded"
        if "histogram_quantile" in r["expr"]:
            assert re.search(r"_count\[\w+\]\)\)\s*>\s*0", r["expr"]), \
                f"{r['alert']}: quantile of a histogram without observations is not excluded"


@pytest.mark.parametrize("uncomment_slo", [False, True], ids=["shipped", "with-slo-template"])
def test_rules_use_only_exported_metrics(uncomment_slo):
    for r in alert_rules(uncomment_slo):
        names = metric_names(r["expr"])
        assert names, f"{r['alert']}: no concierge metric in {r['expr']!r}"
        assert names <= SERIES, f"{r['alert']}: unknown metrics {sorted(names - SERIES)}"


# -- the dashboard ---------------------------------------------------------------------------

def test_dashboard_is_valid_with_unique_panel_ids():
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in all_panels(dash)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in all_panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


def test_dashboard_variables_and_datasources():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    inputs = {i["name"] for i in dash.get("__inputs", [])}
    if "datasource" in variables:
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ds_refs = {"${datasource}", "$datasource"}
    else:
        assert "DS_PROMETHEUS" in inputs, "neither a datasource variable nor a DS_PROMETHEUS input"
        ds_refs = {"${DS_PROMETHEUS}"}
    proxy = variables["proxy"]
    query = proxy["query"]["query"] if isinstance(proxy["query"], dict) else proxy["query"]
    assert query == "label_values(concierge_client_connections, proxy)"
    for p in all_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in ds_refs, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] in ds_refs, p["title"]


def test_dashboard_uses_only_exported_metrics_and_all_of_them():
    used = set()
    for title, expr in dashboard_exprs(dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no concierge metric in {expr!r}"
        assert names <= SERIES, f"{title}: unknown metrics {sorted(names - SERIES)}"
        assert 'proxy=~"$proxy"' in expr, f"{title}: not filtered by the proxy variable: {expr!r}"
        used |= {n for n in names}
    used = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS
            else n for n in used}
    assert used == EXPORTED, f"metrics with no panel: {sorted(EXPORTED - used)}"


def test_metrics_doc_lists_every_metric():
    doc = METRICS_DOC.read_text()
    for name in sorted(EXPORTED):
        assert f"`{name}`" in doc, f"docs/metrics.md does not list {name}"
    for name in ("concierge-alerts.yml", "concierge-dashboard.json", "rule_files"):
        assert name in doc


# -- promtool --------------------------------------------------------------------------------

def test_promtool_check_rules():
    r = run_promtool("check", "rules", str(RULES.relative_to(REPO_ROOT)), cwd=REPO_ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_promtool_check_rules_with_slo_template(tmp_path):
    path = tmp_path / "concierge-alerts-slo.yml"
    path.write_text(rules_text(uncomment_slo=True))
    r = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules():
    r = run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout
    # Each alert of the rules file has a unit test.
    tested = {t["alertname"] for g in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in g.get("alert_rule_test", [])}
    assert {r["alert"] for r in alert_rules()} <= tested


def test_promtool_parses_dashboard_queries(tmp_path):
    """Each panel query, with Grafana's variables substituted, as a recording rule."""
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs(dashboard())):
        expr = expr.replace("$__rate_interval", "5m").replace("$proxy", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
