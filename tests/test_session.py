"""utils/inference/session.py: a conversation about one image. The embedded captcha model answers through it as
it does through the CLI; a turn joins the history only when complete; answers' boxes and agent targets are drawn
on a copy of the image."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from cogvlm import PACKAGE_ROOT
from cogvlm.utils.grounding.agent_modes import AgentStep, CogAgent18B
from cogvlm.utils.grounding.boxes import BOX_COLORS, Box
from cogvlm.utils.inference.generation import PromptTooLongError, SamplingConfig
from cogvlm.utils.inference.session import NoImageError, Session, mark_answer_boxes, open_image, stream_turn
from cogvlm.utils.preprocessing.image_processor import ImageLoadError

CAPTCHA = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
IMAGE = CAPTCHA / "examples" / "3640.png"
CAPTCHA_QUERY = "What text is written in the image?"      # the README's query for the embedded model


class ScriptedChat:
    """Stands in for ChatModel: answers every query with `answer`, three characters at a time, and records what
    it was asked."""

    def __init__(self, answer: str):
        self.answer, self.calls = answer, []
        self.config = SimpleNamespace(language=SimpleNamespace(max_sequence_length=64))
        self.version = "chat"           # a CogVLM / CogAgent-18B template (ChatModel.version)

    def preprocess(self, picture):
        return ("model inputs of", picture.size)

    def stream(self, query, history, image, sampling):
        self.calls.append((query, list(history), image, sampling))
        for start in range(0, len(self.answer), 3):
            yield self.answer[start:start + 3]


@pytest.fixture(scope="module")
def captcha_chat():
    from cogvlm.utils.inference.chat import ChatModel

    return ChatModel.from_pretrained(CAPTCHA)


def test_the_captcha_model_reads_its_example_through_a_session(captcha_chat):
    session = open_image(captcha_chat, str(IMAGE))
    texts = list(stream_turn(captcha_chat, session, CAPTCHA_QUERY, SamplingConfig()))
    assert texts[-1] == "3640"
    assert session.history == [(CAPTCHA_QUERY, "3640")]


def test_a_second_turn_is_asked_with_the_first_as_history(captcha_chat):
    session = open_image(captcha_chat, str(IMAGE))
    list(stream_turn(captcha_chat, session, CAPTCHA_QUERY, SamplingConfig()))
    second = list(stream_turn(captcha_chat, session, "And again?", SamplingConfig()))[-1]
    expected = captcha_chat.answer("And again?", [(CAPTCHA_QUERY, "3640")], session.image, SamplingConfig())
    assert second == expected
    assert session.history == [(CAPTCHA_QUERY, "3640"), ("And again?", expected)]


def test_a_prompt_too_long_for_max_length_fails_before_any_text_and_leaves_the_history(captcha_chat):
    session = open_image(captcha_chat, str(IMAGE))
    with pytest.raises(PromptTooLongError) as info:
        next(stream_turn(captcha_chat, session, CAPTCHA_QUERY, SamplingConfig(max_length=8)))
    assert "\n" not in str(info.value)
    assert session.history == []


def test_the_answer_grows_and_joins_the_history_when_complete():
    chat = ScriptedChat("The number is 3640.")
    session = open_image(chat, str(IMAGE))
    assert session.image == ("model inputs of", Image.open(IMAGE).size)       # preprocessed once, when opened
    texts = list(stream_turn(chat, session, "Read it", SamplingConfig()))
    assert texts == ["The", "The nu", "The numbe", "The number i", "The number is 3", "The number is 3640",
                     "The number is 3640."]
    assert session.history == [("Read it", "The number is 3640.")]
    assert chat.calls[0][1:3] == ([], session.image)


def test_a_turn_not_read_to_its_end_leaves_the_history():
    chat = ScriptedChat("a long answer")
    session = open_image(chat, str(IMAGE))
    turn = stream_turn(chat, session, "Read it", SamplingConfig())
    next(turn)
    turn.close()                            # the browser went away mid-answer
    assert session.history == []


def test_a_query_without_an_image_is_a_no_image_error():
    with pytest.raises(NoImageError, match="^upload an image first$"):
        next(stream_turn(ScriptedChat("x"), Session(), "Read it", SamplingConfig()))


@pytest.mark.parametrize("content, fragment", [(b"not an image", "not a supported image file"),
                                               (IMAGE.read_bytes()[:500], "image file is truncated")])
def test_an_unreadable_image_is_a_one_line_image_load_error(tmp_path, content, fragment):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        open_image(ScriptedChat("x"), str(path))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _outline_color(image, box: Box) -> tuple[int, int, int]:
    """The colour on the box's left edge, halfway down (inside any label)."""
    x0, y0, _, y1 = box.to_pixels(*image.size)
    return image.getpixel((x0, (y0 + y1) // 2))


def test_an_answer_with_a_box_is_drawn_on_a_copy_of_the_picture():
    picture = Image.new("RGB", (400, 300), (255, 255, 255))
    box = Box(100, 200, 600, 900)
    marked = mark_answer_boxes(picture, f"A dog{box} runs.")
    assert marked.size == picture.size
    assert _outline_color(marked, box) == BOX_COLORS[0]
    assert picture.getcolors() == [(400 * 300, (255, 255, 255))]             # the upload itself is unchanged
    assert mark_answer_boxes(picture, "No boxes here [[1,2]].") is None


def test_an_agent_step_target_is_drawn_and_a_step_without_one_draws_nothing():
    picture = Image.new("RGB", (400, 300), (255, 255, 255))
    box = Box(212, 498, 787, 564)
    marked = CogAgent18B().mark(picture, AgentStep(operation="CLICK", box=box))
    assert _outline_color(marked, box) == BOX_COLORS[0]
    assert CogAgent18B().mark(picture, AgentStep(plan="wait")) is None


def test_clear_keeps_the_image_and_forgets_the_conversation():
    session = Session("picture", "inputs", [("q", "a")], "marked")
    assert session.shown == "marked"
    session.clear()
    assert (session.picture, session.image, session.history, session.marked) == ("picture", "inputs", [], None)
    assert session.shown == "picture"


def test_an_agent_task_keeps_its_steps_across_screenshots_until_another_task_an_end_or_clear():
    from cogvlm.utils.agent.protocol import HistoryStep

    click, typed = HistoryStep("CLICK(box=[[1,2,3,4]])", "Click."), HistoryStep("TYPE(text='a')", "Type.")
    session = Session()
    session.work_on("CogAgent-9B", "sign in")
    session.record_agent_step(AgentStep(history_step=click))
    session.record_agent_step(AgentStep(unread="no operation"))                 # not repeated
    following = Session().carry_on(session)                                     # the next screenshot
    following.record_agent_step(AgentStep(history_step=typed))
    assert following.agent_steps("CogAgent-9B", "sign in") == [click, typed]
    assert session.agent_steps("CogAgent-9B", "sign in") == [click]            # a copy: the old page is unchanged
    assert following.agent_steps("CogAgent-9B", "log out") == following.agent_steps("CogAgent-18B", "sign in") == []
    following.work_on("CogAgent-9B", "log out")
    assert following.agent_steps("CogAgent-9B", "sign in") == []
    following.record_agent_step(AgentStep(history_step=click))
    following.record_agent_step(AgentStep(history_step=typed, ends_task=True))
    assert following.agent is None
    session.clear()
    assert session.agent is None
