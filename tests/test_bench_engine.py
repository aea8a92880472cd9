"""benchmarks/bench_engine.py prints its tables, at tiny size: the embedded model and the CogAgent fixture."""
import math
import subprocess
import sys
from pathlib import Path

from conftest import COGAGENT_TINY, HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "benchmarks/bench_engine.py"]
MODES = ["fp32", "bf16", "int8", "int4"]
CHECKPOINTS = ["captcha-tiny", "checkpoint"]          # the fixture's folder is named checkpoint
POSITIVE_COLUMNS = {"load (s)": 3, "prefill + 1 step": 6, "per row": 7, "aggregate": 8}


def run(*args):
    return subprocess.run([*COMMAND, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT)


def split_tables(lines: list[str]) -> list[list[list[str]]]:
    """The Markdown tables in `lines`, each a list of rows of stripped cells (header and rule included)."""
    tables, current = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.split("|")[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def ratio(cell: str) -> float:
    assert cell.endswith("x"), cell
    return float(cell[:-1])


def test_prints_a_row_per_checkpoint_mode_and_batch_size_and_a_profile():
    result = run("--checkpoints", "checkpoints/captcha-tiny", str(COGAGENT_TINY / "checkpoint"), "--batch_sizes", "1",
                 "2", "--prompt_tokens", "70", "--new_tokens", "5", "--repeats", "1", "--threads", "1",
                 "--probe_gib", "0.01", "--profile_steps", "2", "--profile_batch_sizes", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    speed, profile = split_tables(lines)
    expected_keys = [[name, mode, size] for name in CHECKPOINTS for mode in MODES for size in ("1", "2")]

    header, rule, *rows = speed
    assert header[:3] == ["checkpoint", "mode", "batch"] and header[-1] == "step / floor"
    assert rule == ["---"] * len(header)
    assert [row[:3] for row in rows] == expected_keys
    for row in rows:
        assert len(row) == len(header), row
        for column in POSITIVE_COLUMNS.values():
            assert math.isfinite(float(row[column])) and float(row[column]) > 0, (header[column], row)
        assert float(row[4]) >= 0            # a tiny model's weights may fit under the imports' high-water mark
        assert abs(float(row[8]) - int(row[2]) * float(row[7])) <= 0.1 * int(row[2])      # aggregate = B x per row
        assert all(ratio(row[column]) > 0 for column in (9, 10, 11))
        error = float(row[5])
        if row[1] == "fp32":
            assert error == 0 and row[9] == "1.00x"                                  # the reference against itself
        else:
            assert 0 < error < 1                                                     # cast or quantised, still close
        if row[2] == "1":
            assert row[10] == "1.00x"
    notes = [line for line in lines if "read bandwidth" in line]
    assert [note.split(":")[0] for note in notes] == CHECKPOINTS

    header, rule, *rows = profile
    assert header[3:5] == ["profiled step (ms)", "matmuls (ms)"] and rule == ["---"] * len(header)
    assert [row[:3] for row in rows] == [[name, mode, "2"] for name in CHECKPOINTS for mode in MODES]
    for row in rows:
        step, *parts = map(float, row[3:])
        assert all(math.isfinite(part) for part in parts) and step > 0 and float(row[4]) > 0
        assert parts[-1] >= -0.01                          # operators' own times cannot exceed the wall time
        assert abs(sum(parts) - step) <= 0.01 * len(parts)                           # the parts add up (rounding)


def test_too_few_new_tokens_is_a_clear_error():
    result = run("--new_tokens", "3")
    assert result.returncode == 2
    assert "--new_tokens must be more than 3" in result.stderr and "Traceback" not in result.stderr
