"""Start-up cost of the CLI: --help (no model stack imported), importing the model stack, and a whole one-shot
answer on the embedded tiny checkpoint. Median wall time of --repeats fresh processes each.

    python benchmarks/bench_cli.py
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = str(REPO_ROOT / "basic_demo" / "cli_demo_sat.py")
IMAGE = str(REPO_ROOT / "checkpoints" / "cogvlm-tiny" / "example.png")

COMMANDS = {
    "cli --help": [sys.executable, CLI, "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import the model stack (torch + sat + models)": [sys.executable, "-c", "import cogvlm.utils.inference.chat, cogvlm.models.cogvlm"],
    "one-shot answer, 8 new tokens": [sys.executable, CLI, "--image", IMAGE, "--query", "What is it?",
                                      "--max_length", "40"],
}


def wall(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| command | wall time (s, median) |")
    print("| --- | --- |")
    for name, command in COMMANDS.items():
        print(f"| {name} | {statistics.median(wall(command) for _ in range(args.repeats)):.2f} |")


if __name__ == "__main__":
    main()
