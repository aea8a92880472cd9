"""The CogAgent-9B action runtime (cogvlm.utils.agent.executor): the confirmation gate, with the dry-run executor
and with the desktop executor on a fake pyautogui, and the input events of every operation.

Screen 1440 x 900 (a macOS logical screen); the box [[100,200,300,400]] has its centre at thousandths (200, 300),
i.e. (200/1000*1440, 300/1000*900) = (288, 270) points."""
import io
import subprocess
import sys

import pytest
from conftest import HANG_TIMEOUT
from hypothesis import given
from hypothesis import strategies as st
from test_agent_parser import operations

from cogvlm.utils.agent.answer import AgentStep, Sensitivity, parse_answer
from cogvlm.utils.agent.executor import (DesktopExecutor, DesktopServices, DryRunExecutor, InputEvent, Outcome,
                                         ask_on_terminal)

SCREEN = (1440, 900)
BOX = "box=[[100,200,300,400]]"
CENTRE = (288, 270)
PYAUTOGUI_FUNCTIONS = {"click", "doubleClick", "rightClick", "moveTo", "scroll", "hscroll", "press", "keyDown",
                       "keyUp", "write", "hotkey"}
KNOWN_KEYS = {"enter", "space", "ctrlleft", "ctrlright", "altleft", "shiftleft", "command", "a", "v", "f11", "up"}


