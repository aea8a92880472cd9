"""Act on a parsed CogAgent-9B step: the operation becomes input events, behind a confirmation gate.

Every executor runs the same checks, in this order, before any event happens:

1. an Unparsed answer is refused (nothing was read reliably enough to act on);
2. END ends the task (Outcome.ENDED), with no event;
3. an operation outside the published action space is refused;
4. the operation is planned into input events (plan_events); what cannot be done is refused here, e.g. a
   variable that has no value yet or a QUOTE_TEXT whose text would need OCR;
5. a sensitive operation (<<敏感操作>>) runs only if `confirm(step)` returns True. The default `confirm` refuses
   everything; `ask_on_terminal` asks for an explicit "y" at a terminal (and refuses when there is none). An
   untagged step (a format without "Sensitive") goes through the same gate unless `confirm_untagged=False`: the
   model was not asked, so nothing says it is safe.

Events are named after the pyautogui functions that make them (click, doubleClick, rightClick, moveTo, scroll,
hscroll, press, keyDown, keyUp, write), plus paste / read_clipboard / open_url / launch_app / set_variable. Points
are the box centre in the executor's screen coordinates: the box is in thousandths of the screenshot, so the
screen size (pyautogui.size(), logical points on a HiDPI screen) is what it is scaled by, not the screenshot's
pixel size. CLICK is one click (the published app/register.py runs it as a double click).

DryRunExecutor records and prints the events; DesktopExecutor performs them with pyautogui (an optional
dependency, imported when the executor is built) or any object with the same functions.
"""
from __future__ import annotations

import contextlib
import enum
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .action_space import (ABSENT, END, KEY_DOWN, KEY_PRESS, KEY_UP, MOUSE_OPERATIONS, OPERATIONS, VARIABLE_PREFIX,
                           VARIABLE_SUFFIX)
from ..inference.messages import message
from .answer import AgentStep, Operation, Unparsed, box_action_point, format_operation

# pyautogui's name of each key name of the action space (Windows and macOS names); 0-9 and A-Z are lower-cased,
# any other name (F11, Tab, ...) is lower-cased and must be a key the backend knows.
KEY_NAMES = {
    "Return": "enter", "Space": "space",
    "Lcontrol": "ctrlleft", "Rcontrol": "ctrlright", "Lmenu": "altleft", "Rmenu": "altright",
    "Lshift": "shiftleft", "Rshift": "shiftright", "Up": "up", "Down": "down", "Left": "left", "Right": "right",
    "Control": "ctrlleft", "Right Control": "ctrlright", "Command": "command", "Right Command": "command",
    "Shift": "shiftleft", "Right Shift": "shiftright",
    "Up Arrow": "up", "Down Arrow": "down", "Left Arrow": "left", "Right Arrow": "right",
}
_MOUSE_EVENTS = {"CLICK": "click", "DOUBLE_CLICK": "doubleClick", "RIGHT_CLICK": "rightClick", "HOVER": "moveTo"}
# Wheel notches per step_count: pyautogui's scroll is positive up, hscroll positive right.
_SCROLL_SIGNS = {"SCROLL_UP": ("scroll", 1), "SCROLL_DOWN": ("scroll", -1),
                 "SCROLL_LEFT": ("hscroll", -1), "SCROLL_RIGHT": ("hscroll", 1)}
_KEY_EVENTS = {KEY_DOWN: "keyDown", KEY_PRESS: "press", KEY_UP: "keyUp"}
_VARIABLE_PATTERN = re.compile(rf"{re.escape(VARIABLE_PREFIX)}\w+?{re.escape(VARIABLE_SUFFIX)}")
# A QUOTE_TEXT / LLM result cut short by the model ends with an ellipsis (Action_space_en.md).
_ELLIPSES = ("...", "…")


@dataclass(frozen=True)
class InputEvent:
    """One event: the pyautogui-style function and its arguments, e.g. InputEvent("click", (960, 540))."""

    action: str
    arguments: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return f"{self.action}({', '.join(repr(a) for a in self.arguments)})"


