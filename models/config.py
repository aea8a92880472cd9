"""Configurations of the published CogVLM checkpoints, with tiny ones beside them.

Every size the model code uses comes from here; nothing in `models/` hard-codes a width or a depth.
Sources: the CogVLM paper (arXiv 2311.03079), the published `model_config.json` of each checkpoint and the
LLaMA-2 / Vicuna-7B-v1.5 and EVA2-CLIP-E configurations they were built from.

`CogVLMConfig.from_model_config` / `to_model_config` translate to and from the published `model_config.json`
layout (SAT's flat argument names); keys this project does not model are kept in `extra` and written back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LanguageConfig:
    """The LLaMA decoder (LLaMA-2-7B / Vicuna-7B-v1.5 shape)."""
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_attention_heads: int = 32
    inner_hidden_size: int = 11008          # SwiGLU width
    layernorm_epsilon: float = 1e-5         # RMSNorm
    rotary_base: float = 10000.0
    max_sequence_length: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class EVAConfig:
    """EVA2-CLIP-E, the image encoder (post-norm blocks, one CLS token that is dropped before the adapter)."""
    hidden_size: int = 1792
    num_layers: int = 63
    num_attention_heads: int = 16
    inner_hidden_size: int = 15360
    image_size: int = 490
    patch_size: int = 14
    in_channels: int = 3
    layernorm_epsilon: float = 1e-6
    pre_len: int = 1                        # the CLS token
    post_len: int = 0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_model_config(self) -> dict[str, Any]:
        """SAT's `eva_args` dict as published."""
        return {
            "model_class": "EVA2CLIPModel",
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "vocab_size": 1,                                     # the CLS token's embedding row
            "layernorm_order": "post",
            "model_parallel_size": 1,
            "max_sequence_length": self.pre_len + self.num_patches + self.post_len,
            "inner_hidden_size": self.inner_hidden_size,
            "use_final_layernorm": False,
            "layernorm_epsilon": self.layernorm_epsilon,
            "row_parallel_linear_final_bias": False,
            "image_size": [self.image_size, self.image_size],
            "pre_len": self.pre_len,
            "post_len": self.post_len,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
        }

    @classmethod
    def from_model_config(cls, eva_args: dict[str, Any]) -> "EVAConfig":
        size = eva_args["image_size"]
        height, width = (size, size) if isinstance(size, int) else size
        if height != width:
            raise ValueError(f"EVA2-CLIP image_size must be square, got {size}")
        return cls(
            hidden_size=eva_args["hidden_size"],
            num_layers=eva_args["num_layers"],
            num_attention_heads=eva_args["num_attention_heads"],
            inner_hidden_size=eva_args["inner_hidden_size"],
            image_size=height,
            patch_size=eva_args.get("patch_size", cls.patch_size),
            in_channels=eva_args.get("in_channels", cls.in_channels),
            layernorm_epsilon=eva_args.get("layernorm_epsilon", cls.layernorm_epsilon),
            pre_len=eva_args.get("pre_len", cls.pre_len),
            post_len=eva_args.get("post_len", cls.post_len),
        )


# Keys of model_config.json that CogVLMConfig models; anything else is carried in `extra`.
_MODELLED_KEYS = {
    "model_class", "num_layers", "hidden_size", "num_attention_heads", "vocab_size", "inner_hidden_size",
    "layernorm_epsilon", "max_sequence_length", "image_length", "eva_args", "bos_token_id", "eos_token_id",
    "pad_token_id", "text_processor_version", "layernorm_order", "use_bias", "model_parallel_size",
}


