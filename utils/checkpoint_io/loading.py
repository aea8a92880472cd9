"""Load and save models as checkpoints in the published SAT layout (written and read by sat_layout).

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that lists them. The model is built on
the meta device and takes the loaded tensors as its parameters, so the weights are never held twice. A model
built here speaks the published key names (state_dict_adapter.speak_published), so its state_dict() is what
goes into a states file and what a states file gives back, whoever saves it (save_model, or SAT's training).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

from cogvlm.utils.checkpoint_io import sat_layout
from cogvlm.utils.checkpoint_io.sat_layout import (CONFIG_FILE, STATE_DICT_KEY, STATES_FILE, TRACKER_FILE,
                                                   CheckpointError, read_state_dict, states_file,
                                                   stored_model_parallel_size)
from cogvlm.utils.checkpoint_io.state_dict_adapter import speak_published, to_published

if TYPE_CHECKING:
    from cogvlm.utils.quantization.weight_only import QuantConfig

__all__ = ["CONFIG_FILE", "STATE_DICT_KEY", "STATES_FILE", "TRACKER_FILE", "CheckpointError", "MODEL_CLASSES",
           "build_model", "check_state_dict", "config_from_model_config", "load_model", "read_full_state_dict",
           "read_model_config", "read_state_dict", "resolve_checkpoint_dir", "save_model", "states_file",
           "stored_model_parallel_size"]

# model_class in model_config.json -> (module, class, config module, config class). The published finetune
# scripts save their subclasses' names; the weights are the base model's.
MODEL_CLASSES = {
    "CogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "FineTuneTrainCogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "FineTuneTestCogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "CogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
    "FineTuneTrainCogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
    "FineTuneTestCogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
    # GLM-4V-9B and CogAgent-9B-20241220 (the config's rope_layout tells them apart)
    "GLM4VModel": ("cogvlm.models.glm4v", "GLM4VModel", "cogvlm.models.config", "GLM4VConfig"),
}


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint folder from a path, or from a name under $SAT_HOME, downloaded there first when it is a
    published name that is not there yet (no network access when it is)."""
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found, ensure_model, sat_home

    problem = checkpoint_not_found(name_or_path)
    if problem is not None:
        raise CheckpointError(problem)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    cached = sat_home() / str(name_or_path)
    return cached if cached.is_dir() else ensure_model(str(name_or_path))


read_model_config = sat_layout.read_config


