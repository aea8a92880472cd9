"""basic_demo/agent_demo.py: the agent loop (query with history, parse, draw, execute, clear) with a scripted chat
model, the drawing of a step, the whole script on the embedded captcha model (which is no agent: its answers must be
reported as unparsed), and on the tiny CogAgent-9B: the fixture's agent query sent byte for byte, its published
answer reported."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT, one_line_error
from PIL import Image

from cogvlm.basic_demo.agent_demo import AgentSession
from cogvlm.utils.agent.answer import AgentStep, Unparsed, parse_answer
from cogvlm.utils.agent.drawing import BOX_COLOR, POINT_COLOR, draw_step
from cogvlm.utils.agent.executor import DryRunExecutor, Outcome
from cogvlm.utils.agent.protocol import AnswerFormat, Platform

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "basic_demo" / "agent_demo.py"
CAPTCHA_IMAGE = REPO_ROOT / "checkpoints" / "captcha-tiny" / "examples" / "3640.png"
WHITE = (255, 255, 255)

CLICK_ANSWER = ("Action: Click the Name field.\nGrounded Operation: CLICK(box=[[250,500,750,700]], "
                "element_info='Name')\n<<一般操作>>")
TYPE_ANSWER = ("Action: Type the name, then submit.\nGrounded Operation: TYPE(box=[[250,500,750,700]], "
               "text='Ada, Countess of Lovelace', element_info='Name')\n<<敏感操作>>")
END_ANSWER = "Action: The task is done.\nGrounded Operation: END()\n<<END>>"


class ScriptedChat:
    """ChatModel's preprocess / answer, answering from a script and recording what it was asked."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def preprocess(self, picture):
        return ("pixels", picture.size)

    def answer(self, query, history, image, sampling):
        self.calls.append((query, list(history), image, sampling))
        return self.answers.pop(0)


def session_with(*answers, tmp_path, executor=None):
    chat = ScriptedChat(*answers)
    return AgentSession(chat, Platform.WIN, AnswerFormat.ACTION_OP_SENSITIVE, "sampling", tmp_path,
                        executor=executor), chat


SCREENSHOT = Image.new("RGB", (400, 300), WHITE)


def test_rounds_keep_the_task_history_in_the_query(tmp_path):
    session, chat = session_with(CLICK_ANSWER, TYPE_ANSWER, END_ANSWER, tmp_path=tmp_path)
    first = session.step(SCREENSHOT, "shots/login.png", "Sign in as Ada")
    second = session.step(SCREENSHOT, "shots/login.png", "")
    third = session.step(SCREENSHOT, "shots/login.png", "continue")
    queries = [call[0] for call in chat.calls]
    assert queries[0] == ("Task: Sign in as Ada\nHistory steps: \n(Platform: WIN)\n"
                          "(Answer in Action-Operation-Sensitive format.)")
    assert queries[1] == ("Task: Sign in as Ada\nHistory steps: \n0. CLICK(box=[[250,500,750,700]], "
                          "element_info='Name')\tClick the Name field.\n(Platform: WIN)\n"
                          "(Answer in Action-Operation-Sensitive format.)")
    assert queries[2] == ("Task: Sign in as Ada[Continue]\n\nHistory steps: \n0. CLICK(box=[[250,500,750,700]], "
                          "element_info='Name')\tClick the Name field.\n1. TYPE(box=[[250,500,750,700]], "
                          "text='Ada, Countess of Lovelace', element_info='Name')\tType the name, then submit.\n"
                          "(Platform: WIN)\n(Answer in Action-Operation-Sensitive format.)")
    # Each query is one user message with the screenshot: the agent's history lives in the query.
    assert all(call[1] == [] and call[2] == ("pixels", (400, 300)) for call in chat.calls)
    assert isinstance(first.parsed, AgentStep) and first.parsed.operation.arguments["element_info"] == "Name"
    assert second.parsed.sensitive is True
    assert third.finished and session.task is None and session.history == []
    assert [r.round for r in (first, second, third)] == [1, 2, 3]


