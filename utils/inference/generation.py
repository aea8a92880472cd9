"""Autoregressive generation: prefill once, then one token per step into a preallocated KV cache.

    prefill(model, inputs, cache)          the whole prompt with its images -> logits of the last position
    decode_one_token(model, token, ...)    one new token, language experts only -> logits
    compiled_decode_step(model, token, ...)   the same under torch.compile, for a static cache
    sample_next_token(logits, ...)         greedy / temperature / top-k / top-p / repetition penalty
    generate(model, inputs, sampling, stop_token_ids)   yields token ids as they are chosen (streaming)

The prompt is a `ModelInputs` (cogvlm.models.inputs), built by the processor (utils/preprocessing/processor.py).
Many requests at once (batched rows, continuous batching) run on the same functions in utils/inference/engine.py.

The image encoders run in `prefill` only: decode steps carry no image tokens, so nothing about the image is
recomputed per token (the published code re-encodes CogAgent's cross image at every step).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from cogvlm.models.inputs import ModelInputs
from cogvlm.utils.inference.precision import matmuls_in
from cogvlm.utils.parallel.model_parallel import broadcast_from_first_rank


class PromptTooLongError(ValueError):
    """The prompt leaves no room for an answer within max_length."""


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults are the published CLI's; top_k=1 makes them greedy."""
    max_length: int = 2048              # prompt + answer tokens
    temperature: float = 0.8
    top_k: int = 1
    top_p: float = 0.4
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature <= 0


def prefill(model, inputs: ModelInputs, kv_cache, matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run the whole prompt, images included, filling the cache. -> (B, vocab) logits of the last position (with
    left padding, every row's last prompt token). `matmul_dtype`: the linear layers multiply in it (e.g. fp32 for
    bf16 weights on a CPU without native bf16; see precision.py), None: in the model's dtype."""
    with matmuls_in(matmul_dtype):
        return model.forward_inputs(inputs.to(model.device, model.dtype), kv_cache=kv_cache,
                                    last_token_only=True)[0][:, -1]


def decode_one_token(model, token: torch.Tensor, position: torch.Tensor, kv_cache) -> torch.Tensor:
    """token, position: (B, 1). A generated token is text: it takes the language experts. -> (B, vocab)."""
    return model(token, position, kv_cache=kv_cache, last_token_only=True)[0][:, -1]


def compiled_decode_step(model, token: torch.Tensor, position: torch.Tensor, kv_cache) -> torch.Tensor:
    """decode_one_token under torch.compile, for a static cache (new_kv_cache(static=True)), whose step has the
    same shapes at every step: compiled once, then replayed (tests/test_compile.py checks that no step recompiles
    or breaks the graph)."""
    with layer_ids_as_ints(model):
        return _compiled_decode_one_token()(model, token, position, kv_cache)


@functools.cache
def _compiled_decode_one_token():
    # "reduce-overhead" records CUDA graphs on CUDA: a decode step is many small kernels launched from Python. On
    # CPU, a plain compile. dynamic=True: the batch (the engine's busy rows) and the cache's host-side length
    # counter are symbols from the first compile, not specialised and recompiled at the next step.
    mode = "reduce-overhead" if torch.cuda.is_available() else None
    return torch.compile(decode_one_token, mode=mode, dynamic=True)


@contextmanager
def layer_ids_as_ints(model):
    """Run SAT's layer loop with plain int layer ids while inside.

    SAT's usual loop hands each layer its id as a new tensor (torch.tensor(i)), which the hooks turn back into an
    int to pick the layer's modules: torch.compile cannot trace that (a graph break in every layer). SAT's
    activation-checkpointing loop passes `layer.layer_id`, an int; with one chunk of every layer and every layer
    skipped from checkpointing it is the same computation, checkpointing nothing."""
    transformer = model.transformer
    saved = (transformer.checkpoint_activations, transformer.checkpoint_num_layers,
             transformer.checkpoint_skip_layers)
    num_layers = len(transformer.layers)
    transformer.checkpoint_activations, transformer.checkpoint_num_layers = True, num_layers
    transformer.checkpoint_skip_layers = num_layers
    try:
        yield
    finally:
        (transformer.checkpoint_activations, transformer.checkpoint_num_layers,
         transformer.checkpoint_skip_layers) = saved


def sample_next_token(logits: torch.Tensor, generated: torch.Tensor, sampling: SamplingConfig,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, vocab), generated (B, n) ids so far -> (B,) next ids.

    The repetition penalty applies to generated tokens (as the published code does), in the usual CTRL form:
    positive logits are divided by it, negative ones multiplied.
    """
    logits = logits.float()
    if sampling.repetition_penalty != 1.0 and generated.shape[1] > 0:
        seen = logits.gather(1, generated)
        seen = torch.where(seen > 0, seen / sampling.repetition_penalty, seen * sampling.repetition_penalty)
        logits = logits.scatter(1, generated, seen)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth_best = logits.topk(min(sampling.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if 0.0 < sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p: the first token always stays.
        drop = probs.cumsum(dim=-1) - probs > sampling.top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator).squeeze(1)


def check_prompt_fits(prompt_length: int, max_length: int, image_tokens: int = 0) -> None:
    if prompt_length >= max_length:
        image_note = f", {image_tokens} of them for the image" if image_tokens else ""
        raise PromptTooLongError(
            f"the prompt is {prompt_length} tokens{image_note}; max_length {max_length} leaves no room for an "
            f"answer (shorten the query or history, or raise --max_length)")


@torch.inference_mode()
def generate(model, prompt: ModelInputs, sampling: SamplingConfig, stop_token_ids: tuple[int, ...] = (),
             compile: bool = False, prefill_dtype: torch.dtype | None = None) -> Iterator[int]:
    """Yield new token ids of a single sequence (B = 1) until a stop token or max_length. Stop tokens are not
    yielded. `compile`: decode steps run compiled (compiled_decode_step) over a static cache. `prefill_dtype`: the
    prefill's matrix multiplies run in it (see prefill)."""
    if prompt.batch_size != 1:
        raise ValueError(f"generate takes one request (B = 1), got {prompt.batch_size} rows")
    check_prompt_fits(len(prompt), sampling.max_length, int(prompt.image_embed_mask.sum()))
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(sampling.seed)
    max_new_tokens = sampling.max_length - len(prompt)
    kv_cache = model.new_kv_cache(batch_size=1, max_length=sampling.max_length, static=compile)
    decode_step = compiled_decode_step if compile else decode_one_token
    generated = torch.empty(1, max_new_tokens, dtype=torch.long, device=model.device)
    position = prompt.position_ids[:, -1:].to(model.device)                      # (1, 1)

    logits = prefill(model, prompt, kv_cache, prefill_dtype)
    for step in range(max_new_tokens):
        token = sample_next_token(logits, generated[:, :step], sampling, generator)   # (1,)
        token = broadcast_from_first_rank(token)       # model-parallel ranks must continue with the same token
        token_id = int(token)
        if token_id in stop_token_ids:
            return
        yield token_id
        if step + 1 == max_new_tokens:
            return
        generated[:, step] = token
        position = position + 1
        logits = decode_step(model, token[:, None], position, kv_cache)
