"""Convert between a Hugging Face THUDM/glm-4v-9b or THUDM/cogagent-9b-20241220 folder and a SAT checkpoint.

    python utils/convert_hf_checkpoint.py --hf HF_DIR --sat SAT_DIR            # Hugging Face -> SAT
    python utils/convert_hf_checkpoint.py --hf HF_DIR --sat SAT_DIR --to-hf    # SAT -> Hugging Face

(hf_conversion.py dispatches here when config.json is a ChatGLM config with a vision_config, or model_config.json
names GLM4VModel.) The SAT layout is SAT 0.4.12's `sat.model.official.GLM4VModel` (ChatGLM4Model + ImageMixin):
its state-dict names and shapes. The name table is glm4v_names.py (the model's): the same tensors under other
names, except HF's fused SwiGLU input projection, split into SAT's gate and up halves. Nothing else is reshaped:
QKV rows stay [q | k | v] head-major, and the rotary layout (interleaved for GLM-4V-9B, rotate-half for
CogAgent-9B: config.json's `original_rope`) becomes model_config.json's `rope_layout`, not a permutation of the
weights.

Strict: every tensor the config implies must be there with its shape (hf_shapes), nothing else may be. The one
exception is the rotary `inv_freq` buffer, unused by the math: a folder without it gets it recomputed.

config.json <-> model_config.json: the fields a SAT GLM4VModel reads become SAT arguments (eva_args for the
vision tower, as CogVLM's); every other config.json field travels in model_config.json under HF_EXTRA_KEY, so
HF -> SAT -> HF gives back the same config.json (the CogAgent-9B config.json is not public: nothing is assumed).
"""
from __future__ import annotations

import json

import torch

from cogvlm.utils.checkpoint_io import glm4v_names, sat_layout
from cogvlm.utils.checkpoint_io.sat_layout import HF_CONFIG_FILE, CheckpointError
from cogvlm.utils.preprocessing.glm4_tokenizer import TOKENIZER_TYPE

MODEL_CLASS = "GLM4VModel"
HF_EXTRA_KEY = "hf_config"              # config.json fields with no SAT argument, kept for SAT -> HF
HF_DROPPED_KEYS = ("_name_or_path", "torch_dtype")      # where the folder came from; the weights' dtype


INV_FREQ_HF, INV_FREQ_SAT = glm4v_names.HF_ROTARY_BUFFER, glm4v_names.SAT_ROTARY_BUFFER
_HF_VISION = "transformer.vision."


class GLM4VConversionError(CheckpointError):
    """A GLM-4V / CogAgent-9B folder or config that cannot be converted; the message says what is wrong."""


def is_glm4v_hf_config(hf_config: dict) -> bool:
    return hf_config.get("model_type") == "chatglm" and "vision_config" in hf_config


def is_glm4v_model_config(model_config: dict) -> bool:
    return model_config.get("model_class") == MODEL_CLASS


# --- config ------------------------------------------------------------------------------------------------------
# The model's configuration reads and writes config.json (GLM4VConfig.from_hf_config / to_hf_config); the converter
# adds only what a checkpoint needs beyond it: the tokenizer to chat with, and the config.json fields no SAT argument
# holds (HF_EXTRA_KEY), so that HF -> SAT -> HF gives back the same config.json (the CogAgent-9B config.json is not
# public: nothing is assumed about its other fields).

def _glm4v_config(build, file: str):
    """The GLM4VConfig `build()` reads from `file`; what it cannot read is a one-line GLM4VConversionError."""
    try:
        return build()
    except KeyError as missing:
        raise GLM4VConversionError(f"{file} lacks {missing}: not a GLM-4V-9B / CogAgent-9B config") from None
    except (TypeError, ValueError) as error:
        message = str(error)
        raise GLM4VConversionError(message if message.startswith(file) else f"{file}: {message}") from None


def config_from_hf(hf_config: dict):
    """The GLM4VConfig of a config.json; unsupported values are an error."""
    from cogvlm.models.config import GLM4VConfig

    return _glm4v_config(lambda: GLM4VConfig.from_hf_config(hf_config), HF_CONFIG_FILE)


