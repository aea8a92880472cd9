"""Many requests at once: continuous batching over a fixed number of KV-cache slots.

    Request          one prompt (ModelInputs, B = 1), its sampling settings (seed, max_length) and stop ids
    Event            what a step produced for a request: a token, or its end (stop, length, cancelled, error)
    Scheduler        a bounded queue and `num_slots` rows of one KV cache. `step()` admits queued requests into
                     free slots, runs one batched decode step over the busy rows, and retires finished rows
    generate_batch   a list of requests -> an iterator of events, every row streaming and stopping on its own

Admission prefills the admitted requests together (left-padded, apart from other rows) in a cache of their own,
then copies each row, without its padding, to the start of a free cache row; every row writes at its own cache
position (models/kv_cache.py), so rows never move to line up. Busy rows are kept first in the cache (a retired
row's place is taken by the last busy row), so a step over 2 busy rows of 16 slots costs a batch of 2. Rotary
positions are each row's own, so a row's logits are those of the request run alone (within 1e-5 in fp32;
tests/test_engine.py).

Not thread-safe: one caller drives `step()` (a server wraps it in one loop).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Iterable, Iterator, Literal

import torch

from cogvlm.models.inputs import ModelInputs
from cogvlm.models.kv_cache import KVCache
from cogvlm.utils.inference.generation import (SamplingConfig, check_prompt_fits, compiled_decode_step,
                                               decode_one_token, prefill, sample_next_token)
from cogvlm.utils.parallel.model_parallel import broadcast_from_first_rank

FinishReason = Literal["stop", "length", "cancelled", "error"]
PAD_ID = 0          # any id will do: padded positions are masked out of attention


class QueueFullError(RuntimeError):
    """The scheduler's queue holds as many requests as it may; submit again later."""


@dataclass(frozen=True)
class Request:
    prompt: ModelInputs                         # (1, L): one request, from the processor
    sampling: SamplingConfig = SamplingConfig()
    stop_token_ids: tuple[int, ...] = ()
    request_id: Hashable | None = None          # None: the scheduler numbers it


@dataclass(frozen=True)
class Event:
    """A new token of a request (`token_id`), or its end (`finish_reason`, and `error` when it failed)."""
    request_id: Hashable
    token_id: int | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class _Row:
    """A request in a slot."""
    request_id: Hashable
    request: Request
    generator: torch.Generator | None
    position: int                   # rotary position of the row's last token
    length: int                     # cache positions the row holds (from 0), with the token the next step feeds
    generated: list[int] = field(default_factory=list)
    pending: int = 0                # the token the next decode step feeds
    cancelled: bool = False

    @property
    def budget(self) -> int:
        return self.request.sampling.max_length - len(self.request.prompt)