class Outcome(enum.Enum):
    DONE = "done"          # the events ran
    ENDED = "ended"        # END: the task is finished
    REFUSED = "refused"    # nothing ran; `reason` says why
    FAILED = "failed"      # an event raised; `reason` says what (held keys were released)


@dataclass(frozen=True)
class Result:
    """What happened to a step. `events` are the planned events: all ran (DONE), those before the error ran
    (FAILED; keys still held were then released), none ran (REFUSED; empty if it was refused before planning)."""

    outcome: Outcome
    events: tuple[InputEvent, ...] = ()
    reason: str | None = None


class ActionRefused(Exception):
    """An operation this executor will not or cannot perform; the message says why (one line)."""


ConfirmCallback = Callable[[AgentStep], bool]


def refuse(step: AgentStep) -> bool:
    """The default confirmation: no."""
    return False


YES = ("y", "yes", "是")


def ask_on_terminal(step: AgentStep, *, chinese: bool = False, stdin: TextIO | None = None,
                    stdout: TextIO | None = None) -> bool:
    """Ask at the terminal; True only for an explicit y / yes. No terminal (piped input) means no."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if not stdin.isatty():
        return False
    key = "agent_confirm_sensitive" if step.sensitive else "agent_confirm_untagged"
    stdout.write(message(key, chinese, operation=format_operation(step.operation)))
    stdout.flush()
    return stdin.readline().strip().lower() in YES


# ---------------------------------------------------------------------------------------------------------------
# Planning: operation -> events


def key_name(key: str) -> str:
    """pyautogui's name for a key of the action space ("Lcontrol" -> "ctrlleft", "A" -> "a", "F11" -> "f11")."""
    return KEY_NAMES.get(key, key.lower())


def substitute_variables(text: str, variables: dict[str, str]) -> str:
    """`text` with each __CogName_xxx__ replaced by its stored value; ActionRefused if one has none."""
    missing = sorted({name for name in _VARIABLE_PATTERN.findall(text) if name not in variables})
    if missing:
        raise ActionRefused(f"variable {', '.join(missing)} has no value yet (no QUOTE_TEXT / LLM / "
                            f"QUOTE_CLIPBOARD stored it)")
    return _VARIABLE_PATTERN.sub(lambda match: variables[match.group(0)], text)


def _point(operation: Operation, screen_size: tuple[int, int]) -> tuple[int, int]:
    return box_action_point(operation.box, *screen_size)


def _known_result(operation: Operation, needs: str) -> str:
    result = operation.arguments.get("result")
    if not isinstance(result, str) or result.rstrip().endswith(_ELLIPSES):
        raise ActionRefused(f"{operation.name} without a complete result needs {needs}, which this executor "
                            f"does not have")
    return result


def _gesture_events(actions: Sequence[Operation]) -> list[InputEvent]:
    events, held = [], []
    for action in actions:
        key = key_name(action.arguments["key"])
        events.append(InputEvent(_KEY_EVENTS[action.name], (key,)))
        if action.name == KEY_DOWN:
            held.append(key)
        elif action.name == KEY_UP and key in held:
            held.remove(key)
    # A gesture that leaves a key down would leave the keyboard in that state: release what is still held.
    events.extend(InputEvent("keyUp", (key,)) for key in reversed(held))
    return events


