"""Split a folder of images 80 / 5 / 15 into train / valid / test, seeded.

    python utils/split_dataset.py --help

The published script's path, kept as a thin entry point (also the console script `cogvlm-split-dataset`);
the work is done in `cogvlm.utils.training.splits`.
"""
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.training.splits import main

if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