def test_a_step_is_drawn_with_its_box_and_action_point(tmp_path):
    session, _ = session_with(CLICK_ANSWER, tmp_path=tmp_path)
    report = session.step(SCREENSHOT, "https://example.com/shots/login.png?size=2", "Sign in")
    assert report.drawn == tmp_path / "login_1.png"
    drawn = Image.open(report.drawn).convert("RGB")
    # box [[250,500,750,700]] on 400x300: corners (100, 150) and (300, 210); centre (200, 180)
    assert drawn.getpixel((200, 180)) == POINT_COLOR
    assert drawn.getpixel((100, 180)) == BOX_COLOR and drawn.getpixel((300, 195)) == BOX_COLOR
    assert drawn.getpixel((150, 200)) == WHITE and drawn.getpixel((50, 50)) == WHITE


def test_draw_step_without_a_box_saves_the_screenshot_unmarked(tmp_path):
    step = parse_answer("Grounded Operation: KEY_PRESS(key='Return')")
    drawn = Image.open(draw_step(SCREENSHOT, step, tmp_path / "k.png")).convert("RGB")
    assert set(drawn.getdata()) == {WHITE}


def test_an_unparsed_answer_is_reported_and_left_out_of_the_history(tmp_path):
    session, chat = session_with(CLICK_ANSWER, "3640", "Grounded Operation: CLICK(box=[[1,2", CLICK_ANSWER,
                                 tmp_path=tmp_path)
    session.step(SCREENSHOT, "a.png", "Sign in")
    unparsed = [session.step(SCREENSHOT, "a.png", "") for _ in range(2)]
    assert [type(r.parsed) for r in unparsed] == [Unparsed, Unparsed]
    assert unparsed[0].parsed.reason == "the answer has no 'Grounded Operation:' line"
    assert unparsed[1].parsed.cut_off and all(r.drawn is None for r in unparsed)
    assert len(session.history) == 1
    session.step(SCREENSHOT, "a.png", "")
    assert chat.calls[-1][0].count("\n0. CLICK") == 1 and "\n1. " not in chat.calls[-1][0]


def test_a_new_task_or_clear_starts_over_and_no_task_is_a_one_line_error(tmp_path):
    session, chat = session_with(CLICK_ANSWER, CLICK_ANSWER, tmp_path=tmp_path)
    one_line_error(ValueError, lambda: session.step(SCREENSHOT, "a.png", ""), "no task yet")
    session.step(SCREENSHOT, "a.png", "Sign in")
    session.step(SCREENSHOT, "a.png", "Open the settings")
    assert chat.calls[-1][0].startswith("Task: Open the settings\nHistory steps: \n(Platform")
    session.clear()
    one_line_error(ValueError, lambda: session.step(SCREENSHOT, "a.png", "continue"), "no task yet")
    assert len(chat.calls) == 2


def test_the_dry_run_acts_on_the_screenshot_and_asks_before_a_sensitive_step(tmp_path):
    asked = []
    session, _ = session_with(CLICK_ANSWER, TYPE_ANSWER, tmp_path=tmp_path)
    session.executor = DryRunExecutor(lambda: session.screen_size, lambda step: asked.append(step) or False,
                                      stream=io.StringIO())
    done = session.step(SCREENSHOT, "a.png", "Sign in")
    refused = session.step(SCREENSHOT, "a.png", "")
    assert done.result.outcome is Outcome.DONE and [str(e) for e in done.result.events] == ["click(200, 180)"]
    assert refused.result.outcome is Outcome.REFUSED and asked == [refused.parsed]
    assert [str(e) for e in session.executor.performed] == ["click(200, 180)"]


# ---------------------------------------------------------------------------------------------------------------
# The script


