"""models/inputs.py and utils/preprocessing/processor.py: one typed input contract.

The processor reproduces the published inputs; the model's forward rejects misspelt keywords and inconsistent
images/masks with one-line errors; batches pad requests of different lengths, and a padded row's logits (prefill
and cached decode steps) equal the row run alone."""
from dataclasses import replace

import pytest
import torch
from PIL import Image

from cogvlm.models.inputs import (IGNORE_INDEX, ImageInputs, ImageTokenMismatchError, InvalidInputsError,
                                  MissingCrossImageError, MissingImageMasksError, ModelInputs)
from cogvlm.utils.checkpoint_io.loading import config_from_model_config, read_model_config
from cogvlm.utils.inference.generation import SamplingConfig, decode_one_token, generate, prefill
from cogvlm.utils.preprocessing.processor import Processor
from cogvlm.utils.preprocessing.tokenizer import LlamaTokenizer
from conftest import COGAGENT_TINY, COGVLM_TINY, case_inputs

ATOL = RTOL = 1e-5
PAD_ID = 0


def one_line(error) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def fixture_config(fixture):
    return config_from_model_config(read_model_config(fixture / "checkpoint"))


@pytest.fixture(scope="module")
def cogvlm_processor():
    return Processor.for_model(fixture_config(COGVLM_TINY), LlamaTokenizer.from_path(COGVLM_TINY), "chat")


# --- the processor -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", [COGVLM_TINY, COGAGENT_TINY])
def test_processor_reproduces_the_published_inputs_of_every_case(fixture):
    cases = torch.load(fixture / "cases.pt", weights_only=False)
    config = fixture_config(fixture)
    picture = Image.open(fixture / "image.png")
    for name, case in cases["cases"].items():
        processor = Processor.for_model(config, LlamaTokenizer.from_path(fixture), case["version"])
        inputs = processor(case["query"], case["history"], picture)
        for field in ("input_ids", "position_ids", "vision_expert_mask", "image_embed_mask"):
            assert torch.equal(getattr(inputs, field), case[field]), (name, field)
        torch.testing.assert_close(inputs.images.pixel_values, cases["image"]["pixel_values"], atol=0, rtol=0)
        if "cross_image" in cases:
            torch.testing.assert_close(inputs.images.cross_pixel_values, cases["cross_image"]["pixel_values"],
                                       atol=0, rtol=0)
        else:
            assert inputs.images.cross_pixel_values is None


def test_processor_without_an_image_makes_a_text_only_prompt(cogvlm_processor):
    inputs = cogvlm_processor("What is it?", [("Hi", "Hello")], None)
    assert inputs.images is None
    assert int(inputs.image_embed_mask.sum()) == int(inputs.vision_expert_mask.sum()) == 0
    assert inputs.input_ids[0, 0] == cogvlm_processor.tokenizer.bos_token_id
    assert len(inputs) == len(cogvlm_processor("What is it?", [("Hi", "Hello")],
                                               Image.open(COGVLM_TINY / "image.png"))) - (16 + 2)


def test_training_example_truncates_to_max_length(cogvlm_processor):
    picture = Image.open(COGVLM_TINY / "image.png")
    prompt = cogvlm_processor("What is it?", (), picture)
    example = cogvlm_processor.training_example("What is it?", "a very long answer indeed", (), picture,
                                                max_length=len(prompt) + 2)
    assert len(example) == len(prompt) + 2 and example.labels.shape == example.input_ids.shape
    assert example.labels[0, :len(prompt)].eq(IGNORE_INDEX).all() and example.labels[0, -2:].ne(IGNORE_INDEX).all()


# --- batching ------------------------------------------------------------------------------------------------------

