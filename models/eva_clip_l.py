"""EVA2-CLIP-L, CogAgent's high-resolution cross encoder (CogAgent paper, section 2.2).

A pre-norm ViT with sub-LN (a LayerNorm inside attention, before the output projection, and inside the MLP,
before its down projection), a SwiGLU MLP with biases, q/v biases but no k bias, and 2-D rotary positions on the
patch tokens (not on CLS). The published encoder runs every block but the last and returns the patch tokens
without a final norm; the last block, `norm` and the CLIP `head` are still in the checkpoint, so they are built
here (and loaded and saved) without being run. Module names follow the published checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EVALargeConfig


class VisionRotaryEmbedding(nn.Module):
    """2-D rotary table for a grid x grid patch image: each head's first half rotates with the patch's row,
    the second half with its column, in interleaved pairs. Frequencies are those of a `rope_pretrain_grid`
    training grid, interpolated to this grid. Buffers (N, head_width), stored in the checkpoint."""

    def __init__(self, config: EVALargeConfig):
        super().__init__()
        half = config.head_width // 2
        # On the CPU even when the model is built on the meta device (see RotaryEmbedding in rotary.py).
        with torch.device("cpu"):
            inv_freq = 1.0 / config.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half)
            steps = torch.arange(config.grid) / config.grid * config.rope_pretrain_grid      # (grid,)
            angles = (steps[:, None] * inv_freq).repeat_interleave(2, dim=-1)                 # (grid, half)
            rows = angles[:, None, :].expand(-1, config.grid, -1)
            cols = angles[None, :, :].expand(config.grid, -1, -1)
            table = torch.cat([rows, cols], dim=-1).reshape(config.num_patches, config.head_width)
        self.register_buffer("freqs_cos", table.cos().to(torch.get_default_device()))
        self.register_buffer("freqs_sin", table.sin().to(torch.get_default_device()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, nh, N, hd): rotate each interleaved pair (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)."""
        pairs = x.unflatten(-1, (-1, 2))
        rotated_half = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.freqs_cos + rotated_half * self.freqs_sin


class PatchEmbed(nn.Module):
    def __init__(self, config: EVALargeConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_channels, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)                          # (B, N, width)


class Attention(nn.Module):
    def __init__(self, config: EVALargeConfig, rope: VisionRotaryEmbedding):
        super().__init__()
        width = config.width
        self.num_heads = config.num_heads
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.inner_attn_ln = nn.LayerNorm(width, eps=config.layernorm_epsilon)
        self.proj = nn.Linear(width, width)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731  (B, nh, 1+N, hd)
        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(self.k_proj(x))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        q = torch.cat([q[:, :, :1], self.rope(q[:, :, 1:])], dim=2)                         # CLS is not rotated
        k = torch.cat([k[:, :, :1], self.rope(k[:, :, 1:])], dim=2)
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)       # (B, 1+N, width)
        return self.proj(self.inner_attn_ln(context))


class SwiGLU(nn.Module):
    def __init__(self, config: EVALargeConfig):
        super().__init__()
        hidden = config.mlp_hidden_size
        self.w1 = nn.Linear(config.width, hidden)
        self.w2 = nn.Linear(config.width, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=config.layernorm_epsilon)
        self.w3 = nn.Linear(hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class Block(nn.Module):
    def __init__(self, config: EVALargeConfig, rope: VisionRotaryEmbedding):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.attn = Attention(config, rope)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EVA2CLIPLarge(nn.Module):
    def __init__(self, config: EVALargeConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.width))
        self.patch_embed = PatchEmbed(config)
        self.rope = VisionRotaryEmbedding(config)
        self.blocks = nn.ModuleList([Block(config, self.rope) for _ in range(config.num_layers)])
        self.norm = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)           # unused (see module doc)
        self.head = nn.Linear(config.width, config.head_dim_out)                         # unused

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, width) patch features (CLS dropped)."""
        patches = self.patch_embed(pixel_values)
        x = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        return x[:, 1:]
