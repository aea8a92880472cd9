"""The one SAT patch: it must still match SAT's source (a SAT upgrade that changes it fails here), work on a CPU,
and leave SAT as it found it once undone (every test here undoes it, so the rest of the session sees SAT's code)."""
from __future__ import annotations

import pytest
import torch
from sat.training.utils import Timers

from cogvlm.utils.training import sat_patches


@pytest.fixture
def sat_timer():
    """SAT's own Timer methods before the test; the test must leave exactly them in place."""
    originals = {name: Timers.Timer.__dict__[name] for name in sat_patches.CPU_TIMER_METHODS}
    yield originals
    sat_patches.undo_cpu_training_patches()
    assert {name: Timers.Timer.__dict__[name] for name in originals} == originals


@pytest.fixture
def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


class FakeClock:
    def __init__(self, *readings: float):
        self.readings = list(readings)

    def time(self) -> float:
        return self.readings.pop(0)


def test_the_patched_sat_code_is_still_what_the_patch_was_written_for():
    import sat

    assert sat.__version__ == sat_patches.PATCHED_SAT_VERSION
    for name in sat_patches.CPU_TIMER_METHODS:
        sat_patches._check(sat_patches.sat_timer_method(name), sat_patches.CUDA_SYNC)


def test_a_changed_sat_function_is_refused():
    def start(self):
        self.started_ = True

    with pytest.raises(sat_patches.PatchDoesNotApply, match="no longer contains"):
        sat_patches._check(start, sat_patches.CUDA_SYNC)


def test_timers_measure_on_a_cpu_after_patching(sat_timer, without_cuda, monkeypatch):
    assert sat_patches.apply_cpu_training_patches() is True
    assert sat_patches.apply_cpu_training_patches() is True            # idempotent: patched once
    assert sat_patches.sat_timer_method("start") is sat_timer["start"]
    monkeypatch.setattr(sat_patches, "time", FakeClock(10.0, 12.5, 20.0, 21.0))
    timers = Timers()
    timers("step").start()
    timers("step").stop()
    timers("step").start()
    timers("step").stop()
    assert timers("step").elapsed() == 3.5


def test_undo_gives_sat_its_own_timer_back(sat_timer, without_cuda):
    sat_patches.apply_cpu_training_patches()
    assert Timers.Timer.start is not sat_timer["start"]
    sat_patches.undo_cpu_training_patches()
    assert {name: Timers.Timer.__dict__[name] for name in sat_timer} == sat_timer
    assert sat_patches.apply_cpu_training_patches() is True     # and it can be patched again


def test_nothing_is_patched_where_cuda_is_available(sat_timer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sat_patches.apply_cpu_training_patches() is False
    assert {name: Timers.Timer.__dict__[name] for name in sat_timer} == sat_timer
