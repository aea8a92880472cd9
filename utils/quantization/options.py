"""The quantisation settings scripts take on the command line. Imports nothing heavy: the scripts add these
options before torch is imported, so that --help stays fast."""
from __future__ import annotations

import argparse

INT4_GROUP_SIZES = (32, 64, 128, 256)           # what PyTorch's CPU int4 kernel accepts
DEFAULT_INT4_GROUP_SIZE = 32     # the finer the groups, the smaller the error; 128 was no faster on this CPU


def add_quant_arguments(parser: argparse.ArgumentParser) -> None:
    """--quant and --quant_group_size, as every script that loads a model takes them (see QuantConfig.from_args)."""
    parser.add_argument("--quant", choices=[8, 4], type=int, default=None,
                        help="quantize the language model's weights to 8 or 4 bits while loading (weight-only)")
    parser.add_argument("--quant_group_size", choices=INT4_GROUP_SIZES, type=int, default=DEFAULT_INT4_GROUP_SIZE,
                        help="--quant 4: input features sharing one scale (smaller: more accurate, larger weights)")
