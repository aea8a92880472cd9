"""The HTTP routes: POST /v1/chat/completions, GET /v1/models, GET /health.

Every error is OpenAI's JSON shape (protocol.ApiError): bad input is a 4xx with one line saying what is wrong,
a full queue a 429 with Retry-After, a failure inside the model a 500; FastAPI's own validation and routing
errors are reworded into the same shape. A client that disconnects cancels its request, which frees its slot.
An agent request (agent.py) is the same request with a query the server builds and the parsed step beside the answer.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cogvlm.utils.inference.engine import Request as EngineRequest
from cogvlm.utils.inference.generation import SamplingConfig
from cogvlm.utils.inference.messages import describe

from .agent import agent_conversation, agent_step_field
from .engine_loop import EngineLoop, Finished, Piece
from .images import ImagePolicy, load_request_image
from .protocol import (ApiError, ChatCompletionRequest, chunk, completion, conversation, error_body, grounding_fields,
                       new_completion_id, parse_request, sse, usage, validation_error)

# Below this, dividing the logits by the temperature overflows float32 (inf, then NaN probabilities): greedy instead,
# as the published demo's do_sample threshold.
MIN_SAMPLING_TEMPERATURE = 1e-5
RETRY_AFTER_SECONDS = 1         # a slot frees as soon as any answer ends; clients back off further themselves


@dataclass(frozen=True)
class ServerOptions:
    model_name: str
    max_length: int                 # prompt + answer tokens of one request (the engine's cache per slot)
    images: ImagePolicy = field(default_factory=ImagePolicy)
    allow_text_only: bool = False   # as the CLI, a question needs an image unless this is set


def create_app(engine: EngineLoop, options: ServerOptions) -> FastAPI:
    app = FastAPI(title="CogVLM / CogAgent OpenAI-compatible API", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(_, problem: ApiError):
        return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_, problem: RequestValidationError):
        return await api_error(_, validation_error(list(problem.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, problem: StarletteHTTPException):
        return JSONResponse(error_body(str(problem.detail), "invalid_request_error"), status_code=problem.status_code,
                            headers=getattr(problem, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_, problem: Exception):
        return JSONResponse(error_body(f"internal server error ({type(problem).__name__})", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": options.model_name, **engine.stats.as_dict()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": created,
                                            "owned_by": "cogvlm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_request(await request.body())
        if engine.full:                 # spare reading the image of a request that cannot be queued
            raise busy(engine)
        prepared = await run_in_threadpool(prepare, engine.chat, body, options)
        if not engine.try_reserve():
            raise busy(engine)
        job = engine.submit(prepared.request, prepared.stops)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(stream(engine, job, options.model_name, prepared, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finished = await answer_unless_disconnected(engine, job, request)
        if finished is None:
            return JSONResponse(error_body("the client disconnected", "invalid_request_error"), status_code=499)
        return completion_response(finished, job.request_id, options.model_name, prepared)

    return app


def busy(engine: EngineLoop) -> ApiError:
    return ApiError(429, f"the server is busy: {engine.capacity} requests are running or waiting; retry later",
                    code="queue_full", kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@dataclass(frozen=True)
class Prepared:
    request: EngineRequest
    stops: tuple[str, ...]
    prompt_tokens: int
    agent_screen: tuple[int, int] | None = None     # an agent request's screenshot (width, height): its step's pixels

    def agent_fields(self, text: str) -> dict:
        """The agent extension of the answer's message (or last chunk's delta): {} unless an agent request."""
        return {} if self.agent_screen is None else {"agent_step": agent_step_field(text, self.agent_screen)}


def prepare(chat, body: ChatCompletionRequest, options: ServerOptions) -> Prepared:
    """The engine request of a chat completion (image read and preprocessed, prompt built and checked against
    the context): ApiError for bad input. Runs in a worker thread: reading an image takes a while."""
    talk = agent_conversation(body) if body.agent is not None else conversation(body)
    stops = body.stop_sequences()
    if talk.image_url is None and not options.allow_text_only:
        raise ApiError(400, "this model answers questions about an image: add an image_url part to a user message",
                       "messages", "image_required")
    image = screen = None
    if talk.image_url is not None:
        picture = load_request_image(talk.image_url, options.images)
        screen = picture.size if body.agent is not None else None
        image = chat.preprocess(picture)
    try:
        prompt = chat.prompt(talk.query, talk.history, image)
    except ValueError as problem:           # an empty query, a bad history
        raise ApiError(400, describe(problem), "messages") from None
    sampling = sampling_of(body, len(prompt), int(prompt.image_embed_mask.sum()), options.max_length)
    stop_ids = () if body.ignore_eos else (chat.tokenizer.eos_token_id,)
    return Prepared(EngineRequest(prompt, sampling, stop_ids, new_completion_id()), stops, len(prompt), screen)


def sampling_of(body: ChatCompletionRequest, prompt_tokens: int, image_tokens: int, context: int) -> SamplingConfig:
    """The request's SamplingConfig. temperature 0 (the default, as the CLI's greedy default) picks the most likely
    token; above 0 it samples with top_p (default 1) and the top_k extension (default 0: off)."""
    if prompt_tokens >= context:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens ({image_tokens} of them for the image): it leaves "
                            f"no room for an answer in this server's context of {context} tokens (--max_length)",
                       "messages", "context_length_exceeded")
    max_tokens = body.answer_limit if body.answer_limit is not None else context - prompt_tokens
    if prompt_tokens + max_tokens > context:
        raise ApiError(400, f"max_tokens {max_tokens} and the prompt's {prompt_tokens} tokens exceed this server's "
                            f"context of {context} tokens; ask for at most {context - prompt_tokens}", "max_tokens",
                       "context_length_exceeded")
    temperature = body.temperature if body.temperature and body.temperature >= MIN_SAMPLING_TEMPERATURE else 0.0
    return SamplingConfig(max_length=prompt_tokens + max_tokens, temperature=temperature,
                          top_k=body.top_k, top_p=body.top_p or 1.0, repetition_penalty=body.repetition_penalty,
                          seed=body.seed)


def _error_of(finished: Finished) -> ApiError:
    if finished.reason == "failure":
        return ApiError(500, finished.error or "the model failed", code="engine_failed")
    return ApiError(400, finished.error or "the request could not be answered", "messages")


def completion_response(finished: Finished, completion_id: str, model: str, prepared: Prepared) -> dict:
    if finished.reason in ("error", "failure"):
        raise _error_of(finished)
    return completion(completion_id, model, finished.text, finished.reason, prepared.prompt_tokens,
                      finished.completion_tokens, prepared.agent_fields(finished.text))


async def _finished(job) -> Finished:
    while not isinstance(item := await job.events.get(), Finished):
        pass
    return item


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_unless_disconnected(engine: EngineLoop, job, request: Request) -> Finished | None:
    """The request's end, or None when its client went first (then its request is cancelled)."""
    answer = asyncio.ensure_future(_finished(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            answer.cancel()
            engine.cancel(job.request_id)
    return answer.result() if not answer.cancelled() else None


async def stream(engine: EngineLoop, job, model: str, prepared: Prepared, include_usage: bool):
    """OpenAI's chunks as server-sent events, then `data: [DONE]`. When the client disconnects, Starlette cancels
    this generator at its `await`: the request is cancelled and its slot freed."""
    finished = None
    try:
        yield sse(chunk(job.request_id, model, {"role": "assistant", "content": ""}))
        while True:
            item = await job.events.get()
            if isinstance(item, Piece):
                yield sse(chunk(job.request_id, model, {"content": item.text}))
                continue
            finished = item
            break
        if finished.reason in ("error", "failure"):
            yield sse(_error_of(finished).body())
        else:
            delta = {**grounding_fields(finished.text), **prepared.agent_fields(finished.text)}
            yield sse(chunk(job.request_id, model, delta, finished.reason))
            if include_usage:
                yield sse(chunk(job.request_id, model, {}, usage_counts=usage(prepared.prompt_tokens,
                                                                              finished.completion_tokens)))
        yield sse("[DONE]")
    finally:
        if finished is None:
            engine.cancel(job.request_id)
