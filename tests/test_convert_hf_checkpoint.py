"""utils/checkpoint_io/hf_conversion.py and its entry point utils/convert_hf_checkpoint.py: SAT <-> Hugging Face,
both fixtures, bit-exact both ways."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from cogvlm.models.config import PUBLISHED_CONFIGS
from cogvlm.models.mlp_adapter import ImageInputs
from cogvlm.utils.checkpoint_io.loading import (config_from_model_config, load_model, read_model_config,
                                                read_state_dict, states_file)
from cogvlm.utils.checkpoint_io.hf_conversion import (BIN_INDEX, SAFETENSORS_FILE, SAFETENSORS_INDEX, ConversionError,
                                                      config_from_hf, hf_config_from, hf_to_sat, is_hf_checkpoint,
                                                      main, parse_size, read_hf_state_dict, sat_to_hf)
from conftest import COGAGENT_TINY, COGVLM_TINY, checkpoint_copy

FIXTURES = {"cogvlm-tiny": COGVLM_TINY, "cogagent-tiny": COGAGENT_TINY}
SMALL_SHARDS = 200_000          # bytes: the tiny models (~1.3 MB) in several shards


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """For each fixture: its checkpoint converted to HF (sharded safetensors) and back to SAT."""
    runs = {}
    for name, fixture in FIXTURES.items():
        out = tmp_path_factory.mktemp(name)
        sat_to_hf(fixture / "checkpoint", out / "hf", shard_size=SMALL_SHARDS)
        hf_to_sat(out / "hf", out / "sat")
        runs[name] = {"original": fixture / "checkpoint", "hf": out / "hf", "sat": out / "sat"}
    return runs


def assert_same_states(a, b):
    left, right = read_state_dict(states_file(a)), read_state_dict(states_file(b))
    assert list(left) == list(right)
    assert all(left[k].dtype == right[k].dtype and torch.equal(left[k], right[k]) for k in left)


def write_single_safetensors(state_dict, hf_config_path, folder):
    folder.mkdir()
    shutil.copy(hf_config_path, folder / "config.json")
    save_file({k: v.contiguous().clone() for k, v in state_dict.items()}, folder / SAFETENSORS_FILE,
              metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("name", FIXTURES)
def test_sat_to_hf_to_sat_is_bit_exact_with_the_same_model_config(converted, name):
    run = converted[name]
    assert_same_states(run["original"], run["sat"])
    assert read_model_config(run["sat"]) == read_model_config(run["original"])
    assert config_from_model_config(read_model_config(run["sat"])) == \
        config_from_model_config(read_model_config(run["original"]))


@pytest.mark.parametrize("name", FIXTURES)
def test_hf_folder_has_several_shards_an_index_and_the_published_names(converted, name):
    hf = converted[name]["hf"]
    index = json.loads((hf / SAFETENSORS_INDEX).read_text())
    shards = sorted(p.name for p in hf.glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    state = read_hf_state_dict(hf)
    assert set(state) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    config = config_from_model_config(read_model_config(converted[name]["original"]))
    width, layers, patches = config.vision.hidden_size, config.language.num_layers, config.vision.num_patches
    # Names and shapes of THUDM's HF modeling code (modeling_cogvlm.py, visual.py).
    assert state["model.vision.patch_embedding.cls_embedding"].shape == (1, width)
    assert state["model.vision.patch_embedding.position_embedding.weight"].shape == (patches + 1, width)
    for i in range(layers):
        assert f"model.layers.{i}.self_attn.rotary_emb.inv_freq" in state
        for expert in ("language", "vision"):
            assert f"model.layers.{i}.self_attn.{expert}_expert_query_key_value.weight" in state
            assert f"model.layers.{i}.mlp.{expert}_mlp.up_proj.weight" in state
    assert not any(k.startswith("mixins.") or k.startswith("transformer.") for k in state)
    if name == "cogagent-tiny":            # modeling_cogagent.py, cross_visual.py: the rotary table stored once
        assert "model.layers.0.cross_attn.key_value.weight" in state and "model.vision.pos_embed" in state
        assert "model.cross_vision.vit.model.rope.freqs_cos" in state
        assert not any(".blocks." in k and ".rope." in k for k in state)


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_checkpoint_gives_the_same_logits(converted, name, request):
    cases = request.getfixturevalue("cogvlm_cases" if name == "cogvlm-tiny" else "cogagent_cases")
    original = request.getfixturevalue("cogvlm_model" if name == "cogvlm-tiny" else "cogagent_model")
    model, _ = load_model(converted[name]["sat"])
    case = cases["cases"]["chat_describe"]
    images = ImageInputs(cases["image"]["pixel_values"], cases.get("cross_image", {}).get("pixel_values"))

    def logits(m):
        with torch.no_grad():
            return m(case["input_ids"], case["position_ids"], images=images,
                     image_embed_mask=case["image_embed_mask"], vision_expert_mask=case["vision_expert_mask"])[0]

    converted_logits = logits(model)
    assert torch.equal(converted_logits, logits(original))
    torch.testing.assert_close(converted_logits, case["logits"], atol=1e-5, rtol=1e-5)


def test_bin_shards_and_a_single_safetensors_file_convert(converted, tmp_path):
    run = converted["cogagent-tiny"]
    state = read_hf_state_dict(run["hf"])
    keys = sorted(state)
    bins = tmp_path / "bin"
    bins.mkdir()
    shutil.copy(run["hf"] / "config.json", bins / "config.json")
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"pytorch_model-{n + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in part}, bins / name)
        weight_map.update(dict.fromkeys(part, name))
    (bins / BIN_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    hf_to_sat(bins, tmp_path / "from_bin")
    assert_same_states(run["original"], tmp_path / "from_bin")

    single = write_single_safetensors(state, run["hf"] / "config.json", tmp_path / "single")
    hf_to_sat(single, tmp_path / "from_single")
    assert_same_states(run["original"], tmp_path / "from_single")


def test_buffers_left_out_of_the_hf_folder_are_recomputed(converted, tmp_path):
    run = converted["cogagent-tiny"]
    state = {k: v for k, v in read_hf_state_dict(run["hf"]).items() if "inv_freq" not in k and ".rope." not in k}
    hf_to_sat(write_single_safetensors(state, run["hf"] / "config.json", tmp_path / "hf"), tmp_path / "sat")
    assert_same_states(run["original"], tmp_path / "sat")


def test_missing_and_extra_tensors_are_listed(converted, tmp_path):
    run = converted["cogvlm-tiny"]
    state = read_hf_state_dict(run["hf"])
    del state["model.layers.1.mlp.vision_mlp.down_proj.weight"]
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    state["model.vision.boi"] = torch.zeros(1, 1, 3)
    folder = write_single_safetensors(state, run["hf"] / "config.json", tmp_path / "broken")
    with pytest.raises(ConversionError) as error:
        hf_to_sat(folder, tmp_path / "sat")
    message = str(error.value)
    assert "missing (1): model.layers.1.mlp.vision_mlp.down_proj.weight" in message
    assert "unexpected (1): model.layers.0.self_attn.extra.weight" in message
    assert "model.vision.boi: checkpoint (1, 1, 3)" in message
    assert not (tmp_path / "sat").exists()


def test_copies_of_a_shared_tensor_must_agree(converted, tmp_path):
    run = converted["cogvlm-tiny"]
    state = read_hf_state_dict(run["hf"])
    state["model.layers.1.self_attn.rotary_emb.inv_freq"] = state["model.layers.1.self_attn.rotary_emb.inv_freq"] * 2
    folder = write_single_safetensors(state, run["hf"] / "config.json", tmp_path / "hf")
    with pytest.raises(ConversionError, match="model.layers.1.self_attn.rotary_emb.inv_freq"):
        hf_to_sat(folder, tmp_path / "sat")


def test_sat_to_hf_refuses_a_folder_that_already_holds_weights(converted):
    with pytest.raises(ConversionError, match="already holds"):
        sat_to_hf(converted["cogvlm-tiny"]["original"], converted["cogvlm-tiny"]["hf"])


def test_is_hf_checkpoint(converted, tmp_path):
    assert is_hf_checkpoint(converted["cogvlm-tiny"]["hf"]) and is_hf_checkpoint(str(converted["cogagent-tiny"]["hf"]))
    assert not is_hf_checkpoint(COGVLM_TINY / "checkpoint")
    assert not is_hf_checkpoint(tmp_path / "absent")
    assert not is_hf_checkpoint("cogvlm-chat-v1.1")
    llama = tmp_path / "llama"                   # an HF folder, but not a CogVLM one
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (llama / SAFETENSORS_FILE).write_bytes(b"")
    assert not is_hf_checkpoint(llama)


# The published config.json of THUDM/cogvlm-chat-hf and THUDM/cogagent-chat-hf (the fields the code reads).
COGVLM_CHAT_HF = {
    "architectures": ["CogVLMForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 2048,
    "num_attention_heads": 32, "num_hidden_layers": 32, "rms_norm_eps": 1e-05, "template_version": "chat",
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000,
    "vision_config": {"dropout_prob": 0.0, "hidden_act": "gelu", "hidden_size": 1792, "image_size": 490,
                      "in_channels": 3, "intermediate_size": 15360, "layer_norm_eps": 1e-06, "num_heads": 16,
                      "num_hidden_layers": 63, "num_positions": 1226, "patch_size": 14},
}
COGAGENT_CHAT_HF = {
    **COGVLM_CHAT_HF, "architectures": ["CogAgentForCausalLM"], "cross_compute_hidden_size": 1024,
    "cross_hidden_size": 1024, "cross_image_size": 1120,
    "vision_config": {**COGVLM_CHAT_HF["vision_config"], "image_size": 224, "num_positions": 257},
}


@pytest.mark.parametrize("hf, published", [(COGVLM_CHAT_HF, "cogvlm-chat-v1.1"), (COGAGENT_CHAT_HF, "cogagent-chat")])
def test_published_hf_configs_give_the_published_sat_configs(hf, published):
    config = config_from_hf(hf)
    assert config == PUBLISHED_CONFIGS[published]
    assert config.to_model_config() == PUBLISHED_CONFIGS[published].to_model_config()
    back = hf_config_from(config)
    assert {k: back[k] for k in hf} == hf and "sat_model_config" not in back


def test_a_template_hf_cogvlm_cannot_name_travels_in_sat_model_config():
    config = PUBLISHED_CONFIGS["cogvlm-chat-v1.1"].replace(text_processor_version="chat")   # [INST], not HF's "chat"
    hf = hf_config_from(config)
    assert "template_version" not in hf and hf["sat_model_config"] == {"text_processor_version": "chat"}
    assert config_from_hf(hf) == config


def test_cli_both_directions_with_the_tokenizer(tmp_path, capsys):
    source = checkpoint_copy(tmp_path)                          # the cogvlm-tiny checkpoint with its tokenizer.model
    assert main(["--hf", str(tmp_path / "hf"), "--sat", str(source), "--to-hf", "--shard-size", "500KB"]) == 0
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) == 3
    assert main(["--hf", str(tmp_path / "hf"), "--sat", str(tmp_path / "sat")]) == 0
    assert_same_states(source, tmp_path / "sat")
    assert (tmp_path / "sat" / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    assert main(["--hf", str(tmp_path / "absent"), "--sat", str(tmp_path / "sat2")]) == 1
    assert "config.json is missing" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("5GB") == 5 * 1024 ** 3 and parse_size("500MB") == 500 * 1024 ** 2
    assert parse_size("1.5kb") == 1536 and parse_size("1000") == 1000


def test_loading_a_hugging_face_folder_names_the_conversion_command(tmp_path):
    from cogvlm.utils.checkpoint_io.loading import CheckpointError, load_model

    hf = sat_to_hf(COGVLM_TINY / "checkpoint", tmp_path / "hf")
    with pytest.raises(CheckpointError, match="Hugging Face checkpoint; convert it once with `python utils/convert_hf"):
        load_model(hf)