class FakePyautogui:
    """Records every pyautogui call; an unknown function name is an AttributeError, as in pyautogui."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def size(self):
        return SCREEN

    def isValidKey(self, key):
        return key in KNOWN_KEYS

    def __getattr__(self, name):
        if name not in PYAUTOGUI_FUNCTIONS:
            raise AttributeError(name)

        def record(*args):
            if (name, args) == self.fail_on:
                raise RuntimeError("the fail-safe corner was hit\nsecond line")
            self.calls.append((name, args))
        return record


class FakeClipboard:
    def __init__(self, content=""):
        self.content = content
        self.copied = []

    def copy(self, text):
        self.copied.append(text)

    def paste(self):
        return self.content


def services(**overrides):
    launched, opened = [], []
    made = DesktopServices(clipboard=FakeClipboard("clipboard text"), open_url=opened.append,
                           launch_app=launched.append, paste_keys=("ctrl", "v"))
    for name, value in overrides.items():
        setattr(made, name, value)
    return made, launched, opened


def desktop(confirm=lambda step: True, **kwargs):
    backend = FakePyautogui(kwargs.pop("fail_on", None))
    made, launched, opened = services(**kwargs.pop("services", {}))
    return DesktopExecutor(confirm, backend=backend, services=made, **kwargs), backend, launched, opened


def answer(operation, tag="<<一般操作>>"):
    return parse_answer(f"Action: do it\nGrounded Operation: {operation}\n{tag}")


def never_asked(step):
    raise AssertionError(f"confirmation asked for {step.operation}")


# ---------------------------------------------------------------------------------------------------------------
# The gate


def test_a_sensitive_operation_is_refused_by_default_dry_run():
    out = io.StringIO()
    executor = DryRunExecutor(SCREEN, stream=out)
    result = executor.execute(answer(f"CLICK({BOX})", "<<敏感操作>>"))
    assert result.outcome is Outcome.REFUSED and "sensitive operation CLICK was not confirmed" in result.reason
    assert executor.performed == [] and out.getvalue() == ""


def test_a_sensitive_operation_is_refused_by_default_desktop():
    backend = FakePyautogui()
    executor = DesktopExecutor(backend=backend, services=services()[0])
    assert executor.execute(answer(f"TYPE({BOX}, text='4111 1111')", "<<敏感操作>>")).outcome is Outcome.REFUSED
    assert backend.calls == []


@pytest.mark.parametrize("reply, outcome, calls", [(True, Outcome.DONE, [("click", CENTRE)]),
                                                   (False, Outcome.REFUSED, [])])
def test_the_confirmation_callback_decides_and_sees_the_step(reply, outcome, calls):
    asked = []
    step = answer(f"CLICK({BOX}, element_info='Pay')", "<<敏感操作>>")
    executor, backend, _, _ = desktop(lambda s: asked.append(s) or reply)
    assert executor.execute(step).outcome is outcome
    assert asked == [step] and backend.calls == calls


def test_a_general_operation_runs_without_asking():
    executor, backend, _, _ = desktop(never_asked)
    assert executor.execute(answer(f"CLICK({BOX})")).outcome is Outcome.DONE
    assert backend.calls == [("click", CENTRE)]


def test_an_untagged_operation_asks_unless_told_otherwise():
    untagged = answer(f"CLICK({BOX})", tag="")
    assert untagged.sensitive is None
    executor, backend, _, _ = desktop(lambda s: False)
    assert executor.execute(untagged).outcome is Outcome.REFUSED and backend.calls == []
    executor, backend, _, _ = desktop(never_asked, confirm_untagged=False)
    assert executor.execute(untagged).outcome is Outcome.DONE and backend.calls == [("click", CENTRE)]


def test_end_stops_and_unknown_or_unparsed_answers_are_refused_without_asking():
    executor, backend, _, _ = desktop(never_asked)
    assert executor.execute(answer("END()", "<<END>>")).outcome is Outcome.ENDED
    unknown = executor.execute(answer(f"TEXT_FORMAT(input='x', {BOX})", "<<敏感操作>>"))
    assert unknown.outcome is Outcome.REFUSED and unknown.reason == "unknown operation TEXT_FORMAT"
    bad = executor.execute(parse_answer(f"Grounded Operation: CLICK({BOX[:-3]}"))
    assert bad.outcome is Outcome.REFUSED and bad.reason.startswith("the answer was not understood: ")
    assert backend.calls == []


def test_ask_on_terminal_needs_an_explicit_yes_at_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    step = answer(f"CLICK({BOX}, element_info='Pay')", "<<敏感操作>>")
    for typed, expected in (("y\n", True), ("YES\n", True), ("n\n", False), ("\n", False), ("", False)):
        shown = io.StringIO()
        assert ask_on_terminal(step, stdin=Terminal(typed), stdout=shown) is expected
        assert shown.getvalue() == ("Run the sensitive operation CLICK(box=[[100,200,300,400]], element_info='Pay')? "
                                    "[y/N] ")
    shown = io.StringIO()
    assert ask_on_terminal(answer(f"HOVER({BOX})", ""), chinese=True, stdin=Terminal("是\n"), stdout=shown) is True
    assert shown.getvalue() == "执行 HOVER(box=[[100,200,300,400]])（未标注是否敏感）？[y/N] "
    piped = io.StringIO("y\n")
    assert ask_on_terminal(step, stdin=piped, stdout=io.StringIO()) is False and piped.tell() == 0


# ---------------------------------------------------------------------------------------------------------------
# Events of every operation


@pytest.mark.parametrize("operation, calls", [
    (f"CLICK({BOX}, element_type='Button', element_info='OK')", [("click", CENTRE)]),
    (f"DOUBLE_CLICK({BOX})", [("doubleClick", CENTRE)]),
    (f"RIGHT_CLICK({BOX})", [("rightClick", CENTRE)]),
    (f"HOVER({BOX})", [("moveTo", CENTRE)]),
    (f"TYPE({BOX}, text='hello, world')", [("click", CENTRE), ("write", ("hello, world",))]),
    (f"TYPE({BOX}, text='你好')", [("click", CENTRE), ("hotkey", ("ctrl", "v"))]),
    (f"SCROLL_UP({BOX}, step_count=3)", [("moveTo", CENTRE), ("scroll", (3,))]),
    (f"SCROLL_DOWN({BOX}, step_count=3)", [("moveTo", CENTRE), ("scroll", (-3,))]),
    (f"SCROLL_LEFT({BOX}, step_count=2)", [("moveTo", CENTRE), ("hscroll", (-2,))]),
    (f"SCROLL_RIGHT({BOX}, step_count=2)", [("moveTo", CENTRE), ("hscroll", (2,))]),
    ("KEY_PRESS(key='Return')", [("press", ("enter",))]),
    ("KEY_PRESS(key='F11')", [("press", ("f11",))]),
    ("KEY_PRESS(key='Command')", [("press", ("command",))]),
    ("KEY_PRESS(key='Up Arrow')", [("press", ("up",))]),
    ("GESTURE(actions=[KEY_DOWN(key='Lcontrol'), KEY_PRESS(key='A'), KEY_UP(key='Lcontrol')])",
     [("keyDown", ("ctrlleft",)), ("press", ("a",)), ("keyUp", ("ctrlleft",))]),
    # A key left down by the model is released.
    ("GESTURE(actions=[KEY_DOWN(key='Lshift'), KEY_PRESS(key='Up')])",
     [("keyDown", ("shiftleft",)), ("press", ("up",)), ("keyUp", ("shiftleft",))]),
])
def test_each_operation_becomes_its_input_events_at_the_box_centre(operation, calls):
    executor, backend, _, _ = desktop(never_asked)
    result = executor.execute(answer(operation))
    assert result.outcome is Outcome.DONE, result.reason
    assert backend.calls == calls
    if "你好" in operation:
        assert executor.services.clipboard.copied == ["你好"]


def test_launch_prefers_the_url_and_otherwise_launches_the_app():
    executor, backend, launched, opened = desktop(never_asked)
    executor.execute(answer("LAUNCH(app='Settings', url='baidu.com')"))
    executor.execute(answer("LAUNCH(app='微信', url='None')"))
    assert opened == ["baidu.com"] and launched == ["微信"] and backend.calls == []
    assert executor.execute(answer("LAUNCH(app='None', url='None')")).outcome is Outcome.REFUSED


def test_quoted_text_and_clipboard_become_variables_that_type_uses():
    executor, backend, _, _ = desktop(never_asked)
    executor.execute(answer(f"QUOTE_TEXT({BOX}, output='__CogName_Price__', result='17.00')"))
    executor.execute(answer("QUOTE_CLIPBOARD(output='__CogName_Copied__')"))
    assert executor.variables == {"__CogName_Price__": "17.00", "__CogName_Copied__": "clipboard text"}
    executor.execute(answer(f"TYPE({BOX}, text='Price __CogName_Price__, note __CogName_Copied__')"))
    assert backend.calls == [("click", CENTRE), ("write", ("Price 17.00, note clipboard text",))]


@pytest.mark.parametrize("operation, reason", [
    (f"TYPE({BOX}, text='__CogName_Missing__')", "variable __CogName_Missing__ has no value yet"),
    (f"QUOTE_TEXT({BOX}, output='__CogName_A__', result='The report says...')", "needs OCR of the screen"),
    (f"QUOTE_TEXT({BOX}, output='__CogName_A__', auto_scroll=True)", "needs OCR of the screen"),
    ("LLM(prompt='Summarize', output='__CogName_S__')", "needs a language model"),
    (f"SCROLL_DOWN({BOX}, step_count=0)", "step_count must be positive"),
    ("KEY_PRESS(key='Hyper')", "unknown key 'hyper'"),
])
def test_what_cannot_be_done_is_refused_before_anything_runs(operation, reason):
    executor, backend, _, _ = desktop(never_asked)
    result = executor.execute(answer(operation))
    assert result.outcome is Outcome.REFUSED and reason in result.reason
    assert backend.calls == [] and executor.variables == {}


def test_a_missing_desktop_service_is_refused_before_anything_runs():
    executor, backend, _, _ = desktop(never_asked, services={"launch_app": None, "clipboard": None})
    assert "launch_app" in executor.execute(answer("LAUNCH(app='Notes', url='None')")).reason
    assert executor.execute(answer(f"TYPE({BOX}, text='é')")).outcome is Outcome.REFUSED
    assert backend.calls == []


def test_a_failing_event_releases_the_keys_held_and_reports_one_line():
    executor, backend, _, _ = desktop(never_asked, fail_on=("press", ("a",)))
    result = executor.execute(answer("GESTURE(actions=[KEY_DOWN(key='Lcontrol'), KEY_PRESS(key='A'), "
                                     "KEY_UP(key='Lcontrol')])"))
    assert result.outcome is Outcome.FAILED and result.reason == "RuntimeError: the fail-safe corner was hit"
    assert backend.calls == [("keyDown", ("ctrlleft",)), ("keyUp", ("ctrlleft",))]


def test_the_dry_run_records_and_prints_what_it_would_do():
    out = io.StringIO()
    executor = DryRunExecutor(SCREEN, never_asked, stream=out)
    assert executor.execute(answer(f"SCROLL_DOWN({BOX}, step_count=5)")).outcome is Outcome.DONE
    assert executor.performed == [InputEvent("moveTo", CENTRE), InputEvent("scroll", (-5,))]
    assert out.getvalue() == "would moveTo(288, 270)\nwould scroll(-5)\n"


def test_the_desktop_executor_names_pyautogui_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautogui", None)        # makes `import pyautogui` fail
    with pytest.raises(ImportError, match=r"needs pyautogui \(pip install pyautogui\)"):
        DesktopExecutor()


def test_importing_the_runtime_imports_no_gui_library():
    code = ("import sys, cogvlm.utils.agent.executor\n"
            "print(sorted({'pyautogui', 'pyperclip', 'PIL'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ctrl_c_during_a_gesture_still_releases_the_keys_held():
    executor, backend, _, _ = desktop(never_asked)
    original = backend.__getattr__("press")

    def interrupted_press(*args):
        original(*args)
        raise KeyboardInterrupt

    backend.press = interrupted_press
    with pytest.raises(KeyboardInterrupt):
        executor.execute(answer("GESTURE(actions=[KEY_DOWN(key='Lshift'), KEY_PRESS(key='A'), KEY_UP(key='Lshift')])"))
    assert backend.calls == [("keyDown", ("shiftleft",)), ("press", ("a",)), ("keyUp", ("shiftleft",))]


@given(operations(), st.sampled_from([None, *Sensitivity]), st.booleans(), st.integers(1, 4000), st.integers(1, 4000))
def test_no_parsed_step_makes_the_runtime_raise_and_the_gate_always_holds(operation, sensitivity, yes, width, height):
    step = AgentStep(operation=operation, sensitivity=sensitivity)
    executor = DryRunExecutor((width, height), lambda s: yes, stream=io.StringIO())
    executor.variables = {"__CogName_known__": "value"}
    result = executor.execute(step)
    assert result.outcome in (Outcome.DONE, Outcome.ENDED, Outcome.REFUSED)
    if result.outcome is not Outcome.DONE:
        assert executor.performed == []
    if step.sensitive is not False and not yes:
        assert result.outcome is not Outcome.DONE
    points = [event.arguments for event in executor.performed if event.action in ("click", "doubleClick",
                                                                                  "rightClick", "moveTo")]
    assert all(0 <= x < width and 0 <= y < height for x, y in points)
