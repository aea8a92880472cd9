"""The GLM-4 tokenizer (GLM-4-9B, GLM-4V-9B, CogAgent-9B-20241220): a tiktoken BPE plus 14 added special tokens.

The published `ChatGLM4Tokenizer` (Hugging Face remote code) wraps the `tiktoken` package; this module talks to
`tiktoken` directly, so that no `transformers` is needed at run time. Its `tokenizer.model` is not SentencePiece:
each line is `base64(token bytes) rank`, the rank being the token id and the BPE merge order. The special tokens
are not in the file; they take the ids after the last rank, in the published order (SPECIAL_TOKENS).

Like the published chat path, `encode` never turns text into special tokens: `<|user|>` typed by a user stays
ordinary BPE ids. Special tokens enter a prompt only as ids, through the chat template (glm4_template.py).
"""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from pathlib import Path

from .tokenizer import TOKENIZER_FILENAME, TokenIdError, TokenizerNotFoundError
# Which checkpoints are of the GLM-4 family is the configs' knowledge (importable before anything heavy, for a
# command line's argument checks); re-exported here, beside the tokenizer it selects.
from cogvlm.models.config import GLM4_MODEL_CLASSES, is_glm4_checkpoint  # noqa: F401
from cogvlm.models.config import GLM4_TOKENIZER_TYPE as TOKENIZER_TYPE  # noqa: F401

# The pre-tokenisation regex of the published tokenizer (`regex` syntax, as tiktoken's pat_str).
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
# The added tokens, in id order right after the BPE ranks (151329.. for the published 151,329-rank file).
SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                  "<|begin_of_video|>", "<|end_of_video|>")
EOS_TOKEN = "<|endoftext|>"             # also the pad token, and the middle image placeholder
# config.eos_token_id of glm-4v-9b: the end of text, and the start of a user or tool turn (the model's turn is over).
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
# Where a suitable tokenizer can be found, for error messages.
TOKENIZER_SOURCE_HINT = "THUDM/glm-4v-9b or THUDM/cogagent-9b-20241220"


def _not_found(path: Path, reason: str) -> TokenizerNotFoundError:
    return TokenizerNotFoundError(
        f"{reason}: '{path}'. The GLM-4 tiktoken '{TOKENIZER_FILENAME}' (from {TOKENIZER_SOURCE_HINT}) is needed; "
        f"pass the file or the folder holding it with --local_tokenizer PATH.")


def read_ranks(model_file: Path) -> dict[bytes, int]:
    """The BPE ranks of a tiktoken vocabulary file; anything else (a SentencePiece model, say) is a
    TokenizerNotFoundError naming the file and the first bad line."""
    ranks: dict[bytes, int] = {}
    with open(model_file, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise _not_found(model_file, f"not a tiktoken vocabulary (line {number} is not 'base64 rank')") \
                    from None
    if not ranks:
        raise _not_found(model_file, "an empty tiktoken vocabulary")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise _not_found(model_file, "not a tiktoken vocabulary (its ranks are not 0..N-1)")
    return ranks


class GLM4Tokenizer:
    """Encode/decode text with the GLM-4 BPE; special tokens by name (`token_id`) and as the published ids."""

    def __init__(self, ranks: dict[bytes, int], path: Path | None = None):
        import tiktoken  # deferred: only GLM-4 checkpoints need it

        self.path = path
        self.num_ordinary_tokens = len(ranks)
        self.special_ids = {token: len(ranks) + index for index, token in enumerate(SPECIAL_TOKENS)}
        self._special_names = {token_id: token for token, token_id in self.special_ids.items()}
        self._encoding = tiktoken.Encoding(name="glm4", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> GLM4Tokenizer:
        """Load `path` (a tiktoken `tokenizer.model`, or a folder containing one)."""
        given = Path(path).expanduser()
        model_file = given / TOKENIZER_FILENAME if given.is_dir() else given
        if not model_file.is_file():
            reason = f"no {TOKENIZER_FILENAME} in folder" if given.is_dir() else "tokenizer file not found"
            raise _not_found(given, reason)
        return cls(read_ranks(model_file), model_file)

    # -- special tokens -------------------------------------------------
    def token_id(self, token: str) -> int:
        return self.special_ids[token]

    @property
    def eos_token_id(self) -> int:
        return self.special_ids[EOS_TOKEN]

    @property
    def pad_token_id(self) -> int:
        return self.special_ids[EOS_TOKEN]

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.special_ids[token] for token in STOP_TOKENS)

    @property
    def vocab_size(self) -> int:
        """Ids with a token: the BPE ranks and the special tokens (151,343). The model's embedding is padded
        further (151,552); ids in between decode to ''."""
        return self.num_ordinary_tokens + len(SPECIAL_TOKENS)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_names

    # -- conversion ------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ordinary BPE ids of `text`; special-token text stays ordinary text (as in a published chat message)."""
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Runs of ordinary ids are joined as bytes before UTF-8 decoding (a character may span
        tokens; an incomplete one shows as U+FFFD); ids past the tokenizer's vocabulary (the model's padding rows)
        decode to ''. Special tokens are left out, as the published demos decode answers (and as LlamaTokenizer
        drops its control ids); with skip_special_tokens=False they show as their text, with no spaces around."""
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            token_id = self._checked_id(token_id)
            if token_id < self.num_ordinary_tokens:
                run.append(token_id)
                continue
            pieces.append(self._decode_run(run))
            run = []
            if token_id in self._special_names and not skip_special_tokens:
                pieces.append(self._special_names[token_id])
        pieces.append(self._decode_run(run))
        return "".join(pieces)

    def _decode_run(self, run: list[int]) -> str:
        return self._encoding.decode_bytes(run).decode("utf-8", errors="replace") if run else ""

    def _checked_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if token_id < 0:
            raise TokenIdError(f"token id {token_id} is negative")
        return token_id

    def __repr__(self) -> str:
        return f"GLM4Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"
