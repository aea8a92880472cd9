"""GLM-4V-9B and CogAgent-9B-20241220 (models/glm4v.py, models/glm4.py) against the published Hugging Face code's
outputs on the tiny reference fixtures: pixels, image-slot expansion, vision tower, embeddings, logits, greedy
tokens, the left-padded batch row by row; and the published SAT checkpoint layout."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from glm4v_reference import (COGAGENT9B_TINY, GLM4V_TINY, build_fixture_model, case_images, case_inputs,
                             load_cases, read_keys, regenerate_hf_weights)

FIXTURES = {"glm4v": GLM4V_TINY, "cogagent9b": COGAGENT9B_TINY}
CASES = {name: load_cases(path)["case_order"] for name, path in FIXTURES.items()}
PARAMS = [(fixture, case) for fixture, names in CASES.items() for case in names]
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reference():
    """fixture name -> (model, config, cases), built once per module."""
    built = {}
    for name, path in FIXTURES.items():
        model, config = build_fixture_model(path)
        built[name] = (model, config, load_cases(path))
    return built


def real_positions(inputs) -> torch.Tensor:
    """(B, S) bool: the tokens that are not padding (pad rows differ from the published code by design)."""
    if inputs.attention_mask is None:
        return torch.ones(inputs.input_ids.shape, dtype=torch.bool)
    return inputs.attention_mask


# --- configuration and checkpoint layout --------------------------------------------------------------------------

def test_published_configs_hold_the_published_sizes():
    from cogvlm.models.config import COGAGENT_9B_CONFIG, GLM4V_9B_CONFIG, PUBLISHED_GLM4V_CONFIGS

    lang = GLM4V_9B_CONFIG.language
    assert (lang.hidden_size, lang.num_layers, lang.num_attention_heads, lang.head_dim, lang.num_kv_groups,
            lang.inner_hidden_size, lang.vocab_size) == (4096, 40, 32, 128, 2, 13696, 151552)
    assert (lang.rotary_dim, lang.rope_layout) == (64, "interleaved")
    assert GLM4V_9B_CONFIG.image_length == 1600 and GLM4V_9B_CONFIG.vision.num_patches == 6400
    assert GLM4V_9B_CONFIG.scaling_factor == 8
    assert COGAGENT_9B_CONFIG.language.rope_layout == "rotate_half"
    assert dataclasses.replace(COGAGENT_9B_CONFIG.language, rope_layout="interleaved") == lang
    assert set(PUBLISHED_GLM4V_CONFIGS) == {"glm-4v-9b", "cogagent-9b-20241220"}


@pytest.mark.parametrize("fixture", FIXTURES)
def test_model_config_round_trip_picks_the_model_class(fixture):
    from cogvlm.models.config import TINY_COGAGENT_9B_CONFIG, TINY_GLM4V_CONFIG
    from cogvlm.utils.checkpoint_io.loading import config_from_model_config
    from glm4v_reference import fixture_config

    config = fixture_config(FIXTURES[fixture])
    assert config == {"glm4v": TINY_GLM4V_CONFIG, "cogagent9b": TINY_COGAGENT_9B_CONFIG}[fixture]
    model_config = config.to_model_config()
    assert model_config["model_class"] == "GLM4VModel"
    assert config_from_model_config(model_config) == config


@pytest.mark.parametrize("fixture", FIXTURES)
def test_hf_config_round_trip_gives_the_published_config_json(fixture):
    import json

    from glm4v_reference import fixture_config

    published = json.loads((FIXTURES[fixture] / "config.json").read_text())
    del published["_name_or_path"]
    assert fixture_config(FIXTURES[fixture]).to_hf_config(torch_dtype="float32") == published


@pytest.mark.parametrize("key,value", [("add_bias_linear", True), ("rmsnorm", False), ("tie_word_embeddings", True)])
def test_an_hf_config_this_model_cannot_compute_is_a_one_line_error(key, value):
    import json

    from cogvlm.models.config import GLM4VConfig
    from conftest import one_line_error

    hf = json.loads((GLM4V_TINY / "config.json").read_text())
    hf[key] = value
    one_line_error(ValueError, lambda: GLM4VConfig.from_hf_config(hf), key, "not GLM-4V's")


def test_a_model_config_without_rope_layout_means_sat_rotate_half():
    from cogvlm.models.config import TINY_GLM4V_CONFIG, GLM4VConfig

    model_config = TINY_GLM4V_CONFIG.to_model_config()
    del model_config["rope_layout"]
    assert GLM4VConfig.from_model_config(model_config).language.rope_layout == "rotate_half"


def test_unknown_rope_layout_is_a_one_line_error():
    from cogvlm.models.config import GLM4LanguageConfig
    from conftest import one_line_error

    one_line_error(ValueError, lambda: GLM4LanguageConfig(rope_layout="neox"), "rope_layout", "interleaved")


def sat_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of SAT 0.4.12's official GLM4VModel at the fixture's size (fixtures/glm4v-tiny/sat_keys.txt)."""
    import json

    lines = (GLM4V_TINY / "sat_keys.txt").read_text().splitlines()
    return {key: tuple(json.loads(shape)) for key, shape in (line.split("\t") for line in lines)}


