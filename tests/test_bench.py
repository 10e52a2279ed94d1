"""The bench scripts run end to end on a tiny size in every `make test`, so they cannot rot: the load test
(signups under `drip web`, then one welcome each) and the soak (two workers, one restart)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(database_url: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "bench.load_signup", "--database-url", database_url,
                           "--json", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_load_script_tiny(database_url: str, tmp_path: Path) -> None:
    """Two seconds of signups: some accepted, all in the database, one welcome each, nothing lost or doubled."""
    result = run_bench(database_url, tmp_path, "--seconds", "2", "--clients", "3", "--web-workers", "2")
    assert result["accepted"] > 0 and result["missing_in_db"] == 0
    assert result["welcomes_sent"] == result["accepted"]
    assert (result["lost"], result["doubled"]) == (0, 0)


@pytest.mark.slow
def test_soak_script_tiny(database_url: str, tmp_path: Path) -> None:
    """A 400-email soak with two workers and a restart in the middle loses and doubles nothing."""
    result = run_bench(database_url, tmp_path, "--soak", "400", "--stall-seconds", "60")
    assert result["restarted"] and result["delivered"] == 400
    assert (result["lost"], result["doubled"], result["not_sent_in_db"]) == (0, 0, 0)
