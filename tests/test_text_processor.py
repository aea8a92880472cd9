"""Tests for cogvlm.utils.preprocessing.text_processor: exact parity with the reference fixtures plus rule-based checks."""
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cogvlm.utils.preprocessing.text_processor import (
    IMAGE_SLOT,
    TEXT_PROCESSOR_VERSIONS,
    EmptyQueryError,
    InvalidHistoryError,
    TextProcessor,
    build_prompt,
    remove_image_slots,
)
from cogvlm.models.inputs import ModelInputs
from cogvlm.utils.preprocessing.tokenizer import LlamaTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = ("cogvlm-tiny", "cogagent-tiny")
TENSOR_FIELDS = ("input_ids", "vision_expert_mask", "image_embed_mask", "position_ids")
TOKENIZER = LlamaTokenizer.from_path(FIXTURES / "cogvlm-tiny")


def _load_cases():
    params = []
    for name in FIXTURE_NAMES:
        data = torch.load(FIXTURES / name / "cases.pt", weights_only=False)
        for case_name in data["case_order"]:
            params.append(pytest.param(data["cases"][case_name], data["image_length"], id=f"{name}-{case_name}"))
    return params


FIXTURE_CASES = _load_cases()


@pytest.mark.parametrize(("case", "image_length"), FIXTURE_CASES)
def test_prompt_matches_fixture(case, image_length):
    assert build_prompt(case["version"], case["query"], case["history"]) == case["prompt"]


@pytest.mark.parametrize(("case", "image_length"), FIXTURE_CASES)
def test_tensors_match_fixture(case, image_length):
    inputs = TextProcessor(TOKENIZER, case["version"], image_length)(case["query"], case["history"])
    assert len(inputs) == case["input_ids"].shape[1]
    for field in TENSOR_FIELDS:
        ours, reference = getattr(inputs, field), case[field]
        assert ours.dtype == reference.dtype == torch.int64, field
        assert torch.equal(ours, reference), field
    # The published rotary mask (patches only) is the expert mask without boi; the model needs no separate one.
    assert torch.equal(_patches(inputs), case["image_rope_mask"])
    assert inputs.images is None and inputs.attention_mask is None and inputs.labels is None


def test_text_only_prompt_is_the_image_prompt_without_its_slot():
    processor = TextProcessor(TOKENIZER, "chat", 4)
    with_image, text_only = processor("Where is it?", [("Hi", "Hello")]), processor("Where is it?", [("Hi", "Hello")],
                                                                                  with_image=False)
    slot = with_image.image_embed_mask[0].bool()
    assert text_only.input_ids[0].tolist() == with_image.input_ids[0][~slot].tolist()
    assert text_only.position_ids[0].tolist() == list(range(len(text_only)))
    assert int(text_only.vision_expert_mask.sum()) == int(text_only.image_embed_mask.sum()) == 0


def _patches(inputs: ModelInputs) -> torch.Tensor:
    """The patch positions: the vision-expert positions after boi (the first of them)."""
    rope = inputs.vision_expert_mask.clone()
    rope[0, int(rope[0].nonzero()[0])] = 0
    return rope


def test_response_separators():
    expected = {"base": None, "chat": "[/INST]", "chat_old": " Answer:", "vqa": " Short answer:"}
    for version, separator in expected.items():
        assert TextProcessor(TOKENIZER, version, 4).response_separator == separator


def test_unknown_version_lists_valid_ones():
    with pytest.raises(ValueError, match="chat_old") as info:
        build_prompt("chatty", "hi")
    assert "chatty" in str(info.value)
    with pytest.raises(ValueError):
        TextProcessor(TOKENIZER, "chatty", 4)


@pytest.mark.parametrize("bad_length", [0, -3, 2.5])
def test_rejects_bad_image_length(bad_length):
    with pytest.raises(ValueError, match="image_length"):
        TextProcessor(TOKENIZER, "chat", bad_length)


