"""The GLM-4V / CogAgent-9B chat template: a conversation -> the published (unexpanded) token ids.

    [gMASK]<sop><|user|>\\n<|begin_of_image|><|endoftext|><|end_of_image|>{query}<|assistant|>

Each message is `<|role|>` + encode(metadata + "\\n") + [the 3 image placeholders, if the message carries the
image] + encode(content), each piece encoded on its own, with no separator between turns; an earlier answer is
`<|assistant|>` + "\\n" + answer. The generation prompt is `<|assistant|>` alone (the model writes the "\\n").
This is what the published tokenizer's `apply_chat_template(..., tokenize=True)` returns; its string form
(tokenize=False) leaves the image placeholders out, so only ids are built here.

The ids are unexpanded: the model (models/glm4v) replaces the 3 placeholders by [boi, image tokens, eoi] and
gives them the published position ids. A batch is left-padded as published: pad id <|endoftext|>, mask 0,
position 0, and each row's positions start at 0 at its first real token.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .glm4_tokenizer import GLM4Tokenizer
from .text_processor import EmptyQueryError, History, InvalidHistoryError

PREFIX_TOKENS = ("[gMASK]", "<sop>")
IMAGE_PLACEHOLDER_TOKENS = ("<|begin_of_image|>", "<|endoftext|>", "<|end_of_image|>")
ROLES = ("system", "user", "assistant", "observation")
GENERATION_PROMPT_TOKEN = "<|assistant|>"


class TooManyImagesError(ValueError):
    """More than one message carries an image: the published models take one image per conversation."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    image: bool = False     # the message carries the conversation's image (its placeholders follow the role line)
    metadata: str = ""      # text on the role line; empty in every GLM-4V / CogAgent use

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"unknown chat role {self.role!r}; valid roles: {', '.join(ROLES)}")


@dataclass(frozen=True)
class GLM4Prompt:
    """Tokenizer outputs of a batch, as the published tokenizer returns them (before the image is expanded)."""
    input_ids: torch.Tensor         # (B, L) int64
    attention_mask: torch.Tensor    # (B, L) int64, 0 on left padding
    position_ids: torch.Tensor      # (B, L) int64, 0..n-1 per row, 0 on padding


def message_ids(tokenizer: GLM4Tokenizer, message: ChatMessage) -> list[int]:
    image = [tokenizer.token_id(token) for token in IMAGE_PLACEHOLDER_TOKENS] if message.image else []
    return ([tokenizer.token_id(f"<|{message.role}|>")] + tokenizer.encode(message.metadata + "\n") + image
            + tokenizer.encode(message.content))


def conversation_ids(tokenizer: GLM4Tokenizer, messages: Iterable[ChatMessage],
                     add_generation_prompt: bool = True) -> list[int]:
    """The published ids of a conversation: prefix, every message, then the generation prompt."""
    messages = list(messages)
    if sum(message.image for message in messages) > 1:
        raise TooManyImagesError("only one image per conversation is supported by GLM-4V-9B and CogAgent-9B")
    ids = [tokenizer.token_id(token) for token in PREFIX_TOKENS]
    for message in messages:
        ids += message_ids(tokenizer, message)
    if add_generation_prompt:
        ids.append(tokenizer.token_id(GENERATION_PROMPT_TOKEN))
    return ids


def chat_messages(query: str, history: History = (), with_image: bool = True) -> list[ChatMessage]:
    """The conversation of a chat turn: the (question, answer) history, then the query; the image goes with the
    first user message, as in the published demos."""
    if not isinstance(query, str):          # a programming error, not a user one
        raise TypeError(f"the query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise EmptyQueryError("the query is empty; please type a question or instruction")
    messages = []
    for turn in history or ():
        is_pair = isinstance(turn, Sequence) and not isinstance(turn, str) and len(turn) == 2
        if not is_pair or not all(isinstance(part, str) for part in turn):
            raise InvalidHistoryError(f"each history entry must be a (question, answer) pair of strings, got {turn!r}")
        messages += [ChatMessage("user", turn[0]), ChatMessage("assistant", turn[1])]
    messages.append(ChatMessage("user", query))
    if with_image:
        messages[0] = ChatMessage("user", messages[0].content, image=True)
    return messages


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> GLM4Prompt:
    """Rows of ids -> one left-padded batch (B, max length), with the published mask and position ids."""
    if not rows:
        raise ValueError("no prompts to batch")
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        start = length - len(row)
        input_ids[index, start:] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, start:] = 1
        position_ids[index, start:] = torch.arange(len(row))
    return GLM4Prompt(input_ids, attention_mask, position_ids)


def encode_chat(tokenizer: GLM4Tokenizer, conversations: Sequence[Sequence[ChatMessage]]) -> GLM4Prompt:
    """Several conversations -> their generation prompts as one left-padded batch."""
    return left_padded([conversation_ids(tokenizer, messages) for messages in conversations], tokenizer.pad_token_id)
