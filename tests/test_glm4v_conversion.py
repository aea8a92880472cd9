"""Tests for cogvlm.utils.checkpoint_io.glm4v_conversion through the converter's command line: tiny HF
glm-4v-9b / cogagent-9b-20241220 folders (random tensors under the fixture keys.txt names and shapes, a 320-row
vocabulary instead of 151,552 to stay small; one model.safetensors, or shards with their index) convert to the
SAT layout of SAT 0.4.12's official GLM4VModel, and back, bit-exactly; broken folders are one-line errors."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import one_line_error
from cogvlm.utils.checkpoint_io import glm4v_conversion
from cogvlm.utils.checkpoint_io.hf_conversion import main
from cogvlm.utils.checkpoint_io.sat_layout import CheckpointError, read_state_dict, states_file

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = ("glm4v-tiny", "cogagent9b-tiny")
PUBLISHED_VOCAB = 151552
SMALL_VOCAB = 320
FFN = 96                    # ffn_hidden_size of the tiny fixtures: HF's fused SwiGLU rows are [gate 96 | up 96]


def keys_txt(fixture: str, vocab: int = PUBLISHED_VOCAB) -> dict[str, tuple[int, ...]]:
    rows = [line.rstrip("\n").split("\t") for line in (FIXTURES / fixture / "keys.txt").read_text().splitlines()
            if not line.startswith("#")]
    return {name: tuple(vocab if size == PUBLISHED_VOCAB else size for size in json.loads(shape))
            for name, shape, _, _ in rows}


def hf_config(fixture: str, vocab: int = SMALL_VOCAB) -> dict:
    return {**json.loads((FIXTURES / fixture / "config.json").read_text()), "padded_vocab_size": vocab}


def write_hf_folder(folder: Path, fixture: str = "glm4v-tiny", shards: int = 1, dtype=torch.float32,
                    drop=(), add=None, reshape=None) -> dict[str, torch.Tensor]:
    """A tiny HF folder: config.json and random tensors (keys.txt names and shapes), in `shards` files; `drop`,
    `add` and `reshape` spoil it. Returns the tensors written."""
    generator = torch.Generator().manual_seed(0)
    shapes = keys_txt(fixture, SMALL_VOCAB)
    if reshape:
        shapes[reshape] = tuple(size + 1 for size in shapes[reshape])
    tensors = {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()
               if name not in drop}
    tensors.update(add or {})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf_config(fixture), indent=2))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return tensors
    names = list(tensors)
    weight_map = {}
    for index in range(shards):
        shard = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[index::shards]}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


def read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def convert(*args) -> None:
    assert main([str(arg) for arg in args]) == 0


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_the_expected_hf_tensors_are_those_of_keys_txt(fixture):
    """The names and shapes the converter requires are the published code's (keys.txt), at full vocabulary."""
    assert glm4v_conversion.hf_shapes(hf_config(fixture, PUBLISHED_VOCAB)) == keys_txt(fixture)


def test_hf_to_sat_writes_the_names_and_shapes_of_sats_official_glm4v_model(tmp_path):
    write_hf_folder(tmp_path / "hf")
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    lines = (FIXTURES / "glm4v-tiny" / "sat_keys.txt").read_text().splitlines()
    official = {name: json.loads(shape) for name, shape in (line.split("\t") for line in lines)}
    expected = {name: [SMALL_VOCAB if size == PUBLISHED_VOCAB else size for size in shape]
                for name, shape in official.items()}
    state_dict = read_state_dict(states_file(tmp_path / "sat"))
    assert {name: list(tensor.shape) for name, tensor in state_dict.items()} == expected


