import torch

from cogvlm.models.rotary import RotaryEmbedding, apply_rotary


def test_rotation_matches_complex_multiplication_and_keeps_norms():
    rotary = RotaryEmbedding(head_dim=8, base=10000.0)
    x = torch.randn(2, 3, 5, 8)                                         # (B, nh, T, hd)
    positions = torch.tensor([[0, 1, 1, 1, 7], [3, 4, 5, 6, 100]])
    cos, sin = rotary.cos_sin(positions, torch.float32)
    rotated = apply_rotary(x, cos, sin)
    angle = positions[:, None, :, None].float() * rotary.inv_freq
    z = torch.complex(x[..., :4], x[..., 4:]) * torch.exp(1j * angle)
    torch.testing.assert_close(rotated, torch.cat([z.real, z.imag], -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(rotated[:, :, 0][:1], x[:1, :, 0])              # position 0 is the identity


def test_positions_are_built_in_inv_freq_dtype_like_the_published_code():
    """A bf16 checkpoint stores bf16 inv_freq; positions above 256 then round, as in the published model."""
    rotary = RotaryEmbedding(head_dim=4, base=10000.0).to(torch.bfloat16)
    cos, _ = rotary.cos_sin(torch.tensor([[257, 256]]), torch.float32)
    assert torch.equal(cos[0, 0, 0], cos[0, 0, 1])
