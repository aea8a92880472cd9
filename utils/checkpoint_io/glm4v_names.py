"""Hugging Face (THUDM/glm-4v-9b, THUDM/cogagent-9b-20241220) <-> published SAT (SAT 0.4.12's GLM4VModel) names.

The tables are data; `hf_to_sat` / `sat_to_hf` apply them to state dicts, strictly, and `renamed_to_sat` /
`renamed_to_hf` do the renaming alone (the converter, utils/convert_hf_checkpoint.py, adds files, configs and
shape checks around them). Placeholders: {i} a decoder layer, {v} an EVA2-CLIP-E layer.

Every tensor keeps its values and layout but one: HF's fused SwiGLU input projection `mlp.dense_h_to_4h` holds
[gate | up] rows (`silu(x0) * x1` over its two halves); SAT holds the gate as the layer's `mlp.dense_h_to_4h` and
the up projection as `mixins.mlp.w2.{i}` (SPLIT_KEYS). The rotary layout (GLM-4V interleaved, CogAgent-9B
rotate-half) is the config's `rope_layout`, so W_q / W_k are copied as they are.
"""
from __future__ import annotations

import torch

from cogvlm.utils.checkpoint_io.sat_layout import CheckpointError

_HF_LM, _HF_VIT = "transformer.encoder.layers.{i}.", "transformer.vision.transformer.layers.{v}."
_SAT_LM, _SAT_VIT = "transformer.layers.{i}.", "mixins.eva.vit_model.transformer.layers.{v}."


def _both(sat: str, hf: str, leaves: tuple[str, ...] = ("weight", "bias")) -> tuple[tuple[str, str], ...]:
    return tuple((f"{sat}.{leaf}", f"{hf}.{leaf}") for leaf in leaves)


SAT_ROTARY_BUFFER, HF_ROTARY_BUFFER = "mixins.attn.rotary_pos_emb.inv_freq", "transformer.rotary_pos_emb.inv_freq"

# (published SAT key, HF key), one tensor each.
DIRECT_KEYS: tuple[tuple[str, str], ...] = (
    ("transformer.word_embeddings.weight", "transformer.embedding.word_embeddings.weight"),
    (SAT_ROTARY_BUFFER, HF_ROTARY_BUFFER),
    (_SAT_LM + "input_layernorm.weight", _HF_LM + "input_layernorm.weight"),
    *_both(_SAT_LM + "attention.query_key_value", _HF_LM + "self_attention.query_key_value"),
    (_SAT_LM + "attention.dense.weight", _HF_LM + "self_attention.dense.weight"),
    (_SAT_LM + "post_attention_layernorm.weight", _HF_LM + "post_attention_layernorm.weight"),
    (_SAT_LM + "mlp.dense_4h_to_h.weight", _HF_LM + "mlp.dense_4h_to_h.weight"),
    ("transformer.final_layernorm.weight", "transformer.encoder.final_layernorm.weight"),
    ("mixins.chatglm-final.lm_head.weight", "transformer.output_layer.weight"),
    # EVA2-CLIP-E: SAT keeps the CLS token as the tower's one-row word embedding.
    *_both("mixins.eva.vit_model.mixins.patch_embedding.proj", "transformer.vision.patch_embedding.proj"),
    ("mixins.eva.vit_model.transformer.word_embeddings.weight", "transformer.vision.patch_embedding.cls_embedding"),
    ("mixins.eva.vit_model.transformer.position_embeddings.weight",
     "transformer.vision.patch_embedding.position_embedding.weight"),
    *_both(_SAT_VIT + "input_layernorm", _HF_VIT + "input_layernorm"),
    *_both(_SAT_VIT + "attention.query_key_value", _HF_VIT + "attention.query_key_value"),
    *_both(_SAT_VIT + "attention.dense", _HF_VIT + "attention.dense"),
    *_both(_SAT_VIT + "mlp.dense_h_to_4h", _HF_VIT + "mlp.fc1"),
    *_both(_SAT_VIT + "mlp.dense_4h_to_h", _HF_VIT + "mlp.fc2"),
    *_both(_SAT_VIT + "post_attention_layernorm", _HF_VIT + "post_attention_layernorm"),
    # The 2x2 conv, the GLU adapter (same leaf names) and boi/eoi.
    *_both("mixins.eva.conv", "transformer.vision.conv"),
    *((f"mixins.eva.linear_proj.{leaf}", f"transformer.vision.linear_proj.{leaf}") for leaf in (
        "linear_proj.weight", "norm1.weight", "norm1.bias", "dense_h_to_4h.weight", "gate_proj.weight",
        "dense_4h_to_h.weight")),
    ("mixins.eva.boi", "transformer.vision.boi"),
    ("mixins.eva.eoi", "transformer.vision.eoi"),
)

