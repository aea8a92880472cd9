"""Read and write CogAgent-9B-20241220 answers: status, plan, action, grounded operation and sensitivity tag.

An answer holds the lines its format asks for (protocol.AnswerFormat), in this order, possibly after a short
summary (README "General answer section")::

    Status: Currently in the email interface [[0, 2, 998, 905]], ...
    Plan: Future tasks: 1. Click the 'Mark all as read' button; 2. Task complete.
    Action: Click the 'Mark all as read' button in the top toolbar of the page.
    Grounded Operation: CLICK(box=[[219,186,311,207]], element_type='Clickable text', element_info='Mark all ...')
    <<一般操作>>

The grounded operation is a call: a name, then ``name=value`` arguments, where a value is a quoted string (with
backslash escapes as in Python: ``\\'``, ``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\r``), an integer, True / False /
None, a list such as the box ``[[x0,y0,x1,y1]]``, or a nested call (``GESTURE(actions=[KEY_DOWN(key='Lcontrol'),
...])``). It is read by a small recursive-descent parser, so commas, parentheses and quotes inside strings are
text. A quote that is followed by anything but ``,`` ``)`` or ``]`` is read as part of the string (the model
sometimes leaves the quotes around a name unescaped: ``element_info='Click 'OK''``). Then the values are checked
against the action space (action_space.OPERATIONS): boxes become grounding.boxes.Box, step_count an integer,
auto_scroll a boolean, GESTURE's actions key operations.

The tag after the operation says whether it is a general (<<一般操作>>) or sensitive (<<敏感操作>>) operation; the
fine-tuning data also ends a task with <<END>>.

Coordinates: a box is in thousandths of the original screenshot's width and height (the model sees the
screenshot squashed to 1120x1120, so the numbers do not depend on its aspect ratio); the operation acts at the
box centre (Action_space_en.md). In pixels of a W x H screenshot a value v is v / 1000 * W (x) or H (y). Reading
the numbers as pixels is the mistake behind THUDM/CogAgent issue 32 (coordinates "outside the image").

parse_answer never raises: a missing, malformed or cut-off operation gives Unparsed with the reason.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Union

from ..grounding.boxes import VALUES_PER_BOX, Box, InvalidBoxError
from .action_space import GESTURE_ACTIONS, OPERATIONS, ArgumentKind
from .protocol import HistoryStep

Value = Union[str, int, float, bool, None, Box, tuple["Value", ...], "Operation"]

STATUS_LABEL, PLAN_LABEL, ACTION_LABEL = "Status", "Plan", "Action"
GROUNDED_OPERATION_LABEL = "Grounded Operation"
# A label at the start of a line; "Grounded Operation:" may have no space after the colon (fine-tuning data).
_LABEL_PATTERN = re.compile(
    rf"^[ \t]*({STATUS_LABEL}|{PLAN_LABEL}|{ACTION_LABEL}|{GROUNDED_OPERATION_LABEL})[ \t]*:[ \t]*", re.MULTILINE)
_FIELD_OF_LABEL = {STATUS_LABEL: "status", PLAN_LABEL: "plan", ACTION_LABEL: "action"}


class Sensitivity(enum.Enum):
    GENERAL = "一般操作"
    SENSITIVE = "敏感操作"
    END = "END"       # the fine-tuning data's tag of a finished task

    @property
    def tag(self) -> str:
        return f"<<{self.value}>>"


_TAG_PATTERN = re.compile("|".join(re.escape(s.tag) for s in Sensitivity))
_SENSITIVITY_OF_TAG = {s.tag: s for s in Sensitivity}

# Nesting deeper than this (lists in lists, calls in calls) is not an operation; it bounds the recursion.
MAX_NESTING = 8
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
_ESCAPED = {value: "\\" + key for key, value in _ESCAPES.items() if key != '"'}
# What may follow a closing quote: the end of a value.
_VALUE_ENDS = ",)]"
_SPACES = re.compile(r"\s*")
_WORDS: dict[str, Value] = {"True": True, "False": False, "None": None}


@dataclass(frozen=True)
class Operation:
    """A call: the grounded operation, or one of GESTURE's key actions. Arguments keep the order they were
    written in (equality ignores it)."""

    name: str
    arguments: dict[str, Value] = field(default_factory=dict)

    @property
    def box(self) -> Box | None:
        box = self.arguments.get("box")
        return box if isinstance(box, Box) else None


# -------------------------------------------------------------------------------------------------------------
# The call parser


class _ParseError(Exception):
    """Internal: why the call could not be read; `cut_off` when the text ended inside it."""

    def __init__(self, reason: str, cut_off: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.cut_off = cut_off


class _CallParser:
    """Recursive descent over ``call := NAME '(' [NAME '=' value (',' NAME '=' value)* [',']] ')'``, with
    ``value := string | number | list | call | True | False | None | NAME`` and ``list := '[' [value (','
    value)* [',']] ']'``. Whitespace (newlines included) may separate any two tokens."""

    def __init__(self, text: str, start: int):
        self.text = text
        self.pos = start

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self, what: str) -> str:
        self._skip_space()
        if self.pos >= len(self.text):
            raise _ParseError(f"the operation is cut off where {what} was expected", cut_off=True)
        return self.text[self.pos]

    def _expect(self, char: str) -> None:
        found = self._peek(f"'{char}'")
        if found != char:
            raise _ParseError(f"expected '{char}' at {self._context()}")
        self.pos += 1

    def _context(self) -> str:
        return repr(self.text[self.pos:self.pos + 20])

    def _name(self) -> str:
        self._peek("a name")
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise _ParseError(f"expected a name at {self._context()}")
        self.pos = match.end()
        return match.group(0)

    def call(self, depth: int = 0) -> Operation:
        name = self._name()
        self._expect("(")
        return Operation(name, self._arguments(depth))

    def _arguments(self, depth: int) -> dict[str, Value]:
        arguments: dict[str, Value] = {}
        while self._peek("an argument or ')'") != ")":
            name = self._name()
            if name in arguments:
                raise _ParseError(f"argument {name} is given twice")
            self._expect("=")
            arguments[name] = self._value(depth + 1)
            if self._peek("',' or ')'") == ",":
                self.pos += 1
            elif self.text[self.pos] != ")":
                raise _ParseError(f"expected ',' or ')' after argument {name} at {self._context()}")
        self.pos += 1
        return arguments

    def _value(self, depth: int) -> Value:
        if depth > MAX_NESTING:
            raise _ParseError("values are nested too deeply")
        char = self._peek("a value")
        if char in "'\"":
            return self._string(char)
        if char == "[":
            return self._list(depth)
        number = _NUMBER.match(self.text, self.pos)
        if number is not None:
            self.pos = number.end()
            text = number.group(0)
            return float(text) if "." in text else int(text)
        if _NAME_START.match(char):
            start = self.pos
            word = self._name()
            self._skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == "(":
                self.pos = start
                return self.call(depth)
            # An unquoted word: True / False / None, else the word itself (e.g. a bare __CogName_x__).
            return _WORDS.get(word, word)
        raise _ParseError(f"expected a value at {self._context()}")

    def _string(self, quote: str) -> str:
        self.pos += 1
        chars = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                following = self.text[self.pos + 1]
                chars.append(_ESCAPES.get(following, char + following))
                self.pos += 2
                continue
            self.pos += 1
            if char == quote and self._closes_string():
                return "".join(chars)
            chars.append(char)
        raise _ParseError("the operation is cut off inside a quoted string", cut_off=True)

    def _closes_string(self) -> bool:
        following = _SPACES.match(self.text, self.pos).end()
        return following == len(self.text) or self.text[following] in _VALUE_ENDS

    def _list(self, depth: int) -> tuple[Value, ...]:
        self.pos += 1
        items = []
        while self._peek("a list item or ']'") != "]":
            items.append(self._value(depth + 1))
            if self._peek("',' or ']'") == ",":
                self.pos += 1
            elif self.text[self.pos] != "]":
                raise _ParseError(f"expected ',' or ']' in a list at {self._context()}")
        self.pos += 1
        return tuple(items)


# -------------------------------------------------------------------------------------------------------------
# Checking the values against the action space


def _to_box(value: Value, where: str) -> Box:
    # [[x0,y0,x1,y1]] as published; [x0,y0,x1,y1] also, as the published box regex accepts it.
    values = value[0] if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], tuple) else value
    if not (isinstance(values, tuple) and len(values) == VALUES_PER_BOX
            and all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise _ParseError(f"{where} must be [[x0,y0,x1,y1]] with four integers, got {format_value(value)}")
    try:
        return Box(*values)
    except InvalidBoxError as error:
        raise _ParseError(f"{where}: {error}") from None


def _to_text(value: Value, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "None"           # the action space's word for an absent value (LAUNCH(app='None', ...))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _ParseError(f"{where} must be a string, got {format_value(value)}")


def _to_integer(value: Value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise _ParseError(f"{where} must be an integer, got {format_value(value)}")


def _to_boolean(value: Value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return value == "True"
    raise _ParseError(f"{where} must be True or False, got {format_value(value)}")


def _to_key_actions(value: Value, where: str) -> tuple[Operation, ...]:
    actions = value if isinstance(value, tuple) else (value,)
    if not actions or not all(isinstance(a, Operation) and a.name in GESTURE_ACTIONS for a in actions):
        raise _ParseError(f"{where} must be a list of {', '.join(GESTURE_ACTIONS)} calls, got {format_value(value)}")
    return tuple(_checked(action) for action in actions)


_CONVERTERS = {
    ArgumentKind.BOX: _to_box,
    ArgumentKind.TEXT: _to_text,
    ArgumentKind.VARIABLE: _to_text,
    ArgumentKind.INTEGER: _to_integer,
    ArgumentKind.BOOLEAN: _to_boolean,
    ArgumentKind.KEY_ACTIONS: _to_key_actions,
}


def _checked(operation: Operation) -> Operation:
    """The operation with its values converted to their kinds (action_space); required arguments present.

    An operation outside the action space keeps its values as written (a "box" still becomes a Box): the parser
    reports what the model said, the executor refuses what it does not know."""
    spec = OPERATIONS.get(operation.name) or GESTURE_ACTIONS.get(operation.name)
    arguments = {}
    for name, value in operation.arguments.items():
        argument = spec.argument(name) if spec is not None else None
        kind = argument.kind if argument is not None else (ArgumentKind.BOX if name == "box" else None)
        arguments[name] = _CONVERTERS[kind](value, f"{operation.name} {name}") if kind is not None else value
    if spec is not None and (missing := [name for name in spec.required if name not in arguments]):
        raise _ParseError(f"{operation.name} is missing its required argument(s) {', '.join(missing)}")
    return Operation(operation.name, arguments)


def parse_operation(text: str, start: int = 0) -> tuple[Operation, int]:
    """The call at text[start:] (after optional whitespace), checked against the action space, and the index
    just after its ')'. Raises ValueError (one line) if there is none; see parse_answer for a version that never
    raises."""
    try:
        parser = _CallParser(text, start)
        operation = parser.call()
        return _checked(operation), parser.pos
    except _ParseError as error:
        raise ValueError(error.reason) from None


# -------------------------------------------------------------------------------------------------------------
# Whole answers


def box_action_point(box: Box, width: int, height: int) -> tuple[int, int]:
    """Where an operation on `box` acts, in pixels of a width x height screen or screenshot: the box centre
    (v / 1000 * size, rounded). On a side under 500 pixels the rounding can reach the size itself, one pixel off
    the screen; the point is kept on it."""
    x, y = box.center_pixels(width, height)
    return min(x, width - 1), min(y, height - 1)


@dataclass(frozen=True, kw_only=True)
class _Answer:
    """The free-text lines of an answer (None when absent) and its sensitivity tag (None when absent)."""

    status: str | None = None
    plan: str | None = None
    action: str | None = None
    sensitivity: Sensitivity | None = None

    @property
    def sensitive(self) -> bool | None:
        """True for <<敏感操作>>, False for <<一般操作>> or <<END>>, None without a tag."""
        return None if self.sensitivity is None else self.sensitivity is Sensitivity.SENSITIVE


@dataclass(frozen=True, kw_only=True)
class AgentStep(_Answer):
    """A parsed answer. grounded_operation_text is the operation as the model wrote it (what the next query's
    history repeats); it does not take part in equality."""

    operation: Operation
    grounded_operation_text: str = field(default="", compare=False)

    @property
    def box(self) -> Box | None:
        return self.operation.box

    def box_pixels(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The box's corners in pixels of the original width x height screenshot, or None without a box."""
        return None if self.box is None else self.box.to_pixels(width, height)

    def action_point(self, width: int, height: int) -> tuple[int, int] | None:
        """Where the operation acts on a width x height screen or screenshot (see box_action_point), or None
        for an operation without a box."""
        return None if self.box is None else box_action_point(self.box, width, height)

    def history_step(self) -> HistoryStep:
        """This step as the next query's history lists it: the operation as written and the action's first line
        (the published demos keep the rest of the line after "Grounded Operation:" and "Action:"). An operation
        written over several lines (a raw newline inside a string) is rewritten on one, escaped."""
        written = self.grounded_operation_text
        if not written or len(written.splitlines()) > 1:
            written = format_operation(self.operation)
        return HistoryStep(written, (self.action or "").splitlines()[0] if self.action else "")


