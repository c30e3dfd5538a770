"""Differential protocol fuzzing: random message sequences, PostgreSQL directly against Concierge.

The engine is pgdiff.py (its docstring describes what it generates, normalises and shrinks). In CI
this runs from a fixed seed (CONCIERGE_FUZZ_SEED, default 1) for about 45 seconds of sequences
(CONCIERGE_FUZZ_SECONDS); a divergence is shrunk (CONCIERGE_FUZZ_SHRINK_SECONDS, default 90) and
the shortest sequence is in the failure message. The seed range and the message counts are
printed at the end of every run (pytest -s) and are part of the assertion message.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pgdiff

_SECONDS = float(os.environ.get("CONCIERGE_FUZZ_SECONDS") or 45)
_SHRINK = float(os.environ.get("CONCIERGE_FUZZ_SHRINK_SECONDS") or 90)


@pytest.mark.proxy_only
@pytest.mark.timeout(_SECONDS + _SHRINK + 150)
def test_differential_protocol_fuzz(pg, concierge_bin: Path, tmp_path: Path):
    opts = pgdiff.Options.from_env()
    env = pgdiff.Environment(pg.host, pg.port, pg.superuser_password, pg.passwords["app"],
                             concierge_bin, tmp_path, opts.clients)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        report = pgdiff.fuzz(env, opts, log=log)
    finally:
        env.stop_proxy()
    assert report.ok, report.text
    assert report.counts.steps > 0 and report.counts.backend_proxy > 0, report.text