def _import(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def config_from_model_config(model_config: dict):
    model_class = model_config.get("model_class", "CogVLMModel")
    if model_class not in MODEL_CLASSES:
        raise CheckpointError(f"model_class '{model_class}' is not one this project loads "
                              f"({', '.join(sorted(MODEL_CLASSES))})")
    _, _, config_module, config_class = MODEL_CLASSES[model_class]
    try:
        return _import(config_module, config_class).from_model_config(model_config)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{CONFIG_FILE}: {error}") from None


class SkipRandomInitOnMeta(TorchFunctionMode):
    """Skip random initialisers on meta tensors. They fill nothing there, but torch runs them through Python
    reference code whose first call imports torch._dynamo: 0.7 s of every start-up, for weights loaded anyway."""

    INITIALISERS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_,
                              torch.nn.init.uniform_, torch.nn.init.trunc_normal_, torch.nn.init.kaiming_normal_,
                              torch.nn.init.kaiming_uniform_, torch.nn.init.xavier_normal_,
                              torch.nn.init.xavier_uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")
        if func in self.INITIALISERS and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def build_model(config, dtype: torch.dtype = torch.float32, device: str | torch.device = "meta"):
    """The model a config describes (on the meta device by default: names and shapes only), speaking the
    published key names in state_dict() and load_state_dict()."""
    module, name, _, _ = MODEL_CLASSES[config.model_class]
    with torch.device(device), SkipRandomInitOnMeta():
        return speak_published(_import(module, name)(config, params_dtype=dtype))


def published_state_dict(model) -> dict[str, torch.Tensor]:
    """A model's state dict in published names, whether or not it was built by build_model."""
    return to_published(model.state_dict(), type(model).__name__)


def check_state_dict(model, state_dict: dict[str, torch.Tensor], source) -> None:
    """Raise a CheckpointError listing every missing, unexpected or mis-shaped tensor (published key names)."""
    sat_layout.check_tensors(published_state_dict(model), state_dict, source,
                             f"a {type(model).__name__} built from its {CONFIG_FILE}")


def read_published_shard(checkpoint_dir: Path, rank: int, model) -> dict[str, torch.Tensor]:
    """One states file in published names, also when an earlier version of this code saved internal names."""
    return to_published(read_state_dict(states_file(checkpoint_dir, rank)), type(model).__name__)


def read_full_state_dict(checkpoint_dir: Path, stored: int, model) -> dict[str, torch.Tensor]:
    """Every model-parallel shard of a checkpoint merged into the mp=1 state dict, in published names."""
    from cogvlm.utils.parallel import model_parallel

    shards = [read_published_shard(checkpoint_dir, rank, model) for rank in range(stored)]
    return model_parallel.merge(shards, model_parallel.split_plan(model))


def load_model(name_or_path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               model_parallel_size: int | None = None, quant: int | QuantConfig | None = None):
    """(model in eval mode, config) from a checkpoint folder or a name under $SAT_HOME.

    With `model_parallel_size` (e.g. the process count under torchrun), the model-parallel group is set up first
    and this rank takes its shard; a checkpoint saved at another model-parallel size is merged and re-split.
    With `quant` (8, 4 or a QuantConfig), the language model's linears are quantised weight-only as they are read
    (utils/quantization/weight_only.py): the full-precision weights are never all held at once. Quantised models
    are not saved: a checkpoint stays full precision, and is quantised at whatever model-parallel size loads it."""
    from cogvlm.utils.parallel import model_parallel
    from cogvlm.utils.quantization.memory import file_mappings
    from cogvlm.utils.quantization.weight_only import QuantConfig

    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    model_config = read_model_config(checkpoint_dir)
    config = config_from_model_config(model_config)
    stored = stored_model_parallel_size(checkpoint_dir, model_config)
    if model_parallel_size is not None:
        model_parallel.check_divisible(config, model_parallel_size)
        model_parallel.initialize(model_parallel_size)
    rank, size = model_parallel.rank_and_size()
    model = build_model(config, dtype)
    quant = QuantConfig.of(quant)
    targets = quantization_targets(model, quant, device)
    path = states_file(checkpoint_dir, rank if stored == size else 0)
    if stored == size:
        state_dict = read_published_shard(checkpoint_dir, rank, model)
    else:
        full = read_full_state_dict(checkpoint_dir, stored, model)
        state_dict = model_parallel.shard(full, model_parallel.split_plan(model), rank, size)
    check_state_dict(model, state_dict, path)
    # The mappings of the memory-mapped states file, whose pages are given back once a weight is copied out of them.
    mappings = file_mappings(path)
    quantize_into(targets, state_dict, quant, dtype, device, mappings)
    cast_into_place(state_dict, dtype, device, mappings)
    model.load_state_dict(state_dict, assign=True)
    unloaded = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unloaded:
        raise CheckpointError(f"{path} left tensors without values: {', '.join(unloaded)}")
    return model.eval(), config


def quantization_targets(model, quant, device) -> dict[str, tuple[str, torch.nn.Module]]:
    """Published weight key -> (module name, linear) of the weights `quant` quantises ({} without quant); a
    setting that cannot apply is a QuantizationError before any weight is read."""
    from cogvlm.utils.parallel import model_parallel
    from cogvlm.utils.quantization import weight_only

    if quant is None:
        return {}
    if quant.bits == 4 and torch.device(device).type != "cpu":
        raise weight_only.QuantizationError("--quant 4 runs on CPU only in this version (its weights are packed "
                                            "for PyTorch's CPU int4 kernel); use --quant 8 on CUDA")
    linears = weight_only.quantization_targets(model, quant.include_vision)
    weight_only.check_shapes(linears, quant, model_parallel.rank_and_size()[1])
    keys = to_published({f"{name}.weight": None for name in linears}, type(model).__name__)
    return {key: (name, linears[name]) for key, name in zip(keys, linears)}


def quantize_into(targets: dict[str, tuple[str, torch.nn.Module]], state_dict: dict[str, torch.Tensor], quant,
                  dtype: torch.dtype, device, mappings: list[tuple[int, int]]) -> None:
    """Take each target's weight out of `state_dict`, quantise it and install it in its linear, one at a time:
    the full-precision copy of a weight lives only while it is quantised, and the pages it was read from (within
    `mappings`, those of the memory-mapped states file) are given back right after."""
    from cogvlm.utils.quantization import weight_only
    from cogvlm.utils.quantization.memory import release_pages

    for key, (name, linear) in targets.items():
        tensor = state_dict.pop(key)
        weight = weight_only.quantize(tensor, quant, dtype, name)
        weight_only.install(linear, weight if torch.device(device).type == "cpu" else weight.to_device(device))
        release_pages(tensor, mappings)
        del tensor


def cast_into_place(state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device,
                    mappings: list[tuple[int, int]]) -> None:
    """Give each floating tensor the model's dtype and device, one tensor at a time, releasing the pages (within
    `mappings`, those of the memory-mapped states file) it was read from: a bf16 load then peaks at about the bf16
    model, not the fp32 file plus the bf16 copies. Tensors that need no cast keep their memory-mapped storage."""
    from cogvlm.utils.quantization.memory import release_pages

    for key, tensor in state_dict.items():
        target = dtype if tensor.is_floating_point() else tensor.dtype
        if tensor.dtype == target and tensor.device == torch.device(device):
            continue
        state_dict[key] = tensor.to(device=device, dtype=target)
        release_pages(tensor, mappings)


def save_model(model, checkpoint_dir: str | os.PathLike, iteration: int = 1, tokenizer: Path | None = None) -> Path:
    """Write `model` in the published layout: each model-parallel rank its own mp_rank_XX file, rank 0 the
    model_config.json (with the model-parallel size), the tracker and, when given, a copy of the tokenizer file.
    Under data parallelism only the first data-parallel group writes (the others hold the same weights)."""
    from cogvlm.utils.parallel.model_parallel import data_parallel_rank, rank_and_size

    from cogvlm.utils.quantization.weight_only import is_quantized

    if is_quantized(model):
        raise CheckpointError("a model quantised while loading is not saved: save the full-precision model, and "
                              "quantise it when it is loaded (--quant)")
    rank, size = rank_and_size()
    checkpoint_dir = Path(checkpoint_dir)
    writes = data_parallel_rank() == 0
    if writes:
        sat_layout.write_state_dict(checkpoint_dir, published_state_dict(model), iteration, rank)
    _barrier()                              # every shard is written before the tracker says the folder is complete
    if writes and rank == 0:
        sat_layout.write_config(checkpoint_dir, {**model.config.to_model_config(), "model_parallel_size": size})
        if tokenizer is not None:
            sat_layout.copy_tokenizer(Path(tokenizer), checkpoint_dir)
        sat_layout.write_tracker(checkpoint_dir, iteration)
    _barrier()                              # and no rank returns before the folder is complete
    return checkpoint_dir


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
