"""A pytest plugin for tests/drivers/run.py: records every test's outcome as it happens.

Loaded into a driver's own test suite with `-p concierge_outcomes` (tests/drivers on PYTHONPATH).
With CONCIERGE_DRIVERS_OUTCOMES=FILE it appends one JSON object per line to FILE, flushed at
once, so a run that is killed (a hung test hit pytest-timeout's thread method, which ends the
process) still leaves everything before it:

  {"start": NODEID}                                   a test begins
  {"nodeid": N, "when": W, "outcome": O, "message": M, "xfail": B}   a setup/call/teardown report
  {"collect": NODEID, "outcome": "failed", "message": M}             a module that failed to import
  {"finished": EXITSTATUS}                            the session ended normally

Each object also has "t", the Unix time, to match a test with the proxy's log lines.

With CONCIERGE_DRIVERS_DONE=FILE (one node id per line) those tests are deselected: run.py
resumes a killed run with the tests it already has.
"""

from __future__ import annotations

import json
import os
import time


def _message(report) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return crash.message
    text = str(longrepr).strip().splitlines()
    # The last "E   ..." line is usually the exception; else the last line.
    errors = [line for line in text if line.startswith("E ")]
    return (errors[-1] if errors else (text[-1] if text else "")).strip()


class Recorder:
    def __init__(self, path: str, done_path: str | None):
        self.out = open(path, "a", buffering=1, encoding="utf-8")
        self.done: set[str] = set()
        if done_path and os.path.exists(done_path):
            with open(done_path, encoding="utf-8") as f:
                self.done = {line.rstrip("\n") for line in f if line.strip()}

    def write(self, obj) -> None:
        obj["t"] = round(time.time(), 3)  # to match against the proxy's log
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def pytest_collection_modifyitems(self, config, items):
        if not self.done:
            return
        keep = [item for item in items if item.nodeid not in self.done]
        dropped = [item for item in items if item.nodeid in self.done]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

    def pytest_collectreport(self, report):
        if report.failed:
            self.write({"collect": report.nodeid, "outcome": "failed",
                        "message": _message(report)[:500]})

    def pytest_runtest_logstart(self, nodeid, location):
        self.write({"start": nodeid})

    def pytest_runtest_logreport(self, report):
        self.write({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                    "xfail": hasattr(report, "wasxfail"),
                    "message": _message(report)[:500] if report.outcome != "passed" else ""})

    def pytest_sessionfinish(self, session, exitstatus):
        self.write({"finished": int(exitstatus)})


def pytest_configure(config):
    path = os.environ.get("CONCIERGE_DRIVERS_OUTCOMES")
    if path:
        config.pluginmanager.register(
            Recorder(path, os.environ.get("CONCIERGE_DRIVERS_DONE")), "concierge_outcomes_recorder")