class Scheduler:
    """Continuous batching: `submit` requests (at most `max_queue` waiting), call `step()` until not `busy`."""

    def __init__(self, model, num_slots: int, max_length: int, max_queue: int = 64,
                 on_logits: Callable[[Hashable, torch.Tensor], None] | None = None, compile: bool = False,
                 prefill_dtype: torch.dtype | None = None):
        """`max_length`: cache positions per slot (the largest max_length a request may ask for). `on_logits`
        sees each row's (vocab,) logits before its token is sampled (scoring, tests). `compile`: decode steps
        run compiled (generation.compiled_decode_step) over a static cache. `prefill_dtype`: the prefills' matrix
        multiplies run in it (generation.prefill)."""
        if num_slots < 1 or max_queue < 1:
            raise ValueError(f"num_slots and max_queue must be at least 1, got {num_slots} and {max_queue}")
        self.model, self.num_slots, self.max_length, self.max_queue = model, num_slots, max_length, max_queue
        self.cache: KVCache = model.new_kv_cache(batch_size=num_slots, max_length=max_length, static=compile)
        # The busy rows, in cache-row order: row i of the cache is rows[i]. Kept first in the cache (a retired
        # row's place is taken by the last one), so that a decode step computes busy rows only.
        self.rows: list[_Row] = []
        self.queue: deque[tuple[Hashable, Request]] = deque()
        self._ended: list[Event] = []          # cancellations of queued requests, reported at the next step
        self._numbers = itertools.count()
        self.on_logits = on_logits
        self.decode_step = compiled_decode_step if compile else decode_one_token
        self.prefill_dtype = prefill_dtype

    @property
    def busy(self) -> bool:
        return bool(self.queue or self._ended or self.rows)

    def submit(self, request: Request) -> Hashable:
        """Queue a request; -> its id. A full queue is a QueueFullError (nothing is queued)."""
        if len(self.queue) >= self.max_queue:
            raise QueueFullError(f"the queue already holds {self.max_queue} request(s); retry when some finish")
        in_use = {queued_id for queued_id, _ in self.queue} | {row.request_id for row in self.rows}
        request_id = request.request_id
        if request_id is None:
            request_id = next(number for number in self._numbers if number not in in_use)
        elif request_id in in_use:
            raise ValueError(f"request id {request_id!r} is already queued or running")
        self.queue.append((request_id, request))
        return request_id

    def cancel(self, request_id: Hashable) -> bool:
        """Stop a queued or running request; its 'cancelled' event comes with the next step, which frees its slot.
        -> False when no such request is waiting or running."""
        for queued in self.queue:
            if queued[0] == request_id:
                self.queue.remove(queued)
                self._ended.append(Event(request_id, finish_reason="cancelled"))
                return True
        for row in self.rows:
            if row.request_id == request_id:
                row.cancelled = True
                return True
        return False

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Retire cancelled rows, admit queued requests into free slots, decode one token for every busy row."""
        events, self._ended = self._ended, []
        for row in [row for row in self.rows if row.cancelled]:
            self._retire(row, "cancelled", events)
        self._admit(events)
        if self.rows:
            self._decode(events)
        return events

    # --- admission -------------------------------------------------------------------------------------------------

    def _admit(self, events: list[Event]) -> None:
        admitted: list[tuple[Hashable, Request]] = []
        while len(self.rows) + len(admitted) < self.num_slots and self.queue:
            request_id, request = self.queue.popleft()
            problem = self._problem(request)
            if problem:
                events.append(Event(request_id, finish_reason="error", error=problem))
                continue
            admitted.append((request_id, request))
        # CogAgent's cross-attention takes a batch whose rows all have an image or none: prefill them apart.
        for has_image in (True, False):
            group = [item for item in admitted if (item[1].prompt.images is not None) == has_image]
            if group:
                self._prefill(group, events)

    def _problem(self, request: Request) -> str | None:
        """Why a request cannot run (one line), checked before it joins a batch; None when it can."""
        prompt, sampling = request.prompt, request.sampling
        if prompt.batch_size != 1:
            return f"a request holds one prompt (B = 1); this one has {prompt.batch_size} rows"
        if len(prompt) == 0:
            return "the prompt is empty"
        if sampling.max_length > self.max_length:
            return (f"max_length {sampling.max_length} exceeds the {self.max_length} positions of the engine's "
                    f"cache slots")
        try:
            check_prompt_fits(len(prompt), sampling.max_length, int(prompt.image_embed_mask.sum()))
        except ValueError as problem:
            return str(problem)
        return None

    def _prefill(self, group: list[tuple[Hashable, Request]], events: list[Event]) -> None:
        """Prefill `group` together in a cache of its own, then copy its rows, without their padding, after the
        busy rows. When the group fails, its rows are retried alone, so that only the bad request ends with an
        error."""
        try:
            batch = ModelInputs.batch([request.prompt for _, request in group], PAD_ID)
            cache = self.model.new_kv_cache(batch_size=len(group), max_length=len(batch))
            logits = prefill(self.model, batch, cache, self.prefill_dtype)                  # (k, vocab)
        except ValueError as problem:                   # InvalidInputsError and friends: the inputs, not the model
            if len(group) > 1:
                for item in group:
                    self._prefill([item], events)
                return
            events.append(Event(group[0][0], finish_reason="error", error=str(problem)))
            return
        placed = []
        for i, (request_id, request) in enumerate(group):
            slot = len(self.rows)
            self.cache.place(slot, cache, i, len(request.prompt))
            if self.cache.cross is not None:
                self.cache.cross.place(slot, self.num_slots, cache.cross, i)
            self.rows.append(_Row(request_id, request, _generator(request.sampling, self.model.device),
                                  position=int(request.prompt.position_ids[0, -1]), length=len(request.prompt)))
            placed.append(self.rows[-1])
        self._sample(placed, logits, events)

    # --- decoding --------------------------------------------------------------------------------------------------

    def _decode(self, events: list[Event]) -> None:
        """One token for every busy row (the first len(rows) rows of the cache; free slots cost nothing)."""
        for row in self.rows:
            row.position += 1
            row.length += 1
        device = self.model.device
        tokens = torch.tensor([[row.pending] for row in self.rows], device=device)              # (k, 1)
        positions = torch.tensor([[row.position] for row in self.rows], device=device)          # (k, 1)
        logits = self.decode_step(self.model, tokens, positions, self.cache)                     # (k, vocab)
        self._sample(list(self.rows), logits, events)

    def _sample(self, rows: list[_Row], logits: torch.Tensor, events: list[Event]) -> None:
        """logits (len(rows), vocab): each row samples with its own settings and generator, then goes on or ends."""
        if self.on_logits is not None:
            for row, row_logits in zip(rows, logits):
                self.on_logits(row.request_id, row_logits)
        tokens = torch.stack([
            sample_next_token(logits[i:i + 1], torch.tensor([row.generated], dtype=torch.long,
                                                            device=logits.device).view(1, -1),
                              row.request.sampling, row.generator)[0]
            for i, row in enumerate(rows)])                                                  # (k,)
        tokens = broadcast_from_first_rank(tokens)      # model-parallel ranks must continue with the same tokens
        for row, token in zip(rows, tokens.tolist()):
            if token in row.request.stop_token_ids:
                self._retire(row, "stop", events)
                continue
            row.generated.append(token)
            events.append(Event(row.request_id, token_id=token))
            if len(row.generated) == row.budget:
                self._retire(row, "length", events)
            else:
                row.pending = token

    def _retire(self, row: _Row, reason: FinishReason, events: list[Event]) -> None:
        """End `row`'s request and free its cache row: the last busy row moves into it, so busy rows stay first."""
        events.append(Event(row.request_id, finish_reason=reason))
        slot, last = self.rows.index(row), len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot, self.rows[last].length)
            if self.cache.cross is not None:
                self.cache.cross.move(last, slot)
            self.rows[slot] = self.rows[last]
        self.rows.pop()
        self.cache.bound(max((busy.length for busy in self.rows), default=0))


