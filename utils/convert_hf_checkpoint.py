"""Convert a Hugging Face cogvlm/cogagent-chat-hf, glm-4v-9b or cogagent-9b-20241220 folder to the SAT layout, and
back with --to-hf.

    python utils/convert_hf_checkpoint.py --help

The published script's path, kept as a thin entry point (also the console script `cogvlm-convert-hf-checkpoint`);
the work is done in `cogvlm.utils.checkpoint_io.hf_conversion`.
"""
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.checkpoint_io.hf_conversion import main

if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
