"""Parse and write CogAgent-18B GUI-agent answers (the answers to cogvlm.utils.grounding.templates.agent_query).

An answer has up to three labelled sections; the last appears only when the query ends with "(with grounding)"::

    Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button.
    Next Action: Type 'CogVLM' into the search box at the top of the page.
    Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]

Published forms of the grounded operation (THUDM/CogVLM README; CogAgent paper, arXiv:2312.08914, appendix):

- web (Mind2Web-style): ``[element_type] element -> OPERATION[: text] at the box [[x0,y0,x1,y1]]``, e.g.
  ``[button] Search -> CLICK at the box [[798,367,875,424]]``, ``[svg] -> CLICK at the box [[...]]`` (no element
  name), ``[textbox] Where from? -> TYPE: KATHMANDU at the box [[...]]``. Operations: WEB_OPERATIONS.
- mobile (AITW-style), after "Action:" instead of "Next Action:": ``tap [[780,862]]`` (a point, not a box), and
  the other lower-case operations of MOBILE_OPERATIONS, e.g. ``type "text"``, ``press back``.

The parser does not require an operation to be in those lists: the model is free text, so any operation word is
kept as written. (CogAgent-9B-20241220 uses a different, function-call format; it is not handled here.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .boxes import BOX_CLOSE, BOX_OPEN, COORDINATE_DIGITS, VALUE_SEPARATOR, Box, parse_boxes

PLAN_LABEL = "Plan"
NEXT_ACTION_LABEL = "Next Action"
# CogAgent's mobile (AITW) answers label the next action "Action:"; it fills the same field.
ACTION_LABEL = "Action"
GROUNDED_OPERATION_LABEL = "Grounded Operation"

# Operation words, for reference (the parser accepts any). Seen in published CogAgent-18B outputs: TYPE (README),
# CLICK and tap (paper). SELECT is the third Mind2Web operation, which the web data was converted from. The other
# mobile words are AITW's actions as third-party AITW harnesses read them from CogAgent-18B answers (e.g. DigiRL);
# THUDM never published the full list (THUDM/CogVLM issue #259).
WEB_OPERATIONS = ("CLICK", "TYPE", "SELECT")
MOBILE_OPERATIONS = ("tap", "type", "swipe up", "swipe down", "swipe left", "swipe right", "press home",
                     "press back", "press enter", "task complete", "task impossible")

ELEMENT_ARROWS = ("->", "→")
BOX_PREFIX = "at the box"
TEXT_SEPARATOR = ":"

# A label at a word start, e.g. "Plan:", "Next Action :". "Next Action" is tried before "Action" so that it is not
# read as "Next" + "Action:".
_LABEL_PATTERN = re.compile(
    rf"(?<![A-Za-z])({GROUNDED_OPERATION_LABEL}|{NEXT_ACTION_LABEL}|{ACTION_LABEL}|{PLAN_LABEL})[ \t]*:")
_FIELD_OF_LABEL = {
    PLAN_LABEL: "plan",
    NEXT_ACTION_LABEL: "next_action",
    ACTION_LABEL: "next_action",
    GROUNDED_OPERATION_LABEL: "grounded_operation",
}
_BRACKETS_PATTERN = re.compile(r"\[\[([^\[\]]*)\]\]")
_POINT_PATTERN = re.compile(rf"\s*([0-9]{{1,{COORDINATE_DIGITS}}})\s*,\s*([0-9]{{1,{COORDINATE_DIGITS}}})\s*")
_ELEMENT_TYPE_PATTERN = re.compile(r"\s*\[([^\[\]]*)\]")
# "at the box" right before a "[["; the last one marks where the target starts.
_BOX_PREFIX_PATTERN = re.compile(rf"\s*\b{BOX_PREFIX}\s*(?={re.escape(BOX_OPEN)})", re.IGNORECASE)
# Mobile form ``type "some text"``: an operation without ':' or '"', then the quoted text (which may hold ':').
_QUOTED_TEXT_PATTERN = re.compile(r'([^":]*?)\s*"(.*)"\s*', re.DOTALL)
_ARROW_PATTERN = re.compile("|".join(re.escape(arrow) for arrow in ELEMENT_ARROWS))


@dataclass(frozen=True)
class GroundedOperation:
    """One grounded operation. `box` / `point` are in thousandths of the screenshot (see cogvlm.utils.grounding.boxes.Box).

    element_type: the bracketed ``[combobox]`` part, or None.
    element: the element's name ("Search"), or None.
    operation: the operation word as written ("TYPE", "CLICK", "tap", "press back"), or None.
    text: what follows "OPERATION:" (the text to type, the option to select) or a quoted mobile text, or None.
    box / point: the target box ``[[x0,y0,x1,y1]]`` or point ``[[x,y]]`` (mobile answers), or None.
    raw: the operation text as it appeared in the answer; not compared (two operations with the same fields are
        equal however they were spaced).
    """

    element_type: str | None = None
    element: str | None = None
    operation: str | None = None
    text: str | None = None
    box: Box | None = None
    point: tuple[int, int] | None = None
    raw: str = field(default="", compare=False)

    def action_point(self, width: int, height: int) -> tuple[int, int] | None:
        """Pixel position where the operation acts: the box centre, else the point, else None."""
        if self.box is not None:
            return self.box.center_pixels(width, height)
        if self.point is not None:
            # A point is a zero-size box; Box does the rounding and checks the image size.
            x, y = self.point
            return Box(x, y, x, y).center_pixels(width, height)
        return None


@dataclass(frozen=True)
class AgentAnswer:
    """A parsed agent answer; a section that is absent or empty is None."""

    plan: str | None = None
    next_action: str | None = None
    grounded_operation: GroundedOperation | None = None

    def action_point(self, width: int, height: int) -> tuple[int, int] | None:
        """Pixel position of the grounded operation on a width x height screenshot (where to click), or None."""
        if self.grounded_operation is None:
            return None
        return self.grounded_operation.action_point(width, height)


def _none_if_empty(value: str) -> str | None:
    value = value.strip()
    return value or None


def _parse_target(raw: str) -> tuple[str, Box | None, tuple[int, int] | None]:
    """Split off the target: (text before it, box, point).

    The target starts at the last "at the box" followed by "[[", else at the last "[[" (mobile ``tap [[x,y]]``).
    Its first closed ``[[...]]`` is read as a box or a point; a malformed or cut-off one gives neither.
    """
    prefixes = list(_BOX_PREFIX_PATTERN.finditer(raw))
    if prefixes:
        head, tail = raw[:prefixes[-1].start()], raw[prefixes[-1].end():]
    elif (opening := raw.rfind(BOX_OPEN)) >= 0:
        head, tail = raw[:opening], raw[opening:]
    else:
        return raw, None, None
    group = _BRACKETS_PATTERN.match(tail)
    if group is None:
        return head, None, None
    boxes = parse_boxes(group.group(0))
    point = _POINT_PATTERN.fullmatch(group.group(1))
    return head, (boxes[0] if boxes else None), ((int(point.group(1)), int(point.group(2))) if point else None)


def parse_grounded_operation(raw: str) -> GroundedOperation | None:
    """Parse the text after "Grounded Operation:"; None if it is empty. Never raises. See the module docstring."""
    if not raw.strip():
        return None
    head, box, point = _parse_target(raw)

    element_type = element = None
    arrow = _ARROW_PATTERN.search(head)
    if arrow is not None:
        target, action = head[:arrow.start()], head[arrow.end():]
        type_match = _ELEMENT_TYPE_PATTERN.match(target)
        if type_match is not None:
            element_type = _none_if_empty(type_match.group(1))
            target = target[type_match.end():]
        element = _none_if_empty(target)
    else:
        action = head

    quoted = _QUOTED_TEXT_PATTERN.fullmatch(action)
    if quoted is not None:
        operation, text = quoted.group(1), quoted.group(2)
    else:
        operation, _, text = action.partition(TEXT_SEPARATOR)
    return GroundedOperation(
        element_type=element_type,
        element=element,
        operation=_none_if_empty(operation),
        text=_none_if_empty(text),
        box=box,
        point=point,
        raw=raw.strip(),
    )


def parse_agent_answer(text: str) -> AgentAnswer:
    """Split an answer into its sections. Never raises; missing or empty sections are None.

    A section runs from its label ("Plan:", "Next Action:" or "Action:", "Grounded Operation:") to the next label
    or the end of the text. When a label appears twice, the first section wins.
    """
    sections: dict[str, str] = {}
    matches = list(_LABEL_PATTERN.finditer(text))
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following is not None else len(text)
        sections.setdefault(_FIELD_OF_LABEL[match.group(1)], text[match.end():end])
    return AgentAnswer(
        plan=_none_if_empty(sections.get("plan", "")),
        next_action=_none_if_empty(sections.get("next_action", "")),
        grounded_operation=parse_grounded_operation(sections.get("grounded_operation", "")),
    )


def format_grounded_operation(operation: GroundedOperation) -> str:
    """``[element_type] element -> OPERATION: text at the box [[...]]``; parts that are None are left out
    (without element and element type there is no arrow; a point is written ``[[x,y]]`` after the operation)."""
    parts = []
    if operation.element_type is not None or operation.element is not None:
        if operation.element_type is not None:
            parts.append(f"[{operation.element_type}]")
        if operation.element is not None:
            parts.append(operation.element)
        parts.append(ELEMENT_ARROWS[0])
    action = operation.operation or ""
    if operation.text is not None:
        action += f"{TEXT_SEPARATOR} {operation.text}"
    if action:
        parts.append(action)
    if operation.box is not None:
        parts.append(f"{BOX_PREFIX} {operation.box}")
    elif operation.point is not None:
        x, y = operation.point
        parts.append(f"{BOX_OPEN}{x:0{COORDINATE_DIGITS}d}{VALUE_SEPARATOR}{y:0{COORDINATE_DIGITS}d}{BOX_CLOSE}")
    return " ".join(parts)


def format_agent_answer(answer: AgentAnswer) -> str:
    """The answer as CogAgent writes it, one section a line; sections that are None are left out.

    parse_agent_answer(format_agent_answer(a)) == a when every string is stripped and non-empty and holds no
    section label ("Plan:", "Action:", ...), and the operation's fields can be told apart: at least one of them is
    set, not both box and point; no arrow, '"' or "[[" in any of them; no brackets in the element type, no
    leading "[" in the element, no ":" in the operation, and (points are written without "at the box", as the
    model does) no text or operation ending in "at the box" when there is a point.
    """
    lines = []
    if answer.plan is not None:
        lines.append(f"{PLAN_LABEL}: {answer.plan}")
    if answer.next_action is not None:
        lines.append(f"{NEXT_ACTION_LABEL}: {answer.next_action}")
    if answer.grounded_operation is not None:
        lines.append(f"{GROUNDED_OPERATION_LABEL}: {format_grounded_operation(answer.grounded_operation)}")
    return "\n".join(lines)

