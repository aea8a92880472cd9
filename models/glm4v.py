"""GLM-4V-9B (GLM-4 technical report, arXiv 2406.12793) and CogAgent-9B-20241220 on SwissArmyTransformer.

EVA2-CLIP-E -> 2x2 stride-2 conv -> GLU -> [boi, image tokens, eoi] / scaling_factor, written over the prompt's
image slot, -> ChatGLM4 decoder (models/glm4.py). CogAgent-9B-20241220 is this model with rotate-half rotary
(`GLM4LanguageConfig.rope_layout`); nothing else differs. A SAT `BaseModel` whose mixins are

    lm                  LanguageModelHead       the untied output projection (models/cogvlm.py)
    rotary_attention    GroupedQueryAttention   GQA, partial rotary, KV cache of the K/V groups
    swiglu              SwiGLUUpProjection      the SwiGLU up projection
    image               GLM4VImageEmbedding     EVA2-CLIP-E, conv, GLU adapter, boi/eoi

Their published SAT names (SAT 0.4.12's official GLM4VModel: `chatglm-final`, `attn`, `mlp.w2`, `eva`) are
translated in utils/checkpoint_io/state_dict_adapter.py.

Image positions follow the published Hugging Face forward: the prompt holds boi, image_length slots and eoi
(utils/preprocessing/image_placeholders.py expands the tokenizer's three placeholders), and every image token
shares one rotary position, the one after boi's. Attention is causal over everything, the image block included.
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseModel
from sat.ops.layernorm import RMSNorm

from .cogvlm import LanguageModelHead, attention_mask_over_padding
from .config import GLM4VConfig
from .glm4 import GroupedQueryAttention, SwiGLUUpProjection, decoder_args, rotary_tables
from .inputs import ImageInputs, ModelInputs, check_inputs
from .kv_cache import KVCache
from .mlp_adapter import ImageEmbedding


class GLM4VImageEmbedding(ImageEmbedding):
    """EVA2-CLIP-E patches -> 2x2 stride-2 conv (a quarter of the tokens, LM width) -> GLU -> boi/eoi -> scaled."""

    def __init__(self, config: GLM4VConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__(config, params_dtype)
        self.patch_grid = config.vision.image_size // config.vision.patch_size
        self.scaling_factor = config.scaling_factor
        self.conv = nn.Conv2d(config.vision.hidden_size, config.language.hidden_size, kernel_size=config.patch_merge,
                              stride=config.patch_merge, dtype=params_dtype)

    @staticmethod
    def adapter_in_features(config: GLM4VConfig) -> int:
        return config.language.hidden_size

    def adapter_input(self, images: ImageInputs) -> torch.Tensor:
        """(B_img, image_length, hidden): the conv over the row-major patch grid, flattened row-major again
        (HF visual.py's order; the fixtures' conv_output checks it)."""
        patches = self.encoder(images.pixel_values)                                  # (B, g * g, Dv)
        batch, _, width = patches.shape
        grid = patches.view(batch, self.patch_grid, self.patch_grid, width).permute(0, 3, 1, 2)   # (B, Dv, g, g)
        return self.conv(grid).flatten(2).transpose(1, 2)                            # (B, (g / m)^2, hidden)

    def embed_images(self, images: ImageInputs) -> torch.Tensor:
        """(B_img, image_length + 2, hidden); the published model divides the whole block, boi/eoi included."""
        return super().embed_images(images) / self.scaling_factor


class GLM4VModel(BaseModel):
    def __init__(self, config: GLM4VConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__(decoder_args(config.language), layernorm=RMSNorm, activation_func=F.silu,
                         params_dtype=params_dtype)
        self.config = config
        del self.transformer.position_embeddings            # positions are rotary, applied inside attention
        lang = config.language
        self.add_mixin("lm", LanguageModelHead(lang.vocab_size, lang.hidden_size, params_dtype))
        self.add_mixin("rotary_attention", GroupedQueryAttention(lang))
        self.add_mixin("swiglu", SwiGLUUpProjection(lang, params_dtype))
        self.add_mixin("image", GLM4VImageEmbedding(config, params_dtype))

    @classmethod
    def add_model_specific_args(cls, parser):
        """The model_config.json keys beyond SAT's own, so that SAT's training checkpoints write them too."""
        group = parser.add_argument_group("GLM4V", "GLM-4V-9B / CogAgent-9B configuration")
        group.add_argument("--image_length", type=int, default=None)
        group.add_argument("--eva_args", type=json.loads, default=None)
        group.add_argument("--proj_hidden_size", type=int, default=None)
        group.add_argument("--rope_layout", default=None)
        for name in ("rope_ratio", "scaling_factor"):
            group.add_argument(f"--{name}", type=float, default=None)
        for name in ("pad_token_id", "boi_token_id", "eoi_token_id"):
            group.add_argument(f"--{name}", type=int, default=None)
        group.add_argument("--eos_token_id", type=json.loads, default=None)
        return parser

    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.word_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.word_embeddings.weight.device

    def new_kv_cache(self, batch_size: int, max_length: int, static: bool = False) -> KVCache:
        """Keys and values of the K/V groups only (2 per layer at 9B, not 32 heads). `static`: see
        CogVLMModel.new_kv_cache."""
        attention = self.transformer.layers[0].attention
        return KVCache(len(self.transformer.layers), batch_size, attention.num_multi_query_heads_per_partition,
                       max_length, attention.hidden_size_per_attention_head, self.dtype, self.device, static)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *, images: ImageInputs | None = None,
                image_embed_mask: torch.Tensor | None = None, vision_expert_mask: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                last_token_only: bool = False, output_hidden_states: bool = False):
        """The same interface as CogVLMModel.forward (so generation and the engine run either model).

        input_ids, position_ids, masks: (B, T); ids pre-expanded so that each image holds boi + image_length +
        eoi positions marked by `image_embed_mask`. `vision_expert_mask` is only checked (GLM-4V has no visual
        expert). Returns SAT's [logits (B, T or 1, vocab), *per-layer dicts]."""
        check_inputs(input_ids, position_ids, images, image_embed_mask, vision_expert_mask, attention_mask,
                     self.config.image_length)
        rope = rotary_tables(position_ids, self.config.language, self.dtype)
        padding_mask, cache_write = None, None
        if kv_cache is not None:
            cache_write = kv_cache.begin(attention_mask, input_ids.shape)       # where each layer writes and reads
        elif attention_mask is not None:
            padding_mask = attention_mask_over_padding(attention_mask)
        return super().forward(
            input_ids=input_ids, position_ids=position_ids, attention_mask=None, images=images,
            image_embed_mask=image_embed_mask, rope=rope, padding_mask=padding_mask, kv_cache=kv_cache,
            cache_write=cache_write, last_token_only=last_token_only, output_hidden_states=output_hidden_states)

    def forward_inputs(self, inputs: ModelInputs, *, kv_cache: KVCache | None = None, last_token_only: bool = False,
                       output_hidden_states: bool = False):
        """`forward` on the processor's inputs (labels, if any, are the caller's)."""
        return self(**inputs.forward_arguments(), kv_cache=kv_cache, last_token_only=last_token_only,
                    output_hidden_states=output_hidden_states)