def model_config_from_hf(hf_config: dict) -> dict:
    """model_config.json (SAT GLM4VModel arguments) for a config.json."""
    return {**config_from_hf(hf_config).to_model_config(),
            "tokenizer_type": TOKENIZER_TYPE,     # ChatModel: the GLM-4 tokenizer and template
            HF_EXTRA_KEY: _unmodelled(hf_config)}


# config.json fields GLM4VConfig turns into SAT arguments (top level, then vision_config).
_MODELLED = {"num_layers", "hidden_size", "num_attention_heads", "multi_query_group_num", "kv_channels",
             "padded_vocab_size", "ffn_hidden_size", "layernorm_epsilon", "seq_length", "add_qkv_bias",
             "original_rope", "rope_ratio", "eos_token_id", "pad_token_id", "boi_token_id", "eoi_token_id",
             "vision_config", *HF_DROPPED_KEYS}
_MODELLED_VISION = {"hidden_size", "num_hidden_layers", "num_heads", "intermediate_size", "image_size",
                    "patch_size", "in_channels", "layer_norm_eps", "num_positions", "scaling_factor"}


def _unmodelled(hf_config: dict) -> dict:
    extra = {key: value for key, value in hf_config.items() if key not in _MODELLED}
    extra["vision_config"] = {key: value for key, value in hf_config["vision_config"].items()
                              if key not in _MODELLED_VISION}
    extra["has_rope_ratio"] = "rope_ratio" in hf_config
    return extra


def hf_config_from_model_config(model_config: dict, dtype: torch.dtype) -> dict:
    """config.json for a SAT GLM4VModel checkpoint: the inverse of model_config_from_hf. A checkpoint without
    HF_EXTRA_KEY (one not converted from HF) gets the published glm-4v-9b values of the other fields."""
    from cogvlm.models.config import GLM4VConfig

    config = _glm4v_config(lambda: GLM4VConfig.from_model_config(model_config), sat_layout.CONFIG_FILE)
    published = config.to_hf_config(torch_dtype=str(dtype).removeprefix("torch."))
    if HF_EXTRA_KEY not in model_config:
        return published
    extra = json.loads(json.dumps(model_config[HF_EXTRA_KEY]))     # a deep copy
    has_rope_ratio = extra.pop("has_rope_ratio", config.language.rope_ratio != 1)
    hf = {**extra, **{key: value for key, value in published.items() if key in _MODELLED}}
    hf["vision_config"] = {**extra.get("vision_config", {}),
                           **{key: value for key, value in published["vision_config"].items()
                              if key in _MODELLED_VISION}}
    hf.pop("rope_ratio", None)
    if has_rope_ratio:
        hf["rope_ratio"] = model_config.get("rope_ratio", config.language.rope_ratio)
    return hf


# --- names and shapes ----------------------------------------------------------------------------------------------

