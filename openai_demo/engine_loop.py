"""One loop drives the engine's Scheduler for every HTTP request: continuous batching across clients.

    EngineLoop (rank 0)   a thread owning the Scheduler. The HTTP side hands it commands (admit a request,
                          cancel one) through a thread-safe inbox; each loop turn applies the commands, steps the
                          scheduler once and posts each request's text pieces and its end to that request's asyncio
                          queue (thread-safe, through its event loop).
    follow (ranks > 0)    under torchrun: the same turns without HTTP, on the commands rank 0 broadcasts, so that
                          every rank steps the same batches (the sampled tokens are broadcast by the scheduler).

Capacity is counted here, not in the Scheduler: a request holds its place from `try_reserve` until the scheduler
reports its end, so at most num_slots + max_queue requests are running or waiting; beyond that the HTTP side
answers 429 at once. A stop sequence ends a request's answer at once and cancels it in the scheduler (its slot is
free one step later).
"""
from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
import traceback
from collections.abc import Hashable
from dataclasses import dataclass, field

from cogvlm.utils.inference.chat import TextStream

# Idle ranks wait in a broadcast; rank 0 sends an empty turn this often, so that no collective times out while
# the server has nothing to do.
IDLE_TURN_SECONDS = 5.0
END_REASONS = ("stop", "length", "cancelled", "error", "failure")


# --- commands, the same on every rank ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admit:
    request: object                 # engine.Request (prompt, sampling, stop ids, request_id)


@dataclass(frozen=True)
class Cancel:
    request_id: Hashable


@dataclass(frozen=True)
class Shutdown:
    pass


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast(commands: list | None) -> list:
    """Rank 0's commands on every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if _world_size() == 1:
        return commands
    box = [commands]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _apply(scheduler, commands: list) -> bool:
    """Apply a turn's commands; False after a Shutdown."""
    for command in commands:
        if isinstance(command, Admit):
            scheduler.submit(command.request)
        elif isinstance(command, Cancel):
            scheduler.cancel(command.request_id)
        elif isinstance(command, Shutdown):
            return False
    return True


def follow(chat, num_slots: int, max_length: int, capacity: int) -> None:
    """A rank > 0 under torchrun: step the batches rank 0 decides, until it shuts down.

    Ctrl-C (which torchrun and a terminal send to every rank) is left to rank 0: it stops its HTTP server and
    broadcasts the shutdown, so that no rank leaves another waiting in a collective."""
    from cogvlm.utils.inference.engine import Scheduler

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scheduler = Scheduler(chat.model, num_slots, max_length, max_queue=capacity)
    while _apply(scheduler, _broadcast(None)):
        if scheduler.busy:
            scheduler.step()


# --- what a request's asyncio queue receives -----------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str                     # stop, length, cancelled, error (the request's input), failure (the model)
    text: str                       # the whole answer
    completion_tokens: int
    error: str | None = None


