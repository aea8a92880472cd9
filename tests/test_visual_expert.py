import torch

from cogvlm.models.kv_cache import attention_mask
from cogvlm.models.visual_expert import ExpertRouting, causal_attention


def test_routing_sends_masked_tokens_to_the_vision_function():
    x = torch.arange(12.0).view(2, 3, 2)                                # (B, T, d)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    routing = ExpertRouting.from_mask(mask)
    out = routing.route(x, language=lambda t: t.sum(-1, keepdim=True), vision=lambda t: -t.sum(-1, keepdim=True))
    expected = torch.where(mask.bool()[..., None], -x.sum(-1, keepdim=True), x.sum(-1, keepdim=True))
    assert torch.equal(out, expected)


def test_no_image_tokens_means_no_routing():
    assert ExpertRouting.from_mask(None) is None
    assert ExpertRouting.from_mask(torch.zeros(1, 4, dtype=torch.long)) is None


def test_attention_of_new_queries_over_a_cache_window_equals_full_causal_attention():
    """Two new queries at positions 4 and 5 over a window of 8 cache positions, the last two never written."""
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    full = causal_attention(q, k, v)
    window_k, window_v = (torch.cat([t, torch.full((1, 2, 2, 4), 1e4)], 2) for t in (k, v))   # (1, 2, 8, 4)
    written = torch.tensor([[True] * 6 + [False] * 2])                                           # (1, 8)
    tail = causal_attention(q[:, :, 4:], window_k, window_v, attention_mask(written, torch.tensor([[4, 5]])))
    torch.testing.assert_close(tail, full[:, :, 4:])
