"""Rotary position embedding (RoFormer, arXiv 2104.09864) in the GPT-NeoX half-split layout, in plain torch.

SAT's FastRotaryEmbedding runs a triton kernel that needs CUDA; this module gives the same numbers on any device.
`inv_freq` is a persistent buffer because the published checkpoints store it (`rotary_emb.inv_freq`) and the
published code *loads* it: positions are built in `inv_freq`'s dtype, so a bf16 checkpoint rounds both.
"""
import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        # Computed on the CPU even when the model is built on the meta device to be loaded: meta arithmetic runs
        # torch's Python references, whose first use imports torch._dynamo (0.7 s of every start-up).
        with torch.device("cpu"):
            exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
            inv_freq = 1.0 / base ** exponents                                  # (head_dim / 2,)
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device()))

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for `position_ids` (B, T), each (B, 1, T, head_dim), computed once per forward."""
        positions = position_ids.to(self.inv_freq.dtype)
        freqs = positions[..., None] * self.inv_freq                          # (B, T, head_dim / 2)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]                   # (B, 1, T, head_dim)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head of `x` (B, nh, T, hd): [x1 cos - x2 sin, x2 cos + x1 sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
