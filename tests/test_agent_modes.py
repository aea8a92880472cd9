"""utils/grounding/agent_modes.py: the CogAgent-18B mode builds the published agent query and reads the published
answer forms into the step a page shows."""
from __future__ import annotations

import pytest

from cogvlm.utils.grounding.agent_modes import AGENT_MODES, POINT_MARK_SIZE, AgentStep, CogAgent18B
from cogvlm.utils.grounding.boxes import Box

# The THUDM/CogVLM README's example answer, and a mobile (AITW-style) answer with a tap point.
WEB_ANSWER = ("Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button.\n"
              "Next Action: Type 'CogVLM' into the search box at the top of the page.\n"
              "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]")
MOBILE_ANSWER = "Plan: Open the settings.\nAction: Tap the settings icon.\nGrounded Operation: tap [[500,995]]"


def test_the_registry_offers_cogagent_18b_by_its_name():
    assert list(AGENT_MODES) == ["CogAgent-18B"]
    assert isinstance(AGENT_MODES["CogAgent-18B"], CogAgent18B)


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