def plan_events(operation: Operation, screen_size: tuple[int, int], variables: dict[str, str]) -> list[InputEvent]:
    """The input events of one operation of the action space (END: none). ActionRefused if it cannot be done."""
    name, arguments = operation.name, operation.arguments
    if name in MOUSE_OPERATIONS:
        return [InputEvent(_MOUSE_EVENTS[name], _point(operation, screen_size))]
    if name == "TYPE":
        text = substitute_variables(arguments["text"], variables)
        # Focus the field first. pyautogui.write types ASCII only; other text goes through the clipboard.
        typing = InputEvent("write", (text,)) if text.isascii() else InputEvent("paste", (text,))
        return [InputEvent("click", _point(operation, screen_size)), typing]
    if name in _SCROLL_SIGNS:
        steps = arguments["step_count"]
        if steps <= 0:
            raise ActionRefused(f"{name} step_count must be positive, got {steps}")
        function, sign = _SCROLL_SIGNS[name]
        return [InputEvent("moveTo", _point(operation, screen_size)), InputEvent(function, (sign * steps,))]
    if name == KEY_PRESS:
        return [InputEvent("press", (key_name(arguments["key"]),))]
    if name == "GESTURE":
        return _gesture_events(arguments["actions"])
    if name == "LAUNCH":
        if arguments["url"] != ABSENT:          # "If both parameters are provided, only url takes effect."
            return [InputEvent("open_url", (arguments["url"],))]
        if arguments["app"] != ABSENT:
            return [InputEvent("launch_app", (arguments["app"],))]
        raise ActionRefused("LAUNCH names neither an app nor a url")
    if name == "QUOTE_TEXT":
        return [InputEvent("set_variable", (arguments["output"], _known_result(operation, "OCR of the screen")))]
    if name == "LLM":
        return [InputEvent("set_variable", (arguments["output"], _known_result(operation, "a language model")))]
    if name == "QUOTE_CLIPBOARD":
        return [InputEvent("read_clipboard", (arguments["output"],))]
    if name == END:
        return []
    raise ActionRefused(f"unknown operation {name}")


# ---------------------------------------------------------------------------------------------------------------
# Executors


class Executor:
    """The gate and the bookkeeping shared by every executor; subclasses say how an event happens."""

    def __init__(self, confirm: ConfirmCallback = refuse, *, confirm_untagged: bool = True):
        self.confirm = confirm
        self.confirm_untagged = confirm_untagged
        self.variables: dict[str, str] = {}

    def screen_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def check(self, event: InputEvent) -> None:
        """Raise ActionRefused for an event this executor cannot perform (before anything runs)."""

    def perform(self, event: InputEvent) -> None:
        raise NotImplementedError

    def needs_confirmation(self, step: AgentStep) -> bool:
        return step.sensitive is True or (step.sensitive is None and self.confirm_untagged)

    def execute(self, answer: AgentStep | Unparsed) -> Result:
        """Run one step through the checks of the module docstring; never runs a refused step's events."""
        if isinstance(answer, Unparsed):
            return Result(Outcome.REFUSED, reason=f"the answer was not understood: {answer.reason}")
        name = answer.operation.name
        if name == END:
            return Result(Outcome.ENDED)
        if name not in OPERATIONS:
            return Result(Outcome.REFUSED, reason=f"unknown operation {name}")
        try:
            events = plan_events(answer.operation, self.screen_size(), self.variables)
            for event in events:
                self.check(event)
        except ActionRefused as refusal:
            return Result(Outcome.REFUSED, reason=str(refusal))
        if self.needs_confirmation(answer) and not self.confirm(answer):
            what = "sensitive" if answer.sensitive else "untagged"
            return Result(Outcome.REFUSED, tuple(events), reason=f"the {what} operation {name} was not confirmed")
        return self._run(tuple(events))

    def _run(self, events: tuple[InputEvent, ...]) -> Result:
        held: list[Any] = []
        try:
            for event in events:
                if event.action == "set_variable":
                    name, value = event.arguments
                    self.variables[name] = value
                    continue
                self.perform(event)
                if event.action == "keyDown":
                    held.append(event.arguments[0])
                elif event.action == "keyUp" and event.arguments[0] in held:
                    held.remove(event.arguments[0])
        except Exception as error:      # the backend's own errors (e.g. pyautogui's fail-safe corner)
            first_line = (str(error).splitlines() or [""])[0]
            return Result(Outcome.FAILED, events, reason=f"{type(error).__name__}: {first_line}")
        finally:                        # never leave a key down, not even after Ctrl-C
            for key in reversed(held):
                with contextlib.suppress(Exception):
                    self.perform(InputEvent("keyUp", (key,)))
        return Result(Outcome.DONE, events)


