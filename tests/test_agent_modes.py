"""utils/grounding/agent_modes.py: the CogAgent-18B and CogAgent-9B modes build the published agent queries and
read the published answer forms into the step a page shows."""
from __future__ import annotations

import pytest
from conftest import one_line_error

from cogvlm.utils.agent.protocol import AnswerFormat, HistoryStep, Platform, build_query
from cogvlm.utils.grounding.agent_modes import (AGENT_MODES, POINT_MARK_SIZE, AgentStep, CogAgent18B, CogAgent9B,
                                                default_mode)
from cogvlm.utils.grounding.boxes import Box

# The THUDM/CogVLM README's example answer, and a mobile (AITW-style) answer with a tap point.
WEB_ANSWER = ("Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button.\n"
              "Next Action: Type 'CogVLM' into the search box at the top of the page.\n"
              "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]")
MOBILE_ANSWER = "Plan: Open the settings.\nAction: Tap the settings icon.\nGrounded Operation: tap [[500,995]]"


def test_the_registry_offers_both_generations_by_name():
    assert list(AGENT_MODES) == ["CogAgent-18B", "CogAgent-9B"]
    assert isinstance(AGENT_MODES["CogAgent-18B"], CogAgent18B)
    assert isinstance(AGENT_MODES["CogAgent-9B"], CogAgent9B)


def test_the_18b_query_asks_for_a_grounded_operation_by_default():
    mode = CogAgent18B()
    assert mode.platforms == ()
    assert mode.query("search for CogVLM", None, None) == \
        'What steps do I need to take to "search for CogVLM"?(with grounding)'
    assert mode.query("search for CogVLM", None, "plan, action and grounded operation") == \
        'What steps do I need to take to "search for CogVLM"?(with grounding)'
    assert mode.query("search for CogVLM", None, "plan and action") == \
        'What steps do I need to take to "search for CogVLM"?'


@pytest.mark.parametrize("task, platform, answer_format, fragment", [
    ("   ", None, None, "task is empty"),
    ("open mail", "Mac", None, "takes no platform"),
    ("open mail", None, "JSON", "must be one of plan, action and grounded operation, plan and action"),
])
def test_a_bad_task_or_choice_is_a_one_line_value_error(task, platform, answer_format, fragment):
    with pytest.raises(ValueError) as info:
        CogAgent18B().query(task, platform, answer_format)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_web_answer_gives_plan_action_operation_and_box():
    step = CogAgent18B().parse(WEB_ANSWER)
    assert step == AgentStep(
        plan="1. Type 'CogVLM' into the search box. 2. Click the search button.",
        action="Type 'CogVLM' into the search box at the top of the page.",
        operation="[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]",
        box=Box(212, 498, 787, 564))
    assert step.target == Box(212, 498, 787, 564)


def test_a_mobile_tap_point_is_marked_by_a_small_square_kept_inside_the_screenshot():
    step = CogAgent18B().parse(MOBILE_ANSWER)
    assert step == AgentStep(plan="Open the settings.", action="Tap the settings icon.",
                             operation="tap [[500,995]]", point=(500, 995))
    half = POINT_MARK_SIZE // 2
    assert step.target == Box(500 - half, 995 - half, 500 + half, 999)


def test_an_answer_without_sections_is_an_empty_step():
    assert CogAgent18B().parse("3640") == AgentStep()
    assert AgentStep().target is None


# --- CogAgent-9B ---------------------------------------------------------------------------------------------

# Published-style answers (THUDM/CogAgent README), written by hand: a general click and a sensitive typing step.
NINE_B_CLICK = ("Status: Currently on the sign-in window [[0,0,999,999]].\n"
                "Plan: 1. Click the Name field; 2. Type the name; 3. Click Submit.\n"
                "Action: Click the Name text field in the middle of the window.\n"
                "Grounded Operation: CLICK(box=[[250,550,937,683]], element_type='Text field', "
                "element_info='Name, first and last')\n"
                "<<一般操作>>")
NINE_B_TYPE = ("Action: Type 'Ada Lovelace' into the Name field.\n"
               "Grounded Operation: TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')\n"
               "<<敏感操作>>")


def test_the_9b_offers_the_published_platforms_and_formats_with_the_demos_default_first():
    mode = CogAgent9B()
    assert mode.platforms == ("WIN", "Mac", "Mobile")
    assert mode.formats[0] == "action_op_sensitive"
    assert sorted(mode.formats) == sorted(f.value for f in AnswerFormat)
    assert mode.steps_in_query and not CogAgent18B().steps_in_query


@pytest.mark.parametrize("platform", ["WIN", "Mac", "Mobile"])
@pytest.mark.parametrize("answer_format", [f.value for f in AnswerFormat])
def test_the_9b_query_is_build_querys(platform, answer_format):
    assert CogAgent9B().query("open mail", platform, answer_format) == \
        build_query("open mail", (), platform, answer_format)


