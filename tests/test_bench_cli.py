"""benchmarks/bench_cli.py runs as the README writes it and prints its table, one timed row per command."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "bench_cli.py"
ROWS = ["cli --help", "cli --image without --query (error)", "import torch", "import sat", "import the model stack",
        "one-shot answer (captcha-tiny)"]


@pytest.mark.slow
def test_bench_cli_prints_a_timed_row_per_command():
    result = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "1"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| command | wall time (s, median) |", "| --- | --- |"]
    rows = [re.fullmatch(r"\| (.+) \| (\d+\.\d\d) \|", line) for line in lines[2:]]
    assert all(rows), lines
    assert [row[1] for row in rows] == ROWS


def test_bench_cli_refuses_zero_repeats():
    result = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "0"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 2 and "--repeats must be at least 1" in result.stderr
