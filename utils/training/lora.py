"""LoRA on chosen linears of a SAT transformer, the targets being configuration (GLM-4V-9B / CogAgent-9B).

SAT's own LoraMixin (sat.model.finetune.lora2) always adapts `query_key_value` and `dense` of every attention
layer. The published CogAgent-9B fine-tuning (finetune/configs/lora.yaml: r 8, alpha 32, dropout 0.1) adapts
`query_key_value` only, and adapting the MLP is a common choice, so here the targets are a setting:

    LoraSettings(rank=8, alpha=32, dropout=0.1, targets=("query_key_value",), vision=False)
    model.add_mixin("lora", TargetedLora(settings), reinit=True)     # wraps the targets in SAT's LoraLinear
    model.get_mixin("lora").merge_lora()                              # folds them back, each in its own linear

The wrapped linears are SAT's lora2 `LoraLinear`, so a training checkpoint holds the published lora2 keys
(`<linear>.original.weight`, `matrix_A.i`, `matrix_B.i`), which utils/merge_model.py folds in and
utils/parallel/model_parallel.py splits. Merging keeps each linear's parallel class, so a model-parallel rank merges
its own shard: column-parallel B and row-parallel A are that rank's slice of the update.
The settings are recorded in model_config.json by SAT's training saves (add_model_specific_args), so that
merge_model.py reads the alpha the run used.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from sat.model.base_model import BaseMixin
from sat.model.finetune.lora2 import LoraLinear, replace_linear_with_lora

# The language model's linears by their published names: (layer index, model) -> (owner module, attribute).
Locator = Callable[[object, int], tuple[nn.Module, str]]
LANGUAGE_TARGETS: dict[str, Locator] = {
    "query_key_value": lambda model, i: (model.transformer.layers[i].attention, "query_key_value"),
    "dense": lambda model, i: (model.transformer.layers[i].attention, "dense"),
    "dense_h_to_4h": lambda model, i: (model.transformer.layers[i].mlp, "dense_h_to_4h"),      # the SwiGLU gate
    "up_proj": lambda model, i: (model.get_mixin("swiglu").up_proj, str(i)),                  # its up projection
    "dense_4h_to_h": lambda model, i: (model.transformer.layers[i].mlp, "dense_4h_to_h"),
}
PUBLISHED_TARGETS = ("query_key_value",)          # finetune/configs/lora.yaml of THUDM/CogAgent
# Row-parallel linears: SAT 0.4.12's LoraLinear adds x_rank @ A_rank.T @ B.T without summing it over the ranks, so
# under model parallelism their update would be wrong; they are refused there (column-parallel targets are exact).
ROW_PARALLEL_TARGETS = ("dense", "dense_4h_to_h")
VISION_TARGETS = ("query_key_value",)             # the EVA2-CLIP-E layers' attention, with --lora_vision


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = PUBLISHED_TARGETS
    vision: bool = False                          # also adapt the vision tower (else it stays frozen)

    def __post_init__(self):
        unknown = sorted(set(self.targets) - set(LANGUAGE_TARGETS))
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {', '.join(unknown)}: choose from "
                             f"{', '.join(LANGUAGE_TARGETS)}")
        if not self.targets:
            raise ValueError("no LoRA targets: name at least one of " + ", ".join(LANGUAGE_TARGETS))
        if self.rank < 1:
            raise ValueError(f"the LoRA rank must be at least 1, got {self.rank}")


def _global_sizes(linear: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear over all model-parallel ranks: SAT's LoraLinear rebuilds the parallel layer from them."""
    if hasattr(linear, "input_size"):                   # SAT's Column/RowParallelLinear
        return linear.input_size, linear.output_size
    return linear.in_features, linear.out_features


def _wrap(owner: nn.Module, attribute: str, settings: LoraSettings) -> None:
    linear = getattr(owner, attribute)
    # grouped-query QKV has blocks [q heads | k groups | v groups] of unequal sizes (SAT's list stride): one LoRA
    # pair per block, as SAT does for its own QKV
    partition = getattr(owner, "stride", 1) if attribute == "query_key_value" else 1
    in_size, out_size = _global_sizes(linear)
    setattr(owner, attribute, replace_linear_with_lora(linear, partition, settings.rank, settings.alpha,
                                                       settings.dropout, in_size=in_size, out_size=out_size))


def _merged(lora: LoraLinear) -> nn.Module:
    """The wrapped linear with W + concat_i(B_i @ A_i) * alpha / r, in its own class and dtype."""
    original = lora.original
    update = torch.cat([b.float() @ a.float() for a, b in zip(lora.matrix_A, lora.matrix_B)]) * lora.scaling
    with torch.no_grad():
        original.weight += update.to(original.weight.dtype)                 # (out local, in local)
    return original


class TargetedLora(BaseMixin):
    """Wraps the configured linears of every language layer (and of the vision tower with `vision`) in LoRA."""

    def __init__(self, settings: LoraSettings):
        super().__init__()
        self.settings = settings

    def reinit(self, parent_model=None):
        from cogvlm.utils.parallel.model_parallel import rank_and_size

        row_parallel = sorted(set(self.settings.targets) & set(ROW_PARALLEL_TARGETS))
        if row_parallel and rank_and_size()[1] > 1:
            raise ValueError(f"LoRA on {', '.join(row_parallel)} (row-parallel) is not exact under model "
                             f"parallelism in SAT's lora2; train with --model-parallel-size 1 or other targets")
        for name in self.settings.targets:
            for layer in range(len(parent_model.transformer.layers)):
                _wrap(*LANGUAGE_TARGETS[name](parent_model, layer), self.settings)
        if self.settings.vision:
            encoder = parent_model.get_mixin("image").encoder
            for layer in encoder.transformer.layers:
                for name in VISION_TARGETS:
                    _wrap(layer.attention, name, self.settings)
        self.model = [parent_model]                  # a list: not registered as a submodule of the mixin

    def merge_lora(self) -> int:
        """Fold every LoRA linear of the model into its weight; the number merged."""
        (model,) = self.model
        wrapped = list(lora_linears(model))
        for owner, attribute, lora in wrapped:
            setattr(owner, attribute, _merged(lora))
        return len(wrapped)

    @classmethod
    def add_model_specific_args(cls, parser):
        """Recorded in model_config.json by SAT's training saves: merge_model.py reads the alpha from there."""
        group = parser.add_argument_group("LoRA", "LoRA targets of a fine-tuning run")
        group.add_argument("--lora_rank", type=int, default=None)
        group.add_argument("--lora_alpha", type=float, default=None)
        group.add_argument("--lora_targets", type=json.loads, default=None)
        group.add_argument("--lora_vision", action="store_true")
        return parser


def lora_linears(model: nn.Module) -> Iterator[tuple[nn.Module, str, LoraLinear]]:
    """(owner, attribute, LoRA linear) for every LoRA linear in `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            owner_name, _, attribute = name.rpartition(".")
            yield model.get_submodule(owner_name), attribute, module
