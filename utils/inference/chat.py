"""A loaded model with its tokenizer and processors, answering queries about an image.

What the CLI (and any other front end) talks to: `ChatModel.from_pretrained(...)`, then `prepare_image(...)` once
per image and `stream(...)` / `answer(...)` per query, or `stream_batch(...)` / `answer_batch(...)` for many queries
generated together (utils/inference/engine.py), or `stream_requests(...)` for a long stream of them taken as slots
free up (basic_demo/batch_infer.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from cogvlm.models.inputs import ImageInputs, ModelInputs
from cogvlm.utils.inference.engine import Event, FinishReason, Request, Scheduler, generate_batch
from cogvlm.utils.inference.generation import SamplingConfig, generate
from cogvlm.utils.inference.precision import resolve_prefill_dtype
from cogvlm.utils.preprocessing.image_processor import load_image
from cogvlm.utils.preprocessing.processor import Processor
from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer, is_glm4_checkpoint
from cogvlm.utils.preprocessing.tokenizer import TOKENIZER_FILENAME, LlamaTokenizer, TokenizerNotFoundError

# Incomplete UTF-8 (a byte-fallback character cut between tokens) decodes to this; wait for the next token.
REPLACEMENT_CHARACTER = "\ufffd"


class TokenizerMismatchError(ValueError):
    """The tokenizer's vocabulary does not fit the model's embedding."""


def resolve_tokenizer(local_tokenizer: str | None, checkpoint_dir: Path, model_vocab_size: int | None = None,
                      tokenizer_class: type = LlamaTokenizer) -> LlamaTokenizer | GLM4Tokenizer:
    """The tokenizer to use, in this order: an existing --local_tokenizer path; a tokenizer.model shipped in
    the checkpoint folder; a Hugging Face hub id (e.g. lmsys/vicuna-7b-v1.5) already in the local HF cache.
    `tokenizer_class` is the checkpoint's family (GLM4Tokenizer for the 9B models, whose file is tiktoken's).
    With `model_vocab_size`, a tokenizer with more tokens than the model's vocabulary is a TokenizerMismatchError."""
    tokenizer = _find_tokenizer(local_tokenizer, checkpoint_dir, tokenizer_class)
    if model_vocab_size is not None:
        check_vocabulary(tokenizer, model_vocab_size)
    return tokenizer


def check_vocabulary(tokenizer: LlamaTokenizer, model_vocab_size: int) -> None:
    """A tokenizer with more tokens than the model's vocabulary is not the checkpoint's: TokenizerMismatchError."""
    if tokenizer.vocab_size > model_vocab_size:
        raise TokenizerMismatchError(
            f"the tokenizer ({tokenizer.path}) has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{model_vocab_size}: it is not this checkpoint's tokenizer")


def _find_tokenizer(local_tokenizer: str | None, checkpoint_dir: Path, tokenizer_class: type):
    if local_tokenizer and Path(local_tokenizer).expanduser().exists():
        return tokenizer_class.from_path(local_tokenizer)
    if (checkpoint_dir / TOKENIZER_FILENAME).is_file():
        return tokenizer_class.from_path(checkpoint_dir)
    if local_tokenizer and local_tokenizer.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(local_tokenizer, TOKENIZER_FILENAME)
        except ValueError:      # not a valid hub id (e.g. a missing "./tokenizer.model"): not found, see below
            cached = None
        if isinstance(cached, (str, os.PathLike)):
            return tokenizer_class.from_path(cached)
    family = "GLM-4 (THUDM/glm-4v-9b)" if tokenizer_class is GLM4Tokenizer else "LLaMA/Vicuna"
    raise TokenizerNotFoundError(
        f"no tokenizer found: '{local_tokenizer}' is not a path, {checkpoint_dir} has no {TOKENIZER_FILENAME}, and "
        f"no cached Hugging Face copy exists; pass --local_tokenizer PATH to a {family} {TOKENIZER_FILENAME}")


@dataclass(frozen=True)
class ChatRequest:
    """One query of a batch: its image (ImageInputs from prepare_image; pass one object to several queries to encode
    it once), history and sampling settings (max_length bounds prompt + answer)."""
    query: str
    history: Sequence[tuple[str, str]] = ()
    image: ImageInputs | None = None
    sampling: SamplingConfig = SamplingConfig()


@dataclass(frozen=True)
class AnswerEvent:
    """A piece of a batch answer's text, or its end (`finish_reason`; `error` when the request failed)."""
    index: int                                  # the request's place in the batch
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None
    tokens: int = 0                             # at the end: how many tokens the answer took (throughput)


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: FinishReason
    error: str | None = None


