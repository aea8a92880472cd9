"""Tests for cogvlm.utils.grounding.agent_answer: CogAgent-18B answers as published, and parse/format properties."""
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cogvlm.utils.grounding.agent_answer import (
    AgentAnswer,
    GroundedOperation,
    format_agent_answer,
    format_grounded_operation,
    parse_agent_answer,
    parse_grounded_operation,
)
from cogvlm.utils.grounding.boxes import MAX_COORDINATE, Box

# The README's "(with grounding)" answer, on one line as in the brief and on three lines as in the README.
README_ANSWER = (
    "Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button. "
    "Next Action: Type 'CogVLM' into the search box at the top of the page. "
    "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
)
README_OPERATION = GroundedOperation(
    element_type="combobox", element="Search", operation="TYPE", text="CogVLM", box=Box(212, 498, 787, 564)
)


def test_readme_answer():
    answer = parse_agent_answer(README_ANSWER)
    assert answer == AgentAnswer(
        plan="1. Type 'CogVLM' into the search box. 2. Click the search button.",
        next_action="Type 'CogVLM' into the search box at the top of the page.",
        grounded_operation=README_OPERATION,
    )
    assert answer.grounded_operation.raw == "[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
    assert answer.action_point(1000, 1000) == (500, 531)
    assert answer.action_point(1120, 1120) == (559, 595)


def test_readme_answer_multiline():
    text = (
        "Plan: 1. Type 'CogVLM' into the Google search bar. 2. Review the search results that appear. 3. Click on a "
        "relevant\nresult to read more about CogVLM or access further resources.\n\n"
        "Next Action: Move the cursor to the Google search bar, and type 'CogVLM' into it.\n"
        "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]\n"
    )
    answer = parse_agent_answer(text)
    assert answer.plan.endswith("access further resources.")
    assert "\n" in answer.plan
    assert answer.next_action == "Move the cursor to the Google search bar, and type 'CogVLM' into it."
    assert answer.grounded_operation == README_OPERATION


def test_answer_without_grounding():
    answer = parse_agent_answer("Plan: 1. Open the menu.\n\nNext Action: Click the menu icon in the top left.")
    assert answer == AgentAnswer(plan="1. Open the menu.", next_action="Click the menu icon in the top left.")
    assert answer.action_point(100, 100) is None


@pytest.mark.parametrize("raw, expected", [
    # Web (Mind2Web-style) operations from the CogAgent paper's samples.
    ("[button] Search -> CLICK at the box [[798,367,875,424]]",
     GroundedOperation("button", "Search", "CLICK", None, Box(798, 367, 875, 424))),
    ("[button] Sort by:Our Top Picks -> CLICK at the box [[298,272,420,307]]",  # ':' inside the element
     GroundedOperation("button", "Sort by:Our Top Picks", "CLICK", None, Box(298, 272, 420, 307))),
    ("[textbox] Where are you going? -> TYPE: New York at the box [[175,309,455,356]]",
     GroundedOperation("textbox", "Where are you going?", "TYPE", "New York", Box(175, 309, 455, 356))),
    ("[svg] -> CLICK at the box [[1,2,3,4]]", GroundedOperation("svg", None, "CLICK", None, Box(1, 2, 3, 4))),
    ("[combobox] Flavor -> SELECT: Vanilla at the box [[10,20,30,40]]",
     GroundedOperation("combobox", "Flavor", "SELECT", "Vanilla", Box(10, 20, 30, 40))),
    ("[textbox] Check-in Date → CLICK at the box [[438,309,549,357]]",  # the paper's typeset arrow
     GroundedOperation("textbox", "Check-in Date", "CLICK", None, Box(438, 309, 549, 357))),
    ("Search -> CLICK at the box [[ 1, 2 ,3 ,4 ]]", GroundedOperation(None, "Search", "CLICK", None, Box(1, 2, 3, 4))),
    ("TYPE: hello at the box [[1,2,3,4]]", GroundedOperation(None, None, "TYPE", "hello", Box(1, 2, 3, 4))),
    # Mobile (AITW-style) operations.
    ("tap [[780,862]]", GroundedOperation(operation="tap", point=(780, 862))),
    ('type "Groove Is In the Heart"', GroundedOperation(operation="type", text="Groove Is In the Heart")),
    ("press back", GroundedOperation(operation="press back")),
    ('type "10:30 am"', GroundedOperation(operation="type", text="10:30 am")),
    # A malformed box keeps the rest of the operation.
    ("[button] OK -> CLICK at the box [[500,500,400,600]]", GroundedOperation("button", "OK", "CLICK")),
    ("[button] OK -> CLICK at the box [[12,34,5", GroundedOperation("button", "OK", "CLICK")),  # cut off
    ("tap [[78", GroundedOperation(operation="tap")),
    # "at the box" counts only right before the box.
    ("[link] Look at the box -> TYPE: look at the box at the box [[1,2,3,4]]",
     GroundedOperation("link", "Look at the box", "TYPE", "look at the box", Box(1, 2, 3, 4))),
])
def test_grounded_operations(raw, expected):
    assert parse_grounded_operation(raw) == expected
    assert parse_agent_answer(f"Grounded Operation: {raw}").grounded_operation == expected


