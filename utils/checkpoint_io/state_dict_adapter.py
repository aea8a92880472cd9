"""The published SAT checkpoint key layout <-> this implementation's module names.

The published code registers its mixins as "eva", "rotary" (the visual-expert attention) and "mlp" (the
visual-expert FFN); here they are named for what they are. Only prefixes differ, leaf names are the same, so
the published layout loads and saves unchanged: `from_published(to_published(sd)) == sd`, key for key.
"""
from __future__ import annotations

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

KEY_PREFIXES = {
    "CogVLMModel": COGVLM_KEY_PREFIXES,
    "CogAgentModel": COGAGENT_KEY_PREFIXES,
}


def _rename(key: str, rules) -> str:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def from_published(state_dict: dict, model_class: str = "CogVLMModel") -> dict:
    rules = KEY_PREFIXES[model_class]
    return {_rename(k, rules): v for k, v in state_dict.items()}


def to_published(state_dict: dict, model_class: str = "CogVLMModel") -> dict:
    rules = tuple((new, old) for old, new in KEY_PREFIXES[model_class])
    return {_rename(k, rules): v for k, v in state_dict.items()}
