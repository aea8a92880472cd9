"""basic_demo/web_demo.py: the page's requests (DemoPage) on a scripted model and on the tiny checkpoints, its
start-up, and the whole demo in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright):
upload the embedded model's example captcha, ask, read "3640" on the page."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from conftest import COGAGENT_TINY, HANG_TIMEOUT
from PIL import Image
from test_session import CAPTCHA, CAPTCHA_QUERY, IMAGE, ScriptedChat

from cogvlm.utils.agent.protocol import HistoryStep, build_query
from cogvlm.utils.grounding.agent_modes import GLM4_TEMPLATE, CogAgent9B
from cogvlm.utils.grounding.boxes import BOX_COLORS, Box
from cogvlm.utils.inference.generation import SamplingConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "basic_demo" / "web_demo.py"
HEAVY = {"torch", "sat", "deepspeed", "transformers", "PIL", "requests", "huggingface_hub", "spacy", "sentencepiece",
         "gradio", "fastapi", "uvicorn"}
MODEL_STACK_AND_GRADIO = HEAVY - {"requests"}       # finding a checkpoint may import requests (the downloader)
AGENT_WEB_ANSWER = ("Plan: 1. Type 'CogVLM' into the search box. 2. Click the search button.\n"
                    "Next Action: Type 'CogVLM' into the search box at the top of the page.\n"
                    "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]")
CONTROLS = (0.8, 0.4, 1, 64)              # temperature, top p, top k, max length (ScriptedChat's longest)
TINY_CONTROLS = (0.8, 0.4, 1, 1024)       # the same, up to the tiny checkpoints' sequence length


@pytest.fixture(scope="module")
def web_demo():
    spec = importlib.util.spec_from_file_location("web_demo_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def scripted_page(web_demo, answer: str):
    chat = ScriptedChat(answer)
    return web_demo.DemoPage(chat, SamplingConfig(seed=7, repetition_penalty=1.1)), chat


def opened(page):
    view = page.open(str(IMAGE))
    assert view.status == "" and view.picture is view.session.picture
    return view.session


# --- the page's requests, on a scripted model ---------------------------------------------------------------


def test_a_chat_answer_streams_into_the_chat_and_empties_the_query_box_once(web_demo):
    page, _ = scripted_page(web_demo, "It says 3640.")
    session = opened(page)
    views = list(page.send(session, "Read it", *CONTROLS))
    assert [view.messages[-1]["content"] for view in views] == [
        "It ", "It say", "It says 3", "It says 3640", "It says 3640.", "It says 3640."]
    assert all(view.messages[0] == {"role": "user", "content": "Read it"} for view in views)
    # Emptied with the first text, then left alone: the next query may be typed while this answer streams.
    keep = web_demo.KEEP
    assert [view.draft for view in views] == ["", keep, keep, keep, keep, keep]
    # The image is not re-sent with every piece, only with the complete answer (with its boxes, if any).
    assert [view.picture for view in views] == [keep] * 5 + [session.picture]
    assert views[-1].status == ""
    assert session.history == [("Read it", "It says 3640.")]


def test_the_sampling_controls_reach_the_model_and_the_flags_fill_the_rest(web_demo):
    page, chat = scripted_page(web_demo, "ok")
    list(page.send(opened(page), "Read it", 0.5, 0.9, 3, 30))
    assert chat.calls[-1][3] == SamplingConfig(max_length=30, temperature=0.5, top_k=3, top_p=0.9,
                                               repetition_penalty=1.1, seed=7)


@pytest.mark.parametrize("controls, fragment", [((0.8, 0.4, 1, 1), "max length must be between 2 and 64, got 1"),
                                                ((0.8, 0.4, 1, 65), "max length must be between 2 and 64, got 65"),
                                                ((0.8, 1.5, 1, 30), "top p between 0 and 1"),
                                                ((-1, 0.4, 1, 30), "temperature and top k must be at least 0")])
def test_a_control_out_of_range_is_a_one_line_error(web_demo, controls, fragment):
    page, chat = scripted_page(web_demo, "ok")
    [view] = page.send(opened(page), "Read it", *controls)
    assert view.status.startswith("Error: ") and fragment in view.status and "\n" not in view.status
    assert chat.calls == [] and view.draft == "Read it"


def test_a_grounding_answer_is_shown_with_its_boxes(web_demo):
    box = Box(100, 200, 600, 900)
    page, _ = scripted_page(web_demo, f"The digits{box} are 3640.")
    session = opened(page)
    final = list(page.send(session, "Where are the digits?", *CONTROLS))[-1]
    assert final.picture is session.marked and final.picture is not session.picture
    x0, y0, _, y1 = box.to_pixels(*session.picture.size)
    assert final.picture.getpixel((x0, (y0 + y1) // 2)) == BOX_COLORS[0]
    assert page.clear(session).picture is session.picture and session.history == []


def test_a_query_without_an_image_is_an_error_on_the_page_and_keeps_the_query(web_demo):
    page, chat = scripted_page(web_demo, "ok")
    [view] = page.send(web_demo.Session(), "Read it", *CONTROLS)
    assert (view.status, view.draft, view.messages) == ("Error: upload an image first", "Read it", [])
    assert chat.calls == []


def test_an_unreadable_upload_is_named_as_the_user_named_it(web_demo, tmp_path):
    page, _ = scripted_page(web_demo, "ok")
    upload = tmp_path / "server-side-temporary-folder" / "holiday.png"
    upload.parent.mkdir()
    upload.write_bytes(b"not an image")
    view = page.open(str(upload))
    assert view.status == "Error: not a supported image file: holiday.png"
    assert (view.session.image, view.picture) == (None, None)
    assert page.open(None).session.picture is None          # the upload was removed


def test_a_failure_inside_the_model_ends_the_turn_with_one_line_and_the_page_goes_on(web_demo):
    page, chat = scripted_page(web_demo, "3640")
    session = opened(page)
    list(page.send(session, "first", *CONTROLS))

    def failing_stream(*args):
        yield "36"
        raise RuntimeError("out of memory\nwhile decoding")
    chat.stream, working_stream = failing_stream, chat.stream
    views = list(page.send(session, "second", *CONTROLS))
    assert views[-1].status == "Error: out of memory while decoding" and views[-1].draft == "second"
    assert views[-1].messages == web_demo.chat_messages([("first", "3640")])
    chat.stream = working_stream
    assert list(page.send(session, "third", *CONTROLS))[-1].messages[-1]["content"] == "3640"
    assert session.history == [("first", "3640"), ("third", "3640")]


def test_the_agent_tab_asks_the_18b_query_and_shows_the_parsed_step_with_its_box(web_demo):
    page, chat = scripted_page(web_demo, AGENT_WEB_ANSWER)
    session = opened(page)
    final = list(page.ask_agent(session, "CogAgent-18B", "search for CogVLM", None,
                                "plan, action and grounded operation", *CONTROLS))[-1]
    assert chat.calls[-1][0] == 'What steps do I need to take to "search for CogVLM"?(with grounding)'
    assert final.agent_step == (
        "**Plan:** 1. Type 'CogVLM' into the search box. 2. Click the search button.\n\n"
        "**Next action:** Type 'CogVLM' into the search box at the top of the page.\n\n"
        "**Operation:** [combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]\n\n"
        "**Target:** [[212,498,787,564]]")
    assert final.status == ""
    x0, y0, _, y1 = Box(212, 498, 787, 564).to_pixels(*session.picture.size)
    assert final.picture.getpixel((x0, (y0 + y1) // 2)) == BOX_COLORS[0]
    assert session.history[-1][0] == chat.calls[-1][0]


def test_an_agent_answer_without_a_step_says_so(web_demo):
    page, _ = scripted_page(web_demo, "3640")
    final = list(page.ask_agent(opened(page), "CogAgent-18B", "read it", "", "plan and action", *CONTROLS))[-1]
    assert final.agent_step == "the answer names no plan, action or operation"
    assert final.picture is final.session.picture


@pytest.mark.parametrize("mode, task, platform, status", [
    ("CogAgent-18B", "  ", None, "Error: the task is empty"),
    ("CogAgent-18B", "open mail", "Mac", "Error: this agent mode takes no platform, got 'Mac'"),
    ("CogAgent-99B", "open mail", None, "Error: unknown agent mode 'CogAgent-99B'"),
])
def test_a_bad_agent_request_is_a_one_line_error(web_demo, mode, task, platform, status):
    page, chat = scripted_page(web_demo, "ok")
    [view] = page.ask_agent(opened(page), mode, task, platform, None, *CONTROLS)
    assert (view.status, chat.calls) == (status, [])


def test_a_tap_point_is_described_with_its_coordinates(web_demo):
    from cogvlm.utils.grounding.agent_modes import AgentStep

    assert web_demo.describe_step(AgentStep(operation="tap [[5,995]]", point=(5, 995))) == \
        "**Operation:** tap [[5,995]]\n\n**Target:** [[005,995]]"
    assert web_demo.mode_choices("CogAgent-18B") == ((), ("plan, action and grounded operation", "plan and action"))


# --- CogAgent-9B's agent mode, on a scripted model --------------------------------------------------------------

NINE_B_CLICK = ("Status: Currently on the sign-in window.\n"
                "Plan: 1. Click the Name field; 2. Type the name.\n"
                "Action: Click the Name text field in the middle of the window.\n"
                "Grounded Operation: CLICK(box=[[250,550,937,683]], element_info='Name')\n"
                "<<一般操作>>")
NINE_B_TYPE = ("Action: Type 'Ada Lovelace' into the Name field.\n"
               "Grounded Operation: TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')\n"
               "<<敏感操作>>")
NINE_B_TASK = "Sign in as Ada Lovelace"


def nine_b_page(web_demo, answer: str):
    page, chat = scripted_page(web_demo, answer)
    chat.version = GLM4_TEMPLATE                   # as ChatModel reports a 9B checkpoint
    return web_demo.DemoPage(chat, page.defaults), chat


def ask_9b(page, session, task=NINE_B_TASK, platform="WIN", answer_format="action_op_sensitive"):
    return list(page.ask_agent(session, "CogAgent-9B", task, platform, answer_format, *CONTROLS))[-1]


def test_a_9b_checkpoint_opens_the_agent_tab_on_cogagent_9b(web_demo):
    assert nine_b_page(web_demo, "ok")[0].agent_mode == "CogAgent-9B"
    assert scripted_page(web_demo, "ok")[0].agent_mode == "CogAgent-18B"


def test_the_built_page_of_a_9b_checkpoint_offers_its_platforms_and_formats(web_demo):
    page, _ = nine_b_page(web_demo, "ok")
    blocks = {block.elem_id: block for block in web_demo.build_demo(page, "heading").blocks.values()
              if getattr(block, "elem_id", None)}
    shown = {name: (blocks[name].value, blocks[name].visible, [choice[0] for choice in blocks[name].choices])
             for name in ("agent-mode", "agent-platform", "agent-format")}
    assert shown == {"agent-mode": ("CogAgent-9B", True, ["CogAgent-18B", "CogAgent-9B"]),
                     "agent-platform": ("WIN", True, ["WIN", "Mac", "Mobile"]),
                     "agent-format": ("action_op_sensitive", True, list(CogAgent9B().formats))}


def test_the_9b_step_is_shown_with_status_sensitivity_box_and_action_point(web_demo):
    from cogvlm.utils.agent.answer import parse_answer
    from cogvlm.utils.agent.drawing import POINT_COLOR

    page, chat = nine_b_page(web_demo, NINE_B_CLICK)
    session = opened(page)
    final = ask_9b(page, session)
    assert chat.calls[-1][:2] == (build_query(NINE_B_TASK, (), "WIN", "action_op_sensitive"), [])
    assert final.status == "" and final.agent_step == (
        "**Status:** Currently on the sign-in window.\n\n"
        "**Plan:** 1. Click the Name field; 2. Type the name.\n\n"
        "**Next action:** Click the Name text field in the middle of the window.\n\n"
        "**Operation:** CLICK(box=[[250,550,937,683]], element_info='Name')\n\n"
        "**Target:** [[250,550,937,683]]\n\n"
        "**Sensitivity:** general")
    x, y = parse_answer(NINE_B_CLICK).action_point(*session.picture.size)
    assert final.picture is session.marked and final.picture.getpixel((x, y)) == POINT_COLOR
    chat.answer = NINE_B_TYPE
    assert "**Sensitivity:** sensitive: confirm it before acting" in ask_9b(page, session).agent_step
    assert chat.calls[-1][1] == [] and len(session.history) == 2    # the chat shows the turns; the model gets none


def test_each_step_joins_the_next_screenshots_query_until_a_new_task_or_clear(web_demo):
    page, chat = nine_b_page(web_demo, NINE_B_CLICK)
    session = opened(page)
    ask_9b(page, session)
    chat.answer = NINE_B_TYPE
    session = page.open(str(IMAGE), session).session            # the next screenshot, same task
    assert session.history == []
    ask_9b(page, session)
    steps = [HistoryStep("CLICK(box=[[250,550,937,683]], element_info='Name')",
                         "Click the Name text field in the middle of the window."),
             HistoryStep("TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')",
                         "Type 'Ada Lovelace' into the Name field.")]
    assert chat.calls[1][:2] == (build_query(NINE_B_TASK, steps[:1], "WIN", "action_op_sensitive"), [])
    ask_9b(page, session, platform="Mac", answer_format="status_plan_action_op")
    assert chat.calls[2][:2] == (build_query(NINE_B_TASK, steps, "Mac", "status_plan_action_op"), [])

    ask_9b(page, session, task="Open the mail")                 # a new task starts with no steps
    assert chat.calls[3][0] == build_query("Open the mail", (), "WIN", "action_op_sensitive")
    page.clear(session)
    ask_9b(page, session, task="Open the mail")
    assert chat.calls[4][0] == build_query("Open the mail", (), "WIN", "action_op_sensitive")


def test_an_unreadable_9b_answer_is_shown_unread_and_not_repeated(web_demo):
    page, chat = nine_b_page(web_demo, "lorem ipsum 3640")
    session = opened(page)
    final = ask_9b(page, session)
    assert final.status == "" and final.picture is session.picture
    assert final.agent_step == "**Not read:** the answer has no 'Grounded Operation:' line"
    ask_9b(page, session)
    assert chat.calls[1][0] == build_query(NINE_B_TASK, (), "WIN", "action_op_sensitive")


def test_an_end_step_finishes_the_task_and_a_bad_9b_choice_keeps_its_steps(web_demo):
    page, chat = nine_b_page(web_demo, NINE_B_CLICK)
    session = opened(page)
    ask_9b(page, session)
    [bad] = page.ask_agent(session, "CogAgent-9B", NINE_B_TASK, "Linux", None, *CONTROLS)
    assert bad.status == "Error: the platform must be one of WIN, Mac, Mobile, got 'Linux'" and len(chat.calls) == 1
    [empty] = page.ask_agent(session, "CogAgent-9B", "  ", "WIN", None, *CONTROLS)
    assert empty.status.startswith("Error: the task is empty")
    chat.answer = "Action: Done.\nGrounded Operation: END()\n<<一般操作>>"
    ask_9b(page, session)                                       # asked with the first step; the task ends
    assert "\n0. CLICK(" in chat.calls[1][0]
    ask_9b(page, session)
    assert chat.calls[2][0] == build_query(NINE_B_TASK, (), "WIN", "action_op_sensitive")


# --- on the tiny checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captcha_page(web_demo):
    from cogvlm.utils.inference.chat import ChatModel

    return web_demo.DemoPage(ChatModel.from_pretrained(CAPTCHA), SamplingConfig())


def test_the_embedded_model_reads_its_example_and_the_page_survives_a_too_long_prompt(captcha_page):
    session = captcha_page.open(str(IMAGE)).session
    final = list(captcha_page.send(session, CAPTCHA_QUERY, *TINY_CONTROLS))[-1]
    assert final.messages == [{"role": "user", "content": CAPTCHA_QUERY}, {"role": "assistant", "content": "3640"}]
    [too_long] = captcha_page.send(session, CAPTCHA_QUERY, 0.8, 0.4, 1, 8)
    assert too_long.status.startswith("Error: the prompt is ") and "max_length 8 leaves no room" in too_long.status
    assert too_long.messages == final.messages and too_long.draft == CAPTCHA_QUERY
    again = list(captcha_page.send(session, CAPTCHA_QUERY, *TINY_CONTROLS))[-1]
    assert again.status == "" and len(session.history) == 2


def test_the_max_length_control_is_bounded_by_the_model(captcha_page):
    assert captcha_page.limits.max_length == captcha_page.chat.config.language.max_sequence_length == 1024


def test_the_agent_tab_runs_on_the_tiny_cogagent(web_demo):
    from cogvlm.utils.inference.chat import ChatModel

    chat = ChatModel.from_pretrained(COGAGENT_TINY / "checkpoint", str(COGAGENT_TINY / "tokenizer.model"))
    page = web_demo.DemoPage(chat, SamplingConfig())
    session = page.open(str(COGAGENT_TINY / "image.png")).session
    final = list(page.ask_agent(session, "CogAgent-18B", "open the settings", None, None, 0.8, 0.4, 1, 96))[-1]
    assert final.status == ""
    assert session.history[0][0] == 'What steps do I need to take to "open the settings"?(with grounding)'
    # Random weights answer noise: whatever it is, the step shown is the parser's reading of it.
    expected = web_demo.describe_step(web_demo.AGENT_MODES["CogAgent-18B"].parse(session.history[0][1]))
    assert final.agent_step == expected


@pytest.fixture(scope="module")
def cogagent9b_chat(tmp_path_factory):
    """A ChatModel of the cogagent9b-tiny fixture: its HF weights regenerated and converted to a SAT checkpoint
    (as tests/test_cli_glm4.py does, in process), with the real GLM-4 tokenizer."""
    import shutil

    from glm4v_reference import COGAGENT9B_TINY, regenerate_hf_weights
    from safetensors.torch import save_file

    from cogvlm.utils.checkpoint_io.hf_conversion import hf_to_sat
    from cogvlm.utils.inference.chat import ChatModel

    hf = tmp_path_factory.mktemp("hf-cogagent9b-tiny")
    save_file(regenerate_hf_weights(COGAGENT9B_TINY), hf / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(COGAGENT9B_TINY / "config.json", hf)
    shutil.copy(REPO_ROOT / "tests" / "fixtures" / "glm4-tokenizer" / "tokenizer.model", hf)
    return ChatModel.from_pretrained(hf_to_sat(hf, tmp_path_factory.mktemp("sat-cogagent9b-tiny") / "checkpoint"))


def test_the_agent_tab_runs_on_a_tiny_cogagent_9b_with_the_fixtures_agent_query(web_demo, cogagent9b_chat):
    import torch
    from glm4v_reference import COGAGENT9B_TINY
    from test_cli_glm4 import NEW_TOKENS, published_answer

    from cogvlm.utils.agent.answer import Unparsed, parse_answer

    case = torch.load(COGAGENT9B_TINY / "cases.pt", weights_only=False)["cases"]["agent_query"]
    # The fixture's query repeats two steps: a scripted model answers them, as the 9B would, on earlier screenshots.
    scripted, chat = nine_b_page(web_demo, NINE_B_CLICK)
    earlier = opened(scripted)
    ask_9b(scripted, earlier)
    chat.answer = NINE_B_TYPE
    ask_9b(scripted, earlier)

    page = web_demo.DemoPage(cogagent9b_chat, SamplingConfig())
    assert page.agent_mode == "CogAgent-9B"
    session = page.open(str(COGAGENT9B_TINY / "image.png"), earlier).session     # the next screenshot
    greedy_8_tokens = (0.8, 0.4, 1, case["expanded_length"] + NEW_TOKENS)     # the fixture's greedy generation
    final = list(page.ask_agent(session, page.agent_mode, NINE_B_TASK, "WIN", "action_op_sensitive",
                                *greedy_8_tokens))[-1]
    [(query, answer)] = session.history
    assert query == case["conversation"][0]["content"]
    assert answer == published_answer(case)         # asked alone, as the reference was: no chat history
    # Random weights answer noise: it is shown as not read, cleanly, and is not repeated in the next query.
    parsed = parse_answer(answer)
    assert isinstance(parsed, Unparsed) and final.status == ""
    assert final.agent_step.endswith(f"**Not read:** {parsed.reason}") and final.picture is session.picture
    assert session.agent_steps(page.agent_mode, NINE_B_TASK) == [
        CogAgent9B().parse(NINE_B_CLICK).history_step, CogAgent9B().parse(NINE_B_TYPE).history_step]


# --- start-up -----------------------------------------------------------------------------------------------


def run_script(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run web_demo.py under python -X importtime; its result and the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *args], cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=HANG_TIMEOUT, env=env)
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    return result, modules


def test_help_imports_neither_torch_nor_gradio():
    result, modules = run_script("--help")
    assert result.returncode == 0
    for flag in ("--from_pretrained", "--version", "--bf16", "--fp16", "--quant", "--local_tokenizer", "--host",
                 "--port", "--share"):
        assert flag in result.stdout
    assert "cogvlm" in modules and not modules & HEAVY


@pytest.mark.parametrize("argv, line", [(["--fp16", "--bf16"], "choose one of --fp16 and --bf16"),
                                        (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
                                        (["--max_length", "1"], "--max_length must be at least 2")])
def test_argument_errors_are_one_line_and_import_nothing_heavy(argv, line):
    result, modules = run_script(*argv)
    errors = [text for text in result.stderr.splitlines() if not text.startswith(("import time:", "usage:", " "))]
    assert result.returncode == 2 and errors == [f"web_demo.py: error: {line}"]
    assert not modules & HEAVY


def test_a_missing_checkpoint_is_one_line_before_the_model_stack_or_gradio_is_imported(tmp_path):
    env = dict(os.environ, SAT_HOME=str(tmp_path / "sat_home"))
    env.pop("COGVLM_MIRROR", None)
    result, modules = run_script("--from_pretrained", str(tmp_path / "nowhere"), env=env)
    errors = [text for text in result.stderr.splitlines() if text.startswith("Error: ")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"Error: checkpoint '{tmp_path / 'nowhere'}' not found")
    assert not modules & MODEL_STACK_AND_GRADIO


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    return env


def test_a_port_in_use_is_a_one_line_error_before_the_model_is_loaded(tmp_path):
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, modules = run_script("--host", "127.0.0.1", "--port", str(port), env=server_env(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")] == [
        f"Error: cannot serve on 127.0.0.1:{port}: the port is in use or the address is not this machine's; "
        f"choose another --port or --host"]
    assert not modules & HEAVY


# --- in a real browser --------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = HANG_TIMEOUT * 1000        # only turns a hang into a failure


def wait_until_serving(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + HANG_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the demo ended with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the demo did not serve {url}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """web_demo.py with its defaults (the embedded captcha model) on a free port of 127.0.0.1, for this module's
    browser tests (each page is its own session); always stopped."""
    tmp_path = tmp_path_factory.mktemp("web_demo")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp_path, env=server_env(tmp_path), stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(server, url, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser_page():
    """A page of a headless Debian Chromium; the URLs it requested, to check that none left the machine."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            yield page, requested
        finally:
            browser.close()


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([selector, text]) => document.querySelector(selector)?.innerText.includes(text)",
                           arg=[selector, text])


