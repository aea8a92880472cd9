"""Merge a checkpoint into one model-parallel-1 checkpoint in the published layout, folding LoRA in.

    python utils/merge_model.py --from_pretrained IN --save OUT [--lora_alpha ALPHA]

IN may be saved at any model-parallel size (mp_rank_00 ... mp_rank_NN), with or without SAT lora2 weights on the
language model and on the EVA2-CLIP-E encoder (`<linear>.original.weight`, `matrix_A.i`, `matrix_B.i`). Each LoRA
linear becomes `W + concat_i(B_i @ A_i) * lora_alpha / r`: the alpha the run recorded in model_config.json (the
9B fine-tuning records it), else 1 as the published CogVLM finetune uses. CogVLM, CogAgent and the 9B models
alike. One process and no GPU are enough; started under torchrun, as the published script had to be,
rank 0 does the work and the other ranks wait for it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LORA_MATRICES = (".matrix_A.", ".matrix_B.")
ORIGINAL = ".original."
# Training options the published finetune scripts store in model_config.json; meaningless once LoRA is merged.
FINETUNE_KEYS = ("use_lora", "use_qlora", "lora_rank", "layer_range", "use_ptuning", "pre_seq_len", "lora_alpha",
                 "lora_targets", "lora_vision")
DEFAULT_LORA_ALPHA = 1.0           # SAT's LoraMixin default, which the published CogVLM finetune keeps


def fold_lora(state_dict: dict, lora_alpha: float = 1.0) -> dict:
    """Replace every LoRA linear by its merged weight; other tensors pass through unchanged."""
    import torch

    folded = {}
    for key, tensor in state_dict.items():
        if any(m in key for m in LORA_MATRICES):
            continue
        if ORIGINAL not in key:
            folded[key] = tensor
            continue
        base, leaf = key.split(ORIGINAL)
        if leaf != "weight":
            folded[f"{base}.{leaf}"] = tensor                      # a bias is not touched by LoRA
            continue
        blocks = sorted(int(k.rsplit(".", 1)[1]) for k in state_dict if k.startswith(f"{base}.matrix_A."))
        a = [state_dict[f"{base}.matrix_A.{i}"].float() for i in blocks]
        b = [state_dict[f"{base}.matrix_B.{i}"].float() for i in blocks]
        scaling = lora_alpha / a[0].shape[0]
        delta = torch.cat([mb @ ma for ma, mb in zip(a, b)], dim=0) * scaling       # (out, in)
        folded[f"{base}.weight"] = (tensor.float() + delta).to(tensor.dtype)
    return folded


def merge_checkpoint(source, target, lora_alpha: float | None = None) -> Path:
    """`lora_alpha` None: the checkpoint's recorded lora_alpha, else DEFAULT_LORA_ALPHA."""
    from cogvlm.utils.checkpoint_io import loading as ckpt
    from cogvlm.utils.checkpoint_io.sat_layout import write_checkpoint

    source_dir = ckpt.resolve_checkpoint_dir(source)
    model_config = ckpt.read_model_config(source_dir)
    config = ckpt.config_from_model_config(model_config)
    stored = ckpt.stored_model_parallel_size(source_dir, model_config)
    model = ckpt.build_model(config)                                   # on the meta device: names and shapes only
    if lora_alpha is None:
        lora_alpha = model_config.get("lora_alpha") or DEFAULT_LORA_ALPHA
    merged = fold_lora(ckpt.read_full_state_dict(source_dir, stored, model), lora_alpha)
    ckpt.check_state_dict(model, merged, source_dir)
    merged_config = {k: v for k, v in model_config.items() if k not in FINETUNE_KEYS}
    merged_config.update(model_class=type(model).__name__)
    return write_checkpoint(Path(target), merged, merged_config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_pretrained", required=True, help="checkpoint folder or name under $SAT_HOME")
    parser.add_argument("--save", required=True, help="folder for the merged checkpoint")
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="the LoRA alpha used in training (default: the one model_config.json records, else 1)")
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:            # under torchrun: every rank sets up the same groups (a collective), then waits
        from cogvlm.utils.parallel.model_parallel import initialize

        initialize(1)
    code = 0
    if int(os.environ.get("RANK", 0)) == 0:
        from cogvlm.utils.checkpoint_io.sat_layout import CheckpointError

        try:
            print(f"merged into {merge_checkpoint(args.from_pretrained, args.save, args.lora_alpha)}")
        except (CheckpointError, ValueError, OSError) as problem:
            print(f"Error: {problem}", file=sys.stderr)
            code = 1
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return code