class DryRunExecutor(Executor):
    """Records the events it would perform (`performed`) and prints each as "would click(960, 540)".

    screen_size: the (width, height) points are computed for, or a function giving it at each step (e.g. the
    size of the screenshot the step was answered on)."""

    def __init__(self, screen_size: tuple[int, int] | Callable[[], tuple[int, int]], confirm: ConfirmCallback = refuse,
                 *, confirm_untagged: bool = True, stream: TextIO | None = None):
        super().__init__(confirm, confirm_untagged=confirm_untagged)
        self._screen_size = screen_size if callable(screen_size) else (lambda: screen_size)
        self.stream = stream
        self.performed: list[InputEvent] = []

    def screen_size(self) -> tuple[int, int]:
        width, height = self._screen_size()
        if width <= 0 or height <= 0:
            raise ActionRefused(f"the screen size must be positive, got {width}x{height}")
        return width, height

    def perform(self, event: InputEvent) -> None:
        self.performed.append(event)
        if event.action == "read_clipboard":
            self.variables[event.arguments[0]] = ""     # nothing is read in a dry run
        print(f"would {event}", file=self.stream or sys.stdout, flush=True)


@dataclass
class DesktopServices:
    """What a desktop needs besides mouse and keyboard; each is optional, and an event that needs a missing one
    is refused before anything runs."""

    clipboard: Any = None                            # .copy(text) / .paste() -> str, e.g. pyperclip
    open_url: Callable[[str], Any] | None = None     # e.g. webbrowser.open
    launch_app: Callable[[str], Any] | None = None   # platform-specific: no portable way exists
    paste_keys: tuple[str, ...] = field(default_factory=lambda: ("command", "v") if sys.platform == "darwin"
                                        else ("ctrl", "v"))


def default_services() -> DesktopServices:
    """pyperclip if installed, the web browser for URLs, `open -a` on macOS for apps."""
    import subprocess
    import webbrowser

    try:
        import pyperclip
    except ImportError:
        pyperclip = None
    launch = (lambda app: subprocess.run(["open", "-a", app], check=True)) if sys.platform == "darwin" else None
    return DesktopServices(clipboard=pyperclip, open_url=webbrowser.open, launch_app=launch)


class DesktopExecutor(Executor):
    """Performs the events on this computer with pyautogui (`pip install pyautogui`; imported here, not at module
    import), or with `backend`: any object with pyautogui's size / click / doubleClick / rightClick / moveTo /
    scroll / hscroll / press / keyDown / keyUp / write / hotkey (and optionally isValidKey)."""

    def __init__(self, confirm: ConfirmCallback = refuse, *, confirm_untagged: bool = True, backend: Any = None,
                 services: DesktopServices | None = None):
        super().__init__(confirm, confirm_untagged=confirm_untagged)
        if backend is None:
            try:
                import pyautogui as backend
            except ImportError as error:
                raise ImportError(f"the desktop executor needs pyautogui (pip install pyautogui): {error}") from None
        self.backend = backend
        self.services = services if services is not None else default_services()

    def screen_size(self) -> tuple[int, int]:
        width, height = self.backend.size()
        return int(width), int(height)

    def check(self, event: InputEvent) -> None:
        needs = {"paste": "clipboard", "read_clipboard": "clipboard", "open_url": "open_url",
                 "launch_app": "launch_app"}.get(event.action)
        if needs is not None and getattr(self.services, needs) is None:
            raise ActionRefused(f"{event.action} needs {needs} (see DesktopServices), which is not available")
        is_valid_key = getattr(self.backend, "isValidKey", None)
        if event.action in ("press", "keyDown", "keyUp") and is_valid_key is not None \
                and not is_valid_key(event.arguments[0]):
            raise ActionRefused(f"unknown key {event.arguments[0]!r}")

    def perform(self, event: InputEvent) -> None:
        services = self.services
        if event.action == "paste":
            services.clipboard.copy(event.arguments[0])
            self.backend.hotkey(*services.paste_keys)
        elif event.action == "read_clipboard":
            self.variables[event.arguments[0]] = services.clipboard.paste()
        elif event.action == "open_url":
            services.open_url(event.arguments[0])
        elif event.action == "launch_app":
            services.launch_app(event.arguments[0])
        else:
            getattr(self.backend, event.action)(*event.arguments)
