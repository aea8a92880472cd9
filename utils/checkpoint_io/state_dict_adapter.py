"""The published SAT checkpoint key layout <-> this implementation's module names: the one place that knows both.

The published code registers its mixins as "eva", "rotary" (the visual-expert attention) and "mlp" (the
visual-expert FFN); here they are named for what they are. Only prefixes differ, leaf names are the same, so
the published layout loads and saves unchanged: `from_published(to_published(sd)) == sd`, key for key.

`speak_published(model)` makes a model's own `state_dict()` return published names and its `load_state_dict()`
take them, so that every save, SAT's training saves included, writes a published-layout checkpoint with no
translation step. Earlier versions of this code let SAT's training saves write the internal names; both
directions are idempotent (no internal prefix is a published one and vice versa), so such checkpoints still load
through the same functions: `to_published` brings either layout to the published one.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import torch

# (published prefix, internal prefix); the first matching rule applies, so longer prefixes come first.
COGVLM_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("mixins.eva.vit_model.", "mixins.image.encoder."),
    ("mixins.eva.linear_proj.", "mixins.image.adapter."),
    ("mixins.eva.", "mixins.image."),
    ("mixins.rotary.", "mixins.visual_expert_attention."),
    ("mixins.mlp.", "mixins.visual_expert_mlp."),
)

# CogAgent's cross branch is registered as "encoder" in the published code.
COGAGENT_KEY_PREFIXES = COGVLM_KEY_PREFIXES + (
    ("mixins.encoder.vit.model.", "mixins.cross_vision.encoder."),
    ("mixins.encoder.", "mixins.cross_vision."),
)

# GLM-4V-9B / CogAgent-9B: the names of SAT 0.4.12's official GLM4VModel (its "chatglm-final" head, "attn" rotary
# mixin and "mlp" SwiGLU mixin, whose `w2` is the up projection).
GLM4V_KEY_PREFIXES = (
    ("mixins.eva.vit_model.", "mixins.image.encoder."),
    ("mixins.eva.linear_proj.", "mixins.image.adapter."),
    ("mixins.eva.", "mixins.image."),
    ("mixins.chatglm-final.", "mixins.lm."),
    ("mixins.attn.", "mixins.rotary_attention."),
    ("mixins.mlp.w2.", "mixins.swiglu.up_proj."),
)

KEY_PREFIXES = {
    "CogVLMModel": COGVLM_KEY_PREFIXES,
    "CogAgentModel": COGAGENT_KEY_PREFIXES,
    "GLM4VModel": GLM4V_KEY_PREFIXES,
}

Rules = tuple[tuple[str, str], ...]


def _rename(key: str, rules: Rules) -> str:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _published_rules(model_class: str) -> Rules:
    return KEY_PREFIXES[model_class]


def _internal_rules(model_class: str) -> Rules:
    return tuple((new, old) for old, new in KEY_PREFIXES[model_class])


def from_published(state_dict: dict, model_class: str = "CogVLMModel") -> dict:
    rules = _published_rules(model_class)
    return {_rename(k, rules): v for k, v in state_dict.items()}


def to_published(state_dict: dict, model_class: str = "CogVLMModel") -> dict:
    """Published names from either layout: internal names are renamed, published ones pass through."""
    rules = _internal_rules(model_class)
    return {_rename(k, rules): v for k, v in state_dict.items()}


def _rename_in_place(state_dict: OrderedDict, prefix: str, rules: Rules) -> None:
    """Rename the keys under `prefix` (the model's own, when it is wrapped, e.g. in DeepSpeed's engine), keeping
    the order, in the dict torch hands to the hooks (they must modify it in place)."""
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix):
            key = prefix + _rename(key[len(prefix):], rules)
        state_dict[key] = value


def _save_hook(module, state_dict, prefix, local_metadata, *, rules: Rules) -> None:
    _rename_in_place(state_dict, prefix, rules)


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs, *,
               rules: Rules) -> None:
    _rename_in_place(state_dict, prefix, rules)


def speak_published(model: torch.nn.Module) -> torch.nn.Module:
    """Make `model.state_dict()` use published names and `model.load_state_dict()` take them (or the internal
    names of older training saves). Returns the model."""
    model_class = type(model).__name__
    model.register_state_dict_post_hook(functools.partial(_save_hook, rules=_internal_rules(model_class)))
    model.register_load_state_dict_pre_hook(functools.partial(_load_hook, rules=_published_rules(model_class)))
    return model
