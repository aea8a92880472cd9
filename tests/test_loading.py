"""utils/checkpoint_io/loading.py: loading models strictly in any dtype, and saving the published layout."""
import shutil

import pytest
import torch

from cogvlm.utils.checkpoint_io.loading import CheckpointError, load_model, read_state_dict, save_model, states_file
from conftest import COGAGENT_TINY, COGVLM_TINY

CHECKPOINT = COGVLM_TINY / "checkpoint"


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT, target)
    return target


@pytest.mark.parametrize("checkpoint", [CHECKPOINT, COGAGENT_TINY / "checkpoint"], ids=["cogvlm", "cogagent"])
def test_load_save_load_is_equal_key_for_key(tmp_path, checkpoint):
    model, _ = load_model(checkpoint)
    save_model(model, tmp_path / "saved")
    original = read_state_dict(states_file(checkpoint))
    saved = read_state_dict(states_file(tmp_path / "saved"))
    assert list(saved) == list(original)
    assert all(torch.equal(saved[k], original[k]) for k in original)
    assert (tmp_path / "saved" / "latest").read_text() == "1"
    reloaded, config = load_model(tmp_path / "saved")
    assert config == model.config


def test_load_by_name_under_sat_home(tmp_path, monkeypatch):
    shutil.copytree(CHECKPOINT, tmp_path / "cogvlm-tiny")
    monkeypatch.setenv("SAT_HOME", str(tmp_path))
    model, config = load_model("cogvlm-tiny")
    assert config.language.hidden_size == 64


@pytest.mark.parametrize("fixture", [COGVLM_TINY, COGAGENT_TINY])
def test_loaded_weights_are_the_checkpoint_values_in_the_requested_dtype(fixture, monkeypatch):
    """Every tensor, cast one at a time, with the pages of the memory-mapped file it came from given back."""
    import cogvlm.utils.quantization.memory as memory

    released, real_release = [], memory.release_pages

    def counting_release(tensor, mappings):
        released.append(real_release(tensor, mappings))
        return released[-1]

    monkeypatch.setattr(memory, "release_pages", counting_release)
    model, _ = load_model(fixture / "checkpoint", dtype=torch.bfloat16)
    original = read_state_dict(states_file(fixture / "checkpoint"))
    loaded = model.state_dict()
    assert list(loaded) == list(original)
    for key, tensor in original.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert loaded[key].dtype == expected.dtype and torch.equal(loaded[key], expected), key
    assert any(released)        # file pages were given back, and the values read afterwards are still the file's


def test_unknown_name_or_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="'cogvlm-nope' not found.*SAT_HOME"):
        load_model("cogvlm-nope")


@pytest.mark.parametrize("remove,message", [
    ("model_config.json", "model_config.json is missing"),
    ("latest", "'latest' file is missing"),
    ("1/mp_rank_00_model_states.pt", "1/mp_rank_00_model_states.pt is missing"),
])
def test_missing_files_are_named(copy, remove, message):
    (copy / remove).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_model(copy)


def test_corrupt_states_file(copy):
    (copy / "1" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*mp_rank_00_model_states.pt"):
        load_model(copy)


def test_invalid_json(copy):
    (copy / "model_config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(copy)


def edit_states(path, edit):
    states = torch.load(path, weights_only=True)
    edit(states["module"])
    torch.save(states, path)


def test_missing_and_unexpected_keys_are_listed(copy):
    path = copy / "1" / "mp_rank_00_model_states.pt"

    def edit(sd):
        sd["mixins.eva.surprise"] = torch.zeros(1)
        del sd["mixins.rotary.vision_dense_list.1.weight"]
    edit_states(path, edit)
    with pytest.raises(CheckpointError) as error:
        load_model(copy)
    assert "missing (1): mixins.rotary.vision_dense_list.1.weight" in str(error.value)     # the checkpoint's names
    assert "unexpected (1): mixins.eva.surprise" in str(error.value)


def test_a_checkpoint_of_another_shape_is_a_shape_mismatch(copy):
    config = (copy / "model_config.json").read_text().replace('"inner_hidden_size": 128', '"inner_hidden_size": 96')
    (copy / "model_config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"shape mismatch \(\d+\): .*checkpoint \(128, 64\), model \(96, 64\)"):
        load_model(copy)


def test_unknown_model_class(copy):
    config = (copy / "model_config.json").read_text().replace('"CogVLMModel"', '"GPT2Model"')
    (copy / "model_config.json").write_text(config)
    with pytest.raises(CheckpointError, match="model_class 'GPT2Model' is not one this project loads"):
        load_model(copy)


def test_cogvlm_config_on_a_cogagent_checkpoint_lists_the_cross_branch(tmp_path):
    """A wrong model_class in a checkpoint: every CogAgent tensor is reported as unexpected."""
    shutil.copytree(COGAGENT_TINY / "checkpoint", tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "model_config.json").read_text().replace('"CogAgentModel"', '"CogVLMModel"')
    (tmp_path / "ckpt" / "model_config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"unexpected \(66\): mixins.eva.pos_embed, mixins.encoder.pos_embed"):
        load_model(tmp_path / "ckpt")


def test_an_older_training_save_with_module_names_loads_and_saves_published(tmp_path, copy):
    """Earlier versions of this code let SAT's training saves write the module names ("mixins.image..."): such a
    checkpoint still loads, to the same weights, and saves again in the published layout."""
    from cogvlm.utils.checkpoint_io.state_dict_adapter import from_published

    original = read_state_dict(states_file(CHECKPOINT))
    torch.save({"module": from_published(original)}, states_file(copy))
    assert "mixins.image.boi" in read_state_dict(states_file(copy))
    model, _ = load_model(copy)
    save_model(model, tmp_path / "saved")
    saved = read_state_dict(states_file(tmp_path / "saved"))
    assert list(saved) == list(original) and all(torch.equal(saved[k], original[k]) for k in original)