class TextStream:
    """Token ids -> text pieces: leading whitespace dropped, whole characters only."""

    def __init__(self, tokenizer: LlamaTokenizer):
        self.tokenizer, self.token_ids, self.shown, self.text = tokenizer, [], "", ""

    def push(self, token_id: int) -> str:
        """The new text after `token_id` ('' while a character is incomplete)."""
        self.token_ids.append(token_id)
        self.text = self.tokenizer.decode(self.token_ids).lstrip()
        if self.text.endswith(REPLACEMENT_CHARACTER) or len(self.text) <= len(self.shown):
            return ""
        return self._show()

    def flush(self) -> str:
        """What is left at the end, '' if nothing (an answer ending inside an invalid byte sequence shows it as
        decoded: U+FFFD)."""
        return self._show() if len(self.text) > len(self.shown) else ""

    def _show(self) -> str:
        piece, self.shown = self.text[len(self.shown):], self.text
        return piece


class ChatModel:
    def __init__(self, model, config, tokenizer: LlamaTokenizer | GLM4Tokenizer, version: str, processor=None,
                 compile: bool = False, prefill_dtype: str = "auto"):
        """`processor` None: CogVLM's / CogAgent's for `config` and `version`; the 9B models pass a GLM4Processor.
        `compile`: decode steps run under torch.compile (CUDA graphs on CUDA). `prefill_dtype` ("auto", "fp32" or
        "model"): the dtype of the prefill's matrix multiplies; "auto" is fp32 for bf16/fp16 weights on a CPU
        without native bf16/fp16 matrix multiplies (utils/inference/precision.py)."""
        if processor is None:
            check_vocabulary(tokenizer, config.language.vocab_size)
            # CogAgent's processor also makes the image at its cross resolution (1120 px).
            processor = Processor.for_model(config, tokenizer, version)
        self.model, self.config, self.tokenizer, self.processor = model, config, tokenizer, processor
        self.compile = compile
        self.prefill_dtype = resolve_prefill_dtype(model.dtype, model.device, prefill_dtype)

    @classmethod
    def from_pretrained(cls, name_or_path, local_tokenizer: str | None = None, version: str = "chat",
                        dtype: torch.dtype = torch.float32, device: str = "cpu",
                        model_parallel_size: int | None = None, quant=None, compile: bool = False,
                        prefill_dtype: str = "auto") -> "ChatModel":
        """A checkpoint's `text_processor_version`, when it has one, overrides `version` (as published).

        The tokenizer is found and checked against the checkpoint's model_config.json before the weights are read:
        a wrong one must not cost the minutes a 17B checkpoint takes to load. `quant` (8, 4 or a QuantConfig)
        quantises the language model's linears while loading (see load_model); `compile`, `prefill_dtype`: see
        __init__."""
        from cogvlm.utils.checkpoint_io.loading import (config_from_model_config, load_model, read_model_config,
                                                        resolve_checkpoint_dir)

        checkpoint_dir = resolve_checkpoint_dir(name_or_path)
        model_config = read_model_config(checkpoint_dir)
        if is_glm4_checkpoint(model_config):            # GLM-4V-9B, CogAgent-9B: the GLM-4 tokenizer and template
            return cls._from_glm4_checkpoint(checkpoint_dir, model_config, local_tokenizer, dtype, device,
                                             model_parallel_size, quant, compile, prefill_dtype)
        stored_config = config_from_model_config(model_config)
        tokenizer = resolve_tokenizer(local_tokenizer, checkpoint_dir, stored_config.language.vocab_size)
        model, config = load_model(checkpoint_dir, dtype=dtype, device=device,
                                   model_parallel_size=model_parallel_size, quant=quant)
        return cls(model, config, tokenizer, config.text_processor_version or version, compile=compile,
                   prefill_dtype=prefill_dtype)

    @classmethod
    def _from_glm4_checkpoint(cls, checkpoint_dir: Path, model_config: dict, local_tokenizer: str | None,
                              dtype: torch.dtype, device: str, model_parallel_size: int | None, quant,
                              compile: bool = False, prefill_dtype: str = "auto") -> "ChatModel":
        from cogvlm.utils.checkpoint_io.loading import load_model
        from cogvlm.utils.preprocessing.glm4_processor import GLM4Processor, model_inputs_builder
        from cogvlm.utils.preprocessing.image_processor import ImageProcessor

        tokenizer = resolve_tokenizer(local_tokenizer, checkpoint_dir, model_config.get("vocab_size"), GLM4Tokenizer)
        model, config = load_model(checkpoint_dir, dtype=dtype, device=device,
                                   model_parallel_size=model_parallel_size, quant=quant)
        processor = GLM4Processor(tokenizer, ImageProcessor(config.vision.image_size), model_inputs_builder(config))
        return cls(model, config, tokenizer, processor.version, processor, compile, prefill_dtype)

    @property
    def version(self) -> str:
        return self.processor.version

    @property
    def answers_without_image(self) -> bool:
        """Whether a chat may go without an image (GLM-4V-9B, CogAgent-9B; not CogVLM, CogAgent-18B)."""
        return self.processor.answers_without_image

    def prepare_image(self, source: str) -> ImageInputs:
        """Load (path or URL) and preprocess an image once; raises ImageLoadError with a one-line message."""
        return self.preprocess(load_image(source))

    def preprocess(self, image) -> ImageInputs:
        """A PIL image -> the model's pixel tensors (and CogAgent's high-resolution copy)."""
        return self.processor.images(image)

    def prompt(self, query: str, history: Sequence[tuple[str, str]], image: ImageInputs | None) -> ModelInputs:
        """The model inputs of one query (image None: a text-only prompt)."""
        return self.processor(query, history, image)

    def stream(self, query: str, history: Sequence[tuple[str, str]], image: ImageInputs | None,
               sampling: SamplingConfig) -> Iterator[str]:
        """Yield the answer's text as it is generated (leading whitespace dropped, whole characters only)."""
        text = TextStream(self.tokenizer)
        for token_id in generate(self.model, self.prompt(query, history, image), sampling,
                                 self.tokenizer.stop_token_ids, compile=self.compile,
                                 prefill_dtype=self.prefill_dtype):
            piece = text.push(token_id)
            if piece:
                yield piece
        rest = text.flush()
        if rest:
            yield rest

    def answer(self, query: str, history: Sequence[tuple[str, str]], image: ImageInputs | None,
               sampling: SamplingConfig) -> str:
        return "".join(self.stream(query, history, image, sampling)).strip()

    def stream_batch(self, requests: Sequence[ChatRequest], num_slots: int | None = None) -> Iterator[AnswerEvent]:
        """Generate many answers together, each streaming and ending on its own (at most `num_slots` at once, the
        others queued). A bad request (an empty query, a prompt too long for its max_length) ends alone with its
        one-line error; the others go on."""
        streams = [TextStream(self.tokenizer) for _ in requests]
        prompts, failed = [], []
        for index, request in enumerate(requests):
            try:
                prompt = self.prompt(request.query, request.history, request.image)
            except ValueError as problem:               # an empty query, a bad history: this request only
                failed.append(AnswerEvent(index, finish_reason="error", error=str(problem)))
                continue
            prompts.append(Request(prompt, request.sampling, self.tokenizer.stop_token_ids, index))
        yield from failed
        for event in generate_batch(self.model, prompts, num_slots, compile=self.compile,
                                    prefill_dtype=self.prefill_dtype):
            yield from _answer_events(event, streams[event.request_id])

    def stream_requests(self, requests: Iterable[ChatRequest], num_slots: int, max_length: int
                        ) -> Iterator[AnswerEvent]:
        """stream_batch for a long or endless iterable, read lazily: the next request is taken whenever fewer than
        `num_slots` are in the engine, so at most `num_slots` prepared images are held at once (a folder of images
        is loaded one by one as its turn comes). An event's `index` counts the requests in the order they were
        taken. `max_length` sizes the engine's cache rows: a request whose sampling.max_length is larger ends
        with an error."""
        scheduler = Scheduler(self.model, num_slots, max_length, max_queue=num_slots, compile=self.compile,
                              prefill_dtype=self.prefill_dtype)
        streams: dict[int, TextStream] = {}         # the requests in the engine, by index
        pending = enumerate(requests)
        exhausted = False
        while True:
            while not exhausted and len(streams) < num_slots:
                taken = next(pending, None)
                if taken is None:
                    exhausted = True
                    break
                index, request = taken
                try:
                    prompt = self.prompt(request.query, request.history, request.image)
                except ValueError as problem:           # an empty query, a bad history: this request only
                    yield AnswerEvent(index, finish_reason="error", error=str(problem))
                    continue
                streams[index] = TextStream(self.tokenizer)
                scheduler.submit(Request(prompt, request.sampling, self.tokenizer.stop_token_ids, index))
            if not scheduler.busy:
                return
            for event in scheduler.step():
                yield from _answer_events(event, streams[event.request_id])
                if event.finished:
                    del streams[event.request_id]

    def answer_batch(self, requests: Sequence[ChatRequest], num_slots: int | None = None) -> list[Answer]:
        """The answers of `requests`, in their order (see stream_batch)."""
        texts = [""] * len(requests)
        answers: list[Answer | None] = [None] * len(requests)
        for event in self.stream_batch(requests, num_slots):
            texts[event.index] += event.text
            if event.finish_reason is not None:
                answers[event.index] = Answer(texts[event.index].strip(), event.finish_reason, event.error)
        return answers


def _answer_events(event: Event, stream: TextStream) -> Iterator[AnswerEvent]:
    """What an engine event adds to its request's answer: a piece of text (none while a character is incomplete),
    or the rest of the text and the end."""
    if not event.finished:
        piece = stream.push(event.token_id)
        if piece:
            yield AnswerEvent(event.request_id, piece)
        return
    rest = stream.flush()
    if rest:
        yield AnswerEvent(event.request_id, rest)
    yield AnswerEvent(event.request_id, finish_reason=event.finish_reason, error=event.error,
                      tokens=len(stream.token_ids))
