"""The CogAgent-9B action space as data: every published operation, its arguments and their kinds.

Source: THUDM/CogAgent Action_space_en.md (the Chinese Action_space.md has two typos, "SCROLL_DOWN" for scroll
right and "QUOTE_CLIPBORAD"; the English names are used). A grounded operation is written as a call,
``CLICK(box=[[387,248,727,317]], element_type='Clickable text', element_info='Click to add Title')``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ArgumentKind(enum.Enum):
    """What an argument's value is once parsed."""

    BOX = "box"            # [[x0,y0,x1,y1]] in thousandths of the screenshot -> grounding.boxes.Box
    TEXT = "text"          # a quoted string (may hold __CogName_xxx__ variables)
    VARIABLE = "variable"  # a variable name, __CogName_xxx__, written as a quoted string
    INTEGER = "integer"    # step_count: mouse-wheel notches
    BOOLEAN = "boolean"    # auto_scroll: True / False
    KEY_ACTIONS = "key_actions"  # GESTURE's list of KEY_DOWN / KEY_PRESS / KEY_UP calls


@dataclass(frozen=True)
class Argument:
    name: str
    kind: ArgumentKind
    required: bool


@dataclass(frozen=True)
class OperationSpec:
    """One operation of the action space; `targets_box` when it acts at the centre of its box."""

    name: str
    arguments: tuple[Argument, ...]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(argument.name for argument in self.arguments if argument.required)

    @property
    def targets_box(self) -> bool:
        return any(argument.kind is ArgumentKind.BOX for argument in self.arguments)

    def argument(self, name: str) -> Argument | None:
        return next((argument for argument in self.arguments if argument.name == name), None)


# Prefix and suffix of a variable name: a value stored by QUOTE_TEXT / LLM / QUOTE_CLIPBOARD and used in a later
# TYPE text or LLM prompt.
VARIABLE_PREFIX = "__CogName_"
VARIABLE_SUFFIX = "__"

_BOX = Argument("box", ArgumentKind.BOX, True)
_ELEMENT = (Argument("element_type", ArgumentKind.TEXT, False), Argument("element_info", ArgumentKind.TEXT, False))
_KEY = Argument("key", ArgumentKind.TEXT, True)


def _spec(name: str, *arguments: Argument) -> OperationSpec:
    return OperationSpec(name, tuple(arguments))


# The three key operations a GESTURE lists (KEY_PRESS is also an operation of its own).
KEY_DOWN, KEY_PRESS, KEY_UP = "KEY_DOWN", "KEY_PRESS", "KEY_UP"
GESTURE_ACTIONS: dict[str, OperationSpec] = {name: _spec(name, _KEY) for name in (KEY_DOWN, KEY_PRESS, KEY_UP)}

END = "END"
MOUSE_OPERATIONS = ("CLICK", "DOUBLE_CLICK", "RIGHT_CLICK", "HOVER")
SCROLL_OPERATIONS = ("SCROLL_UP", "SCROLL_DOWN", "SCROLL_LEFT", "SCROLL_RIGHT")

OPERATIONS: dict[str, OperationSpec] = {
    **{name: _spec(name, _BOX, *_ELEMENT) for name in MOUSE_OPERATIONS},
    "TYPE": _spec("TYPE", _BOX, Argument("text", ArgumentKind.TEXT, True), *_ELEMENT),
    **{name: _spec(name, _BOX, Argument("step_count", ArgumentKind.INTEGER, True), *_ELEMENT)
       for name in SCROLL_OPERATIONS},
    KEY_PRESS: GESTURE_ACTIONS[KEY_PRESS],
    "GESTURE": _spec("GESTURE", Argument("actions", ArgumentKind.KEY_ACTIONS, True)),
    # "If both parameters are provided, only url takes effect"; an absent one is the string 'None'.
    "LAUNCH": _spec("LAUNCH", Argument("app", ArgumentKind.TEXT, True), Argument("url", ArgumentKind.TEXT, True)),
    "QUOTE_TEXT": _spec("QUOTE_TEXT", _BOX, Argument("output", ArgumentKind.VARIABLE, True), *_ELEMENT,
                        Argument("result", ArgumentKind.TEXT, False),
                        Argument("auto_scroll", ArgumentKind.BOOLEAN, False)),
    "LLM": _spec("LLM", Argument("prompt", ArgumentKind.TEXT, True), Argument("output", ArgumentKind.VARIABLE, True),
                 Argument("result", ArgumentKind.TEXT, False)),
    "QUOTE_CLIPBOARD": _spec("QUOTE_CLIPBOARD", Argument("output", ArgumentKind.VARIABLE, True),
                             Argument("result", ArgumentKind.TEXT, False)),
    END: _spec(END),
}

# LAUNCH's placeholder for the argument it does not use.
ABSENT = "None"

# KEY_PRESS key names besides 0-9 and A-Z (Action_space_en.md, "Keyboard Press"), per platform.
WINDOWS_KEYS = ("Return", "Space", "Lcontrol", "Rcontrol", "Lmenu", "Rmenu", "Lshift", "Rshift",
                "Up", "Down", "Left", "Right")
MAC_KEYS = ("Return", "Space", "Control", "Right Control", "Command", "Right Command", "Shift", "Right Shift",
            "Up Arrow", "Down Arrow", "Left Arrow", "Right Arrow")
