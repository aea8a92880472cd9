"""benchmarks/bench_generation.py runs as the README writes it, on the embedded checkpoint, at tiny size."""
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "benchmarks/bench_generation.py", "--checkpoint", "checkpoints/captcha-tiny"]


def run(*args):
    return subprocess.run([*COMMAND, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_prints_the_table_on_the_embedded_checkpoint():
    result = run("--prompt_tokens", "70", "--new_tokens", "3", "--repeats", "1", "--threads", "1",
                 "--probe_gib", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| checkpoint | captcha-tiny (")
    assert "| threads / prompt / new tokens | 1 / 70 (image 66) / 3 |" in rows
    for label in ("load (s)", "time to first token", "decode tokens/s", "read bandwidth", "decode step / floor",
                  "peak RSS"):
        assert any(row.startswith(f"| {label}") for row in rows), label


def test_a_prompt_shorter_than_the_image_is_a_clear_error():
    result = run("--prompt_tokens", "10", "--new_tokens", "3", "--repeats", "1")
    assert result.returncode != 0
    assert "Error: --prompt_tokens must be at least 67" in result.stderr and "Traceback" not in result.stderr