def test_batch_left_pads_keeps_a_padding_mask_and_gathers_the_images_of_rows_that_have_one(cogvlm_processor):
    picture = Image.open(COGVLM_TINY / "image.png")
    rows = [cogvlm_processor("Describe it.", (), picture), cogvlm_processor("Hi", (), None),
            cogvlm_processor("Describe this image in much more detail, please.", (), picture)]
    batch = ModelInputs.batch(rows, PAD_ID)
    length = max(len(r) for r in rows)
    assert batch.input_ids.shape == (3, length) and batch.attention_mask.dtype == torch.bool
    for i, row in enumerate(rows):
        pad = length - len(row)
        assert batch.attention_mask[i].tolist() == [False] * pad + [True] * len(row)
        assert batch.input_ids[i, :pad].eq(PAD_ID).all() and batch.image_embed_mask[i, :pad].eq(0).all()
        again = batch.row(i)
        for field in ("input_ids", "position_ids", "vision_expert_mask", "image_embed_mask"):
            assert torch.equal(getattr(again, field), getattr(row, field)), (i, field)
        assert (again.images is None) == (row.images is None)
    assert len(batch.images) == 2                       # rows 0 and 2


def test_rows_given_one_image_object_share_its_pixels(cogvlm_processor):
    image = cogvlm_processor.images(Image.open(COGVLM_TINY / "image.png"))
    other = cogvlm_processor.images(Image.open(COGVLM_TINY / "image.png"))
    rows = [cogvlm_processor(query, (), picture) for query, picture in
            (("Describe it.", image), ("Hi", None), ("What colour?", image), ("Count.", other))]
    batch = ModelInputs.batch(rows, PAD_ID)
    assert len(batch.images) == 3 and len(batch.images.pixel_values) == 2         # slots 0 and 1 show image 0
    assert batch.images.slot_images.tolist() == [0, 0, 1]
    for i in (0, 2, 3):
        torch.testing.assert_close(batch.row(i).images.pixel_values, rows[i].images.pixel_values, atol=0, rtol=0)


def test_batch_of_equal_lengths_has_no_padding_mask(cogvlm_processor):
    row = cogvlm_processor("Hi", (), None)
    assert ModelInputs.batch([row, row], PAD_ID).attention_mask is None


def test_batch_refuses_rows_that_do_not_fit_together(cogvlm_processor):
    row = cogvlm_processor("Hi", (), None)
    with pytest.raises(InvalidInputsError, match="at least one row"):
        ModelInputs.batch([], PAD_ID)
    with pytest.raises(InvalidInputsError, match="single requests"):
        ModelInputs.batch([ModelInputs.batch([row, row], PAD_ID)], PAD_ID)
    with pytest.raises(InvalidInputsError, match="every row of a batch has labels or none"):
        ModelInputs.batch([row, replace(row, labels=row.input_ids)], PAD_ID)
    pixels = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InvalidInputsError, match="all or none"):
        ImageInputs.concat([ImageInputs(pixels, pixels), ImageInputs(pixels)])


def _cases_batch(cases, names, images):
    rows = [case_inputs(cases["cases"][name], images) for name in names]
    return rows, ModelInputs.batch(rows, PAD_ID)


@pytest.mark.parametrize("fixture", ["cogvlm", "cogagent"])
def test_a_left_padded_row_has_the_logits_of_the_row_alone(fixture, request):
    model, cases = request.getfixturevalue(f"{fixture}_model"), request.getfixturevalue(f"{fixture}_cases")
    images = ImageInputs(cases["image"]["pixel_values"], cases.get("cross_image", {}).get("pixel_values"))
    rows, batch = _cases_batch(cases, ["chat_describe", "base_describe", "chat_history"], images)
    with torch.no_grad():
        logits = model.forward_inputs(batch)[0]                                          # (3, L, vocab)
    for i, row in enumerate(rows):
        alone = cases["cases"][["chat_describe", "base_describe", "chat_history"][i]]["logits"]    # (1, L_i, vocab)
        torch.testing.assert_close(logits[i:i + 1, -len(row):], alone, atol=ATOL, rtol=RTOL)
    assert torch.isfinite(logits).all()                 # padding queries see themselves: no NaN anywhere


