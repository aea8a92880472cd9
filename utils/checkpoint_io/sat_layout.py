"""The SAT checkpoint layout on disk: the one module that knows its file names, reads and writes it.

    <dir>/model_config.json                        the model's configuration (SAT argument names)
    <dir>/latest                                   the tracker: the iteration folder's name, e.g. "1"
    <dir>/<iteration>/mp_rank_XX_model_states.pt   torch.save({"module": state_dict}), one per model-parallel rank

SAT's own training saves (sat.training.model_io.save_checkpoint) write the same files. Besides the layout, this
module detects a folder's format (SAT, Hugging Face, neither), reads raw tensor files (memory-mapped where the
format allows) with clear errors for empty and truncated ones, and checks a state dict against the tensors a model
expects. It knows nothing of models or key names and imports no other module of this project, so that every
other checkpoint module can import it.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

CONFIG_FILE = "model_config.json"
TRACKER_FILE = "latest"
STATES_FILE = "mp_rank_{rank:02d}_model_states.pt"
STATE_DICT_KEY = "module"
TOKENIZER_FILE = "tokenizer.model"      # not SAT's, but copied along so that a folder is self-contained

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
HF_WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS_FILE, BIN_INDEX, BIN_FILE)

SAT, HUGGING_FACE = "sat", "hf"          # what detect_format answers (None: neither)
LISTED_KEYS = 10                        # keys shown per problem in a mismatch message
ZIP_MAGIC = b"PK\x03\x04"              # how torch.save's (zip) format begins
CUT_SHORT = "the download or copy was probably cut short: fetch or copy it again"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written as asked; the one-line message says what is wrong."""


# --- format detection ---------------------------------------------------------------------------------------------

def is_sat_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path).expanduser()
    return (path / CONFIG_FILE).is_file() and (path / TRACKER_FILE).is_file()


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """A Hugging Face CogVLM / CogAgent folder: config.json with a vision_config, and weights."""
    path = Path(path).expanduser()
    try:
        if not (path / HF_CONFIG_FILE).is_file() or not any((path / name).is_file() for name in HF_WEIGHT_FILES):
            return False
        config = json.loads((path / HF_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" in config


def detect_format(path: str | os.PathLike) -> str | None:
    """SAT, HUGGING_FACE, or None for a folder that is neither (or no folder)."""
    if is_sat_checkpoint(path):
        return SAT
    if is_hf_checkpoint(path):
        return HUGGING_FACE
    return None


# --- reading ------------------------------------------------------------------------------------------------------

def read_config(checkpoint_dir: Path) -> dict:
    """model_config.json as a dict; a Hugging Face folder is named as such, with the command that converts it."""
    path = checkpoint_dir / CONFIG_FILE
    if not path.is_file():
        if is_hf_checkpoint(checkpoint_dir):
            raise CheckpointError(f"{checkpoint_dir} is a Hugging Face checkpoint; convert it once with "
                                  f"`python utils/convert_hf_checkpoint.py --hf {checkpoint_dir} --sat OUT_DIR` "
                                  f"and pass OUT_DIR")
        raise CheckpointError(f"{checkpoint_dir} is not a SAT checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no JSON object")
    return config


def states_file(checkpoint_dir: Path, mp_rank: int = 0) -> Path:
    """The states file of one model-parallel rank, in the iteration folder the tracker names."""
    tracker = checkpoint_dir / TRACKER_FILE
    if not tracker.is_file():
        raise CheckpointError(f"{checkpoint_dir} is not a SAT checkpoint: the '{TRACKER_FILE}' file is missing")
    iteration = tracker.read_text().strip()
    path = checkpoint_dir / iteration / STATES_FILE.format(rank=mp_rank)
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: '{TRACKER_FILE}' points to '{iteration}', "
                              f"but {path.relative_to(checkpoint_dir)} is missing")
    return path


def stored_model_parallel_size(checkpoint_dir: Path, model_config: Mapping) -> int:
    """How many model-parallel shards the checkpoint holds; every one of them must be there."""
    size = int(model_config.get("model_parallel_size", 1))
    first = states_file(checkpoint_dir)
    missing = [first.with_name(STATES_FILE.format(rank=r)).name for r in range(size)
               if not first.with_name(STATES_FILE.format(rank=r)).is_file()]
    if missing:
        raise CheckpointError(f"{checkpoint_dir} was saved at model parallel size {size}, but its shards "
                              f"{', '.join(missing)} are missing")
    return size


def _starts_as_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def _torch_load(path: Path):
    # torch.save writes a zip, which can be memory-mapped; a legacy (pickle) file cannot
    return torch.load(path, map_location="cpu", mmap=_starts_as_zip(path), weights_only=True)


def _safetensors_load(path: Path):
    from safetensors.torch import load_file      # deferred: only Hugging Face folders need it

    return load_file(path)


def load_tensors(path: Path):
    """The object in a torch.save file, or the tensors of a .safetensors file, memory-mapped where the format
    allows it (the weights are then read from disk as they are used, never held twice)."""
    size = path.stat().st_size if path.is_file() else None
    if size is None:
        raise CheckpointError(f"{path} is missing")
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): {CUT_SHORT}")
    try:
        return _safetensors_load(path) if path.suffix == ".safetensors" else _torch_load(path)
    except Exception as error:      # noqa: BLE001 - torch and safetensors raise many types for a corrupt file
        raise CheckpointError(f"cannot read {path} ({size} bytes), it is truncated or corrupt "
                              f"({_why_unreadable(path, error)}); {CUT_SHORT}") from None


