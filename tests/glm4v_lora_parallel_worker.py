"""Run under torchrun by tests/test_finetune_glm4v.py: a tiny 9B checkpoint split across the processes, LoRA on
column-parallel targets added, the test's mp=1 LoRA weights loaded as this rank's shard, then (rank 0 saves) the
logits with LoRA and after each rank merged its own shard.

    torchrun --standalone --nproc-per-node=2 tests/glm4v_lora_parallel_worker.py --checkpoint C --lora L --out R
"""
import argparse
import os

import torch

from cogvlm.utils.checkpoint_io.loading import load_model
from cogvlm.utils.parallel import model_parallel
from cogvlm.utils.training.lora import LoraSettings, TargetedLora

COLUMN_PARALLEL_TARGETS = ("query_key_value", "dense_h_to_4h", "up_proj")


def lora_inputs(config):
    """The same prompt with an image in every process (and in the test)."""
    from cogvlm.models.inputs import ImageInputs
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders

    ids = torch.tensor([[151331, 151333, 151336, 198, 151339, 151329, 151340, 9707, 11, 1879, 151337]])
    size = config.vision.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return expand_image_placeholders(ids, config, ImageInputs(pixels))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lora", required=True, help="the mp=1 state dict (published names) of the LoRA model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.checkpoint, model_parallel_size=int(os.environ["WORLD_SIZE"]))
    plan = model_parallel.split_plan(model)                     # of the plain model: LoRA keys follow their linear
    model.add_mixin("lora", TargetedLora(LoraSettings(rank=4, alpha=8.0, dropout=0.0,
                                                      targets=COLUMN_PARALLEL_TARGETS)), reinit=True)
    rank, size = model_parallel.rank_and_size()
    model.load_state_dict(model_parallel.shard(torch.load(args.lora), plan, rank, size))
    inputs = lora_inputs(config)
    with torch.no_grad():
        with_lora = model.eval().forward_inputs(inputs)[0]
        model.get_mixin("lora").merge_lora()
        model.del_mixin("lora")
        merged = model.forward_inputs(inputs)[0]
    if torch.distributed.get_rank() == 0:
        torch.save({"with_lora": with_lora, "merged": merged,
                    "qkv_rows": model.transformer.layers[0].attention.query_key_value.weight.shape[0]}, args.out)


if __name__ == "__main__":
    main()
