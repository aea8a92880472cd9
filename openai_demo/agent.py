"""The agent extension of POST /v1/chat/completions: CogAgent-9B-20241220 as a GUI agent through the OpenAI API.

A request with a top-level `agent` object (with the official client: `extra_body={"agent": {...}}`) asks for the
agent's next step on a screenshot. The server builds the query exactly as the agent CLI does
(utils/agent/protocol.build_query) and parses the answer (utils/agent/answer.parse_answer)::

    "agent": {
        "task": "Mark all emails as read",          # required, non-empty
        "history": [...],                           # the task's earlier steps, oldest first (default: none)
        "platform": "WIN" | "Mac" | "Mobile",        # default "Mac", as the agent CLI
        "format": "action_op_sensitive" | "status_plan_action_op" | "status_action_op_sensitive"
                  | "status_action_op" | "action_op" | "status_plan_action_op_sensitive",
        "continue": false                           # true: "[Continue]", go on with the task's answer
    }

A history item is either the model's earlier answer verbatim (the `content` of an earlier response: the server
reads its grounded operation and the first line of its action, as the agent CLI does) or an object
{"grounded_operation": "CLICK(box=[[...]], ...)", "action": "Click ..."} taken as written (one line each).

The messages hold one user message whose content is the screenshot (one image_url part) and nothing else: the
task is `agent.task` and the history `agent.history`, so user text is refused rather than silently mixed into a
query whose wording the model was trained on; so are system and assistant messages.

The response is an ordinary chat completion (the answer's text in `content`), with the parsed step next to it in
`choices[0].message.agent_step` (in a stream: the last chunk's `delta.agent_step`), answer_to_json's dict for the
screenshot's size: "operation" (the name, or null with a "reason" when the answer does not parse: not an error),
"arguments", "sensitive", "sensitivity", "status", "plan", "action", "grounded_operation", and "box_pixels" /
"point" (where to act) in pixels of the screenshot sent.

Bad agent fields (wrong types, an unknown field, platform or format, an empty task, an unreadable history answer)
get a 400 in OpenAI's error shape naming the field.
"""
from __future__ import annotations

from cogvlm.utils.agent.answer import AgentStep, answer_to_json, parse_answer
from cogvlm.utils.agent.protocol import HistoryStep, build_query, parse_format, parse_platform

from .protocol import AgentHistoryStep, AgentOptions, ApiError, ChatCompletionRequest, Conversation, ImagePart, TextPart


def _screenshot_url(request: ChatCompletionRequest) -> str:
    """The one user message's one image; ApiError for any other message shape."""
    messages = request.messages
    if len(messages) != 1 or messages[0].role != "user":
        raise ApiError(400, "with agent, send one user message holding the screenshot: the earlier steps go in "
                            "agent.history", "messages")
    content = messages[0].content
    parts = content if isinstance(content, list) else [TextPart(type="text", text=content or "")]
    if any(isinstance(part, TextPart) and part.text.strip() for part in parts):
        raise ApiError(400, "with agent, the user message holds only the screenshot: put the task in agent.task",
                       "messages[0].content")
    images = {part.image_url.url for part in parts if isinstance(part, ImagePart)}
    if not images:
        raise ApiError(400, "with agent, the user message must hold the screenshot (an image_url part)",
                       "messages[0].content", "image_required")
    if len(images) > 1:
        raise ApiError(400, f"with agent, the user message holds one screenshot, not {len(images)} images",
                       "messages[0].content")
    return images.pop()


def _history_step(item: str | AgentHistoryStep, index: int) -> HistoryStep:
    if not isinstance(item, str):
        return HistoryStep(item.grounded_operation, item.action)
    answer = parse_answer(item)
    if not isinstance(answer, AgentStep):
        raise ApiError(400, f"agent.history[{index}]: no step can be read from this answer ({answer.reason})",
                       f"agent.history[{index}]")
    return answer.history_step()


def agent_query(options: AgentOptions) -> str:
    """The query build_query makes of the agent fields; ApiError naming the field for a bad one."""
    for name, check in (("platform", parse_platform), ("format", parse_format)):
        try:
            check(getattr(options, name))
        except ValueError as problem:
            raise ApiError(400, f"agent.{name}: {problem}", f"agent.{name}") from None
    if not options.task.strip():
        raise ApiError(400, "agent.task is empty: say what the agent should do", "agent.task")
    history = [_history_step(item, index) for index, item in enumerate(options.history)]
    try:
        return build_query(options.task, history, options.platform, options.format,
                           continue_task=options.continue_task)
    except ValueError as problem:       # a newline inside a history step
        raise ApiError(400, f"agent.history: {problem}", "agent.history") from None


def agent_conversation(request: ChatCompletionRequest) -> Conversation:
    """The conversation of an agent request: the built query, no history (it is inside the query), the screenshot."""
    image_url = _screenshot_url(request)
    return Conversation(agent_query(request.agent), [], image_url)


def agent_step_field(text: str, image_size: tuple[int, int]) -> dict:
    """The parsed step of an answer, with pixels of the (width, height) screenshot."""
    return answer_to_json(parse_answer(text), *image_size)
