"""Fine-tune CogAgent-9B-20241220 (or GLM-4V-9B) with SAT + DeepSpeed: LoRA on the published agent data format.

    bash finetune_demo/finetune_cogagent9b_lora.sh        # the published LoRA settings; CPU or GPUs
The data is .jsonl (a screenshot and a conversation per line: utils/training/agent_data.py); all the logic is
shared with the other models' demos, in cogvlm/utils/training/finetune.py.
"""
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.training.finetune import run


def main(argv=None):
    return run(sys.argv[1:] if argv is None else argv, model_name='CogAgent-9B')


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    main()