# HF key -> the SAT keys whose rows it concatenates, in order.
SPLIT_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (_HF_LM + "mlp.dense_h_to_4h.weight", (_SAT_LM + "mlp.dense_h_to_4h.weight", "mixins.mlp.w2.{i}.weight")),
)


def _expand(template: str, num_layers: int, num_vision_layers: int) -> list[dict[str, int]]:
    """The placeholder values a key template takes."""
    if "{i}" in template:
        return [{"i": i} for i in range(num_layers)]
    if "{v}" in template:
        return [{"v": v} for v in range(num_vision_layers)]
    return [{}]


def key_pairs(num_layers: int, num_vision_layers: int) -> list[tuple[str, str]]:
    """(SAT key, HF key) of every one-to-one tensor of a model with these depths."""
    return [(sat.format(**values), hf.format(**values)) for sat, hf in DIRECT_KEYS
            for values in _expand(hf, num_layers, num_vision_layers)]


def split_keys(num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """(HF key, its SAT row blocks) of every split tensor."""
    return [(hf.format(i=i), tuple(sat.format(i=i) for sat in sats)) for hf, sats in SPLIT_KEYS
            for i in range(num_layers)]


class NameTableError(CheckpointError):
    """A state dict whose names the table does not cover (missing or unexpected keys); one line."""


def _check(state_dict: dict, expected: set[str], side: str) -> None:
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise NameTableError(f"{side} state dict does not fit the GLM-4V name table: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")


def with_rotary_buffer(state_dict: dict[str, torch.Tensor], key: str, config) -> dict[str, torch.Tensor]:
    """The rotary `inv_freq` buffer is derived data, which no forward reads: when a folder lacks it, it is computed
    from the config (as the published code registers it), in the dtype of the other tensors."""
    if key in state_dict:
        return state_dict
    from cogvlm.models.rotary import RotaryEmbedding

    dtype = next(iter(state_dict.values())).dtype if state_dict else torch.float32
    inv_freq = RotaryEmbedding(config.language.rotary_dim, config.language.rotary_base).inv_freq
    return {**state_dict, key: inv_freq.to(dtype)}


def renamed_to_sat(hf: dict[str, torch.Tensor], num_layers: int, num_vision_layers: int) -> dict[str, torch.Tensor]:
    """HF names -> SAT names by the table, consuming `hf` (the converter's 9B tensors): each fused SwiGLU projection is
    split into its SAT row blocks (copies: torch.save would store a view's whole storage) and released at once, so
    a 9B conversion holds one layer's projection twice, not all 40 (9 GB in bf16)."""
    for hf_key, blocks in split_keys(num_layers):
        for sat_key, rows in zip(blocks, hf.pop(hf_key).chunk(len(blocks), dim=0)):
            hf[sat_key] = rows.clone()
    renamed = {sat: hf.pop(hf_key) for sat, hf_key in key_pairs(num_layers, num_vision_layers)}
    return {**renamed, **hf}            # the split blocks, already under SAT names


def renamed_to_hf(sat: dict[str, torch.Tensor], num_layers: int, num_vision_layers: int) -> dict[str, torch.Tensor]:
    """SAT names -> HF names by the table; the SAT row blocks fused back into HF's projection."""
    hf = {hf_key: sat[sat_key] for sat_key, hf_key in key_pairs(num_layers, num_vision_layers)}
    for hf_key, blocks in split_keys(num_layers):
        hf[hf_key] = torch.cat([sat[key] for key in blocks], dim=0)
    return hf


def hf_to_sat(hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """An HF state dict in published SAT names for a GLM4VConfig (strict: every key is used, none is missing but
    the rotary buffer). `hf` itself is left as it is."""
    num_layers, num_vision_layers = config.language.num_layers, config.vision.num_layers
    hf = with_rotary_buffer(dict(hf), HF_ROTARY_BUFFER, config)     # a copy: renamed_to_sat consumes it
    _check(hf, {h for _, h in key_pairs(num_layers, num_vision_layers)} | {h for h, _ in split_keys(num_layers)},
           "the Hugging Face")
    return renamed_to_sat(hf, num_layers, num_vision_layers)


def sat_to_hf(sat: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A published SAT state dict in HF names for a GLM4VConfig (strict, as hf_to_sat)."""
    num_layers, num_vision_layers = config.language.num_layers, config.vision.num_layers
    sat = with_rotary_buffer(sat, SAT_ROTARY_BUFFER, config)
    _check(sat, {s for s, _ in key_pairs(num_layers, num_vision_layers)}
           | {k for _, blocks in split_keys(num_layers) for k in blocks}, "the SAT")
    return renamed_to_hf(sat, num_layers, num_vision_layers)
