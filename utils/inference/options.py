"""The decoding settings scripts take on the command line (the CLI, evaluate.py). Imports nothing heavy: the
scripts add these options before torch is imported, so that --help stays fast."""
from __future__ import annotations

import argparse

PREFILL_DTYPES = ("auto", "fp32", "model")       # utils/inference/precision.py resolves them


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--compile and --prefill_dtype, as every script that generates takes them (ChatModel's keywords of the same
    names)."""
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step with torch.compile (CUDA graphs on CUDA); the first answer "
                             "waits for the compilation")
    parser.add_argument("--prefill_dtype", choices=PREFILL_DTYPES, default="auto",
                        help="dtype of the prompt's matrix multiplies with --bf16/--fp16: auto = fp32 on a CPU "
                             "without native bf16/fp16 matrix multiplies, else the model's")
