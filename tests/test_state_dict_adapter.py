"""The published key layout <-> the module names, and models that speak the published names themselves."""
import pytest
import torch

from cogvlm.models.cogagent import CogAgentModel
from cogvlm.models.cogvlm import CogVLMModel
from cogvlm.models.config import TINY_COGAGENT_CONFIG, TINY_CONFIG
from cogvlm.utils.checkpoint_io.loading import read_state_dict, states_file
from cogvlm.utils.checkpoint_io.state_dict_adapter import from_published, speak_published, to_published
from conftest import COGAGENT_TINY, COGVLM_TINY

CASES = [(COGVLM_TINY, CogVLMModel, TINY_CONFIG), (COGAGENT_TINY, CogAgentModel, TINY_COGAGENT_CONFIG)]
IDS = ["cogvlm", "cogagent"]


def published_keys(fixture=COGVLM_TINY):
    return [line.split("\t")[0] for line in (fixture / "keys.txt").read_text().splitlines() if line]


def module_names(model_class, config) -> list[str]:
    """The state dict keys of a model built directly (no hooks): this code's own module names."""
    with torch.device("meta"):
        return list(model_class(config).state_dict())


@pytest.mark.parametrize("fixture,model_class,config", CASES, ids=IDS)
def test_every_published_key_maps_to_a_module_name_and_back_in_order(fixture, model_class, config):
    keys = published_keys(fixture)
    internal = from_published(dict.fromkeys(keys), model_class.__name__)
    assert list(internal) == module_names(model_class, config)
    assert list(to_published(internal, model_class.__name__)) == keys


def test_cross_branch_names():
    internal = from_published(dict.fromkeys(published_keys(COGAGENT_TINY)), "CogAgentModel")
    assert "mixins.cross_vision.encoder.blocks.1.attn.q_bias" in internal      # mixins.encoder.vit.model.*
    assert "mixins.cross_vision.pos_embed" in internal and "mixins.image.pos_embed" in internal


@pytest.mark.parametrize("fixture,model_class,config", CASES, ids=IDS)
def test_both_directions_are_idempotent(fixture, model_class, config):
    """What lets a checkpoint of either layout load through the same functions."""
    name = model_class.__name__
    published = dict.fromkeys(published_keys(fixture))
    internal = dict.fromkeys(module_names(model_class, config))
    assert list(to_published(published, name)) == list(published)
    assert list(from_published(internal, name)) == list(internal)


@pytest.mark.parametrize("name", ["CogVLMModel", "CogAgentModel"])
def test_unrelated_keys_pass_through(name):
    assert to_published({"transformer.final_layernorm.weight": 1}, name) == {"transformer.final_layernorm.weight": 1}


@pytest.mark.parametrize("fixture,model_class,config", CASES, ids=IDS)
def test_a_speaking_model_saves_and_loads_published_names(fixture, model_class, config):
    model = speak_published(model_class(config))
    assert list(model.state_dict()) == published_keys(fixture)
    stored = read_state_dict(states_file(fixture / "checkpoint"))
    model.load_state_dict(stored)                                       # strict: every published name is taken
    saved = model.state_dict()
    assert list(saved) == list(stored) and all(torch.equal(saved[k], stored[k]) for k in stored)


def test_older_saves_with_module_names_still_load():
    """Training saves written by earlier versions of this code hold the module names."""
    stored = read_state_dict(states_file(COGVLM_TINY / "checkpoint"))
    legacy = from_published(stored)
    assert set(legacy) != set(stored)
    model = speak_published(CogVLMModel(TINY_CONFIG))
    model.load_state_dict(legacy)
    assert all(torch.equal(model.state_dict()[k], stored[k]) for k in stored)


def test_the_hooks_rename_only_the_wrapped_models_keys():
    """Wrapped (as DeepSpeed's engine holds it, under `module.`), the model renames its own keys and no others."""
    wrapper = torch.nn.Module()
    wrapper.mixins = torch.nn.ModuleDict({"image": torch.nn.Linear(1, 1)})     # a sibling with an internal prefix
    wrapper.module = speak_published(CogVLMModel(TINY_CONFIG))
    keys = list(wrapper.state_dict())
    assert keys == ["mixins.image.weight", "mixins.image.bias"] + [f"module.{k}" for k in published_keys()]
    wrapper.load_state_dict(wrapper.state_dict())
