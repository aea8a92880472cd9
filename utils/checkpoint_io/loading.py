"""Load and save checkpoints in the published SAT layout.

    <dir>/model_config.json              the model's configuration (SAT argument names)
    <dir>/latest                         the iteration folder's name, e.g. "1"
    <dir>/<latest>/mp_rank_00_model_states.pt   torch.save({"module": state_dict})

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that lists them. The model is built on
the meta device and takes the loaded tensors as its parameters, so the weights are never held twice.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

CONFIG_FILE = "model_config.json"
TRACKER_FILE = "latest"
STATES_FILE = "mp_rank_{rank:02d}_model_states.pt"
STATE_DICT_KEY = "module"

# model_class in model_config.json -> (module, class, config module, config class). The published finetune
# scripts save their subclasses' names; the weights are the base model's.
MODEL_CLASSES = {
    "CogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "FineTuneTrainCogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "FineTuneTestCogVLMModel": ("cogvlm.models.cogvlm", "CogVLMModel", "cogvlm.models.config", "CogVLMConfig"),
    "CogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
    "FineTuneTrainCogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
    "FineTuneTestCogAgentModel": ("cogvlm.models.cogagent", "CogAgentModel", "cogvlm.models.config", "CogAgentConfig"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message says what is wrong."""


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


def read_model_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / CONFIG_FILE
    if not path.is_file():
        from cogvlm.utils.checkpoint_io.hf_conversion import is_hf_checkpoint

        if is_hf_checkpoint(checkpoint_dir):
            raise CheckpointError(f"{checkpoint_dir} is a Hugging Face checkpoint; convert it once with "
                                  f"`python utils/convert_hf_checkpoint.py --hf {checkpoint_dir} --sat OUT_DIR` "
                                  f"and pass OUT_DIR")
        raise CheckpointError(f"{checkpoint_dir} is not a SAT checkpoint: {CONFIG_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None


def states_file(checkpoint_dir: Path, mp_rank: int = 0) -> Path:
    tracker = checkpoint_dir / TRACKER_FILE
    if not tracker.is_file():
        raise CheckpointError(f"{checkpoint_dir} is not a SAT checkpoint: the '{TRACKER_FILE}' file is missing")
    iteration = tracker.read_text().strip()
    path = checkpoint_dir / iteration / STATES_FILE.format(rank=mp_rank)
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: '{TRACKER_FILE}' points to '{iteration}', "
                              f"but {path.relative_to(checkpoint_dir)} is missing")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The `module` state dict of a states file, memory-mapped where the file format allows it."""
    try:
        try:
            states = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:        # a legacy (non-zip) torch.save file cannot be memory-mapped
            states = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:      # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    if not isinstance(states, dict) or STATE_DICT_KEY not in states:
        raise CheckpointError(f"{path} holds no '{STATE_DICT_KEY}' state dict")
    return states[STATE_DICT_KEY]


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
    module, name, _, _ = MODEL_CLASSES[config.model_class]
    with torch.device(device), SkipRandomInitOnMeta():
        return _import(module, name)(config, params_dtype=dtype)


def check_state_dict(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], source,
                     model_name: str) -> None:
    """Raise a CheckpointError listing every missing, unexpected or mis-shaped tensor (published key names)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            problems.append(f"{title} ({len(keys)}): " + ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
    if problems:
        raise CheckpointError(f"{source} does not fit a {model_name} built from its {CONFIG_FILE}: "
                              + "; ".join(problems))


def stored_model_parallel_size(checkpoint_dir: Path, model_config: dict) -> int:
    """How many model-parallel shards the checkpoint holds; every one of them must be there."""
    size = int(model_config.get("model_parallel_size", 1))
    first = states_file(checkpoint_dir)
    missing = [first.with_name(STATES_FILE.format(rank=r)).name for r in range(size)
               if not first.with_name(STATES_FILE.format(rank=r)).is_file()]
    if missing:
        raise CheckpointError(f"{checkpoint_dir} was saved at model parallel size {size}, but its shards "
                              f"{', '.join(missing)} are missing")
    return size


def read_full_state_dict(checkpoint_dir: Path, stored: int, model) -> dict[str, torch.Tensor]:
    """Every model-parallel shard of a checkpoint merged into the mp=1 state dict, with published key names
    whichever layout was saved (SAT's training saves use this code's module names)."""
    from cogvlm.utils.checkpoint_io.state_dict_adapter import to_published
    from cogvlm.utils.parallel import model_parallel

    model_name = type(model).__name__
    shards = [to_published(read_state_dict(states_file(checkpoint_dir, rank)), model_name) for rank in range(stored)]
    return model_parallel.merge(shards, model_parallel.split_plan(model))


def load_model(name_or_path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               model_parallel_size: int | None = None):
    """(model in eval mode, config) from a checkpoint folder or a name under $SAT_HOME.

    With `model_parallel_size` (e.g. the process count under torchrun), the model-parallel group is set up first
    and this rank takes its shard; a checkpoint saved at another model-parallel size is merged and re-split."""
    from cogvlm.utils.checkpoint_io.state_dict_adapter import from_published, to_published
    from cogvlm.utils.parallel import model_parallel

    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    model_config = read_model_config(checkpoint_dir)
    config = config_from_model_config(model_config)
    stored = stored_model_parallel_size(checkpoint_dir, model_config)
    if model_parallel_size is not None:
        model_parallel.check_divisible(config, model_parallel_size)
        model_parallel.initialize(model_parallel_size)
    rank, size = model_parallel.rank_and_size()
    model = build_model(config, dtype)
    model_name = type(model).__name__
    path = states_file(checkpoint_dir, rank if stored == size else 0)
    # Published names, whichever layout was saved (SAT's training saves use this code's module names).
    if stored == size:
        published = to_published(read_state_dict(path), model_name)
    else:
        full = read_full_state_dict(checkpoint_dir, stored, model)
        published = model_parallel.shard(full, model_parallel.split_plan(model), rank, size)
    check_state_dict(to_published(model.state_dict(), model_name), published, path, model_name)
    state_dict = from_published(published, model_name)
    state_dict = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                  for k, v in state_dict.items()}
    model.load_state_dict(state_dict, assign=True)
    unloaded = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unloaded:
        raise CheckpointError(f"{path} left tensors without values: {', '.join(unloaded)}")
    return model.eval(), config


def save_model(model, checkpoint_dir: str | os.PathLike, iteration: int = 1) -> Path:
    """Write `model` in the published layout: each model-parallel rank its own mp_rank_XX file, rank 0 the
    model_config.json (with the model-parallel size) and the tracker."""
    from cogvlm.utils.checkpoint_io.state_dict_adapter import to_published
    from cogvlm.utils.parallel.model_parallel import rank_and_size

    rank, size = rank_and_size()
    checkpoint_dir = Path(checkpoint_dir)
    (checkpoint_dir / str(iteration)).mkdir(parents=True, exist_ok=True)
    state_dict = to_published(model.state_dict(), type(model).__name__)
    torch.save({STATE_DICT_KEY: state_dict}, checkpoint_dir / str(iteration) / STATES_FILE.format(rank=rank))
    if rank == 0:
        config = {**model.config.to_model_config(), "model_parallel_size": size}
        (checkpoint_dir / CONFIG_FILE).write_text(json.dumps(config, indent=4))
        (checkpoint_dir / TRACKER_FILE).write_text(str(iteration))
    if size > 1:
        torch.distributed.barrier()
    return checkpoint_dir