@dataclass(frozen=True, kw_only=True)
class Unparsed(_Answer):
    """An answer whose grounded operation could not be read: the reason, and the lines that could be."""

    reason: str
    cut_off: bool = False
    grounded_operation_text: str | None = None


def _clean(text: str) -> str | None:
    text = _TAG_PATTERN.sub("", text).strip()
    return text or None


def _find_labels_and_operation(text: str) -> tuple[list[re.Match], Operation | None, tuple[int, int] | None,
                                                   _ParseError | None]:
    """The labels outside the operation, the operation after the first "Grounded Operation:", its span (to the
    end of its line when it failed) and why it failed."""
    kept: list[re.Match] = []
    operation = span = failure = None
    for match in _LABEL_PATTERN.finditer(text):
        if span is not None and match.start() < span[1]:
            continue
        kept.append(match)
        if match.group(1) == GROUNDED_OPERATION_LABEL and span is None:
            parser = _CallParser(text, match.end())
            try:
                operation = _checked(parser.call())
                span = (match.end(), parser.pos)
            except _ParseError as error:
                failure = error
                line_end = text.find("\n", match.end())
                span = (match.end(), line_end if line_end >= 0 else len(text))
    return kept, operation, span, failure


def parse_answer(text: str) -> AgentStep | Unparsed:
    """Parse a whole answer. Never raises. See the module docstring for the grammar.

    Sections run from their label (at a line start) to the next label; a label repeated later is ignored, and
    labels inside the grounded operation's strings are text. After the operation's ')' its line may hold only
    the tag: anything else there makes the answer Unparsed, as the operation may then have been misread.
    """
    kept, operation, operation_span, failure = _find_labels_and_operation(text)
    sections: dict[str, str] = {}
    for match, following in zip(kept, kept[1:] + [None]):
        end = following.start() if following is not None else len(text)
        if match.group(1) in _FIELD_OF_LABEL:
            sections.setdefault(_FIELD_OF_LABEL[match.group(1)], text[match.end():end])

    sensitivity = None
    before, after = (text[:operation_span[0]], text[operation_span[1]:]) if operation_span else (text, "")
    tag = _TAG_PATTERN.search(after) or _TAG_PATTERN.search(before)
    if tag is not None:
        sensitivity = _SENSITIVITY_OF_TAG[tag.group(0)]
    free_text = {name: _clean(value) for name, value in sections.items()}

    if operation_span is None:
        return Unparsed(reason=f"the answer has no '{GROUNDED_OPERATION_LABEL}:' line", sensitivity=sensitivity,
                        **free_text)
    written = text[operation_span[0]:operation_span[1]].strip()
    if failure is not None:
        return Unparsed(reason=failure.reason, cut_off=failure.cut_off, sensitivity=sensitivity,
                        grounded_operation_text=written or None, **free_text)
    rest_of_line = _TAG_PATTERN.sub("", after.split("\n", 1)[0]).strip()
    if rest_of_line:
        return Unparsed(reason=f"unexpected text after the operation: {rest_of_line[:40]!r}",
                        sensitivity=sensitivity, grounded_operation_text=written, **free_text)
    return AgentStep(operation=operation, grounded_operation_text=written, sensitivity=sensitivity, **free_text)