@dataclass(frozen=True)
class CogVLMConfig:
    """CogVLM: EVA2-CLIP-E -> MLP adapter -> LLaMA with a visual expert in every layer."""
    language: LanguageConfig = field(default_factory=LanguageConfig)
    vision: EVAConfig = field(default_factory=EVAConfig)
    # The published code builds visual experts for layers [0, 32): every layer of the 7B decoder.
    num_vision_expert_layers: int = 32
    text_processor_version: str | None = None    # the checkpoint's prompt template, overrides --version
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    model_class: str = "CogVLMModel"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def image_length(self) -> int:
        """Image tokens in the sequence, without boi/eoi."""
        return self.vision.num_patches

    @property
    def cross_image_size(self) -> int | None:
        """Pixel size of the high-resolution cross image, for models that have one."""
        return None

    @property
    def vision_expert_layers(self) -> range:
        return range(min(self.num_vision_expert_layers, self.language.num_layers))

    def replace(self, **changes) -> "CogVLMConfig":
        return replace(self, **changes)

    def to_model_config(self) -> dict[str, Any]:
        """The published model_config.json content."""
        lang = self.language
        config = {
            "model_class": self.model_class,
            "num_layers": lang.num_layers,
            "hidden_size": lang.hidden_size,
            "num_attention_heads": lang.num_attention_heads,
            "vocab_size": lang.vocab_size,
            "layernorm_order": "pre",
            "model_parallel_size": 1,
            "max_sequence_length": lang.max_sequence_length,
            "use_bias": False,
            "inner_hidden_size": lang.inner_hidden_size,
            "image_length": self.image_length,
            "eva_args": self.vision.to_model_config(),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if lang.layernorm_epsilon != LanguageConfig.layernorm_epsilon:
            config["layernorm_epsilon"] = lang.layernorm_epsilon
        if self.text_processor_version is not None:
            config["text_processor_version"] = self.text_processor_version
        config.update(self.extra)
        return config

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> "CogVLMConfig":
        missing = [k for k in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "eva_args")
                   if k not in config]
        if missing:
            raise ValueError(f"model_config.json lacks {', '.join(missing)}: not a CogVLM checkpoint config")
        if config.get("use_bias", False) or config.get("layernorm_order", "pre") != "pre":
            raise ValueError("model_config.json describes a decoder with biases or non-'pre' layernorm: "
                             "not a CogVLM checkpoint")
        language = LanguageConfig(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_layers"],
            num_attention_heads=config["num_attention_heads"],
            inner_hidden_size=config.get("inner_hidden_size") or 4 * config["hidden_size"],
            layernorm_epsilon=config.get("layernorm_epsilon", LanguageConfig.layernorm_epsilon),
            max_sequence_length=config.get("max_sequence_length", LanguageConfig.max_sequence_length),
        )
        vision = EVAConfig.from_model_config(config["eva_args"])
        image_length = config.get("image_length", vision.num_patches)
        if image_length != vision.num_patches:
            raise ValueError(f"model_config.json: image_length {image_length} does not match the EVA2-CLIP "
                             f"grid ({vision.image_size}px / patch {vision.patch_size} = {vision.num_patches})")
        return cls(
            language=language,
            vision=vision,
            text_processor_version=config.get("text_processor_version"),
            bos_token_id=config.get("bos_token_id", cls.bos_token_id),
            eos_token_id=config.get("eos_token_id", cls.eos_token_id),
            pad_token_id=config.get("pad_token_id", cls.pad_token_id),
            model_class=config.get("model_class", cls.model_class),
            extra={k: v for k, v in config.items() if k not in _MODELLED_KEYS},
        )


def _published(image_size: int, text_processor_version: str) -> CogVLMConfig:
    return CogVLMConfig(vision=EVAConfig(image_size=image_size), text_processor_version=text_processor_version)


# The published CogVLM-17B checkpoints, by their SAT_HOME name.
PUBLISHED_CONFIGS: dict[str, CogVLMConfig] = {
    "cogvlm-chat-v1.1": _published(490, "chat_old"),
    "cogvlm-base-224": _published(224, "base"),
    "cogvlm-base-490": _published(490, "base"),
    "cogvlm-grounding-generalist-v1.1": _published(490, "base"),
}

# The shape of tests/fixtures/cogvlm-tiny: every dimension shrunk, the structure unchanged.
TINY_CONFIG = CogVLMConfig(
    language=LanguageConfig(vocab_size=512, hidden_size=64, num_layers=2, num_attention_heads=4,
                            inner_hidden_size=128, max_sequence_length=1024),
    vision=EVAConfig(hidden_size=48, num_layers=2, num_attention_heads=4, inner_hidden_size=64, image_size=56),
    text_processor_version="chat_old",
)