def wait_for_answer(page) -> None:
    """Until an answer is in the chat and complete: Gradio hides the chat's progress tracker when the request
    that streams into it ends."""
    page.get_by_test_id("bot").first.wait_for()
    page.wait_for_function(
        "document.querySelector('#chatbot [data-testid=status-tracker]').classList.contains('hide')")


def test_in_chromium_the_demo_reads_the_uploaded_captcha(demo_url, browser_page, tmp_path):
    page, requested = browser_page
    page.goto(demo_url)
    upload = page.locator("#image-upload input[type=file]")

    page.locator("#query textarea").fill(CAPTCHA_QUERY)
    page.locator("#send").click()
    wait_for_text(page, "#status", "Error: ")
    assert page.locator("#status").inner_text().strip() == "Error: upload an image first"

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(IMAGE.read_bytes()[:500])
    upload.set_input_files(str(corrupt))
    wait_for_text(page, "#status", "corrupt.png")
    assert page.locator("#status").inner_text().strip() == \
        "Error: cannot decode image corrupt.png: image file is truncated"

    page.locator("#image-upload button[aria-label=Clear]").click()      # remove the bad file, upload another
    upload.set_input_files(str(IMAGE))
    page.locator("#picture img").wait_for()
    assert page.locator("#status").inner_text().strip() == ""
    assert page.locator("#query textarea").input_value() == CAPTCHA_QUERY      # kept through the errors
    page.locator("#query textarea").press("Enter")
    wait_for_answer(page)
    assert page.get_by_test_id("user").all_inner_texts() == [CAPTCHA_QUERY]
    assert page.get_by_test_id("bot").all_inner_texts() == ["3640"]

    screenshot = tmp_path / "web_demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as shot:
        assert shot.width >= 800 and shot.height >= 600
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20)) > 50     # a rendered page, not a blank one
    assert [url for url in requested if not url.startswith((demo_url, "data:", "blob:"))] == []