# -------------------------------------------------------------------------------------------------------------
# Writing


def _quote(text: str) -> str:
    return "'" + "".join(_ESCAPED.get(char, char) for char in text) + "'"


def format_value(value: Value) -> str:
    """A value as the model writes it: 'text' (escaped), 5, True, None, [[1,2,3,4]], [a, b], CALL(...)."""
    if isinstance(value, Box):
        return f"[[{value.x0},{value.y0},{value.x1},{value.y1}]]"      # the model does not zero-pad
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, Operation):
        return format_operation(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return repr(value)          # int, float, True / False / None


def format_operation(operation: Operation) -> str:
    """``NAME(arg=value, ...)``, e.g. ``CLICK(box=[[219,186,311,207]], element_info='Mark all as read')``."""
    arguments = ", ".join(f"{name}={format_value(value)}" for name, value in operation.arguments.items())
    return f"{operation.name}({arguments})"


def format_answer(step: AgentStep) -> str:
    """The answer as the model writes it, one line per part that is not None.

    parse_answer(format_answer(s)) == s when the free texts are stripped, non-empty, hold no newline, no tag and
    do not start with a label, and the operation's values are of their kinds (action_space)."""
    lines = [f"{label}: {value}" for label, value in
             ((STATUS_LABEL, step.status), (PLAN_LABEL, step.plan), (ACTION_LABEL, step.action)) if value is not None]
    lines.append(f"{GROUNDED_OPERATION_LABEL}: {format_operation(step.operation)}")
    if step.sensitivity is not None:
        lines.append(step.sensitivity.tag)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------
# JSON, for scripts in other languages


def value_to_json(value: Value) -> Any:
    """A box as its four integers, a list as a list, a key action as {"operation", "arguments"}."""
    if isinstance(value, Box):
        return [value.x0, value.y0, value.x1, value.y1]
    if isinstance(value, Operation):
        return {"operation": value.name, "arguments": {k: value_to_json(v) for k, v in value.arguments.items()}}
    if isinstance(value, tuple):
        return [value_to_json(item) for item in value]
    return value


def answer_to_json(answer: AgentStep | Unparsed, width: int | None = None, height: int | None = None) -> dict:
    """The parsed answer as a JSON-ready dict.

    Keys: operation (the name, or None when nothing parsed), reason (why, or None), arguments (by name), sensitive
    (True / False / None), sensitivity (the tag's text or None), status, plan, action, grounded_operation (as
    written), and with a screenshot size box_pixels and point (where to act), else None.
    """
    parsed = isinstance(answer, AgentStep)
    sized = width is not None and height is not None
    return {
        "operation": answer.operation.name if parsed else None,
        "reason": None if parsed else answer.reason,
        "arguments": {k: value_to_json(v) for k, v in answer.operation.arguments.items()} if parsed else {},
        "sensitive": answer.sensitive,
        "sensitivity": answer.sensitivity.value if answer.sensitivity is not None else None,
        "status": answer.status,
        "plan": answer.plan,
        "action": answer.action,
        "grounded_operation": answer.grounded_operation_text,
        "box_pixels": list(box) if parsed and sized and (box := answer.box_pixels(width, height)) else None,
        "point": list(point) if parsed and sized and (point := answer.action_point(width, height)) else None,
    }
