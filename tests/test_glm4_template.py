"""Tests for cogvlm.utils.preprocessing.glm4_template: every case of the glm4v-tiny and cogagent9b-tiny fixtures
(text-only, image, image + history, CogAgent's agent query, Chinese + emoji, a left-padded batch) rebuilt from its
conversation gives the published tokenizer's input_ids, attention_mask and position_ids exactly."""
import json
from pathlib import Path

import pytest
import torch

from conftest import one_line_error
from cogvlm.utils.preprocessing.glm4_template import (ChatMessage, TooManyImagesError, chat_messages,
                                                      conversation_ids, encode_chat)
from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer
from cogvlm.utils.preprocessing.text_processor import EmptyQueryError, InvalidHistoryError

FIXTURES = Path(__file__).parent / "fixtures"
CASE_FILES = [FIXTURES / "glm4v-tiny" / "template_cases.json", FIXTURES / "cogagent9b-tiny" / "template_cases.json"]
# The template's example in the fixture README (query "What does the button in this screenshot say?").
IMAGE_QUESTION_IDS = [151331, 151333, 151336, 198, 151339, 151329, 151340, 3838, 1558, 279, 3137, 304, 419, 36007,
                      1977, 30, 151337]


@pytest.fixture(scope="module")
def tokenizer():
    return GLM4Tokenizer.from_path(FIXTURES / "glm4-tokenizer" / "tokenizer.model")


def all_cases():
    for path in CASE_FILES:
        for name, case in json.loads(path.read_text())["cases"].items():
            yield pytest.param(case, id=f"{path.parent.name}-{name}")


def messages_of(conversation):
    return [ChatMessage(m["role"], m["content"], image=m["image"]) for m in conversation]


@pytest.mark.parametrize("case", all_cases())
def test_every_fixture_case_gives_the_published_ids_mask_and_positions(tokenizer, case):
    prompt = encode_chat(tokenizer, [messages_of(conversation) for conversation in case["conversations"]])
    assert prompt.input_ids.tolist() == case["input_ids"]
    assert prompt.attention_mask.tolist() == case["attention_mask"]
    assert prompt.position_ids.tolist() == case["position_ids"]
    assert prompt.input_ids.dtype == prompt.attention_mask.dtype == prompt.position_ids.dtype == torch.long


@pytest.mark.parametrize("case", all_cases())
def test_chat_messages_from_query_and_history_give_the_published_ids(tokenizer, case):
    """The chat path (query, [(question, answer)], image or not) builds the same conversations as the fixture."""
    for conversation, ids, mask in zip(case["conversations"], case["input_ids"], case["attention_mask"]):
        turns = [m["content"] for m in conversation]
        history = list(zip(turns[:-1:2], turns[1:-1:2]))
        messages = chat_messages(turns[-1], history, with_image=conversation[0]["image"])
        assert conversation_ids(tokenizer, messages) == [token for token, keep in zip(ids, mask) if keep]


def test_the_agent_query_string_gives_the_published_ids(tokenizer):
    case = json.loads(CASE_FILES[1].read_text())["cases"]["agent_query"]
    assert case["agent_query"] and case["conversations"][0][0]["content"] == case["agent_query"]
    assert conversation_ids(tokenizer, chat_messages(case["agent_query"])) == case["input_ids"][0]


def test_the_documented_example_and_the_generation_prompt(tokenizer):
    query = "What does the button in this screenshot say?"
    assert conversation_ids(tokenizer, chat_messages(query)) == IMAGE_QUESTION_IDS
    without_prompt = conversation_ids(tokenizer, chat_messages(query), add_generation_prompt=False)
    assert without_prompt == IMAGE_QUESTION_IDS[:-1]


def test_special_token_text_in_a_message_stays_ordinary(tokenizer):
    ids = conversation_ids(tokenizer, [ChatMessage("user", "Hello <|user|> world")])
    assert ids == [151331, 151333, 151336, 198, 9703, 81959, 872, 91, 29, 1879, 151337]


def test_two_images_are_a_one_line_error(tokenizer):
    messages = [ChatMessage("user", "a", image=True), ChatMessage("assistant", "b"), ChatMessage("user", "c", True)]
    one_line_error(TooManyImagesError, lambda: conversation_ids(tokenizer, messages), "one image")


@pytest.mark.parametrize("query", ["", "  \n"])
def test_an_empty_query_is_a_one_line_error(query):
    one_line_error(EmptyQueryError, lambda: chat_messages(query), "empty")


def test_a_malformed_history_is_a_one_line_error():
    one_line_error(InvalidHistoryError, lambda: chat_messages("q", [("only a question",)]), "pair")


def test_an_unknown_role_is_refused():
    one_line_error(ValueError, lambda: ChatMessage("robot", "hi"), "robot")
