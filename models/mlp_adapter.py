"""The MLP adapter (CogVLM paper, section 2.1) and the image tokens it produces.

EVA2-CLIP-E patch features are mapped into the language model's embedding space by a SwiGLU MLP ("GLU" in the
published code), framed by learned `boi` / `eoi` vectors, and written into the word embeddings at the image slot
that the text processor reserved (`image_embed_mask`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin

from .config import CogVLMConfig
from .eva_clip import EVA2CLIPEncoder
from .inputs import ImageInputs


class GLU(nn.Module):
    """Linear -> LayerNorm -> GELU -> SwiGLU, all without bias."""

    def __init__(self, in_features: int, hidden_size: int, inner_hidden_size: int):
        super().__init__()
        self.linear_proj = nn.Linear(in_features, hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.dense_h_to_4h = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.gate_proj = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(inner_hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class ImageEmbedding(BaseMixin):
    """Owns the image path into the decoder: encoder, adapter, boi/eoi; hooks `word_embedding_forward`."""

    def __init__(self, config: CogVLMConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__()
        hidden = config.language.hidden_size
        self.image_length = config.image_length
        self.encoder = EVA2CLIPEncoder(config.vision, params_dtype)
        self.adapter = GLU(self.adapter_in_features(config), hidden,
                           config.language.inner_hidden_size).to(params_dtype)
        self.boi = nn.Parameter(torch.zeros(1, 1, hidden, dtype=params_dtype))
        self.eoi = nn.Parameter(torch.zeros(1, 1, hidden, dtype=params_dtype))

    @staticmethod
    def adapter_in_features(config) -> int:
        """Width of what the adapter maps: the encoder's patch features."""
        return config.vision.hidden_size

    def adapter_input(self, images: ImageInputs) -> torch.Tensor:
        """Encoder features the adapter maps, (B_img, image_length, vision hidden)."""
        return self.encoder(images.pixel_values)

    def embed_images(self, images: ImageInputs) -> torch.Tensor:
        """(B_img, image_length + 2, hidden): boi, the adapted patches, eoi."""
        patches = self.adapter(self.adapter_input(images))
        batch = patches.shape[0]
        return torch.cat([self.boi.expand(batch, -1, -1), patches, self.eoi.expand(batch, -1, -1)], dim=1)

    def word_embedding_forward(self, input_ids, output_cross_layer, images: ImageInputs | None = None,
                               image_embed_mask: torch.Tensor | None = None, **kw_args):
        embeddings = self.transformer.word_embeddings(input_ids)                       # (B, T, hidden)
        if images is None:
            return embeddings
        # The model's forward has checked that the slots hold exactly these images (check_inputs).
        image_tokens = images.per_slot(self.embed_images(images))                      # (B_slots, N + 2, hidden)
        slots = image_embed_mask.bool()[..., None]                                      # (B, T, 1)
        return embeddings.masked_scatter(slots, image_tokens.to(embeddings.dtype))