def test_an_integer_padding_mask_means_the_same_as_a_boolean_one(cogvlm_model, cogvlm_cases):
    images = ImageInputs(cogvlm_cases["image"]["pixel_values"])
    _, batch = _cases_batch(cogvlm_cases, ["chat_describe", "base_describe"], images)
    with torch.no_grad():
        as_bool = cogvlm_model.forward_inputs(batch)[0]
        as_long = cogvlm_model.forward_inputs(replace(batch, attention_mask=batch.attention_mask.long()))[0]
    torch.testing.assert_close(as_long, as_bool, atol=0, rtol=0)


def test_a_row_without_an_image_batches_with_rows_that_have_one(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    text_row = ModelInputs(case["input_ids"][:, 19:], torch.arange(len(case["input_ids"][0]) - 19)[None],
                           torch.zeros_like(case["input_ids"][:, 19:]), torch.zeros_like(case["input_ids"][:, 19:]))
    image_row = case_inputs(cogvlm_cases["cases"]["chat_history"], ImageInputs(cogvlm_cases["image"]["pixel_values"]))
    batch = ModelInputs.batch([text_row, image_row], PAD_ID)
    with torch.no_grad():
        logits = cogvlm_model.forward_inputs(batch)[0]
        text_alone = cogvlm_model.forward_inputs(text_row)[0]
    torch.testing.assert_close(logits[0, -len(text_row):], text_alone[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits[1], cogvlm_cases["cases"]["chat_history"]["logits"][0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("fixture", ["cogvlm", "cogagent"])
def test_cached_decode_steps_of_a_padded_batch_equal_each_row_alone(fixture, request):
    """Prefill a left-padded batch, then decode the published tokens of each row: the padding stays masked."""
    model, cases = request.getfixturevalue(f"{fixture}_model"), request.getfixturevalue(f"{fixture}_cases")
    images = ImageInputs(cases["image"]["pixel_values"], cases.get("cross_image", {}).get("pixel_values"))
    names = ["chat_describe", "chat_history"]
    rows, batch = _cases_batch(cases, names, images)
    generations = [cases["cases"][name]["generation"] for name in names]
    steps = min(len(g["step_logits"]) for g in generations)
    cache = model.new_kv_cache(batch.batch_size, len(batch) + steps)
    with torch.no_grad():
        logits = [prefill(model, batch, cache)]                                         # (2, vocab)
        positions = torch.stack([row.position_ids[0, -1] for row in rows])[:, None]     # (2, 1)
        for step in range(steps - 1):
            tokens = torch.tensor([[g["new_token_ids"][step]] for g in generations])    # (2, 1)
            positions = positions + 1
            logits.append(decode_one_token(model, tokens, positions, cache))
    logits = torch.stack(logits, 1)                                                    # (2, steps, vocab)
    for i, generation in enumerate(generations):
        torch.testing.assert_close(logits[i], generation["step_logits"][:steps], atol=ATOL, rtol=RTOL)


# --- the forward's checks ------------------------------------------------------------------------------------------

def test_misspelt_keywords_are_a_type_error_naming_them(cogvlm_model, cogvlm_cases):
    """Once accepted silently (and the logits changed by up to 5.8)."""
    case = cogvlm_cases["cases"]["chat_describe"]
    image = ImageInputs(cogvlm_cases["image"]["pixel_values"])
    with pytest.raises(TypeError, match="'image'"):
        cogvlm_model(case["input_ids"], case["position_ids"], image=image, image_embed_mask=case["image_embed_mask"],
                     vision_expert_mask=case["vision_expert_mask"])
    with pytest.raises(TypeError, match="'vision_expert_masks'"):
        cogvlm_model(case["input_ids"], case["position_ids"], images=image, image_embed_mask=case["image_embed_mask"],
                     vision_expert_masks=case["vision_expert_mask"])


@pytest.mark.parametrize("missing", ["image_embed_mask", "vision_expert_mask", "both"])
def test_images_without_masks_are_a_clear_error(cogvlm_model, cogvlm_cases, missing):
    """Once an AttributeError from inside mlp_adapter.py."""
    case = cogvlm_cases["cases"]["chat_describe"]
    masks = {"image_embed_mask": case["image_embed_mask"], "vision_expert_mask": case["vision_expert_mask"]}
    for name in masks:
        if missing in (name, "both"):
            masks[name] = None
    with pytest.raises(MissingImageMasksError) as error:
        cogvlm_model(case["input_ids"], case["position_ids"], images=ImageInputs(cogvlm_cases["image"]["pixel_values"]),
                     **masks)
    message = one_line(error)
    assert "images were given without" in message and (missing in message or missing == "both")


def test_masks_that_do_not_match_the_images_are_a_clear_error(cogvlm_model, cogvlm_cases):
    case = cogvlm_cases["cases"]["chat_describe"]
    inputs = case_inputs(case, ImageInputs(cogvlm_cases["image"]["pixel_values"]))
    two_images = ImageInputs(inputs.images.pixel_values.expand(2, -1, -1, -1))
    with pytest.raises(ImageTokenMismatchError) as error:
        cogvlm_model.forward_inputs(replace(inputs, images=two_images))
    assert "marks 18 image positions, but 2 image(s) of 18 positions each were given (36)" in one_line(error)
    with pytest.raises(ImageTokenMismatchError, match="marks 18 image positions, but 0 image"):
        cogvlm_model.forward_inputs(replace(inputs, images=None))
    short_expert = inputs.vision_expert_mask.clone()
    short_expert[0, int(short_expert[0].nonzero()[0])] = 0                          # boi left to the language expert
    with pytest.raises(ImageTokenMismatchError, match="vision_expert_mask marks 16 image positions"):
        cogvlm_model.forward_inputs(replace(inputs, vision_expert_mask=short_expert))
    with pytest.raises(InvalidInputsError, match="position_ids has shape"):
        cogvlm_model.forward_inputs(replace(inputs, position_ids=inputs.position_ids[:, :-1]))


def test_cogagent_without_its_cross_image_is_a_clear_error(cogagent_model, cogagent_cases):
    """Once silently answered without cross-attention."""
    case = cogagent_cases["cases"]["chat_describe"]
    inputs = case_inputs(case, ImageInputs(cogagent_cases["image"]["pixel_values"]))
    with pytest.raises(MissingCrossImageError) as error:
        cogagent_model.forward_inputs(inputs)
    assert "cross resolution" in one_line(error)
    with pytest.raises(MissingCrossImageError):
        next(generate(cogagent_model, inputs, SamplingConfig(max_length=len(inputs) + 2)))


def test_decode_steps_and_text_only_prompts_need_no_images(cogagent_model, cogagent_cases):
    case = cogagent_cases["cases"]["chat_describe"]
    text_only = ModelInputs(case["input_ids"][:, 19:], torch.arange(len(case["input_ids"][0]) - 19)[None],
                            torch.zeros_like(case["input_ids"][:, 19:]), torch.zeros_like(case["input_ids"][:, 19:]))
    tokens = list(generate(cogagent_model, text_only, SamplingConfig(max_length=len(text_only) + 3)))
    assert len(tokens) <= 3 and all(isinstance(t, int) for t in tokens)


def test_generate_takes_one_request(cogvlm_model, cogvlm_processor):
    row = cogvlm_processor("Hi", (), None)
    with pytest.raises(ValueError, match="one request"):
        next(generate(cogvlm_model, ModelInputs.batch([row, row], PAD_ID), SamplingConfig(max_length=50)))


def test_the_embedded_model_reads_its_captchas_through_the_processor():
    """End to end on the trained embedded model: evaluate.py's inputs (processor, then generation) give the labels."""
    from cogvlm import PACKAGE_ROOT
    from cogvlm.finetune_demo.evaluate import evaluate
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.training.data import CAPTCHA_QUERY, captcha_samples

    checkpoint = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
    chat = ChatModel.from_pretrained(checkpoint, str(checkpoint / "tokenizer.model"))
    examples = checkpoint / "examples"
    row, skipped, pairs = evaluate(chat, examples, captcha_samples(examples, CAPTCHA_QUERY), max_new_tokens=8)
    assert skipped == 0 and row.count == 3 and len(pairs) == 3 and row.exact == 1.0
    assert all(label == prediction for label, prediction in pairs)
