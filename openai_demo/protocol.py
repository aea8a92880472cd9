"""The OpenAI chat-completions wire format: request schema, its translation into a conversation the model reads,
and the response, chunk and error bodies.

    parse_request(body)          raw bytes -> ChatCompletionRequest (ApiError 400 for bad JSON or a wrong schema)
    conversation(request)        OpenAI messages -> Conversation(query, history, image_url)
    completion(...) / chunk(...) the response bodies; error_body(...) OpenAI's error shape

What CogVLM reads is one image and a (question, answer) history ending with a question, so:
- system messages are prepended (one per line) to the first user message's text: the templates have no system slot;
- the other messages must alternate user / assistant, starting and ending with a user message;
- a user message's text parts are joined by newlines; its image_url parts name the conversation's one image
  (the same URL may repeat; two different images are refused).

Grounding answers also carry their boxes (an extension field clients may ignore): `choices[0].message.boxes`
(in a stream, the last chunk's `delta.boxes`) is a list of {"phrase": str, "boxes": [[x0, y0, x1, y1], ...]},
corners in thousandths of the image width and height, as the model writes them. It is absent when the answer holds
no box.

The agent extension (a top-level `agent` object: CogAgent-9B's query built by the server, the parsed step in
`choices[0].message.agent_step`) is described in agent.py.

Imports pydantic (and the pure-Python agent protocol) only: the server's request checks need neither torch nor
the model.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from cogvlm.utils.agent.protocol import DEFAULT_FORMAT, Platform

MAX_STOP_SEQUENCES = 4          # as OpenAI's API


class ApiError(Exception):
    """An error answered with OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- request schema ------------------------------------------------------------------------------------------------

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")       # clients send fields this server has no use for (user, ...)


class ImageURL(_Lenient):
    url: str
    detail: str | None = None       # accepted and ignored: the processor fixes the resolution


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class AgentHistoryStep(_Lenient):
    """An earlier step as the query repeats it (utils/agent/protocol.HistoryStep): each one line, as written."""
    grounded_operation: StrictStr
    action: StrictStr


class AgentOptions(BaseModel):
    """The agent extension (openai_demo/agent.py): the server builds CogAgent-9B's query from these fields.
    Strict types and no unknown fields: a misspelt field must not be silently dropped from the query."""
    model_config = ConfigDict(extra="forbid")

    task: StrictStr
    # The model's earlier answers verbatim (the server reads each one's step), or the steps themselves.
    history: list[StrictStr | AgentHistoryStep] = Field(default_factory=list)
    platform: StrictStr = Platform.MAC.value            # as the agent CLI's default (the published one)
    format: StrictStr = DEFAULT_FORMAT.value
    continue_task: StrictBool = Field(False, alias="continue")


class ChatCompletionRequest(_Lenient):
    model: str | None = None            # one model is served: any name is accepted
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)      # OpenAI's newer name for max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)      # int64, as OpenAI's
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    # Extensions (not OpenAI's): the published demo's repetition penalty, a top-k cut when sampling, and
    # ignore_eos (as vLLM's) to generate max_tokens whatever the model says (load tests).
    repetition_penalty: float = Field(1.0, ge=0.01, le=100)     # bounded: logits stay finite when divided
    top_k: int = Field(0, ge=0)
    ignore_eos: bool = False
    agent: AgentOptions | None = None       # CogAgent-9B's GUI-agent query and parsed step (openai_demo/agent.py)

    @property
    def answer_limit(self) -> int | None:
        """max_tokens, or its newer name."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", "stop")
        if any(not stop for stop in stops):
            raise ApiError(400, "stop sequences must not be empty", "stop")
        return tuple(stops)


# Pydantic names the member of a union it tried in the error location ("str", "list[...]", or a model's class name
# such as "AgentHistoryStep"): not a field name (field names are lower case).
_UNION_MEMBERS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _location(loc: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', without pydantic's union member names."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "body" and "[" not in part and part not in _UNION_MEMBERS and not part[:1].isupper():
            text += f".{part}" if text else part
    return text


def validation_error(errors: list[dict]) -> ApiError:
    """Pydantic / FastAPI validation errors -> one ApiError naming the deepest problem (of a union's members,
    the one that got furthest) and how many others there were."""
    first = max(errors, key=lambda error: len(_location(tuple(error.get("loc", ())))))
    where = _location(tuple(first.get("loc", ())))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    message = " ".join(str(first.get("msg", "invalid value")).split())
    return ApiError(400, f"{where}: {message}{more}" if where else f"{message}{more}", where or None,
                    "invalid_value")


def parse_request(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise ApiError(400, f"the request body is not valid JSON: {problem}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as problem:
        raise validation_error(problem.errors(include_url=False)) from None


# --- messages -> conversation --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conversation:
    query: str
    history: list[tuple[str, str]] = field(default_factory=list)
    image_url: str | None = None


def _text_and_images(message: Message, index: int) -> tuple[str, list[str]]:
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts = [part.text for part in message.content if isinstance(part, TextPart)]
    images = [part.image_url.url for part in message.content if isinstance(part, ImagePart)]
    if images and message.role != "user":
        raise ApiError(400, f"messages[{index}]: only user messages may hold images", f"messages[{index}].content")
    return "\n".join(texts), images


def conversation(request: ChatCompletionRequest) -> Conversation:
    system: list[str] = []
    turns: list[tuple[str, str]] = []           # (role, text) of the user / assistant messages
    images: list[str] = []
    for index, message in enumerate(request.messages):
        text, message_images = _text_and_images(message, index)
        images += message_images
        if message.role == "system":
            system.append(text)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if message.role != expected:
            raise ApiError(400, f"messages[{index}] has role {message.role!r} where {expected!r} was expected: "
                                f"after system messages, user and assistant messages alternate, starting "
                                f"and ending with a user message", "messages")
        turns.append((message.role, text))
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be a user message (the question to answer)", "messages")
    if len(set(images)) > 1:
        raise ApiError(400, f"this model reads one image per conversation; the messages hold {len(set(images))} "
                            f"different images", "messages")
    texts = [text for _, text in turns]
    if system:
        texts[0] = "\n".join(system + [texts[0]])
    if not texts[-1].strip():
        raise ApiError(400, "the last user message has no text: ask a question about the image", "messages")
    history = list(zip(texts[0:-1:2], texts[1:-1:2]))
    return Conversation(texts[-1], history, images[0] if images else None)


# --- response bodies -----------------------------------------------------------------------------------------------

def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def boxes_field(text: str) -> list[dict] | None:
    """The grounding extension of an answer: its boxes with their phrases, or None when it holds no box."""
    from cogvlm.utils.grounding.boxes import ground_phrases

    grounded = ground_phrases(text)
    if not grounded:
        return None
    return [{"phrase": item.phrase, "boxes": [[box.x0, box.y0, box.x1, box.y1] for box in item.boxes]}
            for item in grounded]


def grounding_fields(text: str) -> dict:
    """{"boxes": boxes_field(text)}, or {} when the answer holds no box."""
    boxes = boxes_field(text)
    return {} if boxes is None else {"boxes": boxes}


def completion(completion_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, extensions: dict | None = None) -> dict:
    """A chat.completion body; its message has the grounding boxes and `extensions` beside the content."""
    message = {"role": "assistant", "content": text, **grounding_fields(text), **(extensions or {})}
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(completion_id: str, model: str, delta: dict, finish_reason: str | None = None,
          usage_counts: dict | None = None) -> dict:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if usage_counts is not None:            # the usage chunk of stream_options.include_usage: no choices
        body["choices"], body["usage"] = [], usage_counts
    return body


def sse(data: dict | str) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
