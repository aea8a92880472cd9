"""Merge any model-parallel checkpoint (with LoRA folded in) into one mp=1 published checkpoint.

    python utils/merge_model.py --help

The published script's path, kept as a thin entry point (also the console script `cogvlm-merge-model`);
the work is done in `cogvlm.utils.checkpoint_io.merging`.
"""
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.checkpoint_io.merging import main

if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
