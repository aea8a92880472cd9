"""utils/checkpoint_io/sat_layout.py: the SAT layout on disk, format detection, raw reads with clear errors for
cut-short files, the tensor check; and SAT's own training save writing the published key names."""
import argparse
import functools
import json
import shutil

import pytest
import torch

from cogvlm.utils.checkpoint_io import sat_layout
from cogvlm.utils.checkpoint_io.loading import load_model
from cogvlm.utils.checkpoint_io.sat_layout import CheckpointError
from conftest import COGAGENT_TINY, COGVLM_TINY
from conftest import one_line_error as any_one_line_error

CHECKPOINT = COGVLM_TINY / "checkpoint"
STATES = CHECKPOINT / "1" / "mp_rank_00_model_states.pt"


one_line_error = functools.partial(any_one_line_error, CheckpointError)


def published_keys(fixture):
    return [line.split("\t")[0] for line in (fixture / "keys.txt").read_text().splitlines() if line]




def test_detect_format(tmp_path):
    assert sat_layout.detect_format(CHECKPOINT) == sat_layout.SAT
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"vision_config": {}}))
    (hf / "model.safetensors").write_bytes(b"")
    assert sat_layout.detect_format(hf) == sat_layout.HUGGING_FACE
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))       # another model's folder
    assert sat_layout.detect_format(hf) is None
    assert sat_layout.detect_format(tmp_path / "absent") is None
    assert sat_layout.detect_format(tmp_path) is None


def test_write_checkpoint_then_read_back(tmp_path):
    state_dict = {"b": torch.arange(3.0), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    target = sat_layout.write_checkpoint(tmp_path / "out", state_dict, {"model_class": "X", "model_parallel_size": 4})
    assert sorted(p.name for p in target.iterdir()) == ["1", "latest", "model_config.json"]
    assert sat_layout.read_config(target) == {"model_class": "X", "model_parallel_size": 1}
    assert sat_layout.stored_model_parallel_size(target, sat_layout.read_config(target)) == 1
    read = sat_layout.read_state_dict(sat_layout.states_file(target))
    assert list(read) == ["b", "a"] and all(torch.equal(read[k], state_dict[k]) for k in state_dict)
    assert read["a"].dtype == torch.bfloat16


def test_an_empty_file_says_it_is_empty_and_cut_short(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    path.write_bytes(b"")
    one_line_error(lambda: sat_layout.read_state_dict(path), str(path), "empty (0 bytes)", "cut short")


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_a_truncated_states_file_says_so(tmp_path, fraction):
    data = STATES.read_bytes()
    path = tmp_path / STATES.name
    path.write_bytes(data[:int(len(data) * fraction)])
    one_line_error(lambda: sat_layout.read_state_dict(path), str(path), "truncated or corrupt", "cut short",
                   f"({path.stat().st_size} bytes)")


def test_a_truncated_safetensors_file_says_so(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    one_line_error(lambda: sat_layout.load_tensors(path), str(path), "truncated or corrupt", "cut short")


@pytest.mark.parametrize("size", [0, 10_000])
def test_loading_a_checkpoint_with_a_cut_short_states_file_names_it(tmp_path, size):
    """The path users take: an empty or partial copy of a checkpoint folder."""
    shutil.copytree(CHECKPOINT, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "1" / STATES.name
    path.write_bytes(STATES.read_bytes()[:size])
    one_line_error(lambda: load_model(tmp_path / "ckpt"), str(path), "cut short")


def test_check_tensors_lists_every_problem():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1), "d": torch.zeros(1)}
    given = {"a": torch.zeros(2), "b": torch.zeros(4, 3), "e": torch.zeros(1)}
    message = one_line_error(lambda: sat_layout.check_tensors(expected, given, "SRC", "a Model", optional={"d"}),
                             "SRC does not fit a Model", "missing (1): c;", "unexpected (1): e;",
                             "shape mismatch (1): b: checkpoint (4, 3), model (3, 4)")
    assert "d" not in message.split("missing")[1].split(";")[0]           # optional: not reported missing


def test_check_tensors_passes_a_fitting_state_dict_and_raises_the_given_error():
    class Special(CheckpointError):
        pass

    expected = {"a": torch.zeros(2), "d": torch.zeros(1)}
    sat_layout.check_tensors(expected, {"a": torch.ones(2)}, "SRC", "M", optional={"d"})
    with pytest.raises(Special, match="missing"):
        sat_layout.check_tensors(expected, {"a": torch.ones(2)}, "SRC", "M", error=Special)


@pytest.mark.parametrize("fixture", [COGVLM_TINY, COGAGENT_TINY], ids=["cogvlm", "cogagent"])
def test_sats_own_training_save_writes_the_published_layout(tmp_path, fixture):
    """sat.training.model_io.save_checkpoint (what SAT's training_main calls) saves model.state_dict() as is: a
    model loaded here speaks the published names, so the folder is a published checkpoint that loads bit-exact."""
    from sat.training.model_io import save_checkpoint

    model, config = load_model(fixture / "checkpoint")
    # as finetune.run() gives SAT this model's configuration to write into model_config.json
    args = argparse.Namespace(**{**config.to_model_config(), "save": str(tmp_path / "run"), "mode": "inference",
                                 "deepspeed": False})
    save_checkpoint(7, model, None, None, args)
    saved = sat_layout.read_state_dict(sat_layout.states_file(tmp_path / "run"))
    assert list(saved) == published_keys(fixture)
    original = sat_layout.read_state_dict(sat_layout.states_file(fixture / "checkpoint"))
    assert all(torch.equal(saved[k], original[k]) for k in original)
    reloaded, _ = load_model(tmp_path / "run")
    assert all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items())
