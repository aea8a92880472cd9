"""Convert between a Hugging Face cogvlm-*-hf / cogagent-*-hf folder and a SAT checkpoint in the published layout
(glm-4v-9b and cogagent-9b-20241220 folders: glm4v_conversion.py, dispatched from here).

    python utils/convert_hf_checkpoint.py --hf HF_DIR --sat SAT_DIR                  # Hugging Face -> SAT
    python utils/convert_hf_checkpoint.py --hf HF_DIR --sat SAT_DIR --to-hf [--shard-size 5GB]   # SAT -> HF

An HF folder holds config.json and its weights as safetensors (model.safetensors, or shards listed in
model.safetensors.index.json) or as torch pickles (pytorch_model.bin, or shards listed in
pytorch_model.bin.index.json); SAT -> HF writes safetensors shards, their index and config.json. A tokenizer.model
in the source folder is copied along.

The weights are the same tensors under other names: one table (COGVLM_KEYS, COGAGENT_KEYS) pairs each published
SAT key with its HF key and serves both directions. No tensor is transposed, reshaped or split: both sides keep QKV
rows as [q | k | v] with the heads contiguous in each block, the cross-attention K/V rows as [k | v], rotary in the
GPT-NeoX half-split layout, the EVA2-CLIP-E CLS token as a (1, width) row (SAT: the tower's one-row word embedding;
HF: `patch_embedding.cls_embedding`), and CogAgent's EVA2-CLIP-L under EVA-CLIP's own module names on both sides
(`mixins.encoder.vit.model.*` = `model.cross_vision.vit.model.*`). Sources: THUDM's remote code as mirrored on
GitHub (modeling_cogagent.py; modeling_cogvlm.py / visual.py through forks that keep its module names); for
cross_visual.py, which was not found in its original form, the ports that load the published HF weights (vLLM's
CogAgent, PaddleMIX's, a GGML loader that reads `cross_vision.vit.model.rope.freqs_cos` and counts 515 tensors in
the cross encoder: the rotary table once, not per block).

Buffers: HF's decoder layers each hold a persistent `rotary_emb.inv_freq` (one RotaryEmbedding per layer) where SAT
stores one, and HF's EVA2-CLIP-L stores its 2-D rotary table once (`vit.model.rope.freqs_*`; its blocks share that
module and save_pretrained keeps one name) where SAT's state dict lists it under every block as well. So a table
row may carry a layer placeholder on one side only: one tensor on that side is every copy on the other (the copies
must agree). A folder without these buffers still converts: they are recomputed from the config by the model's own
modules (models/rotary.py, models/eva_clip_l.py), in the checkpoint's dtype, as the published code computes and
saves them. Any other missing, unexpected or mis-shaped tensor is an error that lists them.

config.json <-> model_config.json: `config_from_hf` / `hf_config_from`. HF fields the SAT model_config.json has no
key for are written with their published values (HF_FIXED_FIELDS); SAT keys HF has no field for (a
max_sequence_length other than the published 4096, extra keys such as tokenizer_type, a prompt template HF cannot
name) travel in config.json under "sat_model_config", so SAT -> HF -> SAT gives back the same model_config.json.
Prompt templates: HF CogAgent names them as SAT does; HF CogVLM's "chat" is SAT's "chat_old" (Question/Answer).
CogAgent's cross encoder shape is fixed in HF's cross_visual.py (EVA2-CLIP-L); a non-published shape (the tiny test
model) is written as "cross_vision_config" {layers, hidden_size, head_width}, the names vLLM's CogAgent config reads.

Memory: HF -> SAT holds every tensor in memory once (the SAT states file is one torch.save); SAT -> HF reads the
states file memory-mapped and writes one shard at a time.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import torch

from cogvlm.utils.checkpoint_io import glm4v_conversion, sat_layout
from cogvlm.utils.checkpoint_io.sat_layout import (BIN_FILE, BIN_INDEX, HF_CONFIG_FILE, SAFETENSORS_FILE,
                                                   SAFETENSORS_INDEX, CheckpointError, is_hf_checkpoint)

WEIGHT_FILES = sat_layout.HF_WEIGHT_FILES
SHARD_NAME = "model-{index:05d}-of-{total:05d}.safetensors"
SAT_ONLY_KEY = "sat_model_config"
DEFAULT_SHARD_SIZE = 5 * 1024 ** 3      # bytes, as transformers' save_pretrained

# HF config.json fields neither model reads differently: the published values. HF's rotary cache grows on demand,
# so max_position_embeddings (2048 in the published configs, 4096 in SAT's max_sequence_length) limits nothing.
HF_FIXED_FIELDS = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "use_cache": True,
}
HF_VISION_FIXED_FIELDS = {"dropout_prob": 0.0, "hidden_act": "gelu"}

# model_class -> (HF architecture, the remote-code modules the published config.json names in auto_map)
HF_ARCHITECTURES = {
    "CogVLMModel": ("CogVLMForCausalLM", "configuration_cogvlm.CogVLMConfig", "modeling_cogvlm.CogVLMForCausalLM"),
    "CogAgentModel": ("CogAgentForCausalLM", "configuration_cogagent.CogAgentConfig",
                      "modeling_cogagent.CogAgentForCausalLM"),
}

# HF CogVLM's build_conversation_input_ids templates (modeling_cogvlm._history_to_prompt) -> SAT text processor
# versions; "chat" there is the Question/Answer prompt, SAT's "chat_old". HF CogAgent uses SAT's names.
COGVLM_TEMPLATES = {"base": "base", "vqa": "vqa", "chat": "chat_old"}


def _linear(sat: str, hf: str, bias: bool = True) -> tuple[tuple[str, str], ...]:
    leaves = ("weight", "bias") if bias else ("weight",)
    return tuple((f"{sat}.{leaf}", f"{hf}.{leaf}") for leaf in leaves)


# (published SAT key, HF key). Placeholders: {i} a decoder layer, {v} an EVA2-CLIP-E layer, {c} an EVA2-CLIP-L
# layer. A placeholder on one side only: one tensor there, the same tensor under every index on the other side.
COGVLM_KEYS: tuple[tuple[str, str], ...] = (
    # LLaMA decoder with the visual expert (modeling_cogvlm.py: VisionExpertAttention, VisionExpertMLP).
    ("transformer.word_embeddings.weight", "model.embed_tokens.weight"),
    ("transformer.layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("transformer.layers.{i}.attention.query_key_value.weight",
     "model.layers.{i}.self_attn.language_expert_query_key_value.weight"),
    ("transformer.layers.{i}.attention.dense.weight", "model.layers.{i}.self_attn.language_expert_dense.weight"),
    ("mixins.rotary.vision_query_key_value_list.{i}.weight",
     "model.layers.{i}.self_attn.vision_expert_query_key_value.weight"),
    ("mixins.rotary.vision_dense_list.{i}.weight", "model.layers.{i}.self_attn.vision_expert_dense.weight"),
    ("mixins.rotary.rotary_emb.inv_freq", "model.layers.{i}.self_attn.rotary_emb.inv_freq"),
    ("transformer.layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("mixins.mlp.gate_proj.{i}.weight", "model.layers.{i}.mlp.language_mlp.gate_proj.weight"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.weight", "model.layers.{i}.mlp.language_mlp.up_proj.weight"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.weight", "model.layers.{i}.mlp.language_mlp.down_proj.weight"),
    ("mixins.mlp.vision_gate_proj.{i}.weight", "model.layers.{i}.mlp.vision_mlp.gate_proj.weight"),
    ("mixins.mlp.vision_dense_h_to_4h_list.{i}.weight", "model.layers.{i}.mlp.vision_mlp.up_proj.weight"),
    ("mixins.mlp.vision_dense_4h_to_h_list.{i}.weight", "model.layers.{i}.mlp.vision_mlp.down_proj.weight"),
    ("transformer.final_layernorm.weight", "model.norm.weight"),
    ("mixins.lm.lm_head.weight", "lm_head.weight"),
    # EVA2-CLIP-E (visual.py: PatchEmbedding, TransformerLayer with the same post-branch norms, MLP fc1/fc2).
    *_linear("mixins.eva.vit_model.mixins.patch_embedding.proj", "model.vision.patch_embedding.proj"),
    ("mixins.eva.vit_model.transformer.word_embeddings.weight", "model.vision.patch_embedding.cls_embedding"),
    ("mixins.eva.vit_model.transformer.position_embeddings.weight",
     "model.vision.patch_embedding.position_embedding.weight"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.input_layernorm",
             "model.vision.transformer.layers.{v}.input_layernorm"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.attention.query_key_value",
             "model.vision.transformer.layers.{v}.attention.query_key_value"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.attention.dense",
             "model.vision.transformer.layers.{v}.attention.dense"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.post_attention_layernorm",
             "model.vision.transformer.layers.{v}.post_attention_layernorm"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.mlp.dense_h_to_4h",
             "model.vision.transformer.layers.{v}.mlp.fc1"),
    *_linear("mixins.eva.vit_model.transformer.layers.{v}.mlp.dense_4h_to_h",
             "model.vision.transformer.layers.{v}.mlp.fc2"),
    # The GLU adapter and the boi/eoi embeddings (visual.py: GLU, EVA2CLIPModel): same leaf names.
    *_linear("mixins.eva.linear_proj.linear_proj", "model.vision.linear_proj.linear_proj", bias=False),
    *_linear("mixins.eva.linear_proj.norm1", "model.vision.linear_proj.norm1"),
    *_linear("mixins.eva.linear_proj.gate_proj", "model.vision.linear_proj.gate_proj", bias=False),
    *_linear("mixins.eva.linear_proj.dense_h_to_4h", "model.vision.linear_proj.dense_h_to_4h", bias=False),
    *_linear("mixins.eva.linear_proj.dense_4h_to_h", "model.vision.linear_proj.dense_4h_to_h", bias=False),
    ("mixins.eva.boi", "model.vision.boi"),
    ("mixins.eva.eoi", "model.vision.eoi"),
)

_EVA_L_SAT, _EVA_L_HF = "mixins.encoder.vit.model.", "model.cross_vision.vit.model."
_EVA_L_LEAVES = (
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "rope.freqs_cos", "rope.freqs_sin",
    *(f"blocks.{{c}}.{leaf}" for leaf in (
        "norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.q_proj.weight", "attn.k_proj.weight",
        "attn.v_proj.weight", "attn.inner_attn_ln.weight", "attn.inner_attn_ln.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight",
        "mlp.w2.bias", "mlp.ffn_ln.weight", "mlp.ffn_ln.bias", "mlp.w3.weight", "mlp.w3.bias")),
    "norm.weight", "norm.bias", "head.weight", "head.bias",
)
COGAGENT_KEYS: tuple[tuple[str, str], ...] = COGVLM_KEYS + (
    # modeling_cogagent.py: CrossAttention (query, key_value [k | v], dense), its pre-norm, visual.py's pos_embed.
    ("mixins.eva.pos_embed", "model.vision.pos_embed"),
    ("transformer.layers.{i}.cross_attention.query.weight", "model.layers.{i}.cross_attn.query.weight"),
    ("transformer.layers.{i}.cross_attention.key_value.weight", "model.layers.{i}.cross_attn.key_value.weight"),
    ("transformer.layers.{i}.cross_attention.dense.weight", "model.layers.{i}.cross_attn.dense.weight"),
    ("transformer.layers.{i}.post_cross_attention_layernorm.weight",
     "model.layers.{i}.post_cross_attention_layernorm.weight"),
    # cross_visual.py: CrossVisionModel = Eva2LargeEncoder `vit` (EVA-CLIP's own module names) + pos_embed.
    ("mixins.encoder.pos_embed", "model.cross_vision.pos_embed"),
    *((_EVA_L_SAT + leaf, _EVA_L_HF + leaf) for leaf in _EVA_L_LEAVES),
    # Every block shares the encoder's rotary module; HF keeps its table once.
    (_EVA_L_SAT + "blocks.{c}.attn.rope.freqs_cos", _EVA_L_HF + "rope.freqs_cos"),
    (_EVA_L_SAT + "blocks.{c}.attn.rope.freqs_sin", _EVA_L_HF + "rope.freqs_sin"),
)


class ConversionError(CheckpointError):
    """A folder or config that cannot be converted; the message says what is wrong."""


__all__ = ["ConversionError", "config_from_hf", "hf_config_from", "hf_to_sat", "is_hf_checkpoint", "key_pairs",
           "main", "read_hf_state_dict", "sat_to_hf", "write_safetensors"]


def _is_cogagent(hf_config: dict) -> bool:
    architectures = hf_config.get("architectures") or []
    return any(a.startswith("CogAgent") for a in architectures) or "cross_hidden_size" in hf_config


def config_from_hf(hf_config: dict):
    """The CogVLMConfig / CogAgentConfig that a Hugging Face config.json describes."""
    from cogvlm.models.config import CogAgentConfig, CogVLMConfig, EVAConfig, EVALargeConfig, LanguageConfig

    sat_only = dict(hf_config.get(SAT_ONLY_KEY, {}))
    try:
        vision_hf = hf_config["vision_config"]
        for key in ("hidden_act", "tie_word_embeddings"):           # what the model code does not make optional
            if hf_config.get(key, HF_FIXED_FIELDS[key]) != HF_FIXED_FIELDS[key]:
                raise ConversionError(f"{HF_CONFIG_FILE}: {key} {hf_config[key]!r} is not CogVLM's "
                                      f"{HF_FIXED_FIELDS[key]!r}")
        language = LanguageConfig(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_attention_heads=hf_config["num_attention_heads"],
            inner_hidden_size=hf_config["intermediate_size"],
            layernorm_epsilon=hf_config.get("rms_norm_eps", LanguageConfig.layernorm_epsilon),
            max_sequence_length=sat_only.pop("max_sequence_length", LanguageConfig.max_sequence_length),
        )
        vision = EVAConfig(
            hidden_size=vision_hf["hidden_size"],
            num_layers=vision_hf["num_hidden_layers"],
            num_attention_heads=vision_hf["num_heads"],
            inner_hidden_size=vision_hf["intermediate_size"],
            image_size=vision_hf["image_size"],
            patch_size=vision_hf["patch_size"],
            in_channels=vision_hf.get("in_channels", EVAConfig.in_channels),
            layernorm_epsilon=vision_hf.get("layer_norm_eps", EVAConfig.layernorm_epsilon),
        )
    except KeyError as missing:
        raise ConversionError(f"{HF_CONFIG_FILE} lacks {missing}: not a CogVLM / CogAgent config") from None
    positions = vision_hf.get("num_positions", vision.pre_len + vision.num_patches)
    if positions != vision.pre_len + vision.num_patches:
        raise ConversionError(f"{HF_CONFIG_FILE}: vision_config num_positions {positions} is not the CLS token + "
                              f"{vision.num_patches} patches ({vision.image_size}px / patch {vision.patch_size})")
    cogagent = _is_cogagent(hf_config)
    template = hf_config.get("template_version")
    version = sat_only.pop("text_processor_version", template if cogagent else COGVLM_TEMPLATES.get(template))
    common = dict(language=language, vision=vision, text_processor_version=version,
                  bos_token_id=hf_config.get("bos_token_id", CogVLMConfig.bos_token_id),
                  eos_token_id=hf_config.get("eos_token_id", CogVLMConfig.eos_token_id),
                  pad_token_id=hf_config.get("pad_token_id", CogVLMConfig.pad_token_id), extra=sat_only)
    if not cogagent:
        return CogVLMConfig(**common)
    shape = hf_config.get("cross_vision_config", {})
    cross_vision = EVALargeConfig(
        image_size=hf_config.get("cross_image_size", EVALargeConfig.image_size),
        num_layers=shape.get("layers", EVALargeConfig.num_layers),
        width=shape.get("hidden_size", EVALargeConfig.width),
        head_width=shape.get("head_width", EVALargeConfig.head_width),
    )
    cross_hidden = hf_config.get("cross_hidden_size", cross_vision.width)
    compute = hf_config.get("cross_compute_hidden_size", language.num_attention_heads * CogAgentConfig.cross_head_dim)
    if cross_hidden != cross_vision.width:
        raise ConversionError(f"{HF_CONFIG_FILE}: cross_hidden_size {cross_hidden} is not the cross encoder's width "
                              f"{cross_vision.width}")
    if compute % language.num_attention_heads:
        raise ConversionError(f"{HF_CONFIG_FILE}: cross_compute_hidden_size {compute} does not split over "
                              f"{language.num_attention_heads} heads")
    return CogAgentConfig(**common, cross_vision=cross_vision, cross_head_dim=compute // language.num_attention_heads)


def hf_config_from(config, torch_dtype: torch.dtype = torch.bfloat16) -> dict:
    """The Hugging Face config.json of a CogVLMConfig / CogAgentConfig (the published field names)."""
    from cogvlm.models.config import CogAgentConfig, EVALargeConfig, LanguageConfig

    lang, vision = config.language, config.vision
    if (vision.pre_len, vision.post_len) != (1, 0):
        raise ConversionError("HF's EVA2-CLIP-E has exactly one CLS token and no trailing tokens; this model has "
                              f"pre_len {vision.pre_len}, post_len {vision.post_len}")
    if len(config.vision_expert_layers) != lang.num_layers:
        raise ConversionError(f"HF's CogVLM has a visual expert in every layer; this model has them in "
                              f"{len(config.vision_expert_layers)} of {lang.num_layers}")
    architecture, config_class, model_class = HF_ARCHITECTURES[type(config).__name__.replace("Config", "Model")]
    cogagent = isinstance(config, CogAgentConfig)
    templates = {sat: hf for hf, sat in COGVLM_TEMPLATES.items()}
    template = config.text_processor_version if cogagent else templates.get(config.text_processor_version)
    sat_only = dict(config.extra)
    if lang.max_sequence_length != LanguageConfig.max_sequence_length:
        sat_only["max_sequence_length"] = lang.max_sequence_length
    if config.text_processor_version is not None and template is None:     # e.g. CogVLM with SAT's [INST] "chat"
        sat_only["text_processor_version"] = config.text_processor_version
    hf = {
        "architectures": [architecture],
        "auto_map": {"AutoConfig": config_class, "AutoModelForCausalLM": model_class},
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "hidden_size": lang.hidden_size,
        "intermediate_size": lang.inner_hidden_size,
        "num_attention_heads": lang.num_attention_heads,
        "num_hidden_layers": lang.num_layers,
        "rms_norm_eps": lang.layernorm_epsilon,
        "vocab_size": lang.vocab_size,
        **HF_FIXED_FIELDS,
        "torch_dtype": str(torch_dtype).removeprefix("torch."),
        "vision_config": {
            **HF_VISION_FIXED_FIELDS,
            "hidden_size": vision.hidden_size,
            "image_size": vision.image_size,
            "in_channels": vision.in_channels,
            "intermediate_size": vision.inner_hidden_size,
            "layer_norm_eps": vision.layernorm_epsilon,
            "num_heads": vision.num_attention_heads,
            "num_hidden_layers": vision.num_layers,
            "num_positions": vision.pre_len + vision.num_patches,
            "patch_size": vision.patch_size,
        },
    }
    if template is not None:
        hf["template_version"] = template
    if cogagent:
        cross = config.cross_vision
        hf.update(cross_hidden_size=config.cross_attn_hidden_size,
                  cross_compute_hidden_size=lang.num_attention_heads * config.cross_head_dim,
                  cross_image_size=cross.image_size)
        if cross != EVALargeConfig(image_size=cross.image_size):
            hf["cross_vision_config"] = {"layers": cross.num_layers, "hidden_size": cross.width,
                                         "head_width": cross.head_width}
    if sat_only:
        hf[SAT_ONLY_KEY] = sat_only
    return hf


def key_pairs(config) -> list[tuple[str, str]]:
    """Every (published SAT key, HF key) pair of a model with this config."""
    from cogvlm.models.config import CogAgentConfig

    cogagent = isinstance(config, CogAgentConfig)
    ranges = {"i": range(config.language.num_layers), "v": range(config.vision.num_layers),
              "c": range(config.cross_vision.num_layers if cogagent else 0)}
    pairs = []
    for sat, hf in COGAGENT_KEYS if cogagent else COGVLM_KEYS:
        names = sorted(set(re.findall(r"{(\w)}", sat + hf)))
        for values in itertools.product(*(ranges[name] for name in names)):
            fill = dict(zip(names, values))
            pairs.append((sat.format(**fill), hf.format(**fill)))
    return pairs


def recomputed_buffers(config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The buffers a folder may leave out, by published SAT key, computed by the model's own modules."""
    from cogvlm.models.config import CogAgentConfig
    from cogvlm.models.eva_clip_l import VisionRotaryEmbedding
    from cogvlm.models.rotary import RotaryEmbedding

    lang = config.language
    buffers = {"mixins.rotary.rotary_emb.inv_freq": RotaryEmbedding(lang.head_dim, lang.rotary_base).inv_freq}
    if isinstance(config, CogAgentConfig):
        rope = VisionRotaryEmbedding(config.cross_vision)
        for prefix in ["", *(f"blocks.{c}.attn." for c in range(config.cross_vision.num_layers))]:
            buffers[f"{_EVA_L_SAT}{prefix}rope.freqs_cos"] = rope.freqs_cos
            buffers[f"{_EVA_L_SAT}{prefix}rope.freqs_sin"] = rope.freqs_sin
    return {key: value.to(dtype) for key, value in buffers.items()}