def test_the_9b_query_defaults_to_win_and_action_operation_sensitive():
    assert CogAgent9B().query("open mail", None, None) == \
        "Task: open mail\nHistory steps: \n(Platform: WIN)\n(Answer in Action-Operation-Sensitive format.)"


def test_two_parsed_steps_are_the_next_querys_history_as_build_query_numbers_them():
    mode = CogAgent9B()
    steps = [mode.parse(NINE_B_CLICK).history_step, mode.parse(NINE_B_TYPE).history_step]
    assert steps == [
        HistoryStep("CLICK(box=[[250,550,937,683]], element_type='Text field', element_info='Name, first and last')",
                    "Click the Name text field in the middle of the window."),
        HistoryStep("TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')",
                    "Type 'Ada Lovelace' into the Name field.")]
    query = mode.query("Sign in as Ada Lovelace", "Mac", "status_plan_action_op", steps)
    assert query == build_query("Sign in as Ada Lovelace", steps, Platform.MAC, AnswerFormat.STATUS_PLAN_ACTION_OP)
    assert ("History steps: \n0. CLICK(box=[[250,550,937,683]], element_type='Text field', "
            "element_info='Name, first and last')\tClick the Name text field in the middle of the window.\n"
            "1. TYPE(") in query


def test_a_published_style_answer_parses_to_the_shown_step():
    step = CogAgent9B().parse(NINE_B_CLICK)
    assert step == AgentStep(
        status="Currently on the sign-in window [[0,0,999,999]].",
        plan="1. Click the Name field; 2. Type the name; 3. Click Submit.",
        action="Click the Name text field in the middle of the window.",
        operation="CLICK(box=[[250,550,937,683]], element_type='Text field', element_info='Name, first and last')",
        box=Box(250, 550, 937, 683), sensitive=False,
        history_step=HistoryStep("CLICK(box=[[250,550,937,683]], element_type='Text field', "
                                 "element_info='Name, first and last')",
                                 "Click the Name text field in the middle of the window."))
    assert CogAgent9B().parse(NINE_B_TYPE).sensitive is True


def test_an_end_step_ends_the_task_and_noise_is_unread_with_its_reason():
    end = CogAgent9B().parse("Action: The task is done.\nGrounded Operation: END()\n<<一般操作>>")
    assert end.ends_task and end.box is None and end.operation == "END()"
    noise = CogAgent9B().parse("lorem ipsum 3640")
    assert noise == AgentStep(unread="the answer has no 'Grounded Operation:' line")
    cut = CogAgent9B().parse("Action: Click it.\nGrounded Operation: CLICK(box=[[1,2,3")
    assert cut.action == "Click it." and cut.history_step is None and "cut off" in cut.unread


@pytest.mark.parametrize("platform, answer_format, fragment", [
    ("Linux", None, "the platform must be one of WIN, Mac, Mobile, got 'Linux'"),
    ("WIN", "action", "the answer format must be one of action_op_sensitive, "),
])
def test_a_9b_choice_not_offered_is_a_one_line_value_error(platform, answer_format, fragment):
    one_line_error(ValueError, lambda: CogAgent9B().query("open mail", platform, answer_format), fragment)
    one_line_error(ValueError, lambda: CogAgent9B().query(" ", None, None), "the task is empty")


def test_the_9b_draws_the_box_and_the_action_point_as_the_agent_cli_saves_them(tmp_path):
    from PIL import Image

    from cogvlm.utils.agent.answer import parse_answer
    from cogvlm.utils.agent.drawing import BOX_COLOR, POINT_COLOR, draw_step

    picture = Image.new("RGB", (320, 240), "white")
    mode = CogAgent9B()
    step = mode.parse(NINE_B_CLICK)
    marked = mode.mark(picture, step)
    parsed = parse_answer(NINE_B_CLICK)
    x, y = parsed.action_point(*picture.size)
    x0, y0, _, y1 = parsed.box_pixels(*picture.size)
    assert marked.getpixel((x, y)) == POINT_COLOR and marked.getpixel((x0, (y0 + y1) // 2)) == BOX_COLOR
    # The same box and point as the agent CLI's saved picture (only the label differs: the page names the call).
    saved = Image.open(draw_step(picture, parsed, tmp_path / "step.png")).convert("RGB")
    assert saved.getpixel((x, y)) == marked.getpixel((x, y)) and saved.getpixel((x0, y1 - 1)) == BOX_COLOR
    assert picture.getpixel((x, y)) == (255, 255, 255)             # the upload itself is unchanged
    assert mode.mark(picture, mode.parse("no step")) is None


def test_the_loaded_models_template_picks_the_default_mode():
    from cogvlm.utils.preprocessing.glm4_processor import TEMPLATE_NAME

    assert default_mode(TEMPLATE_NAME) == "CogAgent-9B"
    assert default_mode("chat") == default_mode("vqa") == default_mode("chat_old") == "CogAgent-18B"
