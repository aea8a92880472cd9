import pytest

from cogvlm.utils.checkpoint_io.state_dict_adapter import from_published, to_published
from conftest import COGAGENT_TINY, COGVLM_TINY


def published_keys(fixture=COGVLM_TINY):
    return [line.split("\t")[0] for line in (fixture / "keys.txt").read_text().splitlines() if line]


def test_every_published_key_maps_to_a_model_key_and_back(cogvlm_model):
    keys = published_keys()
    internal = from_published(dict.fromkeys(keys))
    assert set(internal) == set(cogvlm_model.state_dict())
    assert list(to_published(internal)) == keys


def test_model_state_dict_is_in_published_order(cogvlm_model):
    assert list(to_published(cogvlm_model.state_dict())) == published_keys()


def test_cogagent_keys_map_both_ways_in_published_order(cogagent_model):
    keys = published_keys(COGAGENT_TINY)
    internal = from_published(dict.fromkeys(keys), "CogAgentModel")
    assert list(internal) == list(cogagent_model.state_dict())
    assert list(to_published(internal, "CogAgentModel")) == keys
    assert "mixins.cross_vision.encoder.blocks.1.attn.q_bias" in internal      # mixins.encoder.vit.model.*
    assert "mixins.cross_vision.pos_embed" in internal and "mixins.image.pos_embed" in internal


@pytest.mark.parametrize("name", ["CogVLMModel", "CogAgentModel"])
def test_unrelated_keys_pass_through(name):
    assert to_published({"transformer.final_layernorm.weight": 1}, name) == {"transformer.final_layernorm.weight": 1}
