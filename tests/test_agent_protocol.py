"""The CogAgent-9B query builder (cogvlm.utils.agent.protocol) against the published construction."""
import pytest
from conftest import one_line_error

from cogvlm.utils.agent.protocol import AnswerFormat, HistoryStep, Platform, build_query

# The agent case of the reference fixture cogagent9b-tiny (cases.pt, cases["agent_query"]["agent"]["query"]),
# built there by the published inference/cli_demo.py construction.
FIXTURE_TASK = "Sign in as Ada Lovelace"
FIXTURE_HISTORY = [
    HistoryStep("CLICK(box=[[250,550,937,683]], element_info='Name')",
                "Click the Name text field in the middle of the window."),
    HistoryStep("TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')",
                "Type 'Ada Lovelace' into the Name field."),
]
FIXTURE_QUERY = ("Task: Sign in as Ada Lovelace\nHistory steps: \n0. CLICK(box=[[250,550,937,683]], "
                 "element_info='Name')\tClick the Name text field in the middle of the window.\n1. TYPE(box=[[250,"
                 "550,937,683]], text='Ada Lovelace', element_info='Name')\tType 'Ada Lovelace' into the Name "
                 "field.\n(Platform: WIN)\n(Answer in Action-Operation-Sensitive format.)")

# THUDM/CogAgent README, "The concatenated Python string" (the README variant ends the format line with "\n").
README_QUERY = (
    "Task: Search for doors, click doors on sale and filter by brands \"Mastercraft\".\nHistory steps: \n0. CLICK("
    "box=[[352,102,786,139]], element_info='Search')\tLeft click on the search box located in the middle top of the "
    "screen next to the Menards logo.\n1. TYPE(box=[[352,102,786,139]], text='doors', element_info='Search')\tIn the "
    "search input box at the top, type 'doors'.\n2. CLICK(box=[[787,102,809,139]], element_info='SEARCH')\tLeft "
    "click on the magnifying glass icon next to the search bar to perform the search.\n3. SCROLL_DOWN(box=[[0,209,"
    "998,952]], step_count=5, element_info='[None]')\tScroll down the page to see the available doors.\n4. CLICK("
    "box=[[280,708,710,809]], element_info='Doors on Sale')\tClick the \"Doors On Sale\" button in the middle of "
    "the page to view the doors that are currently on sale.\n(Platform: WIN)\n(Answer in Action-Operation format.)\n")
README_HISTORY = [
    HistoryStep("CLICK(box=[[352,102,786,139]], element_info='Search')",
                "Left click on the search box located in the middle top of the screen next to the Menards logo."),
    HistoryStep("TYPE(box=[[352,102,786,139]], text='doors', element_info='Search')",
                "In the search input box at the top, type 'doors'."),
    HistoryStep("CLICK(box=[[787,102,809,139]], element_info='SEARCH')",
                "Left click on the magnifying glass icon next to the search bar to perform the search."),
    HistoryStep("SCROLL_DOWN(box=[[0,209,998,952]], step_count=5, element_info='[None]')",
                "Scroll down the page to see the available doors."),
    HistoryStep("CLICK(box=[[280,708,710,809]], element_info='Doors on Sale')",
                "Click the \"Doors On Sale\" button in the middle of the page to view the doors that are currently "
                "on sale."),
]


def test_the_fixture_agent_query_is_rebuilt_byte_for_byte():
    assert build_query(FIXTURE_TASK, FIXTURE_HISTORY, Platform.WIN, AnswerFormat.ACTION_OP_SENSITIVE) == FIXTURE_QUERY
    assert build_query(FIXTURE_TASK, FIXTURE_HISTORY, "WIN", "action_op_sensitive") == FIXTURE_QUERY


def test_the_readme_query_is_rebuilt_with_the_readme_newline():
    task = 'Search for doors, click doors on sale and filter by brands "Mastercraft".'
    assert build_query(task, README_HISTORY, "WIN", "action_op", format_newline=True) == README_QUERY


def test_no_history_still_has_the_history_header_with_its_trailing_space():
    assert build_query("Please mark all my emails as read", platform="Mac") == (
        "Task: Please mark all my emails as read\nHistory steps: \n(Platform: Mac)\n"
        "(Answer in Action-Operation-Sensitive format.)")


