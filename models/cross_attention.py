"""CogAgent's high-resolution cross module (CogAgent paper, section 2.2).

EVA2-CLIP-L encodes a 1120 px copy of the image; a learned position embedding is added; every decoder layer
cross-attends to the result after its self-attention (SAT's decoder layer: self-attention, residual, cross LN,
cross-attention, residual, MLP LN, MLP, residual). The cross-attention weights are SAT's own
(`transformer.layers.N.cross_attention`); this mixin owns the encoder and hooks `cross_attention_forward` so that
the keys and values of the image are projected once per image and reused at every decode step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin

from .config import CogAgentConfig
from .eva_clip_l import EVA2CLIPLarge


class CrossAttentionCache:
    """The cross image's encoder output and, once computed, each layer's cross keys/values (B, nh, N, hd)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.encoder_outputs: torch.Tensor | None = None
        self.key_values: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

        # (B,) 1 for rows with a cross image, 0 for rows without (their cross-attention adds nothing, as a text-only
        # prompt alone skips it); None when every row has one.
        self.row_has_image: torch.Tensor | None = None

    def set_encoder_outputs(self, encoder_outputs: torch.Tensor) -> None:
        self.encoder_outputs = encoder_outputs
        self.key_values = [None] * self.num_layers
        self.row_has_image = None

    def place(self, row: int, num_rows: int, source: "CrossAttentionCache", source_row: int) -> None:
        """Copy `source`'s row (a prefill's cross keys/values) into `row` of a `num_rows`-row batch (the slots of a
        continuous batch). A source without an image leaves `row` out of cross-attention."""
        if source.encoder_outputs is None:
            if self.row_has_image is not None:
                self.row_has_image[row] = 0.0
            return                                  # while no row has an image, cross-attention is skipped
        if self.encoder_outputs is None:            # the first row with an image: allocate every row, none with one
            encoded = source.encoder_outputs
            self.encoder_outputs = encoded.new_zeros(num_rows, *encoded.shape[1:])          # (B, N, width)
            self.key_values = [tuple(t.new_zeros(num_rows, *t.shape[1:]) for t in pair)    # (B, nh, N, hd) x 2
                               for pair in source.key_values]
            self.row_has_image = encoded.new_zeros(num_rows)
        self.encoder_outputs[row] = source.encoder_outputs[source_row]
        for (key, value), (source_key, source_value) in zip(self.key_values, source.key_values):
            key[row], value[row] = source_key[source_row], source_value[source_row]
        self.row_has_image[row] = 1.0

    def move(self, source_row: int, row: int) -> None:
        """Copy row `source_row` to `row` (a continuous batch keeps its busy rows first)."""
        if self.encoder_outputs is None:
            return
        self.encoder_outputs[row] = self.encoder_outputs[source_row]
        for key, value in self.key_values:
            key[row], value[row] = key[source_row], value[source_row]
        self.row_has_image[row] = self.row_has_image[source_row]


class CrossVisionBranch(BaseMixin):
    def __init__(self, config: CogAgentConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        cross = config.cross_vision
        self.pos_embed = nn.Parameter(torch.zeros(cross.num_patches, cross.width, dtype=params_dtype))
        self.encoder = EVA2CLIPLarge(cross).to(params_dtype)

    def encode(self, cross_pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, width): what every decoder layer attends to."""
        return self.encoder(cross_pixel_values) + self.pos_embed

    def cross_attention_forward(self, hidden_states, cross_attention_mask, encoder_outputs, *, layer_id,
                                cross_cache: CrossAttentionCache | None = None, **kw_args):
        attention = self.transformer.layers[layer_id].cross_attention
        layer = int(layer_id)
        heads = lambda t: t.unflatten(-1, (attention.num_attention_heads_per_partition, -1)).transpose(1, 2)  # noqa: E731
        key_value = cross_cache.key_values[layer] if cross_cache is not None else None
        if key_value is None:
            key, value = attention.key_value(encoder_outputs).chunk(2, dim=-1)                # (B, N, inner_p) x 2
            key_value = heads(key), heads(value)                                              # (B, nh, N, hd)
            if cross_cache is not None:
                cross_cache.key_values[layer] = key_value
        rows = hidden_states.shape[0]           # a step may run on the first rows of the cache only (the busy ones)
        query = heads(attention.query(hidden_states))                                         # (B, nh, T, hd)
        context = F.scaled_dot_product_attention(query, *(t[:rows] for t in key_value))       # every image token
        out = attention.dense(context.transpose(1, 2).flatten(2))                             # (B, T, hidden)
        if cross_cache is not None and cross_cache.row_has_image is not None:
            out = out * cross_cache.row_has_image[:rows].to(out)[:, None, None]             # rows without an image
        return out
