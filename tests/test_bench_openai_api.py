"""benchmarks/bench_openai_api.py at tiny size: it starts a server, prints one table row per concurrency level with
every request done and every answer equal to the one-at-a-time answer."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "bench_openai_api.py"
NUMBER = r"(\d+(?:\.\d+)?)"


def test_bench_openai_api_prints_a_row_per_concurrency():
    result = subprocess.run([sys.executable, str(SCRIPT), "--concurrency", "1", "3", "--requests", "6",
                             "--max_seconds", str(HANG_TIMEOUT)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| concurrent clients | requests | requests/s | p50 latency (s) | p95 latency (s) |")
    rows = [re.fullmatch(r"\| (\d+) \| (\d+) \| " + r" \| ".join([NUMBER] * 4) + r" \| (\d+) \|", line)
            for line in lines[2:]]
    assert all(rows) and len(rows) == 2, lines
    assert [(row[1], row[2], row[7]) for row in rows] == [("1", "6", "0"), ("3", "6", "0")]
    for row in rows:
        p50, p95 = float(row[4]), float(row[5])
        assert 0 < p50 <= p95


def test_percentile_is_the_nearest_rank(monkeypatch):
    import importlib.util

    # The benchmark is a script: load it by path (registered, as its dataclass needs its module).
    spec = importlib.util.spec_from_file_location("bench_openai_api", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    values = [float(v) for v in range(1, 21)]         # 1 .. 20
    assert (bench.percentile(values, 0.5), bench.percentile(values, 0.95), bench.percentile([3.0], 0.95)) == \
        (10.0, 19.0, 3.0)
