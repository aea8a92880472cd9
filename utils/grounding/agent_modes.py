"""GUI-agent modes: how each CogAgent generation is asked for its next step, and how its answer is read.

A front end (basic_demo/web_demo.py) shows the modes of AGENT_MODES by name, asks for a task and, when the mode has
them, a platform and an answer format; it sends `mode.query(...)` to the model and shows `mode.parse(answer)`.
Another generation plugs in by adding an object with the AgentMode members to AGENT_MODES; nothing else changes.

Only CogAgent-18B is here (templates.agent_query / agent_answer.parse_agent_answer): it takes no platform, and its
"format" is whether the answer ends with a grounded operation.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from .agent_answer import parse_agent_answer
from .boxes import MAX_COORDINATE, Box
from .templates import agent_query

# A tap point is drawn as a square of this many thousandths of the screenshot, so that it can be seen.
POINT_MARK_SIZE = 20


@dataclass(frozen=True)
class AgentStep:
    """What an agent answer says to do next, as a page shows it; a part the answer lacks is None.

    box / point: the target in thousandths of the screenshot (see boxes.Box); a point is where to tap."""
    plan: str | None = None
    action: str | None = None
    operation: str | None = None
    box: Box | None = None
    point: tuple[int, int] | None = None

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

    def query(self, task: str, platform: str | None, answer_format: str | None) -> str:
        """The query for `task`; a ValueError (one line) for an empty task or a choice not offered."""
        ...

    def parse(self, answer: str) -> AgentStep:
        """The answer's next step; never raises (missing parts are None)."""
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

    def query(self, task: str, platform: str | None = None, answer_format: str | None = None) -> str:
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


AGENT_MODES: MappingProxyType[str, AgentMode] = MappingProxyType({mode.name: mode for mode in (CogAgent18B(),)})
