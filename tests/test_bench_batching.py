"""benchmarks/bench_batching.py runs as the README writes it, on the embedded checkpoint, at tiny size."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "benchmarks/bench_batching.py", "--checkpoint", "checkpoints/captcha-tiny"]


def run(*args):
    return subprocess.run([*COMMAND, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_prints_a_row_per_batch_size_on_the_embedded_checkpoint():
    result = run("--batch_sizes", "1", "3", "--prompt_tokens", "70", "--new_tokens", "4", "--repeats", "1",
                 "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row[0].strip() for row in rows[2:]] == ["generate", "1", "3"]
    assert rows[2][-1].strip() == "-" and rows[3][-1].strip() == "1.00x" and rows[4][-1].strip().endswith("x")
    for row, batch_size in zip(rows[2:], (1, 1, 3)):
        per_row, aggregate = float(row[2]), float(row[3])
        assert per_row > 0 and abs(aggregate - per_row * batch_size) <= 0.1 * batch_size   # rounding of per_row


def test_too_few_new_tokens_is_a_clear_error():
    result = run("--new_tokens", "2")
    assert result.returncode != 0
    assert "Error: --new_tokens must be at least 3" in result.stderr and "Traceback" not in result.stderr
