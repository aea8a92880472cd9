import json

import pytest

from cogvlm.models.config import PUBLISHED_CONFIGS, TINY_COGAGENT_CONFIG, TINY_CONFIG, CogAgentConfig, CogVLMConfig
from conftest import COGAGENT_TINY, COGVLM_TINY


def test_published_configs_hold_the_published_values():
    chat = PUBLISHED_CONFIGS["cogvlm-chat-v1.1"]
    assert (chat.language.hidden_size, chat.language.num_layers, chat.language.num_attention_heads,
            chat.language.inner_hidden_size, chat.language.vocab_size) == (4096, 32, 32, 11008, 32000)
    assert (chat.vision.hidden_size, chat.vision.num_layers, chat.vision.num_attention_heads,
            chat.vision.inner_hidden_size, chat.vision.patch_size) == (1792, 63, 16, 15360, 14)
    assert chat.image_length == 35 * 35 and chat.text_processor_version == "chat_old"
    assert PUBLISHED_CONFIGS["cogvlm-base-224"].image_length == 256
    assert PUBLISHED_CONFIGS["cogvlm-grounding-generalist-v1.1"].text_processor_version == "base"
    assert list(chat.vision_expert_layers) == list(range(32))


def test_fixture_model_config_round_trips():
    raw = json.loads((COGVLM_TINY / "checkpoint" / "model_config.json").read_text())
    config = CogVLMConfig.from_model_config(raw)
    assert config == TINY_CONFIG
    assert config.to_model_config() == {**raw}
    assert config.extra == {"tokenizer_type": "tiny-bpe-512"}


def test_inconsistent_image_length_is_rejected():
    raw = json.loads((COGVLM_TINY / "checkpoint" / "model_config.json").read_text())
    with pytest.raises(ValueError, match="image_length 17 does not match"):
        CogVLMConfig.from_model_config({**raw, "image_length": 17})


def test_published_cogagent_configs():
    chat = PUBLISHED_CONFIGS["cogagent-chat"]
    assert chat.image_length == 256 and chat.cross_image_size == 1120 and chat.text_processor_version == "chat"
    cross = chat.cross_vision
    assert (cross.width, cross.num_layers, cross.head_width, cross.num_heads, cross.patch_size) == (1024, 24, 64, 16, 14)
    assert cross.num_patches == 6400 and cross.mlp_hidden_size == int(1024 * 2.6667)
    assert chat.cross_attn_hidden_size == 1024 and chat.language.num_attention_heads * chat.cross_head_dim == 1024
    assert PUBLISHED_CONFIGS["cogagent-vqa"].text_processor_version == "chat_old"
    published = chat.to_model_config()
    assert "cross_vision_args" not in published and published["is_decoder"] == [True] * 32


def test_cogagent_fixture_config_round_trips():
    raw = json.loads((COGAGENT_TINY / "checkpoint" / "model_config.json").read_text())
    config = CogAgentConfig.from_model_config(raw)
    assert config == TINY_COGAGENT_CONFIG
    assert config.to_model_config() == raw


def test_cogagent_cross_width_must_match_encoder():
    raw = json.loads((COGAGENT_TINY / "checkpoint" / "model_config.json").read_text())
    with pytest.raises(ValueError, match="cross_attn_hidden_size 48 must equal the cross encoder's width 32"):
        CogAgentConfig.from_model_config({**raw, "cross_attn_hidden_size": 48})
