"""CogAgentModel against the published implementation's outputs (fixture) and an independent reference."""
from dataclasses import replace

import pytest
import torch

from cogvlm.models.config import CogAgentConfig, EVAConfig, EVALargeConfig, LanguageConfig
from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.checkpoint_io.state_dict_adapter import to_published
from reference_cogvlm import cogvlm_logits
from test_cogvlm import CharTokenizer, random_model
from cogvlm.utils.inference.generation import SamplingConfig, decode_one_token, generate, prefill
from conftest import case_inputs
from cogvlm.utils.preprocessing.text_processor import TextProcessor

ATOL = RTOL = 1e-5
CASES = ["base_describe", "chat_describe", "chat_old_count", "vqa_color", "chat_history", "chat_old_history",
         "vqa_history_ignored", "base_history_ignored", "chat_bytes"]


def images(cases):
    return ImageInputs(cases["image"]["pixel_values"], cases["cross_image"]["pixel_values"])


def prompt_of(case, image):
    return case_inputs(case, image)


def test_cross_encoder_and_image_path_match_published_intermediates(cogagent_model, cogagent_cases):
    inputs, expected = images(cogagent_cases), cogagent_cases["intermediates"]
    with torch.no_grad():
        branch = cogagent_model.get_mixin("cross_vision")
        torch.testing.assert_close(branch.encoder(inputs.cross_pixel_values), expected["cross_vit_output"],
                                   atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(branch.encode(inputs.cross_pixel_values), expected["encoder_outputs"],
                                   atol=ATOL, rtol=RTOL)
        image = cogagent_model.get_mixin("image")
        torch.testing.assert_close(image.adapter_input(inputs), expected["glu_input"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(image.adapter(expected["glu_input"]), expected["image_embeds"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", CASES)
def test_logits_hidden_states_and_greedy_tokens_match_published(cogagent_model, cogagent_cases, name):
    case = cogagent_cases["cases"][name]
    with torch.no_grad():
        logits, *layers = cogagent_model(case["input_ids"], case["position_ids"], images=images(cogagent_cases),
                                         image_embed_mask=case["image_embed_mask"],
                                         vision_expert_mask=case["vision_expert_mask"], output_hidden_states=True)
    torch.testing.assert_close(logits, case["logits"], atol=ATOL, rtol=RTOL)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(layer["hidden_states"], case["hidden_states"][i], atol=ATOL, rtol=RTOL)
    sampling = SamplingConfig(max_length=case["generation"]["max_length"])
    assert list(generate(cogagent_model, prompt_of(case, images(cogagent_cases)), sampling, (2,))) == \
        case["generation"]["new_token_ids"]


def test_cached_step_logits_match_published(cogagent_model, cogagent_cases):
    case = cogagent_cases["cases"]["chat_history"]
    cache = cogagent_model.new_kv_cache(1, case["generation"]["max_length"])
    with torch.no_grad():
        steps = [prefill(cogagent_model, prompt_of(case, images(cogagent_cases)), cache)]
        position = case["position_ids"][:, -1:]
        for token in case["generation"]["new_token_ids"][:-1]:
            position = position + 1
            steps.append(decode_one_token(cogagent_model, torch.tensor([[token]]), position, cache))
    torch.testing.assert_close(torch.cat(steps), case["generation"]["step_logits"], atol=ATOL, rtol=RTOL)


def test_cross_encoder_and_cross_key_values_run_once_per_generation(cogagent_model, cogagent_cases):
    """The published code re-encodes the 1120 px image and re-projects its keys/values at every decode step."""
    calls = {"encoder": 0, "key_value": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    handles = [cogagent_model.get_mixin("cross_vision").encoder.register_forward_hook(count("encoder"))]
    handles += [layer.cross_attention.key_value.register_forward_hook(count("key_value"))
                for layer in cogagent_model.transformer.layers]
    case = cogagent_cases["cases"]["chat_describe"]
    try:
        tokens = list(generate(cogagent_model, prompt_of(case, images(cogagent_cases)),
                               SamplingConfig(max_length=case["generation"]["max_length"])))
    finally:
        for handle in handles:
            handle.remove()
    assert len(tokens) == 8
    assert calls == {"encoder": 1, "key_value": len(cogagent_model.transformer.layers)}


OTHER_SHAPES = [
    # 3 decoder layers, 2 heads; cross branch: 3 blocks of width 24 (4 heads of 6), 4x4 grid; cross heads of 5
    # (so the cross inner size 10 differs from the encoder width).
    CogAgentConfig(language=LanguageConfig(vocab_size=300, hidden_size=32, num_layers=3, num_attention_heads=2,
                                           inner_hidden_size=80),
                   vision=EVAConfig(hidden_size=24, num_layers=1, num_attention_heads=3, inner_hidden_size=40,
                                    image_size=42),
                   cross_vision=EVALargeConfig(image_size=56, num_layers=3, width=24, head_width=8),
                   cross_head_dim=5),
    CogAgentConfig(language=LanguageConfig(vocab_size=200, hidden_size=16, num_layers=2, num_attention_heads=4,
                                           inner_hidden_size=24),
                   vision=EVAConfig(hidden_size=8, num_layers=1, num_attention_heads=2, inner_hidden_size=8,
                                    image_size=28),
                   cross_vision=EVALargeConfig(image_size=70, num_layers=2, width=16, head_width=8),
                   cross_head_dim=4),
]


@pytest.mark.parametrize("config,seed", [(OTHER_SHAPES[0], 11), (OTHER_SHAPES[1], 12)])
def test_matches_independent_reference_on_other_shapes(config, seed):
    model = random_model(config, seed)
    text = TextProcessor(CharTokenizer(config.language.vocab_size), "chat", config.image_length)("Click the box")
    generator = torch.Generator().manual_seed(seed)
    size, cross_size = config.vision.image_size, config.cross_vision.image_size
    inputs = ImageInputs(torch.randn(1, 3, size, size, generator=generator),
                         torch.randn(1, 3, cross_size, cross_size, generator=generator))
    batch = dict(input_ids=text.input_ids, position_ids=text.position_ids,
                 vision_expert_mask=text.vision_expert_mask, image_embed_mask=text.image_embed_mask)
    with torch.no_grad():
        logits = model.forward_inputs(replace(text, images=inputs))[0]
        expected = cogvlm_logits(to_published(model.state_dict(), "CogAgentModel"), config.to_model_config(),
                                 inputs.pixel_values, **batch,
                                 cross=(inputs.cross_pixel_values, config.cross_vision.num_layers,
                                        config.cross_vision.head_width))
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)
