"""A thin pytest wrapper around soak.py (which runs standalone too):

    CONCIERGE_BIN=.build/debug/concierge CONCIERGE_SOAK_SECONDS=180 python3 -m pytest -q tests/soak

The soak runs for CONCIERGE_SOAK_SECONDS (180 here unless set; soak.py alone defaults to 1800);
its summary is shown with -s, or on a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECONDS = float(os.environ.get("CONCIERGE_SOAK_SECONDS", "180"))


@pytest.mark.timeout(SECONDS + 900)
def test_soak():
    env = {**os.environ, "CONCIERGE_SOAK_SECONDS": str(SECONDS)}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("soak.py"))], env=env,
                          timeout=SECONDS + 840)
    assert proc.returncode == 0, "the soak failed: see its summary and the SOAK FAILED lines above"
