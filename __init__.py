"""CogVLM and CogAgent on SwissArmyTransformer.

The repository is the package `cogvlm` (setup.py maps the package onto the repository root), so the folders of the
published repository are its subpackages and keep their places:

    cogvlm.models           models/           one module per component of the papers, and their configurations
    cogvlm.utils            utils/            preprocessing, inference, checkpoint_io, parallel, training, grounding
    cogvlm.basic_demo       basic_demo/       the chat CLI
    cogvlm.finetune_demo    finetune_demo/    fine-tuning and evaluation

Importing it imports nothing heavy.
"""
from __future__ import annotations

import sys
from pathlib import Path

__version__ = "0.2.0"

# The repository root in a checkout (or an editable install); the installed package folder otherwise.
PACKAGE_ROOT = Path(__file__).resolve().parent


def warn_if_other_checkout(script: str) -> None:
    """Warn when a checkout's script runs the `cogvlm` package of somewhere else, e.g. a stale `pip install -e` of
    another clone: the code that runs would silently not be the code beside the script."""
    checkout = Path(script).resolve().parent.parent
    if (checkout / "__init__.py").is_file() and (checkout / "setup.py").is_file() and checkout != PACKAGE_ROOT:
        print(f"Warning: {script} is running the cogvlm package installed from {PACKAGE_ROOT}, not the code beside "
              f"it; run `pip install -e {checkout}` to use this checkout", file=sys.stderr)
