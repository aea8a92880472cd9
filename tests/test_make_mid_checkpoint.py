"""benchmarks/make_mid_checkpoint.py: the mid-size benchmark checkpoints have the sizes the README gives."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "make_mid_checkpoint.py"


def recipe():
    spec = importlib.util.spec_from_file_location("make_mid_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model,millions", [("cogvlm", 299.6), ("cogagent", 324.8)])
def test_the_mid_checkpoints_have_the_documented_size(model, millions):
    from cogvlm.utils.checkpoint_io.loading import build_model, config_from_model_config

    config = config_from_model_config(recipe().mid_model_config(model))
    parameters = sum(p.numel() for p in build_model(config).parameters())          # on the meta device
    assert round(parameters / 1e6, 1) == millions
    assert (config.language.hidden_size, config.language.num_layers, config.image_length) == (1024, 8, 256)


def test_a_smaller_one_is_written_in_the_published_layout_and_loads(tmp_path):
    from cogvlm.utils.checkpoint_io.loading import load_model

    out = tmp_path / "mid"
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", "cogvlm", "--out", str(out), "--num_layers", "1",
                             "--eva_num_layers", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["1", "latest", "model_config.json"]
    model, config = load_model(out)
    assert type(model).__name__ == "CogVLMModel" and config.language.num_layers == 1


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "keep").write_text("x")
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", "cogvlm", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not empty" in result.stderr and (tmp_path / "keep").read_text() == "x"
