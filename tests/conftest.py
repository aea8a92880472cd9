"""Shared fixtures: the reference fixtures' data and the tiny models loaded from them (once per session)."""
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: hypothesis's default 200 ms deadline per example and its too-slow
# health check fail on a loaded machine (a slow example is rerun and reported as flaky).
settings.register_profile("no-timing", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no-timing")

FIXTURES = Path(__file__).parent / "fixtures"
COGVLM_TINY = FIXTURES / "cogvlm-tiny"
COGAGENT_TINY = FIXTURES / "cogagent-tiny"
# Seconds a subprocess may take: it only turns a hang into a failure, and a loaded 2-core machine (where importing
# torch and SAT alone can take a minute) must never reach it. No test expects a speed.
HANG_TIMEOUT = 900


def checkpoint_copy(tmp_path, name="ckpt", text_processor_version=..., tokenizer=COGVLM_TINY / "tokenizer.model"):
    """A copy of the cogvlm-tiny fixture checkpoint, with `tokenizer` copied inside unless it is None;
    text_processor_version None removes that key from model_config.json, ... keeps it, a string sets it."""
    import json
    import shutil

    target = tmp_path / name
    shutil.copytree(COGVLM_TINY / "checkpoint", target)
    if text_processor_version is not ...:
        config = json.loads((target / "model_config.json").read_text())
        config.pop("text_processor_version", None)
        if text_processor_version is not None:
            config["text_processor_version"] = text_processor_version
        (target / "model_config.json").write_text(json.dumps(config, indent=4))
    if tokenizer is not None:
        shutil.copy(tokenizer, target / "tokenizer.model")
    return target


def case_inputs(case, images):
    """A fixture case's published ids, positions and masks (1, L) with `images`, as the model's inputs."""
    from cogvlm.models.inputs import ModelInputs

    return ModelInputs(case["input_ids"], case["position_ids"], case["vision_expert_mask"], case["image_embed_mask"],
                       images)


@pytest.fixture(scope="session")
def cogvlm_cases():
    return torch.load(COGVLM_TINY / "cases.pt", weights_only=False)


@pytest.fixture(scope="session")
def cogvlm_model():
    from cogvlm.utils.checkpoint_io.loading import load_model

    model, _ = load_model(COGVLM_TINY / "checkpoint")
    return model


@pytest.fixture(scope="session")
def cogagent_cases():
    return torch.load(COGAGENT_TINY / "cases.pt", weights_only=False)


@pytest.fixture(scope="session")
def cogagent_model():
    from cogvlm.utils.checkpoint_io.loading import load_model

    model, _ = load_model(COGAGENT_TINY / "checkpoint")
    return model


def run_under_torchrun(script, *args, processes=2, timeout=HANG_TIMEOUT):
    """Run a script in `processes` processes with torchrun; fail (with its stderr) on a non-zero exit or a hang."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", str(script), *map(str, args)],
                            env=env, capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


@pytest.fixture(scope="session")
def mp2_runs(tmp_path_factory):
    """For each fixture: its mp=1 checkpoint loaded split across 2 torchrun processes; the results of every case
    (logits, greedy tokens) and the split checkpoint the processes saved."""
    runs = {}
    for fixture in (COGVLM_TINY, COGAGENT_TINY):
        out = tmp_path_factory.mktemp(fixture.name)
        run_under_torchrun(Path(__file__).parent / "model_parallel_worker.py", "--checkpoint", fixture / "checkpoint",
                           "--cases", fixture / "cases.pt", "--out", out / "results.pt", "--save", out / "mp2")
        runs[fixture.name] = {"results": torch.load(out / "results.pt", weights_only=False), "checkpoint": out / "mp2"}
    return runs


def one_line_error(error_type, call, *fragments) -> str:
    """The message of the `error_type` that `call()` raises: one line, holding every fragment."""
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message
