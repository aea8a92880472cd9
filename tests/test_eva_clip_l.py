import torch

from cogvlm.models.config import EVALargeConfig
from cogvlm.models.eva_clip_l import EVA2CLIPLarge, VisionRotaryEmbedding
from cogvlm.utils.checkpoint_io.loading import read_state_dict, states_file
from conftest import COGAGENT_TINY


def test_rotary_table_equals_the_published_buffers():
    """The buffers the published constructor computed (stored in the fixture) come out of our config."""
    stored = read_state_dict(states_file(COGAGENT_TINY / "checkpoint"))
    rope = VisionRotaryEmbedding(EVALargeConfig(image_size=112, num_layers=2, width=32, head_width=8))
    torch.testing.assert_close(rope.freqs_cos, stored["mixins.encoder.vit.model.rope.freqs_cos"])
    torch.testing.assert_close(rope.freqs_sin, stored["mixins.encoder.vit.model.rope.freqs_sin"])


def test_one_rotary_module_is_shared_by_every_block():
    model = EVA2CLIPLarge(EVALargeConfig(image_size=28, num_layers=3, width=16, head_width=8))
    assert all(block.attn.rope is model.rope for block in model.blocks)


def test_last_block_is_not_run():
    config = EVALargeConfig(image_size=28, num_layers=2, width=16, head_width=8)
    model = EVA2CLIPLarge(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        pixels = torch.randn(1, 3, 28, 28)
        before = model(pixels)
        for p in model.blocks[-1].parameters():
            p.normal_()
    assert before.shape == (1, config.num_patches, 16)
    assert torch.equal(before, model(pixels))
