"""GUI-agent modes: how each CogAgent generation is asked for its next step, and how its answer is read.

A front end (basic_demo/web_demo.py) shows the modes of AGENT_MODES by name, asks for a task and, when the mode has
them, a platform and an answer format; it sends `mode.query(...)` to the model, shows `mode.parse(answer)` and the
picture `mode.mark(...)` draws. Another generation plugs in by adding an object with the AgentMode members to
AGENT_MODES; nothing else changes.

CogAgent-18B (templates.agent_query / agent_answer.parse_agent_answer) takes no platform; its "format" is whether
the answer ends with a grounded operation, and it is asked as a chat turn (the earlier turns are the model's history).
CogAgent-9B-20241220 (utils/agent: protocol.build_query, answer.parse_answer, drawing.render_target) is asked one
turn at a time: its query lists the task's earlier steps, so the front end keeps them (each parsed step's
`history_step`) and sends the model no chat history.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol

from ..agent.answer import AgentStep as ParsedStep
from ..agent.answer import parse_answer
from ..agent.protocol import DEFAULT_FORMAT, AnswerFormat, HistoryStep, Platform, build_query
from .agent_answer import parse_agent_answer
from .boxes import MAX_COORDINATE, Box
from .templates import agent_query

GLM4_TEMPLATE = "glm4"      # ChatModel.version of the 9B models (GLM-4's chat template)

# A tap point is drawn as a square of this many thousandths of the screenshot, so that it can be seen.
POINT_MARK_SIZE = 20


@dataclass(frozen=True)
class AgentStep:
    """What an agent answer says to do next, as a page shows it; a part the answer lacks is None.

    box / point: the target in thousandths of the screenshot (see boxes.Box); a point is where to tap. The 9B model
    also says its status and whether the operation is sensitive; `unread` is why its operation could not be read
    (the step is then not repeated), `history_step` what the task's next query repeats of this step, and
    `ends_task` whether the operation finishes the task (END)."""
    plan: str | None = None
    action: str | None = None
    operation: str | None = None
    box: Box | None = None
    point: tuple[int, int] | None = None
    status: str | None = None
    sensitive: bool | None = None
    unread: str | None = None
    history_step: HistoryStep | None = None
    ends_task: bool = False

    @property
    def target(self) -> Box | None:
        """The box to draw: the box, or a small square around the point (POINT_MARK_SIZE wide), or None."""
        if self.box is not None or self.point is None:
            return self.box
        x, y = self.point
        half = POINT_MARK_SIZE // 2
        return Box(max(x - half, 0), max(y - half, 0), min(x + half, MAX_COORDINATE), min(y + half, MAX_COORDINATE))


class AgentMode(Protocol):
    """The query builder and answer parser of one CogAgent generation."""

    name: str
    platforms: tuple[str, ...]      # choices for `platform`; empty when the model is not told one
    formats: tuple[str, ...]        # choices for `answer_format`, the first is the default; empty when it has none
    # True: the query lists the task's earlier steps (`history`) and the model is asked without chat history.
    steps_in_query: bool

    def query(self, task: str, platform: str | None, answer_format: str | None,
              history: Sequence[HistoryStep] = ()) -> str:
        """The query for `task`; a ValueError (one line) for an empty task or a choice not offered."""
        ...

    def parse(self, answer: str) -> AgentStep:
        """The answer's next step; never raises (missing parts are None)."""
        ...

    def mark(self, picture: Any, step: AgentStep) -> Any:
        """A copy of `picture` with the step's target drawn, or None when the step has none."""
        ...


def check_choice(value: str | None, choices: tuple[str, ...], what: str) -> None:
    """A ValueError unless `value` is one of `choices` (or None when there are none)."""
    if choices and value not in choices:
        raise ValueError(f"the {what} must be one of {', '.join(choices)}, got {value!r}")
    if not choices and value is not None:
        raise ValueError(f"this agent mode takes no {what}, got {value!r}")


