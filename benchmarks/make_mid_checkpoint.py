"""Build a mid-size random-weight checkpoint in the published SAT layout, for the benchmarks (never commit one).

    python benchmarks/make_mid_checkpoint.py --model cogvlm --out /tmp/mid-cogvlm        # 300 M parameters, 1.2 GB
    python benchmarks/make_mid_checkpoint.py --model cogagent --out /tmp/mid-cogagent    # 325 M, with a 448 px cross branch

The sizes sit between the tiny test fixtures and the published 17B/18B models, so that a decode step reads enough
weights to be bound by memory bandwidth, as on the real models: a LLaMA part of hidden 1024, 8 layers, 16 heads,
SwiGLU 2816, vocab 32000, an EVA2-CLIP-E part of hidden 512, 6 layers at 224 px (256 image tokens), and for CogAgent
a 448 px EVA2-CLIP-L cross branch (width 256, 4 layers, 1024 cross tokens). The weights are SAT's random
initialisation from `--seed`: a benchmark needs the shapes, not the values.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

MID_COGVLM = {
    "model_class": "CogVLMModel", "num_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
    "vocab_size": 32000, "layernorm_order": "pre", "model_parallel_size": 1, "max_sequence_length": 2048,
    "use_bias": False, "inner_hidden_size": 2816, "image_length": 256,
    "eva_args": {
        "model_class": "EVA2CLIPModel", "num_layers": 6, "hidden_size": 512, "num_attention_heads": 8,
        "vocab_size": 1, "layernorm_order": "post", "model_parallel_size": 1, "max_sequence_length": 257,
        "inner_hidden_size": 2048, "use_final_layernorm": False, "layernorm_epsilon": 1e-06,
        "row_parallel_linear_final_bias": False, "image_size": [224, 224], "pre_len": 1, "post_len": 0,
        "in_channels": 3, "patch_size": 14,
    },
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "text_processor_version": "chat",
}
# CogAgent: the same, plus the cross branch (its layer sizes in cross_vision_args, as the tiny fixture's).
MID_COGAGENT = {
    **copy.deepcopy(MID_COGVLM), "model_class": "CogAgentModel", "is_decoder": [True] * 8,
    "cross_attn_hidden_size": 256, "cross_hidden_size_per_attention_head": 64, "cross_image_pix": 448,
    "cross_vision_args": {"layers": 4, "width": 256, "head_width": 64},
}
MODELS = {"cogvlm": MID_COGVLM, "cogagent": MID_COGAGENT}


def mid_model_config(model: str, num_layers: int | None = None, eva_num_layers: int | None = None) -> dict:
    """The model_config.json of a mid-size checkpoint; the layer counts may be lowered (the tests build small ones)."""
    config = copy.deepcopy(MODELS[model])
    if num_layers is not None:
        config["num_layers"] = num_layers
        if "is_decoder" in config:
            config["is_decoder"] = [True] * num_layers
    if eva_num_layers is not None:
        config["eva_args"]["num_layers"] = eva_num_layers
    return config


def build(model: str, out: Path, seed: int, num_layers: int | None = None, eva_num_layers: int | None = None) -> Path:
    import torch

    from cogvlm.utils.checkpoint_io.loading import build_model, config_from_model_config, save_model

    torch.manual_seed(seed)
    config = config_from_model_config(mid_model_config(model, num_layers, eva_num_layers))
    return save_model(build_model(config, device="cpu"), out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--num_layers", type=int, default=None, help="fewer decoder layers (default 8)")
    parser.add_argument("--eva_num_layers", type=int, default=None, help="fewer EVA layers (default 6)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    print(build(args.model, args.out, args.seed, args.num_layers, args.eva_num_layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