def run_script(*args, stdin=""):
    return subprocess.run([sys.executable, str(SCRIPT), *args], input=stdin, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT)


def test_help_and_flag_errors_import_nothing_heavy():
    for args, status in ((["--help"], 0), (["--platform", "win"], 2), (["--format_key", "json"], 2)):
        result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *args], capture_output=True,
                                text=True, timeout=HANG_TIMEOUT)
        assert result.returncode == status and "Traceback" not in result.stderr
        modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                   if line.startswith("import time:") and line.count("|") == 2}
        assert "argparse" in modules and not modules & {"torch", "sat", "PIL", "deepspeed"}


def test_the_loop_on_the_captcha_model_reports_unparsed_answers_cleanly(tmp_path):
    lines = ["", "missing.png", str(CAPTCHA_IMAGE), "", str(CAPTCHA_IMAGE), "Click the first digit",
             str(CAPTCHA_IMAGE), "", "clear", str(CAPTCHA_IMAGE), "", "stop"]
    result = run_script("--max_length", "512", "--output_image_path", str(tmp_path / "out"), "--platform", "WIN",
                        "--execute", "dry_run", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: no image path or URL given", "Error: image file not found: missing.png",
                      "Error: no task yet: type what the agent should do",
                      "Error: no task yet: type what the agent should do"]
    out = result.stdout
    assert out.count("Unparsed answer: the answer has no 'Grounded Operation:' line") == 2
    assert out.count("History: 0 step(s)") == 2
    assert out.count("Round 1 query:\nTask: Click the first digit\nHistory steps: \n(Platform: WIN)\n"
                     "(Answer in Action-Operation-Sensitive format.)\n") == 1
    assert "Round 2 query:" in out and "would " not in out
    assert not (tmp_path / "out").exists()


def test_a_missing_checkpoint_is_one_line_before_loading(tmp_path):
    result = run_script("--from_pretrained", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"Error: checkpoint '{tmp_path / 'nothing'}' not found")


# ---------------------------------------------------------------------------------------------------------------
# On CogAgent-9B: the tiny cogagent9b fixture (its HF folder converted as users convert), whose answers are
# published greedy text (tests/fixtures/cogagent9b-tiny/cases.pt) but no agent steps.

# The two steps of the fixture's agent case ("agent_query"), as the model would answer them: with them in the
# history, the next query must be the fixture's, byte for byte.
FIXTURE_STEPS = (
    "Action: Click the Name text field in the middle of the window.\n"
    "Grounded Operation: CLICK(box=[[250,550,937,683]], element_info='Name')\n<<一般操作>>",
    "Action: Type 'Ada Lovelace' into the Name field.\n"
    "Grounded Operation: TYPE(box=[[250,550,937,683]], text='Ada Lovelace', element_info='Name')\n<<一般操作>>",
)
AGENT_NEW_TOKENS = 8        # greedy tokens the fixture case generated


@pytest.fixture(scope="module")
def cogagent9b(tmp_path_factory):
    from glm4v_reference import COGAGENT9B_TINY, convert_to_sat, write_hf_folder

    hf = write_hf_folder(COGAGENT9B_TINY, tmp_path_factory.mktemp("hf-cogagent9b"))
    return convert_to_sat(hf, tmp_path_factory.mktemp("sat-cogagent9b") / "checkpoint", HANG_TIMEOUT)


@pytest.fixture(scope="module")
def agent_case():
    import torch
    from glm4v_reference import COGAGENT9B_TINY, GLM4_TOKENIZER

    from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer

    case = torch.load(COGAGENT9B_TINY / "cases.pt", weights_only=False)["cases"]["agent_query"]
    ids = case["generation"]["new_token_ids"][0][:AGENT_NEW_TOKENS].tolist()
    answer = GLM4Tokenizer.from_path(GLM4_TOKENIZER).decode(ids, skip_special_tokens=True).strip()
    return {"query": case["conversation"][0]["content"], "answer": answer,
            "max_length": case["expanded_length"] + AGENT_NEW_TOKENS,
            "image": COGAGENT9B_TINY / "image.png"}


