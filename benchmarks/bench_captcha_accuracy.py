"""Exact-match accuracy of the embedded captcha reader at fp32, bf16, int8 and int4 on held-out captchas.

    python finetune_demo/make_captcha_dataset.py --out /tmp/capt --count 300 --seed 12345
    python benchmarks/bench_captcha_accuracy.py --data /tmp/capt

Each mode loads checkpoints/captcha-tiny and scores the folder with finetune_demo/evaluate.py's `evaluate` (greedy,
one image at a time). Prints a table.
"""
from __future__ import annotations

import argparse
import time

import torch

from cogvlm import PACKAGE_ROOT
from cogvlm.finetune_demo.evaluate import evaluate
from cogvlm.utils.inference.chat import ChatModel
from cogvlm.utils.training.data import CAPTCHA_QUERY, captcha_samples

CHECKPOINT = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
MODES = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "int8": (torch.float32, 8),
         "int4": (torch.float32, 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of captcha images named by their text")
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args(argv)
    samples = captcha_samples(args.data, CAPTCHA_QUERY)
    print(f"| {len(samples)} captchas | exact match (%) | seconds |")
    print("| --- | --- | --- |")
    for mode in args.modes:
        dtype, quant = MODES[mode]
        chat = ChatModel.from_pretrained(args.checkpoint, dtype=dtype, quant=quant)
        start = time.perf_counter()
        row, skipped, _ = evaluate(chat, args.data, samples, max_new_tokens=16)
        print(f"| {mode} | {100 * row.exact:.1f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
