"""models/glm4.py: the ChatGLM4 decoder's rotary layouts and grouped-query attention, against plain references
written from the published formulas (the full-model parity is tests/test_glm4v.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cogvlm.models.glm4 import apply_partial_rotary, grouped_query_attention, rotary_tables
from cogvlm.models.kv_cache import attention_mask

# --- rotary layouts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_rotary_layouts_differ_by_a_permutation_of_the_rotary_dimensions(seed):
    """Interleaved pairs (2i, 2i+1) = rotate-half pairs (i, i + d/2) after moving dimension i to 2i, i + d/2 to 2i+1."""
    from cogvlm.models.config import GLM4LanguageConfig

    generator = torch.Generator().manual_seed(seed)
    lang = GLM4LanguageConfig(hidden_size=96, num_attention_heads=4, head_dim=24, num_kv_groups=2)
    x = torch.randn(2, 3, 5, lang.head_dim, generator=generator)                   # (B, nh, T, hd)
    positions = torch.randint(0, 2000, (2, 5), generator=generator)
    cos, sin = rotary_tables(positions, lang, torch.float32)
    half = lang.rotary_dim // 2
    order = torch.arange(lang.rotary_dim).view(2, half).t().flatten()               # 0, d/2, 1, d/2 + 1, ...
    order = torch.cat([order, torch.arange(lang.rotary_dim, lang.head_dim)])
    rotate_half = apply_partial_rotary(x, cos, sin, "rotate_half")
    interleaved = apply_partial_rotary(x[..., order], cos, sin, "interleaved")
    torch.testing.assert_close(interleaved, rotate_half[..., order])
    assert torch.equal(rotate_half[..., lang.rotary_dim:], x[..., lang.rotary_dim:])     # half the head passes


def test_interleaved_rotary_is_the_published_pairwise_rotation():
    """out[2i] = x[2i] cos_i - x[2i+1] sin_i, out[2i+1] = x[2i+1] cos_i + x[2i] sin_i, angle_i = p / base^(2i/d)."""
    from cogvlm.models.config import GLM4LanguageConfig

    lang = GLM4LanguageConfig(hidden_size=32, num_attention_heads=2, head_dim=16, num_kv_groups=1, rope_ratio=2.0)
    x = torch.randn(1, 1, 1, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    position = 37
    cos, sin = rotary_tables(torch.tensor([[position]]), lang, torch.float64)
    out = apply_partial_rotary(x, cos, sin, "interleaved")[0, 0, 0]
    x = x[0, 0, 0]
    for i in range(4):
        angle = torch.tensor(position / (20000.0 ** (2 * i / 8)), dtype=torch.float64)
        torch.testing.assert_close(out[2 * i], x[2 * i] * angle.cos() - x[2 * i + 1] * angle.sin(), atol=1e-6, rtol=0)
        torch.testing.assert_close(out[2 * i + 1], x[2 * i + 1] * angle.cos() + x[2 * i] * angle.sin(), atol=1e-6,
                                   rtol=0)
    assert torch.equal(out[8:], x[8:])


def expanded_attention(query, key, value, mask):
    """The published way: K/V groups expanded to every head (head h reads group h // (nh / ng)), then attention."""
    repeat = query.shape[1] // key.shape[1]
    return F.scaled_dot_product_attention(query, key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1),
                                          attn_mask=mask)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("new_tokens,past", [(1, 6), (5, 0), (3, 4)])
@pytest.mark.parametrize("padded", [False, True])
def test_grouped_query_attention_equals_expanded_heads(groups, new_tokens, past, padded):
    generator = torch.Generator().manual_seed(groups * 100 + new_tokens * 10 + past)
    batch, heads, head_dim, total = 2, 8, 16, past + new_tokens
    query = torch.randn(batch, heads, new_tokens, head_dim, generator=generator)
    key = torch.randn(batch, groups, total, head_dim, generator=generator)
    value = torch.randn(batch, groups, total, head_dim, generator=generator)
    real = torch.ones(batch, total, dtype=torch.bool)
    if padded:
        real[0, :2] = False                                          # row 0 is left-padded by 2
    query_index = torch.arange(past, total).expand(batch, new_tokens)              # the new tokens' positions
    mask = attention_mask(real, query_index)                                        # (B, 1, T, S)
    expected = expanded_attention(query, key, value, mask)
    actual = grouped_query_attention(query, key, value, mask)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)
