"""Where named SAT checkpoints live: $SAT_HOME (SAT's default ~/.sat_models), as SAT resolves `--from_pretrained`.

Standard library only, so that a command line can look at a checkpoint already on disk (its model_config.json)
while checking its arguments, before torch, SAT or requests are imported. Downloading is download.py's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SAT_HOME_ENV = "SAT_HOME"
DEFAULT_SAT_HOME = "~/.sat_models"
CONFIG_FILE = "model_config.json"       # as sat_layout.CONFIG_FILE (which imports torch)


def sat_home() -> Path:
    return Path(os.environ.get(SAT_HOME_ENV) or DEFAULT_SAT_HOME).expanduser()


def local_checkpoint_dir(name_or_path: str | os.PathLike) -> Path | None:
    """The checkpoint folder `name_or_path` names if it is on disk (a folder, or a name under $SAT_HOME), else None
    (e.g. a published name not downloaded yet)."""
    for folder in (Path(name_or_path).expanduser(), sat_home() / str(name_or_path)):
        if folder.is_dir():
            return folder
    return None


def local_model_config(name_or_path: str | os.PathLike) -> dict | None:
    """The model_config.json of a checkpoint on disk, or None when there is none or it is unreadable (the loader
    reports that, in its own words)."""
    folder = local_checkpoint_dir(name_or_path)
    if folder is None:
        return None
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
