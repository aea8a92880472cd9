"""Prompt templates and tokenisation of a (query, history) pair into model inputs (``ModelInputs``).

A prompt contains exactly one image slot, written ``<EOI>`` in the template.
At tokenisation time that slot becomes ``image_length + 2`` placeholder tokens::

    [bos] text-before-slot [boi] [patch] * image_length [eoi] text-after-slot

The model later overwrites the placeholder embeddings (boi/eoi with learnt
vectors, the patches with the projected ViT output), guided by the masks.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from cogvlm.models.inputs import NUM_IMAGE_DELIMITERS, ModelInputs

from .tokenizer import LlamaTokenizer

IMAGE_SLOT = "<EOI>"
# Token id written under the image slot. It is <unk> in LLaMA vocabularies; the
# value never reaches the transformer because the embeddings are replaced.
IMAGE_PLACEHOLDER_ID = 0

History = Sequence[Sequence[str]]  # [(question, answer), ...]


class EmptyQueryError(ValueError):
    """The user query is empty (or only whitespace / image slots)."""


class InvalidHistoryError(ValueError):
    """The chat history is not a sequence of (question, answer) string pairs."""


@dataclass(frozen=True)
class PromptTemplate:
    """How one ``text_processor_version`` lays out a conversation.

    prompt = IMAGE_SLOT + prefix + "".join(history_turn per past turn) + query
    ``history_turn`` uses ``{question}``/``{answer}`` and ``query`` uses ``{query}``
    fields; only the template is formatted, so braces in user text are safe.
    """

    prefix: str
    query: str
    response_separator: str | None
    uses_history: bool
    history_turn: str = ""

    def render(self, query: str, history: History = ()) -> str:
        turns = ""
        if self.uses_history:
            turns = "".join(self.history_turn.format(question=q, answer=a) for q, a in history)
        return IMAGE_SLOT + self.prefix + turns + self.query.format(query=query)


PROMPT_TEMPLATES = MappingProxyType(
    {
        # Plain continuation; history is ignored.
        "base": PromptTemplate(prefix="", query="{query}", response_separator=None, uses_history=False),
        # Llama-2 chat style; note the space after the slot and the trailing space.
        "chat": PromptTemplate(
            prefix=" [INST] ",
            history_turn="{question} [/INST] {answer} [INST] ",
            query="{query} [/INST] ",
            response_separator="[/INST]",
            uses_history=True,
        ),
        # cogvlm-chat-v1.1 style.
        "chat_old": PromptTemplate(
            prefix="Question: ",
            history_turn="{question} Answer: {answer}\nQuestion: ",
            query="{query} Answer:",
            response_separator=" Answer:",
            uses_history=True,
        ),
        # Short-answer VQA; history is ignored.
        "vqa": PromptTemplate(
            prefix="Question: ",
            query="{query} Short answer:",
            response_separator=" Short answer:",
            uses_history=False,
        ),
    }
)
TEXT_PROCESSOR_VERSIONS = tuple(PROMPT_TEMPLATES)


def get_template(version: str) -> PromptTemplate:
    try:
        return PROMPT_TEMPLATES[version]
    except KeyError:
        raise ValueError(
            f"unknown text processor version {version!r}; valid versions: {', '.join(TEXT_PROCESSOR_VERSIONS)}"
        ) from None


def remove_image_slots(text: str) -> str:
    """Delete every ``<EOI>`` so user text cannot add a second image slot.

    Repeated until none is left: removing one occurrence may join its
    neighbours into a new one (``"<E<EOI>OI>"``).
    """
    while IMAGE_SLOT in text:
        text = text.replace(IMAGE_SLOT, "")
    return text


def _clean_history(history: Iterable[Sequence[str]] | None) -> list[tuple[str, str]]:
    turns = []
    for turn in history or ():
        is_pair = isinstance(turn, Sequence) and not isinstance(turn, str) and len(turn) == 2
        if not is_pair or not all(isinstance(part, str) for part in turn):
            raise InvalidHistoryError(
                f"each history entry must be a (question, answer) pair of strings, got {turn!r}"
            )
        turns.append((remove_image_slots(turn[0]), remove_image_slots(turn[1])))
    return turns


def build_prompt(version: str, query: str, history: History = ()) -> str:
    """The prompt string for ``query`` after ``history`` (image slot included).

    ``<EOI>`` is removed from user text (see ``remove_image_slots``); a query
    that is empty afterwards raises EmptyQueryError.
    """
    template = get_template(version)
    if not isinstance(query, str):  # a programming error, not a user one
        raise TypeError(f"the query must be a string, got {type(query).__name__}")
    query = remove_image_slots(query)
    if not query.strip():
        raise EmptyQueryError("the query is empty; please type a question or instruction")
    return template.render(query, _clean_history(history))


class TextProcessor:
    """Turns (query, history) into the token part of ``ModelInputs`` for one prompt template."""

    def __init__(self, tokenizer: LlamaTokenizer, version: str, image_length: int):
        if not isinstance(image_length, int) or image_length < 1:
            raise ValueError(f"image_length must be a positive integer, got {image_length!r}")
        self.template = get_template(version)
        self.tokenizer = tokenizer
        self.version = version
        self.image_length = image_length

    @property
    def response_separator(self) -> str | None:
        return self.template.response_separator

    def __call__(self, query: str, history: History = (), with_image: bool = True) -> ModelInputs:
        """Tensors (1, L) with no images attached. Without an image the slot's tokens are left out and nothing
        goes to the visual experts; the text around the slot is tokenised the same way."""
        prompt = build_prompt(self.version, query, history)
        before, after = prompt.split(IMAGE_SLOT)  # exactly one slot, guaranteed by build_prompt
        # sentencepiece already yields [] for "", but skipping keeps the intent explicit.
        before_ids = self.tokenizer.encode(before) if before else []
        after_ids = self.tokenizer.encode(after)
        num_slot_tokens = self.image_length + NUM_IMAGE_DELIMITERS if with_image else 0
        ids = (
            [self.tokenizer.bos_token_id]
            + before_ids
            + [IMAGE_PLACEHOLDER_ID] * num_slot_tokens
            + after_ids
        )
        boi = 1 + len(before_ids)
        masks = _image_masks(len(ids), boi, self.image_length) if with_image else _text_masks(len(ids))
        return ModelInputs(input_ids=torch.tensor([ids], dtype=torch.long), **masks)


def _text_masks(length: int) -> dict[str, torch.Tensor]:
    zeros = torch.zeros(1, length, dtype=torch.long)
    return {"position_ids": torch.arange(length)[None], "vision_expert_mask": zeros, "image_embed_mask": zeros}


def _image_masks(length: int, boi: int, image_length: int) -> dict[str, torch.Tensor]:
    """Masks and position ids for an image slot starting at index ``boi``.

    Positions advance by one per token, except that all patches share the
    position of the first patch (bos=0, boi=1, patches=2, eoi=3, ... when boi=1).
    """
    index = torch.arange(length)  # (L,)
    eoi = boi + image_length + 1
    first_patch = boi + 1
    image_embed = (index >= boi) & (index <= eoi)
    vision_expert = (index >= boi) & (index < eoi)
    later_patch = (index > first_patch) & (index < eoi)  # later patches do not move
    position_ids = (~later_patch).long().cumsum(0) - 1  # bos gets 0
    return {
        name: tensor.long().unsqueeze(0)  # (1, L)
        for name, tensor in (
            ("position_ids", position_ids),
            ("vision_expert_mask", vision_expert),
            ("image_embed_mask", image_embed),
        )
    }