class AnswerText:
    """A request's answer as its tokens arrive: whole characters, cut before the first stop sequence.

    What could still be the start of a stop sequence, or trailing whitespace, is held back until the next
    token shows it is not: a stream's pieces then add up to exactly the plain answer (stripped, as
    ChatModel.answer strips it)."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.stream, self.stops = TextStream(tokenizer), stops
        self.holdback = max(map(len, stops), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token_id: int) -> str:
        """The text now safe to send after `token_id`; `stopped` is set when a stop sequence appeared."""
        self.text += self.stream.push(token_id)
        return self._release(final=self._cut())

    def finish(self) -> str:
        """What is left to send at the end of the answer."""
        self.text += self.stream.flush()
        self._cut()
        return self._release(final=True)

    def _cut(self) -> bool:
        found = [index for stop in self.stops if (index := self.text.find(stop)) >= 0]
        if found:
            self.text, self.stopped = self.text[:min(found)], True
        return self.stopped

    def _release(self, final: bool) -> str:
        safe = self.text if final else self.text[:max(len(self.text) - self.holdback, 0)]
        end = len(safe.rstrip())        # whitespace goes out only with what follows it
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    @property
    def answer(self) -> str:
        return self.text.strip()


@dataclass
class Job:
    """A request on rank 0: where its events go, and its answer so far."""
    request_id: str
    answer: AnswerText
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    completion_tokens: int = 0
    done: bool = False
    reason: str | None = None           # how it ended, once done

    def post(self, item: Piece | Finished) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:            # the event loop is closed: the server is shutting down
            pass

    def finish(self, reason: str, error: str | None = None) -> None:
        if self.done:
            return
        rest = self.answer.finish() if reason != "failure" else ""
        if rest:
            self.post(Piece(rest))
        self.done, self.reason = True, reason
        self.post(Finished(reason, self.answer.answer, self.completion_tokens, error))


@dataclass
class Stats:
    num_slots: int
    capacity: int
    busy_slots: int = 0
    queued: int = 0
    in_flight: int = 0              # reserved places: running, waiting, or in the inbox
    # requests ended since the start, by how: stop, length, cancelled (their client went away), error, failure
    ended: dict[str, int] = field(default_factory=lambda: dict.fromkeys(END_REASONS, 0))

    def as_dict(self) -> dict:
        return {**self.__dict__, "ended": dict(self.ended)}

    def count_end(self, reason: str) -> None:
        self.ended[reason] += 1         # the keys are fixed: /health may copy the dict while this runs


class EngineLoop:
    def __init__(self, chat, num_slots: int, max_length: int, max_queue: int):
        self.chat, self.num_slots, self.max_length = chat, num_slots, max_length
        self.capacity = num_slots + max_queue
        self.inbox: queue.Queue = queue.Queue()
        self.jobs: dict[str, Job] = {}              # touched by the loop thread only
        self._lock = threading.Lock()
        self._reserved = 0
        self.stats = Stats(num_slots, self.capacity)
        self._thread: threading.Thread | None = None

    # --- the HTTP side (any thread) ----------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._reserved >= self.capacity

    def try_reserve(self) -> bool:
        """Take a place for a request; False when num_slots + max_queue are taken (answer 429)."""
        with self._lock:
            if self._reserved >= self.capacity:
                return False
            self._reserved += 1
            self.stats.in_flight = self._reserved
            return True

    def submit(self, request, stops: tuple[str, ...]) -> Job:
        """Queue a prompt (after try_reserve): -> its Job, whose `events` receive Piece... then Finished.
        `request` is an engine.Request with a unique request_id."""
        job = Job(request.request_id, AnswerText(self.chat.tokenizer, stops), asyncio.Queue(),
                  asyncio.get_running_loop())
        self.inbox.put((job, Admit(request)))
        return job

    def cancel(self, request_id: str) -> None:
        self.inbox.put((None, Cancel(request_id)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.inbox.put((None, Shutdown()))
            self._thread.join()

    # --- the loop thread ---------------------------------------------------------------------------------------

    def _take_commands(self, wait: bool) -> list:
        """This turn's commands: all that are waiting; when the scheduler is idle, wait for the first."""
        commands = []
        try:
            item = self.inbox.get(timeout=IDLE_TURN_SECONDS) if wait else self.inbox.get_nowait()
            while True:
                job, command = item
                if job is not None:
                    self.jobs[job.request_id] = job
                commands.append(command)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return commands

    def _new_scheduler(self):
        from cogvlm.utils.inference.engine import Scheduler

        return Scheduler(self.chat.model, self.num_slots, self.max_length, max_queue=self.capacity)

    def _run(self) -> None:
        scheduler = self._new_scheduler()
        while True:
            try:
                if not _apply(scheduler, _broadcast(self._take_commands(wait=not scheduler.busy))):
                    return
                if scheduler.busy:
                    self._deliver(scheduler.step())
            except Exception as problem:    # a failure inside the model (inputs were checked before)
                if _world_size() > 1:       # the other ranks may wait in this turn's collectives: end them all
                    traceback.print_exc()
                    os._exit(1)
                # As the CLI goes on after one, answer the requests it hit with a 500 and start over.
                self._fail_all(f"the model failed: {' '.join(str(problem).split()) or type(problem).__name__}")
                scheduler = self._new_scheduler()
            self.stats.busy_slots = len(scheduler.rows)
            self.stats.queued = len(scheduler.queue)

    def _fail_all(self, error: str) -> None:
        for job in self.jobs.values():
            self.stats.count_end(job.reason if job.done else "failure")
            job.finish("failure", error)
            self._release()
        self.jobs.clear()

    def _deliver(self, events) -> None:
        for event in events:
            job = self.jobs.get(event.request_id)
            if job is None:
                continue
            if event.finished:
                # A job a stop sequence ended is cancelled in the scheduler: it ended with "stop".
                self.stats.count_end(job.reason if job.done else event.finish_reason)
                job.finish(event.finish_reason, event.error)
                del self.jobs[event.request_id]
                self._release()
                continue
            if job.done:                # a stop sequence ended it; its cancellation is on the way
                continue
            job.completion_tokens += 1
            piece = job.answer.push(event.token_id)
            if piece:
                job.post(Piece(piece))
            if job.answer.stopped:
                job.finish("stop")
                self.inbox.put((None, Cancel(job.request_id)))

    def _release(self) -> None:
        with self._lock:
            self._reserved -= 1
            self.stats.in_flight = self._reserved
