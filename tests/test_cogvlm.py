"""CogVLMModel against the published implementation's outputs (fixture) and an independent reference forward."""
import pytest
import torch

from cogvlm.models.config import CogVLMConfig, EVAConfig, LanguageConfig
from cogvlm.models.inputs import ImageInputs, ModelInputs
from cogvlm.utils.checkpoint_io.state_dict_adapter import to_published
from reference_cogvlm import cogvlm_logits
from cogvlm.utils.checkpoint_io.loading import build_model
from cogvlm.utils.preprocessing.text_processor import TextProcessor
from conftest import case_inputs

ATOL = RTOL = 1e-5      # the fixture README's tolerance for fp32


def forward(model, case, pixel_values, **kw):
    return model.forward_inputs(case_inputs(case, ImageInputs(pixel_values)), **kw)


@pytest.mark.parametrize("name", ["base_describe", "chat_describe", "chat_old_count", "vqa_color", "chat_history",
                                  "chat_old_history", "vqa_history_ignored", "base_history_ignored", "chat_bytes"])
def test_logits_and_hidden_states_match_published(cogvlm_model, cogvlm_cases, name):
    case = cogvlm_cases["cases"][name]
    with torch.no_grad():
        logits, *layers = forward(cogvlm_model, case, cogvlm_cases["image"]["pixel_values"],
                                  output_hidden_states=True)
    torch.testing.assert_close(logits, case["logits"], atol=ATOL, rtol=RTOL)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(layer["hidden_states"], case["hidden_states"][i], atol=ATOL, rtol=RTOL)


def test_fixture_covers_every_case(cogvlm_cases):
    assert len(cogvlm_cases["case_order"]) == 9     # the parametrised list above names them all


class CharTokenizer:
    """Deterministic stand-in tokenizer: one id per character, for vocabularies of any size."""
    bos_token_id, eos_token_id = 1, 2

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode(self, text):
        return [3 + ord(c) % (self.vocab_size - 3) for c in text]


def random_model(config, seed):
    """A CogVLMModel with every parameter drawn from a seeded generator (buffers as constructed)."""
    model = build_model(config, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() == 1 and "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.dim() == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise / param[0].numel() ** 0.5)
    return model.eval()


OTHER_SHAPES = [
    # 3 decoder layers, visual experts in the first 2 only; 2 heads; a 3x3 patch grid with 3-head EVA.
    CogVLMConfig(language=LanguageConfig(vocab_size=300, hidden_size=32, num_layers=3, num_attention_heads=2,
                                         inner_hidden_size=80),
                 vision=EVAConfig(hidden_size=24, num_layers=1, num_attention_heads=3, inner_hidden_size=40,
                                  image_size=42),
                 num_vision_expert_layers=2),
    # 8 heads of width 4, a 5x5 grid.
    CogVLMConfig(language=LanguageConfig(vocab_size=1100, hidden_size=32, num_layers=1, num_attention_heads=8,
                                         inner_hidden_size=48),
                 vision=EVAConfig(hidden_size=16, num_layers=3, num_attention_heads=2, inner_hidden_size=32,
                                  image_size=70)),
]


@pytest.mark.parametrize("config,seed", [(OTHER_SHAPES[0], 1), (OTHER_SHAPES[1], 2), (OTHER_SHAPES[0], 3)])
def test_matches_independent_reference_on_other_shapes(config, seed):
    model = random_model(config, seed)
    processor = TextProcessor(CharTokenizer(config.language.vocab_size), "chat", config.image_length)
    prompts = [processor("What is shown here?", [("Hi", "Hello there")]), processor("Count the boxes, please!!")]
    length = min(len(p) for p in prompts)
    batch = {k: torch.cat([getattr(p, k)[:, :length] for p in prompts])
             for k in ("input_ids", "position_ids", "vision_expert_mask", "image_embed_mask")}
    pixels = torch.randn(2, 3, config.vision.image_size, config.vision.image_size,
                         generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model.forward_inputs(ModelInputs(**batch, images=ImageInputs(pixels)))[0]
        expected = cogvlm_logits(to_published(model.state_dict()), config.to_model_config(), pixels,
                                 num_vision_expert_layers=config.num_vision_expert_layers, **batch)
    assert logits.shape == (2, length, config.language.vocab_size)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_text_only_forward_uses_language_experts_only(cogvlm_model, cogvlm_cases):
    """Without an image, no token is routed to a visual expert: zeroing the experts changes nothing."""
    case = cogvlm_cases["cases"]["chat_describe"]
    ids, positions = case["input_ids"][:, 19:], torch.arange(case["input_ids"].shape[1] - 19)[None]
    with torch.no_grad():
        before = cogvlm_model(ids, positions)[0]
        experts = cogvlm_model.get_mixin("visual_expert_mlp").vision_dense_4h_to_h_list
        saved = [m.weight.clone() for m in experts.values()]
        for m in experts.values():
            m.weight.zero_()
        after = cogvlm_model(ids, positions)[0]
        for m, w in zip(experts.values(), saved):
            m.weight.copy_(w)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