def test_hf_to_sat_moves_each_tensor_and_splits_the_swiglu_projection(tmp_path):
    hf = write_hf_folder(tmp_path / "hf")
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    sat = read_state_dict(states_file(tmp_path / "sat"))
    fused = hf["transformer.encoder.layers.1.mlp.dense_h_to_4h.weight"]
    assert torch.equal(sat["transformer.layers.1.mlp.dense_h_to_4h.weight"], fused[:FFN])      # gate (SiLU)
    assert torch.equal(sat["mixins.mlp.w2.1.weight"], fused[FFN:])                               # up
    for sat_key, hf_key in [("mixins.chatglm-final.lm_head.weight", "transformer.output_layer.weight"),
                            ("transformer.layers.0.attention.query_key_value.bias",
                             "transformer.encoder.layers.0.self_attention.query_key_value.bias"),
                            ("mixins.eva.vit_model.transformer.word_embeddings.weight",
                             "transformer.vision.patch_embedding.cls_embedding"),
                            ("mixins.eva.vit_model.transformer.layers.1.mlp.dense_4h_to_h.bias",
                             "transformer.vision.transformer.layers.1.mlp.fc2.bias"),
                            ("mixins.eva.conv.weight", "transformer.vision.conv.weight"),
                            ("mixins.eva.eoi", "transformer.vision.eoi")]:
        assert torch.equal(sat[sat_key], hf[hf_key]), sat_key


@pytest.mark.parametrize("fixture, rope_layout", [("glm4v-tiny", "interleaved"), ("cogagent9b-tiny", "rotate_half")])
def test_model_config_carries_the_published_settings(tmp_path, fixture, rope_layout):
    write_hf_folder(tmp_path / "hf", fixture)
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    model_config = json.loads((tmp_path / "sat" / "model_config.json").read_text())
    # The fixture README's tiny configuration: 2 KV groups of 16 dims, 16 image tokens after the 2x2 conv.
    assert {key: model_config[key] for key in ("model_class", "num_layers", "hidden_size", "num_attention_heads",
                                               "num_multi_query_heads", "hidden_size_per_attention_head",
                                               "inner_hidden_size", "vocab_size", "rope_layout", "image_length",
                                               "scaling_factor", "eos_token_id", "model_parallel_size")} == {
        "model_class": "GLM4VModel", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_multi_query_heads": 2, "hidden_size_per_attention_head": 16, "inner_hidden_size": 96,
        "vocab_size": SMALL_VOCAB, "rope_layout": rope_layout, "image_length": 16, "scaling_factor": 8,
        "eos_token_id": [151329, 151336, 151338], "model_parallel_size": 1}
    assert model_config["eva_args"]["image_size"] == [112, 112]
    assert model_config["layernorm_epsilon"] == 1.5625e-07


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
@pytest.mark.parametrize("shards_in, shard_size_out, dtype", [(1, "5GB", torch.float32), (3, "100KB", torch.float32),
                                                             (2, "5GB", torch.bfloat16)])
def test_hf_to_sat_to_hf_is_bit_exact(tmp_path, fixture, shards_in, shard_size_out, dtype):
    original = write_hf_folder(tmp_path / "hf", fixture, shards=shards_in, dtype=dtype)
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    convert("--hf", tmp_path / "back", "--sat", tmp_path / "sat", "--to-hf", "--shard-size", shard_size_out)
    back = read_hf_folder(tmp_path / "back")
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    sharded = (tmp_path / "back" / "model.safetensors.index.json").is_file()
    assert sharded == (shard_size_out == "100KB") and len(list((tmp_path / "back").glob("*.safetensors"))) >= 1
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    expected = {key: value for key, value in hf_config(fixture).items() if key != "_name_or_path"}
    assert config == {**expected, "torch_dtype": str(dtype).removeprefix("torch.")}


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_a_sat_checkpoint_not_converted_from_hf_gets_the_published_config_fields(tmp_path, fixture):
    """Without the config.json fields HF -> SAT keeps (e.g. a checkpoint saved from a config in code), SAT -> HF
    writes the published glm-4v-9b values: the fixture config.json, which is the published one with tiny sizes."""
    write_hf_folder(tmp_path / "hf", fixture)
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    model_config = json.loads((tmp_path / "sat" / "model_config.json").read_text())
    del model_config[glm4v_conversion.HF_EXTRA_KEY]
    (tmp_path / "sat" / "model_config.json").write_text(json.dumps(model_config))
    convert("--hf", tmp_path / "back", "--sat", tmp_path / "sat", "--to-hf")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config == {key: value for key, value in hf_config(fixture).items() if key != "_name_or_path"}