def test_in_chromium_the_agent_tab_sends_the_agent_query(demo_url, browser_page):
    page, _ = browser_page
    page.goto(demo_url)
    page.locator("#image-upload input[type=file]").set_input_files(str(IMAGE))
    page.locator("#picture img").wait_for()
    page.get_by_role("tab", name="Agent").click()
    page.locator("#agent-task textarea").fill("open the settings")
    page.locator("#agent-ask").click()
    wait_for_text(page, "#agent-step", "the answer names no plan, action or operation")   # a captcha reader's answer
    assert page.get_by_test_id("user").all_inner_texts() == [
        'What steps do I need to take to "open the settings"?(with grounding)']
    assert page.locator("#agent-task textarea").input_value() == "open the settings"


def test_in_chromium_the_agent_tab_switches_to_cogagent_9b_and_sends_its_query(demo_url, browser_page):
    page, _ = browser_page
    page.goto(demo_url)
    page.locator("#image-upload input[type=file]").set_input_files(str(IMAGE))
    page.locator("#picture img").wait_for()
    page.get_by_role("tab", name="Agent").click()
    assert not page.locator("#agent-platform").is_visible()            # the captcha model opens on CogAgent-18B
    page.locator("#agent-mode input").click()
    page.get_by_role("option", name="CogAgent-9B").click()
    page.locator("#agent-platform").wait_for()
    page.locator("#agent-task textarea").fill("open the settings")
    page.locator("#agent-ask").click()
    wait_for_text(page, "#agent-step", "Not read")                     # a captcha reader's answer is no step
    [shown] = page.get_by_test_id("user").all_inner_texts()
    sent = build_query("open the settings", (), "WIN", "action_op_sensitive")
    # The chat shows the query as Markdown: the line ends' spaces ("History steps: ") are not rendered.
    assert shown.splitlines() == [line.rstrip() for line in sent.splitlines()]
    assert page.locator("#agent-step").inner_text().strip() == \
        "Not read: the answer has no 'Grounded Operation:' line"