@dataclass(frozen=True)
class CogAgent18B:
    """CogAgent-18B (cogagent-chat): ``What steps do I need to take to "<task>"?`` and, with grounding, a
    "Grounded Operation:" line naming the element and its box (see templates.agent_query)."""

    name: str = "CogAgent-18B"
    platforms: tuple[str, ...] = ()
    formats: tuple[str, ...] = ("plan, action and grounded operation", "plan and action")
    steps_in_query: bool = False

    def query(self, task: str, platform: str | None = None, answer_format: str | None = None,
              history: Sequence[HistoryStep] = ()) -> str:
        if history:
            raise ValueError("CogAgent-18B is not given earlier steps in its query: they are the chat's turns")
        check_choice(platform, self.platforms, "platform")
        answer_format = self.formats[0] if answer_format is None else answer_format
        check_choice(answer_format, self.formats, "answer format")
        return agent_query(task, with_grounding=answer_format == self.formats[0])

    def parse(self, answer: str) -> AgentStep:
        parsed = parse_agent_answer(answer)
        operation = parsed.grounded_operation
        if operation is None:
            return AgentStep(parsed.plan, parsed.next_action)
        return AgentStep(parsed.plan, parsed.next_action, operation.raw or None,
                         operation.box, operation.point)

    def mark(self, picture: Any, step: AgentStep) -> Any:
        """The target box (or tap point) labelled with the operation."""
        from .boxes import GroundedPhrase, render_boxes

        if step.target is None:
            return None
        return render_boxes(picture, [GroundedPhrase(step.operation or "", [step.target])])


@dataclass(frozen=True)
class CogAgent9B:
    """CogAgent-9B-20241220: the published query (task, the numbered earlier steps, platform, answer format; see
    agent.protocol) and answer (status, plan, action, grounded operation, sensitivity tag; see agent.answer). The
    box is in thousandths of the screenshot and the operation acts at its centre (agent.drawing)."""

    name: str = "CogAgent-9B"
    platforms: tuple[str, ...] = tuple(platform.value for platform in Platform)
    # The published format keys, the demos' default first.
    formats: tuple[str, ...] = (DEFAULT_FORMAT.value,) + tuple(
        answer_format.value for answer_format in AnswerFormat if answer_format is not DEFAULT_FORMAT)
    steps_in_query: bool = True

    def query(self, task: str, platform: str | None = None, answer_format: str | None = None,
              history: Sequence[HistoryStep] = ()) -> str:
        platform = self.platforms[0] if platform is None else platform
        answer_format = self.formats[0] if answer_format is None else answer_format
        check_choice(platform, self.platforms, "platform")
        check_choice(answer_format, self.formats, "answer format")
        return build_query(task, history, platform, answer_format)

    def parse(self, answer: str) -> AgentStep:
        parsed = parse_answer(answer)
        said = AgentStep(status=parsed.status, plan=parsed.plan, action=parsed.action, sensitive=parsed.sensitive)
        if not isinstance(parsed, ParsedStep):
            return replace(said, operation=parsed.grounded_operation_text, unread=parsed.reason)
        return replace(said, operation=parsed.grounded_operation_text, box=parsed.box,
                       history_step=parsed.history_step(), ends_task=parsed.operation.name == "END")

    def mark(self, picture: Any, step: AgentStep) -> Any:
        from cogvlm.utils.agent.drawing import render_target     # lazy: PIL comes with drawing

        return None if step.box is None else render_target(picture, step.box, step.operation or "")


AGENT_MODES: MappingProxyType[str, AgentMode] = MappingProxyType(
    {mode.name: mode for mode in (CogAgent18B(), CogAgent9B())})


def default_mode(template_version: str) -> str:
    """The agent mode of a loaded model, by its chat template: the 9B models' GLM-4 one asks CogAgent-9B's
    questions, every other model CogAgent-18B's."""
    return CogAgent9B.name if template_version == GLM4_TEMPLATE else CogAgent18B.name
