"""The CogAgent-9B answer parser (cogvlm.utils.agent.answer) and its script basic_demo/agent_parse.py.

Expected values are the published examples (THUDM/CogAgent README and Action_space_en.md) read by hand, or the
published demos' own conventions (their box regex and their pixel formula) computed independently here."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT, one_line_error
from hypothesis import given
from hypothesis import strategies as st

from cogvlm.utils.agent.action_space import GESTURE_ACTIONS, OPERATIONS, ArgumentKind
from cogvlm.utils.agent.answer import (AgentStep, Operation, Sensitivity, Unparsed, answer_to_json, format_answer,
                                       format_operation, parse_answer, parse_operation)
from cogvlm.utils.agent.protocol import HistoryStep
from cogvlm.utils.grounding.boxes import Box

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "basic_demo" / "agent_parse.py"

# README "An Example", the Status-Action-Operation-Sensitive sample.
README_ANSWER = (
    "Status: Currently in the email interface [[0, 2, 998, 905]], with the email categories on the left [[1, 216, "
    "144, 570]], and the inbox in the center [[144, 216, 998, 903]]. The \"Mark all as read\" button has been "
    "clicked [[223, 178, 311, 210]].\n"
    "Action: Click the \"Mark all as read\" button at the top center of the inbox page to mark all emails as read.\n"
    "Grounded Operation: CLICK(box=[[219,186,311,207]], element_type='Clickable text', element_info='Mark all "
    "emails as read')\n"
    "<<一般操作>>")


def step(text):
    result = parse_answer(text)
    assert isinstance(result, AgentStep), result
    return result


def unparsed(text):
    result = parse_answer(text)
    assert isinstance(result, Unparsed), result
    return result


def test_the_readme_answer_is_read_into_its_parts():
    result = step(README_ANSWER)
    assert result.status.startswith("Currently in the email interface [[0, 2, 998, 905]]")
    assert result.status.endswith("[[223, 178, 311, 210]].")
    assert result.plan is None
    assert result.action.startswith('Click the "Mark all as read" button') and result.action.endswith("as read.")
    assert result.operation == Operation("CLICK", {"box": Box(219, 186, 311, 207), "element_type": "Clickable text",
                                                   "element_info": "Mark all emails as read"})
    assert result.sensitivity is Sensitivity.GENERAL and result.sensitive is False


def test_a_plan_and_a_sensitive_tag():
    result = step("Status: s\nPlan: Future tasks: 1. Pay; 2. Task complete.\nAction: Pay.\n"
                  "Grounded Operation: CLICK(box=[[7,6,27,31]], element_info='Pay now')\n<<敏感操作>>")
    assert (result.status, result.plan, result.action) == ("s", "Future tasks: 1. Pay; 2. Task complete.", "Pay.")
    assert result.sensitive is True
    assert step("Grounded Operation:END()\n<<END>>").sensitivity is Sensitivity.END


@pytest.mark.parametrize("written, expected", [
    # Every example of Action_space_en.md, read by hand.
    ("CLICK(box=[[387,248,727,317]], element_type='Clickable text', element_info='Click to add Title')",
     Operation("CLICK", {"box": Box(387, 248, 727, 317), "element_type": "Clickable text",
                         "element_info": "Click to add Title"})),
    ("TYPE(box=[[387,249,727,317]], text='CogAgent', element_type='Text input box', element_info='CogAgent')",
     Operation("TYPE", {"box": Box(387, 249, 727, 317), "text": "CogAgent", "element_type": "Text input box",
                        "element_info": "CogAgent"})),
    ("SCROLL_DOWN(box=[[000,086,999,932]], element_type='Scroll', element_info='Scroll', step_count=5)",
     Operation("SCROLL_DOWN", {"box": Box(0, 86, 999, 932), "element_type": "Scroll", "element_info": "Scroll",
                               "step_count": 5})),
    ("KEY_PRESS(key='F11')", Operation("KEY_PRESS", {"key": "F11"})),
    ("GESTURE(actions=[KEY_DOWN(key='Lcontrol'), KEY_PRESS(key='A'), KEY_UP(key='Lcontrol')])",
     Operation("GESTURE", {"actions": (Operation("KEY_DOWN", {"key": "Lcontrol"}), Operation("KEY_PRESS", {"key": "A"}),
                                       Operation("KEY_UP", {"key": "Lcontrol"}))})),
    ("LAUNCH(app='Settings', url='None')", Operation("LAUNCH", {"app": "Settings", "url": "None"})),
    ("LAUNCH(app='None', url='baidu.com')", Operation("LAUNCH", {"app": "None", "url": "baidu.com"})),
    ("QUOTE_TEXT(box=[[387,249,727,317]], element_type='Text', element_info='Price after coupon: 17.00', "
     "output='__CogName_ProductPrice__', result='17.00')",
     Operation("QUOTE_TEXT", {"box": Box(387, 249, 727, 317), "element_type": "Text",
                              "element_info": "Price after coupon: 17.00", "output": "__CogName_ProductPrice__",
                              "result": "17.00"})),
    ("QUOTE_TEXT(box=[[000,086,999,932]], auto_scroll=True, element_type='Window', element_info='CogAgent Technical "
     "Report Blog', output='__CogName_TechnicalReport__')",
     Operation("QUOTE_TEXT", {"box": Box(0, 86, 999, 932), "auto_scroll": True, "element_type": "Window",
                              "element_info": "CogAgent Technical Report Blog",
                              "output": "__CogName_TechnicalReport__"})),
    ("LLM(prompt='Summarize the following content: __CogName_TechnicalReport__', "
     "output='__CogName_TechnicalReportSummary__')",
     Operation("LLM", {"prompt": "Summarize the following content: __CogName_TechnicalReport__",
                       "output": "__CogName_TechnicalReportSummary__"})),
    ("QUOTE_CLIPBOARD(output='__CogName_QuickSortCode__', result='def quick_sort(arr):\\n\\tif len(arr) <= 1:\\n"
     "\\t\\treturn arr\\n\\t...')",
     Operation("QUOTE_CLIPBOARD", {"output": "__CogName_QuickSortCode__",
                                   "result": "def quick_sort(arr):\n\tif len(arr) <= 1:\n\t\treturn arr\n\t..."})),
    ("END()", Operation("END")),
    # From the published README / ms-swift outputs.
    ("RIGHT_CLICK(box=[[154,275,343,341]], element_info='[AXCell]')",
     Operation("RIGHT_CLICK", {"box": Box(154, 275, 343, 341), "element_info": "[AXCell]"})),
    ("CLICK(box=[[346,574,424,710]], element_type='卡片', element_info='Adobe Photoshop 2023')",
     Operation("CLICK", {"box": Box(346, 574, 424, 710), "element_type": "卡片",
                         "element_info": "Adobe Photoshop 2023"})),
    ("LAUNCH(app='微信', url='None')", Operation("LAUNCH", {"app": "微信", "url": "None"})),
])
def test_every_published_operation_example_is_read(written, expected):
    assert step(f"Action: a\nGrounded Operation: {written}\n<<一般操作>>").operation == expected
    assert parse_operation(written) == (expected, len(written))


def test_values_with_commas_parentheses_quotes_escapes_cjk_and_variables():
    written = ("TYPE(box=[[1,2,3,4]], text='Hello, world (again): \\'quoted\\' and \"double\", 你好，世界 "
               "__CogName_Name__ \\\\ done', element_info=\"It's here, (really)\")")
    assert step(f"Grounded Operation: {written}").operation.arguments == {
        "box": Box(1, 2, 3, 4),
        "text": "Hello, world (again): 'quoted' and \"double\", 你好，世界 __CogName_Name__ \\ done",
        "element_info": "It's here, (really)"}


def test_the_published_parameter_regex_misreads_what_this_parser_reads():
    # app/client.py reads parameters with this regex: a comma inside a quoted value ends the value there.
    written = "TYPE(box=[[1,2,3,4]], text='Smith, John', element_info='Name')"
    assert dict(re.findall(r"(\w+)\s*=\s*([^,)]+)", written))["text"] == "'Smith"
    assert step(f"Grounded Operation: {written}").operation.arguments["text"] == "Smith, John"


def test_unescaped_quotes_inside_a_value_stay_text():
    result = step("Grounded Operation: CLICK(box=[[1,2,3,4]], element_info='Click 'OK' to go')")
    assert result.operation.arguments["element_info"] == "Click 'OK' to go"


def test_labels_inside_a_quoted_value_are_text():
    result = step("Action: type two lines\nGrounded Operation: TYPE(box=[[1,2,3,4]], text='one\nAction: two')\n"
                  "<<一般操作>>")
    assert result.action == "type two lines"
    assert result.operation.arguments["text"] == "one\nAction: two"


def test_single_bracket_boxes_bare_words_and_spaces_are_accepted():
    result = step("Grounded Operation :  SCROLL_UP ( box = [ 10 , 20 , 30 , 40 ] , step_count = '3' , "
                  "element_info = __CogName_x__ , )")
    assert result.operation == Operation("SCROLL_UP", {"box": Box(10, 20, 30, 40), "step_count": 3,
                                                       "element_info": "__CogName_x__"})


def test_an_operation_outside_the_action_space_is_read_as_written():
    result = step("Grounded Operation: TEXT_FORMAT(input='a', box=[[1,2,3,4]], n=[1, 2])")
    assert result.operation == Operation("TEXT_FORMAT", {"input": "a", "box": Box(1, 2, 3, 4), "n": (1, 2)})


@pytest.mark.parametrize("answer, reason", [
    ("Action: click it", "the answer has no 'Grounded Operation:' line"),
    ("Grounded Operation: CLICK(element_info='x')", "CLICK is missing its required argument(s) box"),
    ("Grounded Operation: TYPE(box=[[1,2,3,4]])", "TYPE is missing its required argument(s) text"),
    ("Grounded Operation: CLICK(box=[[5,2,3,4]])", "x0 <= x1"),
    ("Grounded Operation: CLICK(box=[[0,1000,2,3]])", "0..999"),
    ("Grounded Operation: CLICK(box=[[1,2,3]])", "CLICK box must be [[x0,y0,x1,y1]] with four integers"),
    ("Grounded Operation: SCROLL_UP(box=[[1,2,3,4]], step_count='many')", "SCROLL_UP step_count must be an integer"),
    ("Grounded Operation: QUOTE_TEXT(box=[[1,2,3,4]], output='__CogName_a__', auto_scroll=maybe)",
     "auto_scroll must be True or False"),
    ("Grounded Operation: GESTURE(actions=[CLICK(box=[[1,2,3,4]])])", "GESTURE actions must be a list of KEY_DOWN"),
    ("Grounded Operation: CLICK(box=[[1,2,3,4]], box=[[1,2,3,4]])", "argument box is given twice"),
    ("Grounded Operation: CLICK box=[[1,2,3,4]]", "expected '('"),
    ("Grounded Operation: CLICK(box=[[1,2,3,4]]) and then TYPE",
     "unexpected text after the operation: 'and then TYPE'"),
    ("Grounded Operation: CLICK(box=[[1,2,3,4]] element_info='x')", "expected ',' or ')' after argument box"),
])
def test_malformed_answers_are_unparsed_with_their_reason(answer, reason):
    result = unparsed(answer)
    assert reason in result.reason and "\n" not in result.reason
    assert result.cut_off is False


def test_every_cut_off_prefix_of_an_answer_is_unparsed_and_says_so():
    start = README_ANSWER.index("Grounded Operation: ") + len("Grounded Operation: ")
    end = README_ANSWER.index("')\n") + 2
    for cut in range(start, end):
        result = unparsed(README_ANSWER[:cut])
        assert result.cut_off, (cut, result.reason)
        assert "cut off" in result.reason
        assert result.action is not None and result.status is not None     # what came before is still read
    assert step(README_ANSWER[:end]).sensitivity is None


def test_deep_nesting_is_unparsed_not_a_recursion_error():
    result = unparsed("Grounded Operation: A(x=" + "[" * 5000 + "]" * 5000 + ")")
    assert "nested too deeply" in result.reason
    result = unparsed("Grounded Operation: " + "A(x=" * 5000)
    assert "nested too deeply" in result.reason


def test_parse_operation_raises_a_one_line_value_error():
    one_line_error(ValueError, lambda: parse_operation("CLICK(box=[[1,2"), "cut off")


# ---------------------------------------------------------------------------------------------------------------
# Coordinates


def test_boxes_become_pixels_of_the_original_screenshot():
    result = step(README_ANSWER)
    # 219/1000*1920 = 420.48, 186/1000*1080 = 200.88, 311/1000*1920 = 597.12, 207/1000*1080 = 223.56
    assert result.box_pixels(1920, 1080) == (420, 201, 597, 224)
    # centre: (219+311)/2000*1920 = 508.8, (186+207)/2000*1080 = 212.22
    assert result.action_point(1920, 1080) == (509, 212)
    assert step("Grounded Operation: KEY_PRESS(key='Return')").action_point(1920, 1080) is None


@given(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999), st.integers(0, 999),
       st.integers(1, 8000), st.integers(1, 8000))
def test_the_action_point_is_the_published_box_centre_within_rounding(a, b, c, d, width, height):
    x0, x1, y0, y1 = min(a, c), max(a, c), min(b, d), max(b, d)
    result = step(f"Grounded Operation: CLICK(box=[[{x0},{y0},{x1},{y1}]])")
    # app/register.py: corners int(v / 1000 * size), then their mean.
    published = ((int(x0 / 1000 * width) + int(x1 / 1000 * width)) / 2,
                 (int(y0 / 1000 * height) + int(y1 / 1000 * height)) / 2)
    x, y = result.action_point(width, height)
    assert abs(x - published[0]) <= 1 and abs(y - published[1]) <= 1
    assert 0 <= x < width and 0 <= y < height


def test_the_history_step_is_what_the_published_demos_keep():
    result = step(README_ANSWER)
    published_operation = re.search(r"Grounded Operation:\s*(.*)", README_ANSWER).group(1)
    published_action = re.search(r"Action:\s*(.*)", README_ANSWER).group(1)
    assert result.history_step() == HistoryStep(published_operation, published_action)


# ---------------------------------------------------------------------------------------------------------------
# Property tests

_text = st.text(max_size=30)
_box = st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)).map(
    lambda v: Box(min(v[0], v[2]), min(v[1], v[3]), max(v[0], v[2]), max(v[1], v[3])))
_variable = st.from_regex(r"__CogName_[A-Za-z0-9]{1,8}__", fullmatch=True)
_key_action = st.builds(lambda name, key: Operation(name, {"key": key}), st.sampled_from(sorted(GESTURE_ACTIONS)),
                        _text)
_VALUES = {
    ArgumentKind.BOX: _box,
    ArgumentKind.TEXT: _text,
    ArgumentKind.VARIABLE: _variable,
    ArgumentKind.INTEGER: st.integers(-10**6, 10**6),
    ArgumentKind.BOOLEAN: st.booleans(),
    ArgumentKind.KEY_ACTIONS: st.lists(_key_action, min_size=1, max_size=4).map(tuple),
}


@st.composite
def operations(draw, name=None):
    spec = OPERATIONS[name or draw(st.sampled_from(sorted(OPERATIONS)))]
    arguments = {}
    for argument in draw(st.permutations(spec.arguments)):
        if argument.required or draw(st.booleans()):
            arguments[argument.name] = draw(_VALUES[argument.kind])
    return Operation(spec.name, arguments)


_free_text = st.text(st.characters(blacklist_characters="\n\r<", blacklist_categories=("Cs",)), min_size=1,
                     max_size=40).filter(lambda t: t == t.strip())


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@given(data=st.data())
def test_format_then_parse_round_trips_every_operation(name, data):
    operation = data.draw(operations(name))
    written = format_operation(operation)
    assert parse_operation(written) == (operation, len(written))


@given(operations(), st.none() | _free_text, st.none() | _free_text, st.none() | _free_text,
       st.none() | st.sampled_from(Sensitivity))
def test_format_then_parse_round_trips_whole_answers(operation, status, plan, action, sensitivity):
    original = AgentStep(operation=operation, status=status, plan=plan, action=action, sensitivity=sensitivity)
    assert parse_answer(format_answer(original)) == original


_answer_alphabet = st.sampled_from(list("()[]{}'\",=\\ \n\t:_-.0123456789ACKLTYabox") +
                                   ["Grounded Operation:", "Action:", "CLICK(", "box=[[", "]]", "<<敏感操作>>",
                                    "GESTURE(actions=[", "KEY_DOWN(key=", "True", "None", "你好"])


@given(st.text() | st.lists(_answer_alphabet, max_size=40).map("".join))
def test_parsing_never_raises_and_always_gives_json(text):
    for candidate in (text, "Grounded Operation: " + text):
        result = parse_answer(candidate)
        assert isinstance(result, (AgentStep, Unparsed))
        document = answer_to_json(result, 1920, 1080)
        assert json.loads(json.dumps(document)) == document
        assert (document["operation"] is None) == (document["reason"] is not None)


# ---------------------------------------------------------------------------------------------------------------
# The script


def run_script(*args, stdin: str):
    return subprocess.run([sys.executable, str(SCRIPT), *args], input=stdin.encode("utf-8"), capture_output=True,
                          timeout=HANG_TIMEOUT)


def test_the_script_prints_the_step_as_json():
    answer = README_ANSWER.replace("<<一般操作>>", "<<敏感操作>>").replace(
        "element_info='Mark all emails as read'", "element_info='Mark all, \"now\" (你好)', step_count=3")
    result = run_script("--width", "1920", "--height", "1080", stdin=answer)
    assert result.returncode == 0, result.stderr.decode()
    document = json.loads(result.stdout.decode("utf-8"))
    assert document["operation"] == "CLICK" and document["reason"] is None
    assert document["arguments"] == {"box": [219, 186, 311, 207], "element_type": "Clickable text",
                                     "element_info": 'Mark all, "now" (你好)', "step_count": 3}
    assert document["sensitive"] is True
    assert document["box_pixels"] == [420, 201, 597, 224] and document["point"] == [509, 212]
    assert document["action"].startswith("Click the")


def test_the_script_reports_nested_actions_and_no_tag():
    result = run_script(stdin="Grounded Operation: GESTURE(actions=[KEY_DOWN(key='Lcontrol'), KEY_UP(key='Lcontrol')])")
    document = json.loads(result.stdout)
    assert result.returncode == 0
    assert document["arguments"] == {"actions": [{"operation": "KEY_DOWN", "arguments": {"key": "Lcontrol"}},
                                                 {"operation": "KEY_UP", "arguments": {"key": "Lcontrol"}}]}
    assert document["sensitive"] is None and document["point"] is None


def test_the_script_reports_an_unparsed_answer_with_null_and_a_reason():
    result = run_script(stdin="Action: Click.\nGrounded Operation: CLICK(box=[[1,2")
    document = json.loads(result.stdout)
    assert result.returncode == 3
    assert document["operation"] is None and "cut off" in document["reason"]
    assert document["arguments"] == {} and document["sensitive"] is None and document["action"] == "Click."


@pytest.mark.parametrize("args, fragment", [(["--width", "0", "--height", "5"], "must be a positive integer"),
                                            (["--width", "10"], "--width and --height go together")])
def test_the_script_rejects_bad_flags_in_one_line(args, fragment):
    result = run_script(*args, stdin="")
    assert result.returncode == 2 and fragment in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_the_script_imports_nothing_heavy():
    result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT)], input=b"Grounded Operation: END()",
                            capture_output=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.decode().splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    assert "json" in modules and not modules & {"torch", "sat", "PIL", "transformers", "numpy"}


def test_the_fine_tuning_answers_are_read():
    # THUDM/CogAgent finetune/README_en.md: "Grounded Operation:" without a space, and the <<END>> tag.
    result = step("Action: Left click\nGrounded Operation:CLICK(box=[[150,911,180,975]], element_info='lower')\n"
                  "<<END>>")
    assert result.operation == Operation("CLICK", {"box": Box(150, 911, 180, 975), "element_info": "lower"})
    assert result.sensitivity is Sensitivity.END and result.sensitive is False and result.action == "Left click"
    result = step("Action: Click the 'Displays have separate spaces' option. \nGrounded Operation:CLICK(box=[[655,842,"
                  "671,857]], element_info='```Displays have separate spaces``` switch button')\n<<General Operation>>")
    assert result.operation.arguments["element_info"] == "```Displays have separate spaces``` switch button"
    assert result.sensitivity is None       # the English README's translated tag is not one the model writes


def test_a_history_step_is_always_one_line():
    result = step("Action: Type the address,\nthen stop.\nGrounded Operation: TYPE(box=[[1,2,3,4]], text='Main St\n"
                  "Springfield')\n<<一般操作>>")
    assert result.operation.arguments["text"] == "Main St\nSpringfield"
    assert result.history_step() == HistoryStep("TYPE(box=[[1,2,3,4]], text='Main St\\nSpringfield')",
                                                "Type the address,")