def _generator(sampling: SamplingConfig, device) -> torch.Generator | None:
    """Each request's own random stream, seeded as generate() seeds it: a seeded row samples as it would alone."""
    if sampling.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def generate_batch(model, requests: Iterable[Request], num_slots: int | None = None,
                   on_logits: Callable[[Hashable, torch.Tensor], None] | None = None, compile: bool = False,
                   prefill_dtype: torch.dtype | None = None) -> Iterator[Event]:
    """Generate `requests` together; yield their events as they happen. Request ids default to list indices.

    With `num_slots` below the number of requests, the others wait in the queue and join as rows finish.
    `compile`, `prefill_dtype`: see Scheduler."""
    requests = [request if request.request_id is not None else replace(request, request_id=i)
                for i, request in enumerate(requests)]
    if not requests:
        return
    scheduler = Scheduler(model, num_slots or len(requests),
                          max_length=max(request.sampling.max_length for request in requests),
                          max_queue=len(requests), on_logits=on_logits, compile=compile,
                          prefill_dtype=prefill_dtype)
    for request in requests:
        scheduler.submit(request)
    while scheduler.busy:
        yield from scheduler.step()


def collect(events: Iterable[Event]) -> dict[Hashable, tuple[list[int], Event]]:
    """Each request's tokens and its final event, from an event stream."""
    tokens: dict[Hashable, list[int]] = {}
    ends: dict[Hashable, Event] = {}
    for event in events:
        if event.finished:
            ends[event.request_id] = event
        else:
            tokens.setdefault(event.request_id, []).append(event.token_id)
    return {request_id: (tokens.get(request_id, []), end) for request_id, end in ends.items()}