def test_the_issue_spells_the_format_out():
    from cogvlm.basic_demo.agent_demo import parse_args
    from cogvlm.utils.agent.protocol import parse_format

    assert parse_args(["--format", "action_operation_sensitive"]).format_key == "action_op_sensitive"
    assert parse_args(["--format_key", "status_plan_action_op"]).format_key == "status_plan_action_op"
    assert parse_format("status_action_operation") is AnswerFormat.STATUS_ACTION_OP


def test_on_cogagent_9b_the_query_is_the_fixtures_and_the_answer_the_published_one(
        cogagent9b, agent_case, tmp_path, monkeypatch, capsys):
    """Three rounds of one task through the script's loop on the real tiny CogAgent-9B: the first two answers are
    scripted agent steps (the tiny model's own are random text), the third is the model's. Its query, built from
    the history of the first two, is the fixture's agent query byte for byte, and its answer the published greedy
    answer, reported as unparsed and kept out of the history; "clear" forgets the task."""
    from cogvlm.basic_demo import agent_demo
    from cogvlm.utils.inference.chat import ChatModel

    sent, scripted, real_answer = [], list(FIXTURE_STEPS), ChatModel.answer

    def answer(self, query, history, image, sampling):
        sent.append(query)
        return scripted.pop(0) if scripted else real_answer(self, query, history, image, sampling)

    monkeypatch.setattr(ChatModel, "answer", answer)
    shot = agent_case["image"]
    stdin = f"{shot}\nSign in as Ada Lovelace\n{shot}\n\n{shot}\n\nclear\n{shot}\n\nstop\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = agent_demo.main(["--from_pretrained", str(cogagent9b), "--platform", "WIN", "--format",
                            "action_operation_sensitive", "--output_image_path", str(tmp_path / "out"),
                            "--max_length", str(agent_case["max_length"])])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sent[0] == ("Task: Sign in as Ada Lovelace\nHistory steps: \n(Platform: WIN)\n"
                       "(Answer in Action-Operation-Sensitive format.)")
    assert len(sent) == 3 and sent[2] == agent_case["query"]
    assert f"Round 3 query:\n{agent_case['query']}\nModel: {agent_case['answer']}\nUnparsed answer: " in out
    assert [line for line in out.splitlines() if line.startswith("History: ")] == [
        "History: 1 step(s)", "History: 2 step(s)", "History: 2 step(s)"]
    # the two parsed steps are drawn on the screenshot ({name}_{round}.png), the unparsed one is not
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["image_1.png", "image_2.png"]
    with Image.open(tmp_path / "out" / "image_1.png") as drawn, Image.open(shot) as original:
        assert drawn.size == original.size and drawn.convert("RGB").tobytes() != original.convert("RGB").tobytes()
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: no task yet: type what the agent should do"]          # after "clear"
    assert "Traceback" not in err


def test_the_issue_command_line_on_cogagent_9b(cogagent9b, agent_case, tmp_path):
    """The command of issue 13 as a user runs it, on the tiny CogAgent-9B: its random answer is reported as
    unparsed, cleanly."""
    result = run_script("--from_pretrained", str(cogagent9b), "--platform", "WIN", "--format",
                        "action_operation_sensitive", "--output_image_path", str(tmp_path / "out"),
                        "--max_length", str(agent_case["max_length"]),
                        stdin=f"{agent_case['image']}\nSign in as Ada Lovelace\nstop\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Error: " not in result.stderr
    assert ("Round 1 query:\nTask: Sign in as Ada Lovelace\nHistory steps: \n(Platform: WIN)\n"
            "(Answer in Action-Operation-Sensitive format.)\nModel: ") in result.stdout
    assert "Unparsed answer: " in result.stdout and "History: 0 step(s)" in result.stdout