@dataclass(frozen=True)
class EVALargeConfig:
    """EVA2-CLIP-L, CogAgent's high-resolution cross encoder (CogAgent paper, section 2.2): pre-norm blocks with
    sub-LN, SwiGLU MLP, 2-D rotary positions on the patches, run on a 1120 px copy of the image."""
    image_size: int = 1120
    num_layers: int = 24                    # the last block is built (the checkpoint holds it) but not run
    width: int = 1024
    head_width: int = 64
    mlp_ratio: float = 2.6667
    patch_size: int = 14
    in_channels: int = 3
    layernorm_epsilon: float = 1e-6
    rope_base: float = 10000.0
    rope_pretrain_grid: int = 16            # the grid the rotary frequencies were trained on (224 / 14)
    head_dim_out: int = 768                 # the CLIP head: stored in the checkpoint, unused

    @property
    def num_heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class CogAgentConfig(CogVLMConfig):
    """CogAgent: CogVLM (224 px EVA2-CLIP-E) plus EVA2-CLIP-L on 1120 px, cross-attended by every decoder layer."""
    vision: EVAConfig = field(default_factory=lambda: EVAConfig(image_size=224))
    cross_vision: EVALargeConfig = field(default_factory=EVALargeConfig)
    cross_head_dim: int = 32                # cross-attention: num_attention_heads x cross_head_dim = cross width
    model_class: str = "CogAgentModel"

    @property
    def cross_attn_hidden_size(self) -> int:
        return self.cross_vision.width

    @property
    def cross_image_size(self) -> int:
        return self.cross_vision.image_size

    def to_model_config(self) -> dict[str, Any]:
        config = super().to_model_config()
        config.update({
            "is_decoder": [True] * self.language.num_layers,
            "cross_attn_hidden_size": self.cross_attn_hidden_size,
            "cross_hidden_size_per_attention_head": self.cross_head_dim,
            "cross_image_pix": self.cross_vision.image_size,
        })
        published = EVALargeConfig(image_size=self.cross_vision.image_size)
        if self.cross_vision != published:      # only non-published encoders carry their shape (fixture key)
            config["cross_vision_args"] = {"layers": self.cross_vision.num_layers, "width": self.cross_vision.width,
                                           "head_width": self.cross_vision.head_width}
        return config

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> "CogAgentConfig":
        base = CogVLMConfig.from_model_config(config)
        shape = config.get("cross_vision_args", {})
        cross_vision = EVALargeConfig(
            image_size=config.get("cross_image_pix", EVALargeConfig.image_size),
            num_layers=shape.get("layers", EVALargeConfig.num_layers),
            width=shape.get("width", EVALargeConfig.width),
            head_width=shape.get("head_width", EVALargeConfig.head_width),
        )
        if config.get("cross_attn_hidden_size", cross_vision.width) != cross_vision.width:
            raise ValueError(f"cross_attn_hidden_size {config['cross_attn_hidden_size']} must equal the cross "
                             f"encoder's width {cross_vision.width}")
        is_decoder = config.get("is_decoder", True)        # a list per layer as published, a bool from SAT
        if not (all(is_decoder) if isinstance(is_decoder, list) else is_decoder):
            raise ValueError("CogAgent cross-attends in every decoder layer; is_decoder must be all true")
        cogagent_keys = {"is_decoder", "cross_attn_hidden_size", "cross_hidden_size_per_attention_head",
                         "cross_image_pix", "cross_vision_args"}
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(CogVLMConfig)
                      if f.name != "extra"},
                   extra={k: v for k, v in base.extra.items() if k not in cogagent_keys},
                   cross_vision=cross_vision,
                   cross_head_dim=config.get("cross_hidden_size_per_attention_head", CogAgentConfig.cross_head_dim))


def _published_cogagent(text_processor_version: str) -> CogAgentConfig:
    return CogAgentConfig(text_processor_version=text_processor_version)


PUBLISHED_CONFIGS.update({
    "cogagent-chat": _published_cogagent("chat"),
    "cogagent-vqa": _published_cogagent("chat_old"),
})

# The shape of tests/fixtures/cogagent-tiny.
TINY_COGAGENT_CONFIG = CogAgentConfig(
    language=TINY_CONFIG.language,
    vision=TINY_CONFIG.vision,
    cross_vision=EVALargeConfig(image_size=112, num_layers=2, width=32, head_width=8),
    cross_head_dim=8,
    text_processor_version="chat",
)


