"""Fine-tune CogAgent with SAT + DeepSpeed (LoRA, or chosen parts) on a folder of images named by their text.

    bash finetune_demo/finetune_cogagent_lora.sh          # the published options; CPU or GPUs
All the logic is shared with the other model's demo, in cogvlm/utils/training/finetune.py.
"""
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.training.finetune import run


def main(argv=None):
    return run(sys.argv[1:] if argv is None else argv, model_name='CogAgent')


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    main()
