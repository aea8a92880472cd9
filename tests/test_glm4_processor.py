"""Tests for cogvlm.utils.preprocessing.glm4_processor: a chat turn becomes the published (unexpanded) prompt and
pixels, handed to the model's expansion; the expansion itself is the model's (models/glm4v), replaced here by a
recorder."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.preprocessing.glm4_processor import GLM4Processor
from cogvlm.utils.preprocessing.glm4_tokenizer import GLM4Tokenizer
from cogvlm.utils.preprocessing.image_processor import ImageProcessor

FIXTURES = Path(__file__).parent / "fixtures"
GLM4V_TINY = FIXTURES / "glm4v-tiny"
IMAGE_SIZE = 112                # vision_config.image_size of the tiny fixtures
CASES = json.loads((GLM4V_TINY / "template_cases.json").read_text())["cases"]


class Recorder:
    """Stands in for the model's expansion: records what the processor hands over."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, images):
        self.calls.append((prompt, images))
        return "model inputs"


@pytest.fixture(scope="module")
def tokenizer():
    return GLM4Tokenizer.from_path(FIXTURES / "glm4-tokenizer" / "tokenizer.model")


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def processor(tokenizer, recorder):
    return GLM4Processor(tokenizer, ImageProcessor(IMAGE_SIZE), recorder)


def test_a_picture_gives_the_published_prompt_and_pixels(processor, recorder):
    """The image_question case: its ids, mask and positions, and the published tokenizer's pixels, bit for bit."""
    case = CASES["image_question"]
    with Image.open(GLM4V_TINY / "image.png") as picture:
        assert processor(case["conversations"][0][0]["content"], (), picture) == "model inputs"
    (prompt, images), = recorder.calls
    assert prompt.input_ids.tolist() == case["input_ids"]
    assert prompt.attention_mask.tolist() == case["attention_mask"]
    assert prompt.position_ids.tolist() == case["position_ids"]
    assert isinstance(images, ImageInputs) and images.cross_pixel_values is None
    assert torch.equal(images.pixel_values, torch.load(GLM4V_TINY / "pixel_values.pt", weights_only=True))


def test_history_and_a_prepared_image(processor, recorder):
    """ImageInputs prepared once are passed through as they are; the image stays on the first user turn."""
    case = CASES["image_history"]
    turns = [message["content"] for message in case["conversations"][0]]
    prepared = ImageInputs(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    processor(turns[-1], list(zip(turns[:-1:2], turns[1:-1:2])), prepared)
    (prompt, images), = recorder.calls
    assert prompt.input_ids.tolist() == case["input_ids"] and images is prepared


def test_no_image_gives_the_text_only_prompt(processor, recorder):
    case = CASES["text_only"]
    processor(case["conversations"][0][0]["content"])
    (prompt, images), = recorder.calls
    assert prompt.input_ids.tolist() == case["input_ids"] and images is None


def test_what_chat_reads_from_it(processor):
    assert processor.version == "glm4"
    assert processor.pad_id == 151329
    assert processor.stop_token_ids == (151329, 151336, 151338)
