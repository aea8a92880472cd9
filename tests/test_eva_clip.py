import torch

from cogvlm.models.config import EVAConfig
from cogvlm.models.eva_clip import EVA2CLIPEncoder


def test_encoder_matches_published_eva_output(cogvlm_model, cogvlm_cases):
    with torch.no_grad():
        features = cogvlm_model.get_mixin("image").encoder(cogvlm_cases["image"]["pixel_values"])
    torch.testing.assert_close(features, cogvlm_cases["intermediates"]["eva_output"], atol=1e-5, rtol=1e-5)


def test_cls_token_is_dropped_and_batch_kept():
    config = EVAConfig(hidden_size=8, num_layers=1, num_attention_heads=2, inner_hidden_size=16, image_size=28)
    encoder = EVA2CLIPEncoder(config)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
        features = encoder(torch.randn(3, 3, 28, 28))
    assert features.shape == (3, config.num_patches, 8) and config.num_patches == 4
