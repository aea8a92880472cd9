"""The only patches this project applies to SwissArmyTransformer, for training on a machine without CUDA.

SAT 0.4.12's training timers call `torch.cuda.synchronize()` unconditionally, which asserts without CUDA. On such
a machine the timers get a no-op synchronisation; with CUDA nothing is patched. Each patch checks that SAT's code
is still the code it was written for and refuses (PatchDoesNotApply) otherwise; tests/test_sat_patches.py fails
when a SAT upgrade makes a patch stale. `undo_cpu_training_patches()` gives SAT its own code back (e.g. after a test).
"""
from __future__ import annotations

import inspect
import time
from typing import Callable

import torch

PATCHED_SAT_VERSION = "0.4.12"
CUDA_SYNC = "torch.cuda.synchronize()"


class PatchDoesNotApply(RuntimeError):
    """SAT's code is not what a patch was written for."""


def _check(function, expected: str) -> None:
    import sat

    if sat.__version__ != PATCHED_SAT_VERSION or expected not in inspect.getsource(function):
        raise PatchDoesNotApply(f"{function.__qualname__} of SAT {sat.__version__} no longer contains '{expected}'; "
                                f"revisit utils/training/sat_patches.py (written for SAT {PATCHED_SAT_VERSION})")


def _start(self) -> None:
    assert not self.started_, "timer has already been started"
    self.start_time = time.time()
    self.started_ = True


def _stop(self) -> None:
    assert self.started_, "timer is not started"
    self.elapsed_ += time.time() - self.start_time
    self.started_ = False


# SAT's Timer methods and their CPU versions: SAT's code without the CUDA synchronisation.
CPU_TIMER_METHODS: dict[str, Callable] = {"start": _start, "stop": _stop}
# SAT's own methods while the patch is applied (empty otherwise): to check their source and to undo the patch.
_sat_originals: dict[str, Callable] = {}


def sat_timer_method(name: str) -> Callable:
    """SAT's own Timer method `name`, whether or not the patch is applied."""
    from sat.training.utils import Timers

    return _sat_originals.get(name, getattr(Timers.Timer, name))


def apply_cpu_training_patches() -> bool:
    """Patch what SAT's training loop needs on a CPU-only machine; True when something is patched."""
    if torch.cuda.is_available():
        return False
    if _sat_originals:
        return True
    from sat.training.utils import Timers

    for name in CPU_TIMER_METHODS:
        _check(getattr(Timers.Timer, name), CUDA_SYNC)
    for name, method in CPU_TIMER_METHODS.items():
        _sat_originals[name] = getattr(Timers.Timer, name)
        setattr(Timers.Timer, name, method)
    return True


def undo_cpu_training_patches() -> None:
    """Give SAT its own code back; nothing to do when no patch is applied."""
    from sat.training.utils import Timers

    for name, method in _sat_originals.items():
        setattr(Timers.Timer, name, method)
    _sat_originals.clear()
