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
ROPE_BASE = 10000.0

# config.json fields whose value the model's structure depends on: the only supported values.
HF_REQUIRED_VALUES = {"rmsnorm": True, "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
                      "add_bias_linear": False, "multi_query_attention": True, "tie_word_embeddings": False}
# What config.json holds besides the modelled fields, when a SAT checkpoint carries no HF_EXTRA_KEY (one not
# converted from HF): the published glm-4v-9b values.
PUBLISHED_HF_EXTRA = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    **HF_REQUIRED_VALUES,
    "apply_query_key_layer_scaling": True,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "attn_implementation": "sdpa",
    "bias_dropout_fusion": True,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "use_cache": True,
    "transformers_version": "4.44.0",
    "vision_config": {"dropout_prob": 0.0, "hidden_act": "gelu"},
}
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

def _rotary_dim(kv_channels: int) -> int:
    """Rotary covers half of each head (HF RotaryEmbedding(kv_channels // 2)); inv_freq has half as many rows."""
    return kv_channels // 2


def model_config_from_hf(hf_config: dict) -> dict:
    """model_config.json (SAT GLM4VModel arguments) for a config.json; unsupported values are an error."""
    from cogvlm.models.config import EVAConfig

    for key, value in HF_REQUIRED_VALUES.items():
        if hf_config.get(key, value) != value:
            raise GLM4VConversionError(f"{HF_CONFIG_FILE}: {key} {hf_config[key]!r} is not supported (GLM-4V-9B "
                                       f"has {value!r})")
    try:
        vision = hf_config["vision_config"]
        eva = EVAConfig(hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
                        num_attention_heads=vision["num_heads"], inner_hidden_size=vision["intermediate_size"],
                        image_size=vision["image_size"], patch_size=vision["patch_size"],
                        in_channels=vision.get("in_channels", EVAConfig.in_channels),
                        layernorm_epsilon=vision["layer_norm_eps"])
        model_config = {
            "model_class": MODEL_CLASS,
            "tokenizer_type": TOKENIZER_TYPE,     # ChatModel: the GLM-4 tokenizer and template
            "num_layers": hf_config["num_layers"],
            "hidden_size": hf_config["hidden_size"],
            "num_attention_heads": hf_config["num_attention_heads"],
            "num_multi_query_heads": hf_config["multi_query_group_num"],
            "hidden_size_per_attention_head": hf_config["kv_channels"],
            "vocab_size": hf_config["padded_vocab_size"],
            "inner_hidden_size": hf_config["ffn_hidden_size"],
            "layernorm_epsilon": hf_config["layernorm_epsilon"],
            "max_sequence_length": hf_config["seq_length"],
            "layernorm_order": "pre",
            "use_bias": False,
            "use_qkv_bias": hf_config["add_qkv_bias"],
            "rope_layout": "interleaved" if hf_config["original_rope"] else "rotate_half",
            "rope_ratio": hf_config.get("rope_ratio", 1),
            "model_parallel_size": 1,
            "image_length": (vision["image_size"] // vision["patch_size"] // 2) ** 2,   # after the 2x2 conv
            "proj_hidden_size": hf_config["hidden_size"],
            "scaling_factor": vision["scaling_factor"],
            "eva_args": eva.to_model_config(),
            "eos_token_id": hf_config["eos_token_id"],
            "pad_token_id": hf_config["pad_token_id"],
            "boi_token_id": hf_config["boi_token_id"],
            "eoi_token_id": hf_config["eoi_token_id"],
        }
    except KeyError as missing:
        raise GLM4VConversionError(f"{HF_CONFIG_FILE} lacks {missing}: not a GLM-4V-9B / CogAgent-9B config") \
            from None
    if vision.get("num_positions", eva.pre_len + eva.num_patches) != eva.pre_len + eva.num_patches:
        raise GLM4VConversionError(f"{HF_CONFIG_FILE}: vision_config num_positions {vision['num_positions']} is "
                                   f"not the CLS token + {eva.num_patches} patches")
    model_config[HF_EXTRA_KEY] = _unmodelled(hf_config)
    return model_config


# config.json fields model_config_from_hf turns into SAT arguments (top level, then vision_config).
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
    """config.json for a SAT GLM4VModel checkpoint: the inverse of model_config_from_hf."""
    from cogvlm.models.config import EVAConfig

    extra = json.loads(json.dumps(model_config.get(HF_EXTRA_KEY, PUBLISHED_HF_EXTRA)))    # a deep copy
    has_rope_ratio = extra.pop("has_rope_ratio", model_config.get("rope_ratio", 1) != 1)
    try:
        eva = EVAConfig.from_model_config(model_config["eva_args"])
        hf = {
            **extra,
            "num_layers": model_config["num_layers"],
            "hidden_size": model_config["hidden_size"],
            "num_attention_heads": model_config["num_attention_heads"],
            "multi_query_group_num": model_config["num_multi_query_heads"],
            "kv_channels": model_config["hidden_size_per_attention_head"],
            "padded_vocab_size": model_config["vocab_size"],
            "ffn_hidden_size": model_config["inner_hidden_size"],
            "layernorm_epsilon": model_config["layernorm_epsilon"],
            "seq_length": model_config["max_sequence_length"],
            "add_qkv_bias": model_config["use_qkv_bias"],
            "original_rope": model_config["rope_layout"] == "interleaved",
            "eos_token_id": model_config["eos_token_id"],
            "pad_token_id": model_config["pad_token_id"],
            "boi_token_id": model_config["boi_token_id"],
            "eoi_token_id": model_config["eoi_token_id"],
            "torch_dtype": str(dtype).removeprefix("torch."),
            "vision_config": {
                **extra.get("vision_config", {}),
                "hidden_size": eva.hidden_size,
                "num_hidden_layers": eva.num_layers,
                "num_heads": eva.num_attention_heads,
                "intermediate_size": eva.inner_hidden_size,
                "image_size": eva.image_size,
                "patch_size": eva.patch_size,
                "in_channels": eva.in_channels,
                "layer_norm_eps": eva.layernorm_epsilon,
                "num_positions": eva.pre_len + eva.num_patches,
                "scaling_factor": model_config["scaling_factor"],
            },
        }
    except (KeyError, TypeError, ValueError) as error:
        raise GLM4VConversionError(f"{sat_layout.CONFIG_FILE}: {error!r} missing or invalid: not a GLM4VModel "
                                   f"config") from None
    if has_rope_ratio:
        hf["rope_ratio"] = model_config.get("rope_ratio", 1)
    return hf


# --- names and shapes ----------------------------------------------------------------------------------------------

def hf_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a HF GLM-4V-9B / CogAgent-9B folder with this config.json holds, with its shape."""
    h, heads, kv = hf_config["hidden_size"], hf_config["num_attention_heads"], hf_config["kv_channels"]
    groups, ffn, vocab = hf_config["multi_query_group_num"], hf_config["ffn_hidden_size"], \
        hf_config["padded_vocab_size"]
    vision = hf_config["vision_config"]
    dv, fv, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    qkv = heads * kv + 2 * groups * kv
    layer = {"input_layernorm.weight": (h,), "self_attention.query_key_value.weight": (qkv, h),
             "self_attention.dense.weight": (h, heads * kv), "post_attention_layernorm.weight": (h,),
             "mlp.dense_h_to_4h.weight": (2 * ffn, h), "mlp.dense_4h_to_h.weight": (h, ffn)}
    if hf_config.get("add_qkv_bias"):
        layer["self_attention.query_key_value.bias"] = (qkv,)
    vision_layer = {"input_layernorm.weight": (dv,), "input_layernorm.bias": (dv,),
                    "attention.query_key_value.weight": (3 * dv, dv), "attention.query_key_value.bias": (3 * dv,),
                    "attention.dense.weight": (dv, dv), "attention.dense.bias": (dv,),
                    "mlp.fc1.weight": (fv, dv), "mlp.fc1.bias": (fv,), "mlp.fc2.weight": (dv, fv),
                    "mlp.fc2.bias": (dv,), "post_attention_layernorm.weight": (dv,),
                    "post_attention_layernorm.bias": (dv,)}
    num_positions = (vision["image_size"] // patch) ** 2 + 1
    shapes = {
        "transformer.embedding.word_embeddings.weight": (vocab, h),
        INV_FREQ_HF: (_rotary_dim(kv) // 2,),
        **{f"transformer.encoder.layers.{i}.{leaf}": shape
           for i in range(hf_config["num_layers"]) for leaf, shape in layer.items()},
        "transformer.encoder.final_layernorm.weight": (h,),
        "transformer.output_layer.weight": (vocab, h),
        _HF_VISION + "boi": (1, 1, h),
        _HF_VISION + "eoi": (1, 1, h),
        _HF_VISION + "patch_embedding.cls_embedding": (1, dv),
        _HF_VISION + "patch_embedding.proj.weight": (dv, vision.get("in_channels", 3), patch, patch),
        _HF_VISION + "patch_embedding.proj.bias": (dv,),
        _HF_VISION + "patch_embedding.position_embedding.weight": (num_positions, dv),
        **{f"{_HF_VISION}transformer.layers.{v}.{leaf}": shape
           for v in range(vision["num_hidden_layers"]) for leaf, shape in vision_layer.items()},
        _HF_VISION + "linear_proj.linear_proj.weight": (h, h),
        _HF_VISION + "linear_proj.norm1.weight": (h,),
        _HF_VISION + "linear_proj.norm1.bias": (h,),
        _HF_VISION + "linear_proj.dense_h_to_4h.weight": (ffn, h),
        _HF_VISION + "linear_proj.gate_proj.weight": (ffn, h),
        _HF_VISION + "linear_proj.dense_4h_to_h.weight": (h, ffn),
        _HF_VISION + "conv.weight": (h, dv, 2, 2),
        _HF_VISION + "conv.bias": (h,),
    }
    return shapes


def renamed_to_sat(hf: dict[str, torch.Tensor], num_layers: int, num_vision_layers: int) -> dict[str, torch.Tensor]:
    """HF names -> SAT names by the model's table (glm4v_names), consuming `hf`: each fused SwiGLU projection is
    split into its SAT row blocks (copies: torch.save would store a view's whole storage) and released at once, so
    a 9B conversion holds one layer's projection twice, not all 40 (9 GB in bf16)."""
    for hf_key, blocks in glm4v_names.split_keys(num_layers):
        for sat_key, rows in zip(blocks, hf.pop(hf_key).chunk(len(blocks), dim=0)):
            hf[sat_key] = rows.clone()
    renamed = {sat: hf.pop(hf_key) for sat, hf_key in glm4v_names.key_pairs(num_layers, num_vision_layers)}
    return {**renamed, **hf}            # the split blocks, already under SAT names


def renamed_to_hf(sat: dict[str, torch.Tensor], num_layers: int, num_vision_layers: int) -> dict[str, torch.Tensor]:
    """SAT names -> HF names by the model's table; the SAT row blocks fused back into HF's projection."""
    hf = {hf_key: sat[sat_key] for sat_key, hf_key in glm4v_names.key_pairs(num_layers, num_vision_layers)}
    for hf_key, blocks in glm4v_names.split_keys(num_layers):
        hf[hf_key] = torch.cat([sat[key] for key in blocks], dim=0)
    return hf


def inv_freq(kv_channels: int, rope_ratio: float, dtype: torch.dtype) -> torch.Tensor:
    """The rotary buffer both layouts store (and the math never reads), as the published RotaryEmbedding
    computes it: 1 / base^(2j/d) over the rotary dims d, in fp32, then the checkpoint's dtype."""
    dim = _rotary_dim(kv_channels)
    base = ROPE_BASE * rope_ratio
    return (1.0 / (base ** (torch.arange(0, dim, 2).to(torch.float32) / dim))).to(dtype)


# --- whole checkpoints (hf_conversion.py reads and writes the files) ----------------------------------------------

def to_sat(hf_config: dict, weights: dict[str, torch.Tensor], source) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model_config.json, SAT state dict) of a HF folder's config.json and tensors (read from `source`),
    consuming `weights`; a missing, unexpected or mis-shaped tensor is an error listing them."""
    model_config = model_config_from_hf(hf_config)
    expected = {key: torch.empty(shape, device="meta") for key, shape in hf_shapes(hf_config).items()}
    sat_layout.check_tensors(expected, weights, source, f"the {MODEL_CLASS} its {HF_CONFIG_FILE} describes",
                             {INV_FREQ_HF}, GLM4VConversionError)
    if INV_FREQ_HF not in weights:
        weights[INV_FREQ_HF] = inv_freq(hf_config["kv_channels"], model_config["rope_ratio"],
                                        weights["transformer.embedding.word_embeddings.weight"].dtype)
    return model_config, renamed_to_sat(weights, hf_config["num_layers"],
                                        hf_config["vision_config"]["num_hidden_layers"])


def to_hf(model_config: dict, state_dict: dict[str, torch.Tensor], source) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, HF state dict) of a SAT GLM4VModel checkpoint's model_config.json and tensors (read from
    `source`; the model-parallel shards already merged)."""
    if any(".matrix_A." in key for key in state_dict):
        raise GLM4VConversionError(f"{source} holds LoRA weights: fold them in first with python "
                                   f"utils/merge_model.py")
    embedding = state_dict.get("transformer.word_embeddings.weight")
    dtype = embedding.dtype if embedding is not None else torch.float32
    hf_config = hf_config_from_model_config(model_config, dtype)
    layers, vision_layers = hf_config["num_layers"], hf_config["vision_config"]["num_hidden_layers"]
    expected = renamed_to_sat({key: torch.empty(shape, device="meta") for key, shape in hf_shapes(hf_config).items()},
                              layers, vision_layers)
    sat_layout.check_tensors(expected, state_dict, source, f"the {MODEL_CLASS} its {sat_layout.CONFIG_FILE} "
                             "describes", {INV_FREQ_SAT}, GLM4VConversionError)
    if INV_FREQ_SAT not in state_dict:
        state_dict = {**state_dict, INV_FREQ_SAT: inv_freq(hf_config["kv_channels"], model_config.get("rope_ratio", 1),
                                                           dtype)}
    return hf_config, renamed_to_hf(state_dict, layers, vision_layers)