def current_model_parallel_size() -> int:
    """The size of the model-parallel group set up outside the model (1 when none is).

    SAT's parallel layers partition themselves by that group when they are built, and SAT refuses a BaseModel
    whose `model_parallel_size` differs from it, so every SAT model built here passes this value on."""
    from sat import mpu

    return mpu.get_model_parallel_world_size() if mpu.model_parallel_is_initialized() else 1


# A small CogVLM the captcha fine-tuning demo trains from scratch on a CPU (finetune_demo/make_tiny_model.py): the
# fixture's tokenizer (vocab 512, digits split), a 112 px image (8 x 8 patches), ~1 M parameters.
CAPTCHA_TINY_CONFIG = CogVLMConfig(
    language=LanguageConfig(vocab_size=512, hidden_size=128, num_layers=2, num_attention_heads=4,
                            inner_hidden_size=256, max_sequence_length=1024),
    vision=EVAConfig(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=128, image_size=112),
    text_processor_version="chat_old",
)


# --- GLM-4V-9B and CogAgent-9B-20241220 ----------------------------------------------------------------------------
# Sources: the published Hugging Face config.json of THUDM/glm-4v-9b (its field names in the comments); CogAgent-9B
# differs only by `original_rope: false` (rotate-half rotary, per vLLM's GLM-4V port). The SAT checkpoint layout and
# model_config.json keys are those of SAT 0.4.12's `sat.model.official.GLM4VModel`.

ROPE_LAYOUTS = ("interleaved", "rotate_half")


@dataclass(frozen=True)
class GLM4LanguageConfig:
    """The ChatGLM4 decoder: grouped-query attention with a QKV bias, RMSNorm, SwiGLU, rotary on half of each head."""
    vocab_size: int = 151552                # padded_vocab_size
    hidden_size: int = 4096
    num_layers: int = 40
    num_attention_heads: int = 32
    head_dim: int = 128                     # kv_channels
    num_kv_groups: int = 2                  # multi_query_group_num: query heads share K/V in this many groups
    inner_hidden_size: int = 13696          # ffn_hidden_size (SwiGLU width)
    layernorm_epsilon: float = 1.5625e-07
    rope_ratio: float = 1.0                 # scales the rotary base (absent in the published config: 1)
    # original_rope true: interleaved pairs (GPT-J style, GLM-4V-9B); false: rotate-half (GPT-NeoX, CogAgent-9B)
    rope_layout: str = "interleaved"
    max_sequence_length: int = 2048         # seq_length: the published rotary cache's size

    def __post_init__(self):
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout must be one of {', '.join(ROPE_LAYOUTS)}, got {self.rope_layout!r}")
        if self.num_attention_heads % self.num_kv_groups:
            raise ValueError(f"{self.num_attention_heads} attention heads do not split into {self.num_kv_groups} "
                             f"KV groups")

    @property
    def rotary_dim(self) -> int:
        """Only the first half of each head's dimensions rotate; the rest pass through."""
        return self.head_dim // 2

    @property
    def rotary_base(self) -> float:
        return 10000.0 * self.rope_ratio


