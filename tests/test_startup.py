"""Start-up: the CLI's --help and its argument errors import no heavy library, a missing checkpoint is reported
before torch and SAT are imported, and building a model to load a checkpoint does not import torch._dynamo (0.7 s). Imports are read from `python -X importtime` of a fresh process,
so the test sees exactly what a user's process imports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_TIMEOUT

from cogvlm.utils.checkpoint_io.loading import SkipRandomInitOnMeta

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = REPO_ROOT / "basic_demo" / "cli_demo_sat.py"
HEAVY = {"torch", "sat", "deepspeed", "transformers", "PIL", "requests", "huggingface_hub", "spacy", "sentencepiece"}
MODEL_STACK = {"torch", "sat", "deepspeed", "transformers", "PIL", "huggingface_hub", "spacy", "sentencepiece"}


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run python -X importtime with `args`; its result and every module it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=HANG_TIMEOUT)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    return result, modules


def heavy_roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules} & HEAVY


def test_importtime_parsing_sees_a_heavy_import():
    # The guard for the tests below: the parsing finds torch when torch is imported.
    _, modules = imported_modules("-c", "import torch")
    assert heavy_roots(modules) == {"torch"}


def test_help_imports_nothing_heavy():
    result, modules = imported_modules(str(CLI), "--help")
    assert result.returncode == 0 and "--from_pretrained" in result.stdout
    assert not heavy_roots(modules)


@pytest.mark.parametrize("argv", [["--image", "x.png"], ["--query", "hi"], ["--fp16", "--bf16"],
                                  ["--max_length", "1"], ["--quant", "3"]])
def test_argument_errors_import_nothing_heavy(argv):
    result, modules = imported_modules(str(CLI), *argv)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert not heavy_roots(modules)


def test_a_missing_checkpoint_is_reported_before_the_model_stack_is_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))
    monkeypatch.delenv("COGVLM_MIRROR", raising=False)
    missing = tmp_path / "no-such-checkpoint"
    result, modules = imported_modules(str(CLI), "--from_pretrained", str(missing), "--image", "x.png", "--query", "hi")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")] == [
        f"Error: checkpoint '{missing}' not found: it is neither a folder nor a model under $SAT_HOME "
        f"({tmp_path / 'sat_home'}), and not a published name (cogvlm-chat-v1.1, cogvlm-base-224, cogvlm-base-490, "
        f"cogvlm-grounding-generalist-v1.1, cogagent-chat, cogagent-vqa, glm-4v-9b, cogagent-9b-20241220)"]
    assert not {name.split(".")[0] for name in modules} & MODEL_STACK


@pytest.mark.parametrize("checkpoint", [REPO_ROOT / "checkpoints" / "captcha-tiny",
                                        REPO_ROOT / "tests" / "fixtures" / "cogagent-tiny" / "checkpoint"])
def test_loading_a_checkpoint_does_not_import_torch_dynamo(checkpoint):
    code = ("import sys\n"
            "from cogvlm.utils.checkpoint_io.loading import load_model\n"
            f"load_model({str(checkpoint)!r})\n"
            "print('loaded; torch._dynamo imported:', 'torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded; torch._dynamo imported: False" in result.stdout


def test_skip_random_init_on_meta_leaves_meta_shapes_and_real_tensors_initialised():
    with SkipRandomInitOnMeta():
        meta = torch.empty(3, 5, device="meta")
        assert torch.nn.init.normal_(meta) is meta and meta.shape == (3, 5)
        assert torch.nn.init.kaiming_uniform_(meta) is meta
        real = torch.zeros(1000)
        torch.nn.init.normal_(real, std=1.0)
        uniform = torch.zeros(1000).uniform_(2.0, 3.0)
    assert 0.8 < real.std().item() < 1.2
    assert uniform.min().item() >= 2.0 and uniform.max().item() <= 3.0 and uniform.std().item() > 0.1


def test_models_built_on_cpu_still_run_sat_initialisers():
    # Most layers skip initialisation (skip_init=True: weights are loaded or set by init_weights); SAT's word
    # embedding is drawn from N(0, 0.02) as it builds.
    from cogvlm.models.config import CAPTCHA_TINY_CONFIG
    from cogvlm.utils.checkpoint_io.loading import build_model

    embedding = build_model(CAPTCHA_TINY_CONFIG, device="cpu").state_dict()["transformer.word_embeddings.weight"]
    assert 0.015 < embedding.std().item() < 0.025 and abs(embedding.mean().item()) < 0.005