def test_continue_mode_appends_the_mark_after_the_task():
    query = build_query("Open the settings", [HistoryStep("CLICK(box=[[1,2,3,4]])", "Click.")], "Mobile",
                        "status_action_op", continue_task=True)
    assert query == ("Task: Open the settings[Continue]\n\nHistory steps: \n0. CLICK(box=[[1,2,3,4]])\tClick.\n"
                     "(Platform: Mobile)\n(Answer in Status-Action-Operation format.)")


@pytest.mark.parametrize("key, text", [
    ("action_op_sensitive", "(Answer in Action-Operation-Sensitive format.)"),
    ("status_plan_action_op", "(Answer in Status-Plan-Action-Operation format.)"),
    ("status_action_op_sensitive", "(Answer in Status-Action-Operation-Sensitive format.)"),
    ("status_action_op", "(Answer in Status-Action-Operation format.)"),
    ("action_op", "(Answer in Action-Operation format.)"),
    ("status_plan_action_op_sensitive", "(Answer in Status-Plan-Action-Operation-Sensitive format.)"),
])
def test_every_published_format_key_gives_its_published_format_string(key, text):
    assert AnswerFormat(key).text == text
    assert build_query("t", answer_format=key).endswith("\n" + text)
    assert AnswerFormat(key).asks_sensitivity == key.endswith("sensitive")


@pytest.mark.parametrize("platform", ["WIN", "Mac", "Mobile"])
def test_every_platform_is_written_as_published(platform):
    assert f"\n(Platform: {platform})\n" in build_query("t", platform=platform)


def test_bad_input_gets_one_line_errors():
    one_line_error(ValueError, lambda: build_query("t", platform="win"), "unknown platform 'win'", "WIN, Mac, Mobile")
    one_line_error(ValueError, lambda: build_query("t", answer_format="json"), "unknown answer format 'json'",
                   "action_op_sensitive")
    one_line_error(ValueError, lambda: build_query("  "), "the task is empty")
    one_line_error(ValueError, lambda: build_query("t", [HistoryStep("CLICK(box=[[1,2,3,4]])", "a\nb")]),
                   "must be one line")


def test_the_fine_tuning_order_puts_the_history_last():
    # THUDM/CogAgent finetune/README_en.md, the first sample's user content.
    expected = (
        "Task: In the Desktop & Dock section of System Settings, turn on the option 'Displays have separate Spaces' "
        "in the Mission Control section\n(Platform: Mac)\n(Answer in Action-Operation-Sensitive format.)\nHistory "
        "steps: \n0. CLICK(box=[[588,946,616,985]], element_info='System Settings')\tClick the 'System Settings' "
        "menu at the bottom of the screen to open System Settings\n1. CLICK(box=[[227,561,297,585]], "
        "element_info='Desktop & Dock')\tClick the 'Desktop & Dock' option in the left menu to enter the Desktop & "
        "Dock settings interface. \n2. SCROLL_DOWN(box=[[367,39,691,929]], step_count=75, element_info='Scroll')\t"
        "In the scroll area on the right side of the current screen, scroll down to view more options. \n")
    history = [
        HistoryStep("CLICK(box=[[588,946,616,985]], element_info='System Settings')",
                    "Click the 'System Settings' menu at the bottom of the screen to open System Settings"),
        HistoryStep("CLICK(box=[[227,561,297,585]], element_info='Desktop & Dock')",
                    "Click the 'Desktop & Dock' option in the left menu to enter the Desktop & Dock settings "
                    "interface. "),
        HistoryStep("SCROLL_DOWN(box=[[367,39,691,929]], step_count=75, element_info='Scroll')",
                    "In the scroll area on the right side of the current screen, scroll down to view more options. "),
    ]
    task = ("In the Desktop & Dock section of System Settings, turn on the option 'Displays have separate Spaces' in "
            "the Mission Control section")
    assert build_query(task, history, "Mac", history_last=True) == expected
    assert build_query("t", platform="Mac", history_last=True) == (
        "Task: t\n(Platform: Mac)\n(Answer in Action-Operation-Sensitive format.)\nHistory steps: \n")