def _check_image_layout(inputs: ModelInputs, image_length: int) -> None:
    """Rules (not copied outputs): mask sizes, contiguity and position ids."""
    embed, expert, rope = (m[0] for m in (inputs.image_embed_mask, inputs.vision_expert_mask, _patches(inputs)))
    assert int(embed.sum()) == image_length + 2
    assert int(expert.sum()) == image_length + 1
    assert int(rope.sum()) == image_length
    boi = int(embed.nonzero()[0])
    eoi = boi + image_length + 1
    assert embed[boi : eoi + 1].all() and expert[boi:eoi].all() and rope[boi + 1 : eoi].all()
    assert not expert[eoi] and not rope[boi] and not rope[eoi]
    assert (inputs.input_ids[0, boi : eoi + 1] == 0).all()

    positions = inputs.position_ids[0]
    assert positions[0] == 0
    # All patches share one position ...
    patch_positions = positions[rope.bool()]
    assert (patch_positions == patch_positions[0]).all()
    # ... and once each patch run is collapsed to one token, positions count up by 1.
    later_patch = rope.bool().clone()
    later_patch[boi + 1] = False
    collapsed = positions[~later_patch]
    assert torch.equal(collapsed, torch.arange(len(collapsed)))


@pytest.mark.parametrize("version", TEXT_PROCESSOR_VERSIONS)
@pytest.mark.parametrize("image_length", [1, 4, 9])
def test_other_image_lengths(version, image_length):
    history = [("What is here?", "A box.")]
    inputs = TextProcessor(TOKENIZER, version, image_length)("Where is it?", history)
    _check_image_layout(inputs, image_length)
    text_len = len(TOKENIZER.encode(build_prompt(version, "Where is it?", history).split(IMAGE_SLOT)[1]))
    assert len(inputs) == 1 + image_length + 2 + text_len
    for field in TENSOR_FIELDS:
        tensor = getattr(inputs, field)
        assert tensor.shape == (1, len(inputs)) and tensor.dtype == torch.int64


@pytest.mark.parametrize("query", ["", "   ", "\n\t", IMAGE_SLOT, f" {IMAGE_SLOT} "])
def test_empty_query_rejected(query):
    with pytest.raises(EmptyQueryError, match="empty"):
        TextProcessor(TOKENIZER, "chat", 4)(query)


def test_image_slot_cannot_be_injected():
    processor = TextProcessor(TOKENIZER, "chat_old", 4)
    history = [(f"look {IMAGE_SLOT}", f"<E{IMAGE_SLOT}OI>answer")]
    query = f"what is <E{IMAGE_SLOT}OI>this{IMAGE_SLOT}?"
    prompt = build_prompt("chat_old", query, history)
    assert prompt.count(IMAGE_SLOT) == 1 and prompt.startswith(IMAGE_SLOT)
    assert "what is this?" in prompt
    _check_image_layout(processor(query, history), 4)


def test_remove_image_slots_is_exhaustive():
    assert remove_image_slots("<E<EOI>OI>x<<EOI>EOI>") == "x"


@pytest.mark.parametrize("history", [[("only a question",)], ["a string"], [("q", 3)], [None]])
def test_malformed_history(history):
    with pytest.raises(InvalidHistoryError):
        build_prompt("chat", "query", history)


def test_history_ignored_by_base_and_vqa():
    history = [("q", "a")]
    for version in ("base", "vqa"):
        assert build_prompt(version, "query", history) == build_prompt(version, "query")
    for version in ("chat", "chat_old"):
        assert build_prompt(version, "query", history) != build_prompt(version, "query")


def test_braces_in_user_text_are_literal():
    assert build_prompt("chat_old", "{query} {0}", [("{question}", "{answer}")]) == (
        "<EOI>Question: {question} Answer: {answer}\nQuestion: {query} {0} Answer:"
    )


_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
# Mix in fragments that could assemble into an image slot.
_user_text = st.lists(st.one_of(_printable, st.sampled_from([IMAGE_SLOT, "<E", "OI>", "<"])), max_size=5).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(TEXT_PROCESSOR_VERSIONS),
    query=_user_text,
    history=st.lists(st.tuples(_user_text, _user_text), max_size=3),
)
def test_property_single_image_slot(version, query, history):
    assume(remove_image_slots(query).strip())
    prompt = build_prompt(version, query, history)
    assert prompt.count(IMAGE_SLOT) == 1 and prompt.startswith(IMAGE_SLOT)
    image_length = 3
    inputs = TextProcessor(TOKENIZER, version, image_length)(query, history)
    _check_image_layout(inputs, image_length)
