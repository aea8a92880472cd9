"""Start-up cost of the CLI: --help and an error path (no model stack imported), importing torch, SAT and the
model stack, and a whole one-shot answer on the embedded captcha checkpoint. Median wall time of --repeats fresh
processes each, as a Markdown table.

    python benchmarks/bench_cli.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = str(REPO_ROOT / "basic_demo" / "cli_demo_sat.py")
CHECKPOINT = REPO_ROOT / "checkpoints" / "captcha-tiny"
IMAGE = str(CHECKPOINT / "examples" / "3640.png")

COMMANDS: dict[str, list[str]] = {
    "cli --help": [sys.executable, CLI, "--help"],
    "cli --image without --query (error)": [sys.executable, CLI, "--image", IMAGE],
    "import torch": [sys.executable, "-c", "import torch"],
    "import sat": [sys.executable, "-c", "import sat"],
    "import the model stack": [sys.executable, "-c", "import cogvlm.utils.inference.chat, cogvlm.models.cogagent"],
    "one-shot answer (captcha-tiny)": [sys.executable, CLI, "--from_pretrained", str(CHECKPOINT), "--image", IMAGE,
                                       "--query", "What text is written in the image?"],
}
EXPECTED_RETURN_CODES = {"cli --image without --query (error)": 2}     # argparse's usage error


def wall(name: str, command: list[str]) -> float:
    """Seconds one fresh process takes; a run that fails as it should not ends the benchmark with its error."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != EXPECTED_RETURN_CODES.get(name, 0):
        last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"Error: '{name}' exited with {result.returncode}: {last_line}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per command (the median is shown)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print("| command | wall time (s, median) |")
    print("| --- | --- |")
    for name, command in COMMANDS.items():
        print(f"| {name} | {statistics.median(wall(name, command) for _ in range(args.repeats)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
