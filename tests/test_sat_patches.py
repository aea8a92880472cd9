"""The one SAT patch: it must still match SAT's source (a SAT upgrade that changes it fails here) and work."""
import pytest
import torch

from cogvlm.utils.training import sat_patches


def test_the_patched_sat_code_is_still_what_the_patch_was_written_for():
    import sat
    from sat.training.utils import Timers

    assert sat.__version__ == sat_patches.PATCHED_SAT_VERSION
    timer = Timers.Timer
    sat_patches._check(getattr(timer, "original_start", timer.start), "torch.cuda.synchronize()")
    sat_patches._check(getattr(timer, "original_stop", timer.stop), "torch.cuda.synchronize()")


def test_a_changed_sat_function_is_refused():
    def start(self):
        self.started_ = True

    with pytest.raises(sat_patches.PatchDoesNotApply, match="no longer contains"):
        sat_patches._check(start, "torch.cuda.synchronize()")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch applies only without CUDA")
def test_timers_work_on_a_cpu_after_patching():
    from sat.training.utils import Timers

    assert sat_patches.apply_cpu_training_patches() is True
    assert sat_patches.apply_cpu_training_patches() is True            # idempotent
    timers = Timers()
    timers("step").start()
    timers("step").stop()
    assert timers("step").elapsed() >= 0