def test_a_folder_without_the_rotary_buffer_gets_the_published_one(tmp_path):
    write_hf_folder(tmp_path / "hf", drop={"transformer.rotary_pos_emb.inv_freq"})
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    # weights-recipe.md: 1 / 10000^(arange(0, d, 2) / d) with d = kv_channels // 2 = 8
    expected = torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75])
    stored = read_state_dict(states_file(tmp_path / "sat"))["mixins.attn.rotary_pos_emb.inv_freq"]
    assert torch.allclose(stored, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("spoil, named", [
    ({"drop": {"transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"}}, "missing"),
    ({"add": {"transformer.vision.extra_head.weight": torch.zeros(2, 2)}}, "transformer.vision.extra_head.weight"),
    ({"reshape": "transformer.vision.conv.bias"}, "transformer.vision.conv.bias"),
])
def test_a_broken_hf_folder_is_a_one_line_error_naming_the_tensor(tmp_path, capsys, spoil, named):
    write_hf_folder(tmp_path / "hf", **spoil)
    assert main(["--hf", str(tmp_path / "hf"), "--sat", str(tmp_path / "sat")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and error.count("\n") == 1 and named in error
    assert not (tmp_path / "sat").exists()


def test_an_unsupported_config_value_is_a_one_line_error(tmp_path, capsys):
    write_hf_folder(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    assert main(["--hf", str(tmp_path / "hf"), "--sat", str(tmp_path / "sat")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and error.count("\n") == 1 and "tie_word_embeddings" in error


def test_a_spoilt_sat_checkpoint_is_a_one_line_error_on_the_way_back(tmp_path, capsys):
    write_hf_folder(tmp_path / "hf")
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    states = states_file(tmp_path / "sat")
    state_dict = torch.load(states, weights_only=True)["module"]        # not memory-mapped: rewritten below
    del state_dict["mixins.mlp.w2.0.weight"]
    torch.save({"module": state_dict}, states)
    assert main(["--hf", str(tmp_path / "back"), "--sat", str(tmp_path / "sat"), "--to-hf"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and error.count("\n") == 1 and "mixins.mlp.w2.0.weight" in error


def test_loading_an_hf_folder_directly_names_the_conversion_command(tmp_path):
    from cogvlm.utils.checkpoint_io.loading import load_model

    write_hf_folder(tmp_path / "glm-4v-9b")
    one_line_error(CheckpointError, lambda: load_model(tmp_path / "glm-4v-9b"),
                   "python utils/convert_hf_checkpoint.py --hf", str(tmp_path / "glm-4v-9b"))


def test_a_runtime_only_config_field_is_kept_not_refused(tmp_path):
    """Fields only the published runtime reads (version, dropout, kernels) are not the model's structure: a folder
    saved by another transformers version converts, and its config.json comes back with its own values."""
    write_hf_folder(tmp_path / "hf")
    changed = {"transformers_version": "4.47.0", "attn_implementation": "eager", "use_cache": False}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **changed}))
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    convert("--hf", tmp_path / "back", "--sat", tmp_path / "sat", "--to-hf")
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {key: back[key] for key in changed} == changed


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_the_model_reads_from_model_config_json_the_configuration_config_json_describes(tmp_path, fixture):
    from cogvlm.models.config import GLM4VConfig

    write_hf_folder(tmp_path / "hf", fixture)
    convert("--hf", tmp_path / "hf", "--sat", tmp_path / "sat")
    model_config = json.loads((tmp_path / "sat" / "model_config.json").read_text())
    assert GLM4VConfig.from_model_config(model_config) == GLM4VConfig.from_hf_config(hf_config(fixture))
    assert model_config["tokenizer_type"] == "glm4"
