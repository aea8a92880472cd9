"""A thin wrapper around the SentencePiece model shipped with LLaMA / Vicuna.

CogVLM's reference text pipeline used the *slow*, sentencepiece-backed
``transformers.LlamaTokenizer`` (legacy mode). Its ids are exactly those of
``SentencePieceProcessor.encode`` on each text segment, so talking to
sentencepiece directly reproduces them without importing ``transformers``
(whose newer tokenizers-backed class drops the leading ``▁`` piece of a segment
that starts with a space, and thereby changes the ids).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece

TOKENIZER_FILENAME = "tokenizer.model"
# Shown in error messages: where a suitable tokenizer can be found.
TOKENIZER_SOURCE_HINT = "lmsys/vicuna-7b-v1.5"


class TokenizerNotFoundError(ValueError):
    """No loadable LLaMA/Vicuna ``tokenizer.model`` at the given path."""


class TokenIdError(ValueError):
    """A token id outside the tokenizer's vocabulary was passed to ``decode``."""


def _not_found(path: Path, reason: str) -> TokenizerNotFoundError:
    return TokenizerNotFoundError(
        f"{reason}: '{path}'. A LLaMA/Vicuna '{TOKENIZER_FILENAME}' "
        f"(e.g. from {TOKENIZER_SOURCE_HINT}) is needed; pass the file or the folder "
        f"holding it with --local_tokenizer PATH."
    )


class LlamaTokenizer:
    """Encode/decode text with a LLaMA-style SentencePiece model.

    ``encode`` never adds bos/eos: the text processor places special tokens
    itself, one text segment at a time.
    """

    def __init__(self, sp_model: sentencepiece.SentencePieceProcessor, path: Path | None = None):
        self._sp = sp_model
        self.path = path

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> LlamaTokenizer:
        """Load ``path`` (a ``tokenizer.model`` file, or a folder containing one)."""
        given = Path(path).expanduser()
        model_file = given / TOKENIZER_FILENAME if given.is_dir() else given
        if not model_file.is_file():
            reason = (
                f"no {TOKENIZER_FILENAME} in folder" if given.is_dir() else "tokenizer file not found"
            )
            raise _not_found(given, reason)
        sp_model = sentencepiece.SentencePieceProcessor()
        try:
            sp_model.load(str(model_file))
        except (RuntimeError, OSError) as exc:  # sentencepiece reports parse errors as RuntimeError
            raise _not_found(model_file, "not a valid SentencePiece model") from exc
        return cls(sp_model, model_file)

    # -- special tokens -------------------------------------------------
    @property
    def bos_token_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_token_id(self) -> int:
        return self._sp.eos_id()

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end an answer: eos."""
        return (self.eos_token_id,)

    @property
    def unk_token_id(self) -> int:
        return self._sp.unk_id()

    @property
    def pad_token_id(self) -> int:
        """The model's pad id, or ``<unk>`` when it defines none.

        LLaMA's ``tokenizer.model`` has no pad piece (sentencepiece reports -1);
        the published vicuna-7b-v1.5 tokenizer config pads with ``<unk>``, and
        the reference pipeline inherits that, so we do the same.
        """
        pad_id = self._sp.pad_id()
        return pad_id if pad_id >= 0 else self.unk_token_id

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    # -- conversion ------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos.

        SentencePiece adds a dummy-prefix ``▁``, so a segment starting with a
        space begins with a lone ``▁`` piece; the reference ids depend on it.
        """
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control ids (bos/eos) decode to ''."""
        checked = [self._checked_id(token_id) for token_id in ids]
        return self._sp.decode(checked)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(self._checked_id(token_id))

    def _checked_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise TokenIdError(
                f"token id {token_id} is outside the vocabulary (valid: 0..{self.vocab_size - 1})"
            )
        return token_id

    def __repr__(self) -> str:
        return f"LlamaTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"
