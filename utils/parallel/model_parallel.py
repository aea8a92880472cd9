"""Model parallelism, kept outside the model code.

SAT's parallel layers (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding) size themselves by the
model-parallel group that exists when they are built; the model code only reads per-partition sizes. What lives
here is everything else:

    initialize(size)                 torch.distributed + SAT's model-parallel groups (gloo on CPU, nccl on CUDA)
    split_plan(model)                how each tensor of the published layout is split, from its module's type
    shard(full, plan, rank, size)    an mp=1 state dict -> one rank's shard
    merge(shards, plan)              every rank's shard -> the mp=1 state dict
    check_divisible(config, size)    a clear error for a size that does not divide the model

Column-parallel weights split their output rows; a strided one (QKV with stride 3, cross K/V with stride 2)
splits each of its stride blocks and concatenates the rank's pieces, as SAT does. Grouped-query QKV (GLM-4V-9B:
[q heads | k groups | v groups]) has blocks of unequal sizes, in proportion to SAT's list stride; each rank takes
its share of the query heads and of the K/V groups, so the model-parallel size must divide the number of K/V groups
(2 at 9B: sizes 1 and 2; 4 and 8 are refused by check_divisible rather than replicating K/V heads). Row-parallel
weights split their input columns (biases stay whole); a vocab-parallel embedding splits its rows. Everything
else is whole on every rank. LoRA tensors (SAT's lora2: `<linear>.original.*`, `matrix_A.i`, `matrix_B.i`) follow
their linear.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


SAT_DEFAULT_SEED = 1234        # what SAT's BaseModel seeds with when it sets up torch.distributed itself


@dataclass(frozen=True)
class Split:
    dim: int
    stride: int | tuple[int, ...] = 1      # equal blocks, or blocks in these proportions (grouped-query QKV)

    def blocks(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The stride blocks of `tensor` along `dim`, each split across the ranks on its own."""
        if isinstance(self.stride, int):
            return tensor.chunk(self.stride, dim=self.dim)
        unit = tensor.shape[self.dim] // sum(self.stride)
        return tensor.split([unit * part for part in self.stride], dim=self.dim)


def initialize(model_parallel_size: int) -> None:
    """Set up torch.distributed (from RANK / WORLD_SIZE / MASTER_* under torchrun) and SAT's groups."""
    from sat.arguments import _simple_init

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size % model_parallel_size:
        raise ValueError(f"model parallel size {model_parallel_size} does not divide the {world_size} processes")
    _simple_init(model_parallel_size=model_parallel_size, seed=SAT_DEFAULT_SEED)


def rank_and_size() -> tuple[int, int]:
    from sat import mpu

    if not mpu.model_parallel_is_initialized():
        return 0, 1
    return mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()


def data_parallel_rank() -> int:
    """This process's rank among the processes holding the same model-parallel shard (0 without SAT's groups)."""
    from sat import mpu

    return mpu.get_data_parallel_rank() if mpu.model_parallel_is_initialized() else 0


def split_plan(model) -> dict[str, Split]:
    """Published key -> how it is split across model-parallel ranks (keys absent from the plan stay whole)."""
    from sat.mpu.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from cogvlm.utils.checkpoint_io.state_dict_adapter import to_published

    plan = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ColumnParallelLinear):
            stride = module.stride if isinstance(module.stride, int) else tuple(module.stride)
            plan[prefix + "weight"] = plan[prefix + "bias"] = Split(0, stride)
        elif isinstance(module, RowParallelLinear):
            plan[prefix + "weight"] = Split(1)
        elif isinstance(module, VocabParallelEmbedding):
            plan[prefix + "weight"] = Split(0)
    return {published: plan[k] for k, published in zip(plan, to_published(dict.fromkeys(plan),
                                                                             type(model).__name__))}


def _lora_split(key: str, plan: dict[str, Split]) -> Split | None:
    """SAT lora2 keys: `X.original.weight` splits as `X.weight`; for a column-parallel X, `matrix_B.i` (rows of
    one stride block) splits its rows and `matrix_A.i` stays whole; for a row-parallel X, `matrix_A.i` splits its
    columns and `matrix_B.i` stays whole."""
    if ".original." in key:
        return plan.get(key.replace(".original.", "."))
    for matrix in (".matrix_A.", ".matrix_B."):
        if matrix in key:
            base = plan.get(key.split(matrix)[0] + ".weight")
            if base is None:
                return None
            if base.dim == 0:
                return Split(0) if matrix == ".matrix_B." else None
            return Split(1) if matrix == ".matrix_A." else None
    return None


def split_of(key: str, plan: dict[str, Split]) -> Split | None:
    return plan.get(key) or _lora_split(key, plan)


def _split(tensor: torch.Tensor, split: Split, rank: int, size: int) -> torch.Tensor:
    blocks = split.blocks(tensor)
    return torch.cat([block.chunk(size, dim=split.dim)[rank] for block in blocks], dim=split.dim).clone()


def shard(full: dict[str, torch.Tensor], plan: dict[str, Split], rank: int, size: int) -> dict[str, torch.Tensor]:
    if size == 1:
        return dict(full)
    out = {}
    for key, tensor in full.items():
        split = split_of(key, plan)
        out[key] = tensor if split is None else _split(tensor, split, rank, size)
    return out


def merge(shards: list[dict[str, torch.Tensor]], plan: dict[str, Split]) -> dict[str, torch.Tensor]:
    if len(shards) == 1:
        return dict(shards[0])
    out = {}
    for key, tensor in shards[0].items():
        split = split_of(key, plan)
        if split is None:
            out[key] = tensor
            continue
        pieces = [split.blocks(s[key]) for s in shards]                                    # [rank][block]
        out[key] = torch.cat([torch.cat([p[block] for p in pieces], dim=split.dim)
                              for block in range(len(pieces[0]))], dim=split.dim)
    return out


def check_divisible(config, size: int) -> None:
    """Every split dimension of the model must divide by the model-parallel size."""
    if size == 1:
        return
    lang = config.language
    sizes = {"attention heads": lang.num_attention_heads, "hidden size": lang.hidden_size,
             "MLP inner size": lang.inner_hidden_size,
             "EVA2-CLIP-E heads": config.vision.num_attention_heads,
             "EVA2-CLIP-E MLP inner size": config.vision.inner_hidden_size}
    if hasattr(lang, "num_kv_groups"):      # grouped-query attention: each rank holds whole K/V groups
        sizes["K/V groups"] = lang.num_kv_groups
    if lang.vocab_size >= 1000:             # SAT splits the embedding only from this size on (nn.Embedding below)
        sizes["vocabulary"] = lang.vocab_size
    bad = [f"{name} {value}" for name, value in sizes.items() if value % size]
    if bad:
        raise ValueError(f"model parallel size {size} does not divide the model's " + ", ".join(bad))


def broadcast_from_first_rank(tensor: torch.Tensor) -> torch.Tensor:
    """Make every model-parallel rank use rank 0's value (e.g. a sampled token)."""
    from sat import mpu

    if mpu.model_parallel_is_initialized() and mpu.get_model_parallel_world_size() > 1:
        torch.distributed.broadcast(tensor, mpu.get_model_parallel_src_rank(), group=mpu.get_model_parallel_group())
    return tensor