@dataclass(frozen=True)
class GLM4VConfig:
    """GLM-4V-9B: EVA2-CLIP-E (1120 px) -> 2x2 stride-2 conv -> GLU -> [boi, image, eoi] / scaling_factor ->
    ChatGLM4."""
    language: GLM4LanguageConfig = field(default_factory=GLM4LanguageConfig)
    vision: EVAConfig = field(default_factory=lambda: EVAConfig(image_size=1120))
    scaling_factor: float = 8.0             # vision_config.scaling_factor: divides the image embeddings
    # The conv after the ViT merges patch_merge x patch_merge patches into one token (kernel = stride). Fixed in the
    # published code (HF and SAT alike), so it is not written to model_config.json.
    patch_merge: int = 2
    eos_token_ids: tuple[int, ...] = (151329, 151336, 151338)      # <|endoftext|> <|user|> <|observation|>
    pad_token_id: int = 151329
    boi_token_id: int = 151339              # <|begin_of_image|>
    eoi_token_id: int = 151340              # <|end_of_image|>
    model_class: str = "GLM4VModel"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    text_processor_version = None           # the GLM-4 chat template is the tokenizer's, not a SAT text processor
    cross_image_size = None                 # no high-resolution cross branch

    @property
    def conv_grid(self) -> int:
        """Side of the image-token grid: the ViT's patch grid after the patch-merging conv."""
        return self.vision.image_size // self.vision.patch_size // self.patch_merge

    @property
    def image_length(self) -> int:
        """Image tokens in the sequence, without boi/eoi (1600 at 1120 px)."""
        return self.conv_grid ** 2

    def replace(self, **changes) -> "GLM4VConfig":
        return replace(self, **changes)

    def to_model_config(self) -> dict[str, Any]:
        """model_config.json: SAT's GLM4VModel argument names, plus the keys this model reads beyond SAT's."""
        lang = self.language
        config = {
            "model_class": self.model_class,
            "num_layers": lang.num_layers,
            "hidden_size": lang.hidden_size,
            "num_attention_heads": lang.num_attention_heads,
            "hidden_size_per_attention_head": lang.head_dim,
            "num_multi_query_heads": lang.num_kv_groups,
            "vocab_size": lang.vocab_size,
            "inner_hidden_size": lang.inner_hidden_size,
            "layernorm_epsilon": lang.layernorm_epsilon,
            "layernorm_order": "pre",
            "use_bias": False,
            "use_qkv_bias": True,
            "model_parallel_size": 1,
            "max_sequence_length": lang.max_sequence_length,
            "image_length": self.image_length,
            "eva_args": self.vision.to_model_config(),
            "proj_hidden_size": lang.hidden_size,
            "rope_layout": lang.rope_layout,
            "rope_ratio": lang.rope_ratio,
            "scaling_factor": self.scaling_factor,
            "eos_token_id": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "boi_token_id": self.boi_token_id,
            "eoi_token_id": self.eoi_token_id,
        }
        config.update(self.extra)
        return config

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> "GLM4VConfig":
        missing = [k for k in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "eva_args",
                               "num_multi_query_heads", "inner_hidden_size") if k not in config]
        if missing:
            raise ValueError(f"model_config.json lacks {', '.join(missing)}: not a GLM-4V checkpoint config")
        if config.get("proj_hidden_size") not in (None, config["hidden_size"]):
            raise ValueError(f"proj_hidden_size {config['proj_hidden_size']} must equal hidden_size "
                             f"{config['hidden_size']}")
        language = GLM4LanguageConfig(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_layers"],
            num_attention_heads=config["num_attention_heads"],
            head_dim=config.get("hidden_size_per_attention_head") or
            config["hidden_size"] // config["num_attention_heads"],
            num_kv_groups=config["num_multi_query_heads"],
            inner_hidden_size=config["inner_hidden_size"],
            layernorm_epsilon=config.get("layernorm_epsilon", GLM4LanguageConfig.layernorm_epsilon),
            rope_ratio=config.get("rope_ratio", GLM4LanguageConfig.rope_ratio),
            # SAT's own GLM4VModel rotates halves (its FastRotaryEmbedding is not interleaved): a model_config.json
            # without the key means that.
            rope_layout=config.get("rope_layout", "rotate_half"),
            max_sequence_length=config.get("max_sequence_length", GLM4LanguageConfig.max_sequence_length),
        )
        result = cls(
            language=language,
            vision=EVAConfig.from_model_config(config["eva_args"]),
            scaling_factor=config.get("scaling_factor", cls.scaling_factor),
            eos_token_ids=tuple(_as_list(config.get("eos_token_id", list(cls.eos_token_ids)))),
            pad_token_id=config.get("pad_token_id", cls.pad_token_id),
            boi_token_id=config.get("boi_token_id", cls.boi_token_id),
            eoi_token_id=config.get("eoi_token_id", cls.eoi_token_id),
            model_class=config.get("model_class", cls.model_class),
            extra={k: v for k, v in config.items() if k not in _GLM4V_MODELLED_KEYS},
        )
        image_length = config.get("image_length", result.image_length)
        if image_length != result.image_length:
            raise ValueError(f"model_config.json: image_length {image_length} does not match the EVA2-CLIP grid "
                             f"after the 2x2 conv ({result.conv_grid}^2 = {result.image_length})")
        return result

    @classmethod
    def from_hf_config(cls, hf_config: dict[str, Any]) -> "GLM4VConfig":
        """The configuration a Hugging Face glm-4v-9b / cogagent-9b-20241220 config.json describes."""
        vision = hf_config["vision_config"]
        fixed = [(key, hf_config.get(key, value), value) for key, value in GLM4V_HF_REQUIRED_FIELDS.items()]
        fixed += [(f"vision_config.{key}", vision.get(key, value), value)
                  for key, value in GLM4V_HF_VISION_REQUIRED_FIELDS.items()]
        for key, found, published in fixed:
            if found != published:
                raise ValueError(f"config.json: {key} {found!r} is not GLM-4V's {published!r}")
        language = GLM4LanguageConfig(
            vocab_size=hf_config["padded_vocab_size"],
            hidden_size=hf_config["hidden_size"],
            num_layers=hf_config["num_layers"],
            num_attention_heads=hf_config["num_attention_heads"],
            head_dim=hf_config["kv_channels"],
            num_kv_groups=hf_config["multi_query_group_num"] if hf_config.get("multi_query_attention") else
            hf_config["num_attention_heads"],
            inner_hidden_size=hf_config["ffn_hidden_size"],
            layernorm_epsilon=hf_config["layernorm_epsilon"],
            rope_ratio=hf_config.get("rope_ratio", 1.0),
            rope_layout="interleaved" if hf_config.get("original_rope", True) else "rotate_half",
            max_sequence_length=hf_config.get("seq_length", GLM4LanguageConfig.max_sequence_length),
        )
        num_patches = (vision["image_size"] // vision["patch_size"]) ** 2
        if vision.get("num_positions", num_patches + 1) != num_patches + 1:
            raise ValueError(f"vision_config.num_positions {vision['num_positions']} is not the {num_patches} "
                             f"patches + CLS of a {vision['image_size']} px image")
        eva = EVAConfig(hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"],
                        num_attention_heads=vision["num_heads"], inner_hidden_size=vision["intermediate_size"],
                        image_size=vision["image_size"], patch_size=vision["patch_size"],
                        in_channels=vision.get("in_channels", 3),
                        layernorm_epsilon=vision.get("layer_norm_eps", EVAConfig.layernorm_epsilon))
        return cls(language=language, vision=eva, scaling_factor=vision.get("scaling_factor", cls.scaling_factor),
                   eos_token_ids=tuple(_as_list(hf_config.get("eos_token_id", list(cls.eos_token_ids)))),
                   pad_token_id=hf_config.get("pad_token_id", cls.pad_token_id),
                   boi_token_id=hf_config.get("boi_token_id", cls.boi_token_id),
                   eoi_token_id=hf_config.get("eoi_token_id", cls.eoi_token_id))


    def to_hf_config(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The Hugging Face config.json of this model, with the published remote-code fields."""
        lang, vision = self.language, self.vision
        config = {
            "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            "auto_map": dict(GLM4V_HF_AUTO_MAP),
            "vision_config": {
                **GLM4V_HF_VISION_FIXED_FIELDS,
                "in_channels": vision.in_channels, "num_hidden_layers": vision.num_layers,
                "hidden_size": vision.hidden_size, "patch_size": vision.patch_size,
                "num_heads": vision.num_attention_heads, "intermediate_size": vision.inner_hidden_size,
                "layer_norm_eps": vision.layernorm_epsilon, "num_positions": vision.num_patches + vision.pre_len,
                "image_size": vision.image_size, "scaling_factor": self.scaling_factor,
            },
            **GLM4V_HF_FIXED_FIELDS,
            "ffn_hidden_size": lang.inner_hidden_size, "hidden_size": lang.hidden_size, "kv_channels": lang.head_dim,
            "layernorm_epsilon": lang.layernorm_epsilon, "multi_query_attention": True,
            "multi_query_group_num": lang.num_kv_groups, "num_attention_heads": lang.num_attention_heads,
            "num_layers": lang.num_layers, "original_rope": lang.rope_layout == "interleaved",
            "padded_vocab_size": lang.vocab_size, "seq_length": lang.max_sequence_length,
            "torch_dtype": torch_dtype, "eos_token_id": list(self.eos_token_ids), "pad_token_id": self.pad_token_id,
            "boi_token_id": self.boi_token_id, "eoi_token_id": self.eoi_token_id,
        }
        if lang.rope_ratio != 1.0:
            config["rope_ratio"] = lang.rope_ratio
        return config


# config.json fields whose value the model's structure depends on: the only values this implementation computes
# (another value is an error, not a silently different model).
GLM4V_HF_REQUIRED_FIELDS = {
    "add_bias_linear": False, "add_qkv_bias": True, "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True, "rmsnorm": True, "tie_word_embeddings": False,
}
# config.json fields of the published remote code that only its runtime reads (dropout, kernels, fp32 options,
# version): written with their published values, and not checked on the way in.
GLM4V_HF_PUBLISHED_FIELDS = {
    "apply_query_key_layer_scaling": True, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
    "attn_implementation": "sdpa", "bias_dropout_fusion": True, "fp32_residual_connection": False,
    "hidden_dropout": 0.0, "use_cache": True, "transformers_version": "4.44.0",
}
GLM4V_HF_FIXED_FIELDS = {**GLM4V_HF_REQUIRED_FIELDS, **GLM4V_HF_PUBLISHED_FIELDS}
GLM4V_HF_VISION_REQUIRED_FIELDS = {"hidden_act": "gelu"}          # the tower's MLP is exact GELU
GLM4V_HF_VISION_FIXED_FIELDS = {"dropout_prob": 0.0, **GLM4V_HF_VISION_REQUIRED_FIELDS}
GLM4V_HF_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}

_GLM4V_MODELLED_KEYS = {
    "model_class", "num_layers", "hidden_size", "num_attention_heads", "hidden_size_per_attention_head",
    "num_multi_query_heads", "vocab_size", "inner_hidden_size", "layernorm_epsilon", "layernorm_order", "use_bias",
    "use_qkv_bias", "model_parallel_size", "max_sequence_length", "image_length", "eva_args", "proj_hidden_size",
    "rope_layout", "rope_ratio", "scaling_factor", "eos_token_id", "pad_token_id", "boi_token_id", "eoi_token_id",
}


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# model_config.json's tokenizer_type of a 9B checkpoint (utils/checkpoint_io/glm4v_conversion.py writes it).
GLM4_TOKENIZER_TYPE = "glm4"
GLM4_MODEL_CLASSES = (GLM4VConfig.model_class,)


def is_glm4_checkpoint(model_config: dict[str, Any]) -> bool:
    """Whether a checkpoint's model_config.json is of the GLM-4 family (its tokenizer and chat template)."""
    return (model_config.get("tokenizer_type") == GLM4_TOKENIZER_TYPE
            or model_config.get("model_class") in GLM4_MODEL_CLASSES)


GLM4V_9B_CONFIG = GLM4VConfig()
COGAGENT_9B_CONFIG = GLM4VConfig(language=GLM4LanguageConfig(rope_layout="rotate_half"))
PUBLISHED_GLM4V_CONFIGS: dict[str, GLM4VConfig] = {
    "glm-4v-9b": GLM4V_9B_CONFIG,
    "cogagent-9b-20241220": COGAGENT_9B_CONFIG,
}

# The shape of the reference fixtures glm4v-tiny / cogagent9b-tiny (their config.json): every size shrunk but the
# 151,552-id vocabulary, so that the real GLM-4 tokenizer applies.
TINY_GLM4V_CONFIG = GLM4VConfig(
    language=GLM4LanguageConfig(hidden_size=64, num_layers=2, num_attention_heads=4, head_dim=16, num_kv_groups=2,
                                inner_hidden_size=96),
    vision=EVAConfig(hidden_size=32, num_layers=2, num_attention_heads=2, inner_hidden_size=48, image_size=112),
)
TINY_COGAGENT_9B_CONFIG = TINY_GLM4V_CONFIG.replace(
    language=replace(TINY_GLM4V_CONFIG.language, rope_layout="rotate_half"))