def hf_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a HF GLM-4V-9B / CogAgent-9B folder with this config.json holds, with its shape."""
    return _hf_shapes(config_from_hf(hf_config))


def _hf_shapes(config) -> dict[str, tuple[int, ...]]:
    lang, vision = config.language, config.vision
    h, heads, kv, groups = lang.hidden_size, lang.num_attention_heads, lang.head_dim, lang.num_kv_groups
    ffn, vocab = lang.inner_hidden_size, lang.vocab_size
    dv, fv, patch = vision.hidden_size, vision.inner_hidden_size, vision.patch_size
    qkv = heads * kv + 2 * groups * kv
    layer = {"input_layernorm.weight": (h,), "self_attention.query_key_value.weight": (qkv, h),
             "self_attention.query_key_value.bias": (qkv,),
             "self_attention.dense.weight": (h, heads * kv), "post_attention_layernorm.weight": (h,),
             "mlp.dense_h_to_4h.weight": (2 * ffn, h), "mlp.dense_4h_to_h.weight": (h, ffn)}
    vision_layer = {"input_layernorm.weight": (dv,), "input_layernorm.bias": (dv,),
                    "attention.query_key_value.weight": (3 * dv, dv), "attention.query_key_value.bias": (3 * dv,),
                    "attention.dense.weight": (dv, dv), "attention.dense.bias": (dv,),
                    "mlp.fc1.weight": (fv, dv), "mlp.fc1.bias": (fv,), "mlp.fc2.weight": (dv, fv),
                    "mlp.fc2.bias": (dv,), "post_attention_layernorm.weight": (dv,),
                    "post_attention_layernorm.bias": (dv,)}
    return {
        "transformer.embedding.word_embeddings.weight": (vocab, h),
        INV_FREQ_HF: (lang.rotary_dim // 2,),
        **{f"transformer.encoder.layers.{i}.{leaf}": shape
           for i in range(lang.num_layers) for leaf, shape in layer.items()},
        "transformer.encoder.final_layernorm.weight": (h,),
        "transformer.output_layer.weight": (vocab, h),
        _HF_VISION + "boi": (1, 1, h),
        _HF_VISION + "eoi": (1, 1, h),
        _HF_VISION + "patch_embedding.cls_embedding": (vision.pre_len, dv),
        _HF_VISION + "patch_embedding.proj.weight": (dv, vision.in_channels, patch, patch),
        _HF_VISION + "patch_embedding.proj.bias": (dv,),
        _HF_VISION + "patch_embedding.position_embedding.weight": (vision.pre_len + vision.num_patches, dv),
        **{f"{_HF_VISION}transformer.layers.{v}.{leaf}": shape
           for v in range(vision.num_layers) for leaf, shape in vision_layer.items()},
        _HF_VISION + "linear_proj.linear_proj.weight": (h, h),
        _HF_VISION + "linear_proj.norm1.weight": (h,),
        _HF_VISION + "linear_proj.norm1.bias": (h,),
        _HF_VISION + "linear_proj.dense_h_to_4h.weight": (ffn, h),
        _HF_VISION + "linear_proj.gate_proj.weight": (ffn, h),
        _HF_VISION + "linear_proj.dense_4h_to_h.weight": (h, ffn),
        _HF_VISION + "conv.weight": (h, dv, config.patch_merge, config.patch_merge),
        _HF_VISION + "conv.bias": (h,),
    }


# --- whole checkpoints (hf_conversion.py reads and writes the files) ----------------------------------------------

def to_sat(hf_config: dict, weights: dict[str, torch.Tensor], source) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model_config.json, SAT state dict) of a HF folder's config.json and tensors (read from `source`),
    consuming `weights`; a missing, unexpected or mis-shaped tensor is an error listing them."""
    config = config_from_hf(hf_config)
    model_config = model_config_from_hf(hf_config)
    expected = {key: torch.empty(shape, device="meta") for key, shape in _hf_shapes(config).items()}
    sat_layout.check_tensors(expected, weights, source, f"the {MODEL_CLASS} its {HF_CONFIG_FILE} describes",
                             {INV_FREQ_HF}, GLM4VConversionError)
    weights = glm4v_names.with_rotary_buffer(weights, INV_FREQ_HF, config)
    return model_config, glm4v_names.renamed_to_sat(weights, config.language.num_layers, config.vision.num_layers)


def to_hf(model_config: dict, state_dict: dict[str, torch.Tensor], source) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, HF state dict) of a SAT GLM4VModel checkpoint's model_config.json and tensors (read from
    `source`; the model-parallel shards already merged)."""
    if any(".matrix_A." in key for key in state_dict):
        raise GLM4VConversionError(f"{source} holds LoRA weights: fold them in first with python "
                                   f"utils/merge_model.py")
    embedding = state_dict.get("transformer.word_embeddings.weight")
    dtype = embedding.dtype if embedding is not None else torch.float32
    hf_config = hf_config_from_model_config(model_config, dtype)
    config = config_from_hf(hf_config)
    layers, vision_layers = config.language.num_layers, config.vision.num_layers
    expected = glm4v_names.renamed_to_sat({key: torch.empty(shape, device="meta")
                                           for key, shape in _hf_shapes(config).items()}, layers, vision_layers)
    sat_layout.check_tensors(expected, state_dict, source, f"the {MODEL_CLASS} its {sat_layout.CONFIG_FILE} "
                             "describes", {INV_FREQ_SAT}, GLM4VConversionError)
    state_dict = glm4v_names.with_rotary_buffer(state_dict, INV_FREQ_SAT, config)
    return hf_config, glm4v_names.renamed_to_hf(state_dict, layers, vision_layers)
