"""benchmarks/bench_quantization.py runs as its docstring writes it, on the embedded checkpoint, at tiny size."""
import subprocess
import sys
from pathlib import Path

from conftest import HANG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_prints_one_row_per_mode_on_the_embedded_checkpoint():
    result = subprocess.run([sys.executable, "benchmarks/bench_quantization.py", "--checkpoint",
                             "checkpoints/captcha-tiny", "--prompt_tokens", "70", "--new_tokens", "3", "--repeats", "1",
                             "--threads", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0][0] == "| captcha-tiny" and len(rows) == 6                 # header, rule, fp32, bf16, int8, int4
    by_mode = {row[0][2:]: row for row in rows[2:]}
    assert list(by_mode) == ["fp32", "bf16", "int8", "int4"]
    assert by_mode["fp32"][3:6] == ["1.00x", "0.0000", "yes"]                 # fp32 against itself
    for mode in ("bf16", "int8", "int4"):
        assert float(by_mode[mode][4]) > 0                                      # its weights were quantised


def test_captcha_accuracy_prints_every_mode(tmp_path):
    """benchmarks/bench_captcha_accuracy.py as its docstring writes it, on 12 generated captchas."""
    data = tmp_path / "capt"
    made = subprocess.run([sys.executable, "finetune_demo/make_captcha_dataset.py", "--out", str(data), "--count",
                           "12", "--seed", "12345"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)
    assert made.returncode == 0, made.stderr[-2000:]
    result = subprocess.run([sys.executable, "benchmarks/bench_captcha_accuracy.py", "--data", str(data)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")}
    assert {"fp32", "bf16", "int8", "int4"} <= set(rows)
    assert float(rows["fp32"][1]) >= 90.0 and float(rows["int4"][1]) >= 90.0     # the trained reader, quantised