def test_mobile_answer_and_action_point():
    answer = parse_agent_answer(
        "Action: Touch the play button to start playing 'Groove Is In the Heart'.\nGrounded Operation: tap [[780,862]]"
    )
    assert answer.plan is None
    assert answer.next_action == "Touch the play button to start playing 'Groove Is In the Heart'."
    assert answer.action_point(1000, 2000) == (780, 1724)
    assert answer.grounded_operation.action_point(1, 1) == (1, 1)


@pytest.mark.parametrize("text", ["", "Hello there.", "Plan:", "Plan:   \nNext Action:\nGrounded Operation:  "])
def test_missing_parts_are_none(text):
    assert parse_agent_answer(text) == AgentAnswer()


def test_first_section_wins_and_labels_need_a_colon():
    answer = parse_agent_answer("Plan: first Plan: second. The Next Action is unclear. Action: go")
    assert answer == AgentAnswer(plan="first", next_action="go")


def test_format_readme_answer():
    answer = parse_agent_answer(README_ANSWER)
    assert format_agent_answer(answer) == (
        "Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button.\n"
        "Next Action: Type 'CogVLM' into the search box at the top of the page.\n"
        "Grounded Operation: [combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
    )
    assert format_grounded_operation(GroundedOperation(operation="tap", point=(7, 86))) == "tap [[007,086]]"
    assert format_agent_answer(AgentAnswer()) == ""


# --- properties -----------------------------------------------------------------------------------------------

FRAGMENTS = ["Plan:", "Next Action:", "Action:", "Grounded Operation:", "Plan", " : ", "->", "→", "[", "]", "[[",
             "]]", ",", ";", "012", "7", "999", "1000", "at the box", "TYPE", ":", '"', " ", "\n", "[combobox]", "tap"]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


@settings(max_examples=300)
@given(st.one_of(st.text(), fragment_text))
def test_parse_never_raises(text):
    answer = parse_agent_answer(text)
    operation = answer.grounded_operation
    if operation is not None:
        assert operation.raw and operation.raw in text
        assert answer.action_point(640, 480) is None or all(v >= 0 for v in answer.action_point(640, 480))


# What the format can carry (see format_agent_answer): strings are stripped and non-empty, and are drawn from an
# alphabet without ':' (so no section label can appear), without brackets, '"' and '>' (so no box, quoted text or
# arrow can appear inside a field). "at the box" may appear: it only counts right before "[[", so only a text
# (or operation) followed by a point, which is written without "at the box", must not end with it.
FIELD_PIECES = st.characters(categories=["L", "N"]) | st.sampled_from(" .,'!?()-_/\n") | st.just(" at the box ")
field_text = st.lists(FIELD_PIECES, min_size=1, max_size=30).map("".join).map(str.strip).filter(bool)
one_line_text = field_text.map(lambda s: " ".join(s.split())).filter(bool)
operation_word = st.one_of(
    st.sampled_from(["CLICK", "TYPE", "SELECT", "tap", "press back", "swipe up"]),
    st.from_regex(r"[A-Za-z_]+( [A-Za-z_]+)?", fullmatch=True),
)
points = st.tuples(st.integers(0, MAX_COORDINATE), st.integers(0, MAX_COORDINATE))


@st.composite
def boxes(draw):
    x0, x1 = sorted(draw(points))
    y0, y1 = sorted(draw(points))
    return Box(x0, y0, x1, y1)


@st.composite
def grounded_operations(draw):
    target = draw(st.sampled_from(["box", "point", None]))
    operation = GroundedOperation(
        element_type=draw(st.none() | one_line_text),
        element=draw(st.none() | one_line_text),
        operation=draw(st.none() | operation_word),
        text=draw(st.none() | one_line_text),
        box=draw(boxes()) if target == "box" else None,
        point=draw(points) if target == "point" else None,
    )
    if operation.point is not None:
        assume(not f"{operation.operation} {operation.text}".endswith("at the box"))
    # An operation with no field at all formats to nothing and parses back as "no operation".
    return operation if operation != GroundedOperation() else GroundedOperation(operation="CLICK")


@given(st.builds(AgentAnswer, st.none() | field_text, st.none() | field_text, st.none() | grounded_operations()))
def test_format_parse_round_trip(answer):
    assert parse_agent_answer(format_agent_answer(answer)) == answer


@given(grounded_operations(), st.integers(1, 3000), st.integers(1, 3000))
def test_action_point_inside_image(operation, width, height):
    point = operation.action_point(width, height)
    if operation.box is None and operation.point is None:
        assert point is None
    else:
        assert 0 <= point[0] <= width and 0 <= point[1] <= height
