"""The only patches this project applies to SwissArmyTransformer, for training on a machine without CUDA.

SAT 0.4.12's training timers call `torch.cuda.synchronize()` unconditionally, which asserts without CUDA. On such
a machine the timers get a no-op synchronisation; with CUDA nothing is patched. Each patch checks that SAT's code
is still the code it was written for and refuses (PatchDoesNotApply) otherwise; tests/test_sat_patches.py fails
when a SAT upgrade makes a patch stale.
"""
import inspect
import time

import torch

PATCHED_SAT_VERSION = "0.4.12"


class PatchDoesNotApply(RuntimeError):
    """SAT's code is not what a patch was written for."""


def _check(function, expected: str) -> None:
    import sat

    if sat.__version__ != PATCHED_SAT_VERSION or expected not in inspect.getsource(function):
        raise PatchDoesNotApply(f"{function.__qualname__} of SAT {sat.__version__} no longer contains "
                                f"'{expected}'; revisit utils/sat_patches.py (written for SAT {PATCHED_SAT_VERSION})")


def apply_cpu_training_patches() -> bool:
    """Patch what SAT's training loop needs on a CPU-only machine; True when something was patched."""
    if torch.cuda.is_available():
        return False
    from sat.training.utils import Timers

    timer = Timers.Timer
    if getattr(timer, "_cpu_patched", False):
        return True
    _check(timer.start, "torch.cuda.synchronize()")
    _check(timer.stop, "torch.cuda.synchronize()")

    def start(self):
        assert not self.started_, "timer has already been started"
        self.start_time = time.time()
        self.started_ = True

    def stop(self):
        assert self.started_, "timer is not started"
        self.elapsed_ += time.time() - self.start_time
        self.started_ = False

    timer.original_start, timer.original_stop = timer.start, timer.stop       # kept for the source check in tests
    timer.start, timer.stop, timer._cpu_patched = start, stop, True
    return True
