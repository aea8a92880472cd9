"""CogAgent (arXiv 2312.08914): CogVLM plus a high-resolution cross-attention branch.

Composed from CogVLM: the same decoder, visual experts and image path, with two additions —
    image         CogAgentImageEmbedding   adds a learned position embedding to the EVA2-CLIP-E features
    cross_vision  CrossVisionBranch        EVA2-CLIP-L on the 1120 px image, cross-attended by every layer
"""
from __future__ import annotations

import json

import torch
from torch import nn

from .cogvlm import CogVLMModel
from .config import CogAgentConfig
from .cross_attention import CrossAttentionCache, CrossVisionBranch
from .inputs import ImageInputs, InvalidInputsError, MissingCrossImageError
from .kv_cache import KVCache
from .mlp_adapter import ImageEmbedding


class CogAgentImageEmbedding(ImageEmbedding):
    def __init__(self, config: CogAgentConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__(config, params_dtype)
        self.pos_embed = nn.Parameter(torch.zeros(config.image_length, config.vision.hidden_size,
                                                  dtype=params_dtype))

    def adapter_input(self, images: ImageInputs) -> torch.Tensor:
        return super().adapter_input(images) + self.pos_embed


class CogAgentModel(CogVLMModel):
    image_embedding_class = CogAgentImageEmbedding

    def __init__(self, config: CogAgentConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__(config, params_dtype)
        self.add_mixin("cross_vision", CrossVisionBranch(config, params_dtype))

    @staticmethod
    def decoder_args(config: CogAgentConfig):
        args = CogVLMModel.decoder_args(config)
        args.is_decoder = True                                    # a cross-attention block in every layer
        args.cross_attn_hidden_size = config.cross_attn_hidden_size
        args.cross_hidden_size_per_attention_head = config.cross_head_dim
        return args

    @classmethod
    def add_model_specific_args(cls, parser):
        parser = super().add_model_specific_args(parser)
        group = parser.add_argument_group("CogAgent", "CogAgent configuration")
        group.add_argument("--cross_image_pix", type=int, default=None)
        group.add_argument("--cross_vision_args", type=json.loads, default=None)
        return parser

    def new_kv_cache(self, batch_size: int, max_length: int, static: bool = False) -> KVCache:
        cache = super().new_kv_cache(batch_size, max_length, static)
        cache.cross = CrossAttentionCache(len(self.transformer.layers))
        return cache

    def image_layer_inputs(self, images: ImageInputs | None, kv_cache: KVCache | None, batch_size: int) -> dict:
        """The cross branch's inputs of every layer. `images.cross_pixel_values` (B, 3, 1120, 1120) is encoded
        when given (the prefill) and kept in the cache for the decode steps; a forward without images (a decode
        step, or a text-only prompt) reads the cache, or skips cross-attention when nothing was encoded."""
        cross = kv_cache.cross if kv_cache is not None else CrossAttentionCache(len(self.transformer.layers))
        if images is not None:
            if len(images) != batch_size:       # cross keys/values are per row: a row without an image has none
                raise InvalidInputsError(f"a CogAgent batch needs an image in every row or in none; {len(images)} "
                                         f"image(s) for {batch_size} rows")
            encoded = self.get_mixin("cross_vision").encode(self.cross_pixels(images))       # (B_img, N, width)
            cross.set_encoder_outputs(images.per_slot(encoded))
        return dict(encoder_outputs=cross.encoder_outputs, cross_attention_mask=None, cross_cache=cross)

    @staticmethod
    def cross_pixels(images: ImageInputs) -> torch.Tensor:
        if images.cross_pixel_values is None:
            raise MissingCrossImageError("CogAgent needs each image at its cross resolution too "
                                         "(ImageInputs.cross_pixel_values; the processor makes both)")
        if len(images.cross_pixel_values) != len(images.pixel_values):
            raise MissingCrossImageError(f"{len(images.pixel_values)} image(s) but {len(images.cross_pixel_values)} "
                                         f"cross-resolution image(s) were given")
        return images.cross_pixel_values