def test_sat_keys_fixture_is_what_sats_official_glm4v_model_holds():
    """fixtures/glm4v-tiny/sat_keys.txt against SAT 0.4.12's own GLM4VModel, built at the fixture's size."""
    import argparse

    from sat.model.official.glm4v_model import GLM4VModel as SatGLM4VModel

    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.models.glm4 import decoder_args

    eva_args = {**TINY_GLM4V_CONFIG.vision.to_model_config(), "model_parallel_size": 1}
    runtime = dict(world_size=1, rank=0, local_rank=0, deepspeed=False, bf16=False, fp16=False, mode="inference",
                   device="cpu", eva_args=eva_args, image_length=TINY_GLM4V_CONFIG.image_length, proj_hidden_size=None)
    args = argparse.Namespace(**vars(decoder_args(TINY_GLM4V_CONFIG.language)), **runtime)
    with torch.device("meta"):
        official = SatGLM4VModel(args)
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == sat_layout()


def test_state_dict_speaks_the_published_sat_layout():
    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.utils.checkpoint_io.loading import build_model

    model = build_model(TINY_GLM4V_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == sat_layout()


def test_name_table_maps_every_hf_tensor_onto_the_sat_layout_and_back():
    from cogvlm.utils.checkpoint_io.glm4v_names import hf_to_sat, sat_to_hf

    from cogvlm.models.config import TINY_GLM4V_CONFIG

    hf = regenerate_hf_weights(GLM4V_TINY)
    assert [name for name, _, _ in read_keys(GLM4V_TINY)] == list(hf)
    sat = hf_to_sat(hf, TINY_GLM4V_CONFIG)
    assert {k: tuple(v.shape) for k, v in sat.items()} == sat_layout()
    back = sat_to_hf(sat, TINY_GLM4V_CONFIG)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)
    # the fused SwiGLU input projection: gate rows first (SAT's dense_h_to_4h), up rows second (mixins.mlp.w2)
    fused = hf["transformer.encoder.layers.1.mlp.dense_h_to_4h.weight"]
    assert torch.equal(sat["transformer.layers.1.mlp.dense_h_to_4h.weight"], fused[:96])
    assert torch.equal(sat["mixins.mlp.w2.1.weight"], fused[96:])


def test_name_table_is_strict():
    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.utils.checkpoint_io.glm4v_names import NameTableError, hf_to_sat

    hf = regenerate_hf_weights(GLM4V_TINY)
    hf["transformer.vision.extra"] = hf.pop("transformer.vision.boi")
    with pytest.raises(NameTableError, match="transformer.vision.boi.*transformer.vision.extra"):
        hf_to_sat(hf, TINY_GLM4V_CONFIG)


def test_a_folder_without_the_rotary_buffer_gets_the_published_one():
    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.utils.checkpoint_io.glm4v_names import hf_to_sat

    hf = regenerate_hf_weights(GLM4V_TINY)
    published = hf.pop("transformer.rotary_pos_emb.inv_freq")            # the recipe's value: 1 / 10000^(2i/8)
    assert torch.equal(hf_to_sat(hf, TINY_GLM4V_CONFIG)["mixins.attn.rotary_pos_emb.inv_freq"], published)