def _why_unreadable(path: Path, error: Exception) -> str:
    """What torch's or safetensors' error means, in one line."""
    if _starts_as_zip(path) and not zipfile.is_zipfile(path):
        return "a zip archive without its end: torch.save's format keeps its index there"
    lines = f"{type(error).__name__}: {error}".strip().rstrip(":").splitlines()
    return lines[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The `module` state dict of a states file, memory-mapped."""
    states = load_tensors(path)
    if not isinstance(states, dict) or STATE_DICT_KEY not in states:
        raise CheckpointError(f"{path} holds no '{STATE_DICT_KEY}' state dict")
    return states[STATE_DICT_KEY]


# --- writing ------------------------------------------------------------------------------------------------------

def write_state_dict(checkpoint_dir: Path, state_dict: Mapping[str, torch.Tensor], iteration: int | str = 1,
                     mp_rank: int = 0) -> Path:
    path = checkpoint_dir / str(iteration) / STATES_FILE.format(rank=mp_rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({STATE_DICT_KEY: dict(state_dict)}, path)
    return path


def write_config(checkpoint_dir: Path, model_config: Mapping) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / CONFIG_FILE).write_text(json.dumps(dict(model_config), indent=4))


def write_tracker(checkpoint_dir: Path, iteration: int | str = 1) -> None:
    """Written last: a folder whose tracker exists has its states files."""
    (checkpoint_dir / TRACKER_FILE).write_text(str(iteration))


def write_checkpoint(checkpoint_dir: Path, state_dict: Mapping[str, torch.Tensor], model_config: Mapping,
                     iteration: int | str = 1) -> Path:
    """A whole model-parallel-1 checkpoint: states file, model_config.json (model_parallel_size 1), tracker."""
    checkpoint_dir = Path(checkpoint_dir)
    write_state_dict(checkpoint_dir, state_dict, iteration)
    write_config(checkpoint_dir, {**model_config, "model_parallel_size": 1})
    write_tracker(checkpoint_dir, iteration)
    return checkpoint_dir


def copy_tokenizer(source: Path, checkpoint_dir: Path) -> None:
    """Copy a tokenizer.model (a file, or the one in a folder) along, when there is one."""
    source = source / TOKENIZER_FILE if source.is_dir() else source
    if source.is_file():
        (checkpoint_dir / TOKENIZER_FILE).write_bytes(source.read_bytes())


# --- checking -----------------------------------------------------------------------------------------------------

def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:LISTED_KEYS]) + (" ..." if len(keys) > LISTED_KEYS else "")


def check_tensors(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source,
                  what: str, optional: Collection[str] = (), error: type[CheckpointError] = CheckpointError) -> None:
    """Raise `error` listing every missing (and not optional), unexpected or mis-shaped tensor of `state_dict`
    (read from `source`) against `expected` (the tensors of `what`)."""
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{title} ({len(keys)}): {_listed(keys)}"
                for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys]
    if problems:
        raise error(f"{source} does not fit {what}: " + "; ".join(problems))