def _translate(source: dict, pairs, fallback) -> dict[str, torch.Tensor]:
    """Rename `source` by (from, to) pairs; a from-key the source lacks takes fallback(from, to). Several from-keys
    may name one to-key (a tensor stored once on that side): they must hold the same values."""
    out, differing = {}, []
    for src, dst in pairs:
        tensor = source[src] if src in source else fallback(src, dst)
        if dst not in out:
            out[dst] = tensor
        elif not (out[dst].dtype == tensor.dtype and torch.equal(out[dst], tensor)):
            differing.append(f"{src} -> {dst}")
    if differing:
        raise ConversionError("tensors the target layout stores once differ in the source: " + ", ".join(differing))
    return out


def _model_keys(config):
    """The model (on the meta device) and its published state dict: names, shapes and dtypes only."""
    from cogvlm.utils.checkpoint_io.loading import build_model, published_state_dict

    model = build_model(config)
    name = type(model).__name__
    published = published_state_dict(model)
    table = {sat for sat, _ in key_pairs(config)}
    if table != set(published):
        raise ConversionError(f"the key table is out of date for {name}: not in the model "
                              f"{sorted(table - set(published))[:10]}, not in the table "
                              f"{sorted(set(published) - table)[:10]}")
    return model, published


def read_hf_state_dict(hf_dir) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder: the shards its index lists, else its single weights file."""
    hf_dir = Path(hf_dir)
    load = sat_layout.load_tensors
    for index_name, single_name in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (BIN_INDEX, BIN_FILE)):
        if (hf_dir / index_name).is_file():
            try:
                weight_map = json.loads((hf_dir / index_name).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as error:
                raise ConversionError(f"{hf_dir / index_name} is not a weights index: {error}") from None
            state_dict, repeated = {}, []
            for shard in dict.fromkeys(weight_map.values()):
                if not (hf_dir / shard).is_file():
                    raise ConversionError(f"{hf_dir / index_name} lists {shard}, which is missing")
                for key, tensor in load(hf_dir / shard).items():
                    if key in state_dict:
                        repeated.append(key)
                    state_dict[key] = tensor
            unlisted = sorted(set(state_dict) - set(weight_map))
            absent = sorted(set(weight_map) - set(state_dict))
            if repeated or unlisted or absent:
                raise ConversionError(f"{hf_dir}: the shards do not match {index_name}: in several shards "
                                      f"{repeated[:10]}, not in the index {unlisted[:10]}, not in their shard "
                                      f"{absent[:10]}")
            return state_dict
        if (hf_dir / single_name).is_file():
            return load(hf_dir / single_name)
    raise ConversionError(f"{hf_dir} holds no Hugging Face weights (none of {', '.join(WEIGHT_FILES)})")


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def write_safetensors(state_dict: dict[str, torch.Tensor], hf_dir: Path, shard_size: int) -> list[Path]:
    """Shards of at most `shard_size` bytes (a larger tensor gets a shard of its own), in layer order; one shard
    is model.safetensors, several are listed in model.safetensors.index.json, as save_pretrained writes them."""
    from safetensors.torch import save_file

    shards, size = [[]], 0
    for key in sorted(state_dict, key=_natural_key):
        nbytes = state_dict[key].numel() * state_dict[key].element_size()
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = ([SAFETENSORS_FILE] if len(shards) == 1 else
             [SHARD_NAME.format(index=n + 1, total=len(shards)) for n in range(len(shards))])
    written, storages = [], set()
    for name, keys in zip(names, shards):
        tensors = {}
        for key in keys:
            tensor = state_dict[key].contiguous()
            storage = tensor.untyped_storage()
            # safetensors refuses tensors that share memory (one tensor under several HF names) or views of a
            # larger storage: give those their own copy.
            if storage.data_ptr() in storages or storage.nbytes() != tensor.numel() * tensor.element_size():
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            tensors[key] = tensor
        save_file(tensors, hf_dir / name, metadata={"format": "pt"})
        written.append(hf_dir / name)
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        weight_map = {key: name for name, keys in zip(names, shards) for key in keys}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (hf_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return written


def _checkpoint_dtype(state_dict: dict, key: str) -> torch.dtype:
    return state_dict[key].dtype if key in state_dict else torch.float32


def hf_to_sat(hf_dir, sat_dir) -> Path:
    """Convert a Hugging Face CogVLM / CogAgent folder into a SAT checkpoint folder (published layout)."""
    hf_dir, sat_dir = Path(hf_dir).expanduser(), Path(sat_dir).expanduser()
    if not (hf_dir / HF_CONFIG_FILE).is_file():
        raise ConversionError(f"{hf_dir} is not a Hugging Face checkpoint: {HF_CONFIG_FILE} is missing")
    try:
        hf_config = json.loads((hf_dir / HF_CONFIG_FILE).read_text())
    except ValueError as error:
        raise ConversionError(f"{hf_dir / HF_CONFIG_FILE} is not valid JSON: {error}") from None
    if glm4v_conversion.is_glm4v_hf_config(hf_config):        # THUDM/glm-4v-9b, THUDM/cogagent-9b-20241220
        model_config, state_dict = glm4v_conversion.to_sat(hf_config, read_hf_state_dict(hf_dir), hf_dir)
        sat_layout.write_checkpoint(sat_dir, state_dict, model_config)
        sat_layout.copy_tokenizer(hf_dir, sat_dir)
        return sat_dir
    config = config_from_hf(hf_config)
    model, sat_expected = _model_keys(config)
    model_name = type(model).__name__
    pairs = key_pairs(config)
    weights = read_hf_state_dict(hf_dir)
    recomputed = recomputed_buffers(config, _checkpoint_dtype(weights, "model.embed_tokens.weight"))
    hf_expected = {hf: sat_expected[sat] for sat, hf in pairs}
    optional = {hf for sat, hf in pairs if sat in recomputed}
    sat_layout.check_tensors(hf_expected, weights, hf_dir, f"the {model_name} its {HF_CONFIG_FILE} describes",
                             optional, ConversionError)
    converted = _translate(weights, [(hf, sat) for sat, hf in pairs], lambda hf, sat: recomputed[sat])
    state_dict = {key: converted[key] for key in sat_expected}          # the published key order

    sat_layout.write_checkpoint(sat_dir, state_dict, config.to_model_config())
    sat_layout.copy_tokenizer(hf_dir, sat_dir)
    return sat_dir


def sat_to_hf(sat_dir, hf_dir, shard_size: int = DEFAULT_SHARD_SIZE) -> Path:
    """Convert a SAT checkpoint (a folder or a name under $SAT_HOME, any model-parallel size) into a Hugging Face
    folder: safetensors shards of at most `shard_size` bytes, their index, config.json."""
    from cogvlm.utils.checkpoint_io import loading as ckpt

    source = ckpt.resolve_checkpoint_dir(sat_dir)
    hf_dir = Path(hf_dir).expanduser()
    present = sorted(path.name for pattern in ("model*.safetensors", "pytorch_model*.bin", "*.index.json")
                     for path in hf_dir.glob(pattern))
    if present:
        raise ConversionError(f"{hf_dir} already holds Hugging Face weights ({', '.join(present[:5])}); "
                              "convert into a new folder")
    model_config = ckpt.read_model_config(source)
    if glm4v_conversion.is_glm4v_model_config(model_config):
        states = sat_layout.states_file(source)
        if ckpt.stored_model_parallel_size(source, model_config) == 1:
            state_dict = sat_layout.read_state_dict(states)
        else:       # merging the shards needs the model's split plan (models/glm4v)
            model = ckpt.build_model(ckpt.config_from_model_config(model_config))
            state_dict = ckpt.read_full_state_dict(source, int(model_config["model_parallel_size"]), model)
        hf_config, weights = glm4v_conversion.to_hf(model_config, state_dict, states)
        hf_dir.mkdir(parents=True, exist_ok=True)
        write_safetensors(weights, hf_dir, shard_size)
        (hf_dir / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
        sat_layout.copy_tokenizer(source, hf_dir)
        return hf_dir
    config = ckpt.config_from_model_config(model_config)
    stored = ckpt.stored_model_parallel_size(source, model_config)
    model, sat_expected = _model_keys(config)
    model_name = type(model).__name__
    published = ckpt.read_full_state_dict(source, stored, model)
    dtype = _checkpoint_dtype(published, "transformer.word_embeddings.weight")
    recomputed = recomputed_buffers(config, dtype)
    if any(".matrix_A." in key for key in published):
        raise ConversionError(f"{source} holds LoRA weights: fold them in first with python utils/merge_model.py")
    sat_layout.check_tensors(sat_expected, published, ckpt.states_file(source),
                             f"the {model_name} its {sat_layout.CONFIG_FILE} describes", set(recomputed),
                             ConversionError)
    converted = _translate(published, key_pairs(config), lambda sat, hf: recomputed[sat])

    hf_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(converted, hf_dir, shard_size)
    (hf_dir / HF_CONFIG_FILE).write_text(json.dumps(hf_config_from(config, dtype), indent=2, sort_keys=True))
    sat_layout.copy_tokenizer(source, hf_dir)
    return hf_dir


def parse_size(text: str) -> int:
    """Bytes from "5GB", "500MB", "10KB" (powers of 1024) or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 1000000)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMG".index(unit[:1] or " "))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="the Hugging Face folder (read, or written with --to-hf)")
    parser.add_argument("--sat", required=True, help="the SAT checkpoint folder (written, or read with --to-hf; "
                                                     "a name under $SAT_HOME also works then)")
    parser.add_argument("--to-hf", action="store_true", help="convert SAT -> Hugging Face (default: HF -> SAT)")
    parser.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_SIZE,
                        help="largest safetensors shard with --to-hf (default 5GB)")
    args = parser.parse_args(argv)
    try:
        if args.to_hf:
            print(f"converted into {sat_to_hf(args.sat, args.hf, args.shard_size)}")
        else:
            print(f"converted into {hf_to_sat(args.hf, args.sat)}")
    except (CheckpointError, ValueError, OSError) as problem:
        print(f"Error: {problem}", file=sys.stderr)
        return 1
    return 0

