"""The ChatGLM4 decoder of GLM-4V-9B / CogAgent-9B (GLM-4 technical report, arXiv 2406.12793), as SAT mixins.

SAT's BaseTransformer provides the pre-norm layers (RMSNorm, fused QKV with a bias and `num_multi_query_heads`
K/V groups, no other biases); these mixins supply what differs from its defaults:

    GroupedQueryAttention   K/V in a few groups shared by the query heads, rotary on the first half of each head
                            in the layout the config names, a preallocated KV cache holding the groups only
    SwiGLUUpProjection      the SwiGLU MLP: SAT's `dense_h_to_4h` is the gate, this mixin holds the up projection

Rotary is computed in plain torch (SAT's FastRotaryEmbedding needs a CUDA triton kernel). The two layouts differ
only by a fixed permutation of the rotary dimensions of W_q / W_k, so both load the same tensor shapes.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin
from sat.mpu.layers import ColumnParallelLinear

from .config import GLM4LanguageConfig, current_model_parallel_size
from .kv_cache import CacheWrite, KVCache
from .rotary import RotaryEmbedding
from .visual_expert import causal_attention, swiglu


def decoder_args(lang: GLM4LanguageConfig) -> argparse.Namespace:
    """The argument namespace SAT's BaseModel reads, from the config."""
    return argparse.Namespace(
        num_layers=lang.num_layers, vocab_size=lang.vocab_size, hidden_size=lang.hidden_size,
        num_attention_heads=lang.num_attention_heads, hidden_size_per_attention_head=lang.head_dim,
        num_multi_query_heads=lang.num_kv_groups, inner_hidden_size=lang.inner_hidden_size,
        max_sequence_length=lang.max_sequence_length, layernorm_epsilon=lang.layernorm_epsilon,
        layernorm_order="pre", use_bias=False, use_qkv_bias=True, model_parallel_size=current_model_parallel_size(),
        skip_init=True, use_gpu_initialization=False)


def rotary_tables(position_ids: torch.Tensor, lang: GLM4LanguageConfig, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every rotary frequency at `position_ids` (B, T), each (B, 1, T, rotary_dim / 2).

    Frequencies and angles are computed in fp32 from the config, not from the checkpoint's `inv_freq` buffer (which
    a bf16 load rounds), as the published code builds its cache; the tables are then cast to the model's dtype."""
    dim = lang.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim
    inv_freq = 1.0 / lang.rotary_base ** exponents                                 # (dim / 2,)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq                  # (B, T, dim / 2)
    return angles.cos()[:, None].to(dtype), angles.sin()[:, None].to(dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate the first 2 * cos.shape[-1] dimensions of each head of `x` (B, nh, T, hd); the rest pass through.

    interleaved: pairs (2i, 2i + 1) rotate by angle i; rotate_half: pairs (i, i + dim / 2)."""
    dim = 2 * cos.shape[-1]
    rotating, passing = x[..., :dim], x[..., dim:]
    if layout == "interleaved":
        even, odd = rotating.unflatten(-1, (-1, 2)).unbind(-1)                      # (B, nh, T, dim / 2) each
        rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    else:
        first, second = rotating.chunk(2, dim=-1)
        rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return torch.cat([rotated, passing], dim=-1)


def grouped_query_attention(query, key, value, mask: torch.Tensor | None) -> torch.Tensor:
    """query (B, nh, T, hd) over key / value (B, ng, S, hd): query head h reads group h // (nh / ng), a contiguous
    run of heads per group, as the published code expands K/V. The K/V groups are never copied out per head.
    `mask` (B, 1, T, S) as causal_attention's."""
    batch, heads, new_tokens, head_dim = query.shape
    groups = key.shape[1]
    if new_tokens == 1:
        # A decode step: a group's nh / ng query heads are that many query rows over the group's keys, which all of
        # them see (a mask (B, 1, 1, S) applies to every row alike).
        rows = query.reshape(batch, groups, heads // groups, head_dim)                  # (B, ng, nh / ng, hd)
        context = F.scaled_dot_product_attention(rows, key, value, attn_mask=mask)
        return context.reshape(batch, heads, 1, head_dim)
    return causal_attention(query, key, value, mask, enable_gqa=True)


class GroupedQueryAttention(BaseMixin):
    """Self-attention with grouped K/V heads (GQA), partial rotary, and a preallocated KV cache of the groups."""

    def __init__(self, lang: GLM4LanguageConfig):
        super().__init__()
        self.rope_layout = lang.rope_layout
        # Not read by the forward (rotary_tables recomputes it in fp32): kept because the published SAT layout
        # stores it (`mixins.attn.rotary_pos_emb.inv_freq`).
        self.rotary_pos_emb = RotaryEmbedding(lang.rotary_dim, lang.rotary_base)

    def attention_forward(self, hidden_states, mask, *, layer_id, rope, padding_mask: torch.Tensor | None = None,
                          kv_cache: KVCache | None = None, cache_write: CacheWrite | None = None, **kw_args):
        attention = self.transformer.layers[layer_id].attention
        heads = attention.num_attention_heads_per_partition
        groups = attention.num_multi_query_heads_per_partition
        head_dim = attention.hidden_size_per_attention_head
        mixed = attention.query_key_value(hidden_states)                   # (B, T, (nh + 2 ng) * hd)
        batch, length = mixed.shape[:2]
        query, key, value = mixed.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        query = query.view(batch, length, heads, head_dim).transpose(1, 2)  # (B, nh, T, hd)
        key = key.view(batch, length, groups, head_dim).transpose(1, 2)     # (B, ng, T, hd)
        value = value.view(batch, length, groups, head_dim).transpose(1, 2)
        cos, sin = rope
        query = apply_partial_rotary(query, cos, sin, self.rope_layout)
        key = apply_partial_rotary(key, cos, sin, self.rope_layout)

        if cache_write is not None:
            key, value = kv_cache.update(int(layer_id), key, value, cache_write)   # (B, ng, W, hd)
            padding_mask = cache_write.mask                                       # (B, 1, T, W)
        context = grouped_query_attention(query, key, value, padding_mask)        # (B, nh, T, hd)
        return attention.dense(context.transpose(1, 2).reshape(batch, length, heads * head_dim))


class SwiGLUUpProjection(BaseMixin):
    """SwiGLU: dense_4h_to_h(silu(dense_h_to_4h(x)) * up_proj(x)); SAT's layer owns the gate and the down projection."""

    def __init__(self, lang: GLM4LanguageConfig, params_dtype=torch.float32):
        super().__init__()
        self.up_proj = nn.ModuleList([ColumnParallelLinear(
            lang.hidden_size, lang.inner_hidden_size, gather_output=False, bias=False, params_dtype=params_dtype,
            skip_init=True, module=self, name="dense_h_to_4h_gate") for _ in range(lang.num_layers)])

    def mlp_forward(self, hidden_states, *, layer_id, **kw_args):
        mlp = self.transformer.layers[layer_id].mlp
        return swiglu(hidden_states, mlp.dense_h_to_4h, self.up_proj[layer_id], mlp.dense_4h_to_h)
