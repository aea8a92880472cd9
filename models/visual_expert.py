"""The visual expert (CogVLM paper, section 2.1): in every decoder layer, image tokens go through their own
QKV/dense attention weights and their own SwiGLU FFN, text tokens through the language model's weights.
Attention itself is shared: all tokens attend to each other with rotary positions.

Two SAT mixins. Their parameter names follow the published checkpoints (`vision_query_key_value_list.N`, ...);
the language MLP gate lives here too (`gate_proj.N`) because SAT's LLaMA layer has no gate of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin
from sat.mpu.layers import ColumnParallelLinear, RowParallelLinear

from .config import CogVLMConfig
from .kv_cache import CacheWrite, KVCache
from .rotary import RotaryEmbedding, apply_rotary


@dataclass
class ExpertRouting:
    """Which tokens of a forward go to the visual expert, as flat indices into (B * T).

    Built once per forward from `vision_expert_mask`, so the per-layer hooks never inspect mask values
    (no device sync per layer).
    """
    vision_index: torch.Tensor      # (n_vision,)
    language_index: torch.Tensor    # (B * T - n_vision,)

    @classmethod
    def from_mask(cls, vision_expert_mask: torch.Tensor | None) -> "ExpertRouting | None":
        if vision_expert_mask is None:
            return None
        flat = vision_expert_mask.reshape(-1).bool()                           # (B * T,)
        vision_index = flat.nonzero().squeeze(1)
        if vision_index.numel() == 0:
            return None
        return cls(vision_index, (~flat).nonzero().squeeze(1))

    def route(self, x: torch.Tensor, language: Callable, vision: Callable) -> torch.Tensor:
        """Apply `language` to text tokens and `vision` to image tokens of `x` (B, T, d_in) -> (B, T, d_out)."""
        flat = x.reshape(-1, x.shape[-1])                                      # (B * T, d_in)
        language_out = language(flat.index_select(0, self.language_index))
        vision_out = vision(flat.index_select(0, self.vision_index))
        out = language_out.new_empty(flat.shape[0], language_out.shape[-1])     # every row is written below
        out.index_copy_(0, self.language_index, language_out)
        out.index_copy_(0, self.vision_index, vision_out)
        return out.view(*x.shape[:-1], -1)


def routed(routing: ExpertRouting | None, x: torch.Tensor, language: Callable, vision: Callable | None):
    if routing is None or vision is None:
        return language(x)
    return routing.route(x, language, vision)


def causal_attention(query, key, value, mask: torch.Tensor | None = None, enable_gqa: bool = False
                     ) -> torch.Tensor:
    """Scaled dot-product attention of T queries over S keys. (B, nh, T, hd).

    `mask` (B, 1, T, S) bool says which keys each query sees (models/kv_cache.attention_mask: padding, a cache's
    positions); None: the queries are the keys' positions and nothing is padding, so plain causal attention. With
    `enable_gqa`, key and value hold fewer heads (K/V groups), each shared by a contiguous run of query heads."""
    if mask is not None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=enable_gqa)
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=enable_gqa)


def _expert_linears(config: CogVLMConfig, make: Callable[[], nn.Module]) -> nn.ModuleDict:
    return nn.ModuleDict({str(i): make() for i in config.vision_expert_layers})


class VisualExpertAttention(BaseMixin):
    """Self-attention with visual-expert QKV/dense, rotary positions and a preallocated KV cache."""

    def __init__(self, config: CogVLMConfig, params_dtype=torch.float32):
        super().__init__()
        lang = config.language
        self.rotary_emb = RotaryEmbedding(lang.head_dim, lang.rotary_base)
        common = dict(gather_output=False, bias=False, params_dtype=params_dtype, skip_init=True, module=self)
        self.vision_query_key_value_list = _expert_linears(config, lambda: ColumnParallelLinear(
            lang.hidden_size, 3 * lang.hidden_size, stride=3, name="vision_query_key_value", **common))
        self.vision_dense_list = _expert_linears(config, lambda: RowParallelLinear(
            lang.hidden_size, lang.hidden_size, input_is_parallel=True, final_bias=False, bias=False,
            params_dtype=params_dtype, skip_init=True, module=self, name="vision_dense"))

    def attention_forward(self, hidden_states, mask, *, layer_id, rope, expert_routing=None,
                          padding_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                          cache_write: CacheWrite | None = None, **kw_args):
        attention = self.transformer.layers[layer_id].attention
        key = str(int(layer_id))
        vision_qkv = self.vision_query_key_value_list[key] if key in self.vision_query_key_value_list else None
        vision_dense = self.vision_dense_list[key] if key in self.vision_dense_list else None

        mixed = routed(expert_routing, hidden_states, attention.query_key_value, vision_qkv)   # (B, T, 3 * H_p)
        batch, length = mixed.shape[:2]
        heads, head_dim = attention.num_attention_heads_per_partition, attention.hidden_size_per_attention_head
        query, key_, value = mixed.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, T, hd)
        cos, sin = rope
        query, key_ = apply_rotary(query, cos, sin), apply_rotary(key_, cos, sin)

        if cache_write is not None:
            key_, value = kv_cache.update(int(layer_id), key_, value, cache_write)     # (B, nh, W, hd)
            padding_mask = cache_write.mask                                           # (B, 1, T, W)
        context = causal_attention(query, key_, value, padding_mask)                # (B, nh, T, hd)
        context = context.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, T, H_p)
        return routed(expert_routing, context, attention.dense, vision_dense)


def swiglu(x, gate: nn.Module, up: nn.Module, down: nn.Module) -> torch.Tensor:
    return down(F.silu(gate(x)) * up(x))


class VisualExpertMLP(BaseMixin):
    """SwiGLU FFN with a visual expert: image tokens use `vision_*` weights, text tokens the language ones."""

    def __init__(self, config: CogVLMConfig, params_dtype=torch.float32):
        super().__init__()
        lang = config.language
        column = lambda name: ColumnParallelLinear(  # noqa: E731
            lang.hidden_size, lang.inner_hidden_size, gather_output=False, bias=False, params_dtype=params_dtype,
            skip_init=True, module=self, name=name)
        self.gate_proj = nn.ModuleList([column("dense_h_to_4h_gate") for _ in range(lang.num_layers)])
        self.vision_dense_h_to_4h_list = _expert_linears(config, lambda: column("vision_dense_h_to_4h"))
        self.vision_dense_4h_to_h_list = _expert_linears(config, lambda: RowParallelLinear(
            lang.inner_hidden_size, lang.hidden_size, input_is_parallel=True, bias=False,
            params_dtype=params_dtype, skip_init=True, module=self, name="vision_dense_4h_to_h"))
        self.vision_gate_proj = _expert_linears(config, lambda: column("vision_gate_proj"))

    def mlp_forward(self, hidden_states, *, layer_id, expert_routing=None, **kw_args):
        mlp = self.transformer.layers[layer_id].mlp
        key = str(int(layer_id))

        def language(x):
            return swiglu(x, self.gate_proj[layer_id], mlp.dense_h_to_4h, mlp.dense_4h_to_h)

        vision = None
        if key in self.vision_gate_proj:
            def vision(x):
                return swiglu(x, self.vision_gate_proj[key], self.vision_dense_h_to_4h_list[key],
                              self.vision_dense_4h_to_h_list[key])
        return routed(expert_routing, hidden_states, language, vision)