def test_save_and_load_model_round_trip(reference, tmp_path):
    from cogvlm.utils.checkpoint_io.loading import load_model, save_model
    from cogvlm.utils.checkpoint_io.sat_layout import read_state_dict, states_file

    model, config, cases = reference["cogagent9b"]
    save_model(model, tmp_path / "ckpt")
    assert set(read_state_dict(states_file(tmp_path / "ckpt"))) == set(sat_layout())
    loaded, loaded_config = load_model(tmp_path / "ckpt")
    assert type(loaded).__name__ == "GLM4VModel" and loaded_config == config
    inputs = case_inputs(cases, cases["cases"]["image_question"], config)
    with torch.no_grad():
        assert torch.equal(loaded.forward_inputs(inputs)[0], model.forward_inputs(inputs)[0])


# --- inputs -------------------------------------------------------------------------------------------------------

def test_pixels_match_the_published_preprocessing():
    from cogvlm.utils.preprocessing.image_processor import ImageProcessor

    cases = load_cases(GLM4V_TINY)
    processor = ImageProcessor(112)
    picture = Image.open(GLM4V_TINY / "image.png").convert("RGB")
    torch.testing.assert_close(processor(picture), cases["image"]["pixel_values"], atol=1e-6, rtol=0)
    batch = cases["cases"]["batch_left_pad"]["images"]
    flipped = processor(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    torch.testing.assert_close(torch.cat([processor(picture), flipped]), batch, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fixture,case", PARAMS)
def test_expanded_inputs_match_the_published_forward(reference, fixture, case):
    _, config, cases = reference[fixture]
    data = cases["cases"][case]
    inputs = case_inputs(cases, data, config)
    assert torch.equal(inputs.position_ids, data["position_ids_expanded"])
    real = real_positions(inputs)
    if data["boi_index"] is not None:               # text-only: the published mask is expanded as if for an image
        assert torch.equal(real.long(), data["model_attention_mask"])
        for row, boi in enumerate(data["boi_index"]):
            slot = inputs.image_embed_mask[row].nonzero().flatten()
            # every row grows by the same image_length - 1, so its left padding and boi index stay
            assert slot.tolist() == list(range(boi, boi + config.image_length + 2))
    else:
        assert not inputs.image_embed_mask.any() and inputs.images is None


def test_expansion_keeps_boi_and_eoi_positions_and_shares_one_for_the_image():
    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.models.inputs import ImageInputs
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders

    ids = torch.tensor([[7, 8, 151339, 151329, 151340, 9]])
    inputs = expand_image_placeholders(ids, TINY_GLM4V_CONFIG, ImageInputs(torch.zeros(1, 3, 112, 112)))
    assert inputs.position_ids.tolist() == [[0, 1, 2] + [3] * 16 + [4, 5]]
    assert inputs.input_ids[0, :3].tolist() == [7, 8, 151339] and inputs.input_ids[0, -2:].tolist() == [151340, 9]
    assert inputs.image_embed_mask.tolist() == [[0, 0] + [1] * 18 + [0]]
    assert inputs.vision_expert_mask.tolist() == [[0, 0] + [1] * 17 + [0, 0]]


@pytest.mark.parametrize("ids,images,fragment", [
    ([[1, 151339, 151329, 151340, 151339, 151329, 151340]], 1, "one image"),
    ([[1, 151339, 151329, 151329, 151340]], 1, "one token between"),
    ([[1, 151339, 151329, 151340]], 0, "1 image placeholder(s) but 0 image(s)"),
    ([[1, 2, 3]], 1, "0 image placeholder(s) but 1 image(s)"),
])
def test_bad_placeholders_are_one_line_errors(ids, images, fragment):
    from cogvlm.models.config import TINY_GLM4V_CONFIG
    from cogvlm.models.inputs import ImageInputs, InvalidInputsError
    from cogvlm.utils.preprocessing.image_placeholders import expand_image_placeholders
    from conftest import one_line_error

    pixels = ImageInputs(torch.zeros(images, 3, 112, 112)) if images else None
    one_line_error(InvalidInputsError, lambda: expand_image_placeholders(torch.tensor(ids), TINY_GLM4V_CONFIG, pixels),
                   fragment)


# --- parity with the published forward ----------------------------------------------------------------------------

@pytest.mark.parametrize("fixture,case", [p for p in PARAMS if p[1] != "text_only"])
def test_vision_tower_matches(reference, fixture, case):
    model, _, cases = reference[fixture]
    data = cases["cases"][case]
    images = case_images(cases, data)
    image = model.get_mixin("image")
    vision = data["vision"]
    with torch.no_grad():
        torch.testing.assert_close(image.encoder(images.pixel_values), vision["vit_output"][:, 1:], **TOLERANCE)
        conv = image.adapter_input(images)
        torch.testing.assert_close(conv, vision["conv_output"].flatten(2).transpose(1, 2), **TOLERANCE)
        torch.testing.assert_close(image.adapter(conv), vision["glu_output"], **TOLERANCE)
        torch.testing.assert_close(image.embed_images(images), vision["image_features"], **TOLERANCE)


@pytest.mark.parametrize("fixture,case", PARAMS)
def test_forward_matches(reference, fixture, case):
    """Spliced embeddings, final hidden states, logits and argmax at every real position of every row."""
    model, config, cases = reference[fixture]
    data = cases["cases"][case]
    inputs = case_inputs(cases, data, config)
    real = real_positions(inputs)
    captured = {}
    hook = model.get_mixin("lm").lm_head.register_forward_hook(lambda m, args, out: captured.update(final=args[0]))
    try:
        with torch.no_grad():
            embeddings = model.get_mixin("image").word_embedding_forward(
                inputs.input_ids, None, images=inputs.images, image_embed_mask=inputs.image_embed_mask)
            logits = model.forward_inputs(inputs)[0]                                  # (B, S, vocab)
    finally:
        hook.remove()
    torch.testing.assert_close(embeddings[real], data["input_embeddings"][real], **TOLERANCE)
    torch.testing.assert_close(captured["final"][real], data["final_hidden"][real], **TOLERANCE)
    subset = cases["vocab_subset"]
    torch.testing.assert_close(logits[:, -1, subset], data["logits_last_subset"], **TOLERANCE)
    head = data["logits_subset_head"]
    torch.testing.assert_close(logits[..., subset[:head.shape[-1]]][real], head[real], **TOLERANCE)
    assert torch.equal(logits.argmax(-1)[real], data["argmax"][real])


@pytest.mark.parametrize("fixture,case", [p for p in PARAMS if p[1] != "batch_left_pad"])
def test_greedy_generation_matches(reference, fixture, case):
    from cogvlm.utils.inference.generation import SamplingConfig, generate

    model, config, cases = reference[fixture]
    data = cases["cases"][case]
    inputs = case_inputs(cases, data, config)
    expected = data["generation"]["new_token_ids"][0].tolist()
    sampling = SamplingConfig(max_length=len(inputs) + len(expected), top_k=1)
    assert list(generate(model, inputs, sampling, config.eos_token_ids)) == expected


@pytest.mark.parametrize("fixture", FIXTURES)
def test_engine_batch_matches_row_by_row(reference, fixture):
    """The left-padded batch case through the continuous-batching engine: each row's tokens and step logits."""
    from cogvlm.utils.inference.engine import Request, collect, generate_batch
    from cogvlm.utils.inference.generation import SamplingConfig

    model, config, cases = reference[fixture]
    data = cases["cases"]["batch_left_pad"]
    batch = case_inputs(cases, data, config)
    generation = data["generation"]
    steps: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    subset = cases["vocab_subset"]
    requests = [Request(batch.row(row), SamplingConfig(max_length=len(batch.row(row)) + 8, top_k=1),
                        config.eos_token_ids) for row in range(2)]
    results = collect(generate_batch(model, requests, on_logits=lambda rid, logits: steps[rid].append(logits)))
    for row in range(2):
        assert results[row][0] == generation["new_token_ids"][row].tolist()
        step_logits = torch.stack(steps[row])[:, subset]                              # (steps, 1024)
        torch.testing.assert_close(step_logits, generation["step_logits_subset"][:, row], **TOLERANCE)


def test_a_batch_mixing_image_and_text_only_rows_equals_the_rows_alone(reference):
    """The published tokenizer refuses such a batch; here each row's logits are those of the row run alone."""
    from cogvlm.models.inputs import ModelInputs

    model, config, cases = reference["glm4v"]
    names = ("image_history", "text_only", "non_ascii")
    rows = [case_inputs(cases, cases["cases"][name], config) for name in names]
    batch = ModelInputs.batch(rows, config.pad_token_id)
    with torch.no_grad():
        logits = model.forward_inputs(batch, last_token_only=True)[0][:, -1]             # (3, vocab)
    for row, name in enumerate(names):
        expected = cases["cases"][name]["logits_last_subset"][0]
        torch.testing.assert_close(logits[row, cases["vocab_subset"]], expected, **TOLERANCE)
