"""CogVLM (arXiv 2311.03079): EVA2-CLIP-E -> MLP adapter -> LLaMA decoder with a visual expert in every layer.

A SAT `BaseModel`. SAT's BaseTransformer provides the pre-norm LLaMA layers (RMSNorm, no biases); the mixins
plug in the CogVLM parts:

    lm                       LanguageModelHead         the untied output projection
    image                    ImageEmbedding            EVA2-CLIP-E + MLP adapter + boi/eoi into the embeddings
    visual_expert_mlp        VisualExpertMLP           expert SwiGLU FFN
    visual_expert_attention  VisualExpertAttention     expert QKV/dense, rotary, KV cache

The model code is single-device code; model parallelism splits the same modules from outside.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from sat.model.base_model import BaseMixin, BaseModel
from sat.mpu.layers import ColumnParallelLinear
from sat.ops.layernorm import RMSNorm

from .config import CogVLMConfig, current_model_parallel_size
from .inputs import ImageInputs, ModelInputs, check_inputs
from .kv_cache import KVCache, attention_mask as kv_attention_mask
from .mlp_adapter import ImageEmbedding
from .visual_expert import ExpertRouting, VisualExpertAttention, VisualExpertMLP


class LanguageModelHead(BaseMixin):
    """Hidden states -> vocabulary logits; only the last position's when that is all generation needs."""

    def __init__(self, vocab_size: int, hidden_size: int, params_dtype=torch.float32):
        super().__init__()
        self.lm_head = ColumnParallelLinear(hidden_size, vocab_size, gather_output=True, bias=False,
                                            params_dtype=params_dtype, skip_init=True, module=self, name="lm_head")

    def final_forward(self, hidden_states, *, last_token_only: bool = False, **kw_args):
        if last_token_only:
            hidden_states = hidden_states[:, -1:]                                    # (B, 1, hidden)
        return self.lm_head(hidden_states)                                           # (B, T, vocab)


class CogVLMModel(BaseModel):
    def __init__(self, config: CogVLMConfig, params_dtype: torch.dtype = torch.float32):
        super().__init__(self.decoder_args(config), layernorm=RMSNorm, activation_func=F.silu,
                         params_dtype=params_dtype)
        self.config = config
        del self.transformer.position_embeddings            # positions are rotary, applied inside attention
        self.add_mixin("lm", LanguageModelHead(config.language.vocab_size, config.language.hidden_size,
                                               params_dtype))
        self.add_mixin("image", self.image_embedding_class(config, params_dtype))
        # Registered in the published order, so a saved state_dict lists its keys as the published ones do.
        self.add_mixin("visual_expert_mlp", VisualExpertMLP(config, params_dtype))
        self.add_mixin("visual_expert_attention", VisualExpertAttention(config, params_dtype))

    image_embedding_class = ImageEmbedding

    @staticmethod
    def decoder_args(config: CogVLMConfig) -> argparse.Namespace:
        """The argument namespace SAT's BaseModel reads, from the config."""
        lang = config.language
        return argparse.Namespace(
            num_layers=lang.num_layers, vocab_size=lang.vocab_size, hidden_size=lang.hidden_size,
            num_attention_heads=lang.num_attention_heads, inner_hidden_size=lang.inner_hidden_size,
            max_sequence_length=lang.max_sequence_length, layernorm_epsilon=lang.layernorm_epsilon,
            layernorm_order="pre", use_bias=False, model_parallel_size=current_model_parallel_size(),
            skip_init=True, use_gpu_initialization=False)

    @classmethod
    def add_model_specific_args(cls, parser):
        """The model_config.json keys beyond SAT's own, so that SAT's training checkpoints write them too."""
        group = parser.add_argument_group("CogVLM", "CogVLM configuration")
        group.add_argument("--image_length", type=int, default=None)
        group.add_argument("--eva_args", type=json.loads, default=None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            group.add_argument(f"--{name}", type=int, default=None)
        group.add_argument("--text_processor_version", default=None)
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
        """`static`: decode steps attend over all `max_length` positions (fixed shapes, for a compiled step)."""
        attention = self.transformer.layers[0].attention
        return KVCache(len(self.transformer.layers), batch_size, attention.num_attention_heads_per_partition,
                       max_length, attention.hidden_size_per_attention_head, self.dtype, self.device, static)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *, images: ImageInputs | None = None,
                image_embed_mask: torch.Tensor | None = None, vision_expert_mask: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                last_token_only: bool = False, output_hidden_states: bool = False):
        """input_ids, position_ids, masks: (B, T). Returns SAT's [logits (B, T or 1, vocab), *per-layer dicts].

        `attention_mask` (B, T) bool is False at padding: those keys are masked out of attention. With a
        `kv_cache`, the T tokens of each row go after that row's cached ones (the first B rows of the cache);
        images are only given with the tokens that hold their slot (the prefill), so the encoders run once per
        image. Unknown keywords are a TypeError and inconsistent inputs an InvalidInputsError (see
        models/inputs.py), before any weight is used.
        """
        check_inputs(input_ids, position_ids, images, image_embed_mask, vision_expert_mask, attention_mask,
                     self.config.image_length)
        layer_inputs = self.image_layer_inputs(images, kv_cache, input_ids.shape[0])
        rope = self.get_mixin("visual_expert_attention").rotary_emb.cos_sin(position_ids, self.dtype)
        padding_mask, cache_write = None, None
        if kv_cache is not None:
            cache_write = kv_cache.begin(attention_mask, input_ids.shape)       # where each layer writes and reads
        elif attention_mask is not None:
            padding_mask = attention_mask_over_padding(attention_mask)
        return super().forward(
            input_ids=input_ids, position_ids=position_ids, attention_mask=None,
            images=images, image_embed_mask=image_embed_mask,
            expert_routing=ExpertRouting.from_mask(vision_expert_mask), rope=rope, padding_mask=padding_mask,
            kv_cache=kv_cache, cache_write=cache_write, last_token_only=last_token_only,
            output_hidden_states=output_hidden_states, **layer_inputs)

    def forward_inputs(self, inputs: ModelInputs, *, kv_cache: KVCache | None = None, last_token_only: bool = False,
                       output_hidden_states: bool = False):
        """`forward` on the processor's inputs (labels, if any, are the caller's)."""
        return self(**inputs.forward_arguments(), kv_cache=kv_cache, last_token_only=last_token_only,
                    output_hidden_states=output_hidden_states)

    def image_layer_inputs(self, images: ImageInputs | None, kv_cache: KVCache | None, batch_size: int) -> dict:
        """Per-forward arguments of the layers' hooks that come from the images (CogAgent: the cross branch)."""
        return {}


def attention_mask_over_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) real-token mask of a forward without a cache -> its (B, 1, T, T) attention mask, built once per
    forward so that every layer reads a ready one. (A 0/1 integer mask would be read as additive scores: bool.)"""
    key_real = attention_mask.bool()
    positions = torch.arange(key_real.shape[1], device=key_real.device).expand_as(key_real)          # (B, T)
    return kv_attention_mask(key_real, positions)
