"""Model parallel: the split plan, sharding and merging, parity of 2 CPU processes with the published outputs,
and checkpoints moving between model-parallel sizes."""
import json
import shutil

import pytest
import torch

from cogvlm.models.config import TINY_CONFIG
from cogvlm.models.mlp_adapter import ImageInputs
from cogvlm.utils.checkpoint_io.loading import CheckpointError, build_model, load_model, read_state_dict, states_file
from cogvlm.utils.parallel.model_parallel import Split, check_divisible, merge, shard, split_plan
from conftest import COGAGENT_TINY, COGVLM_TINY

FIXTURES = {"cogvlm-tiny": COGVLM_TINY, "cogagent-tiny": COGAGENT_TINY}


def test_plan_follows_each_layers_role():
    plan = split_plan(build_model(TINY_CONFIG))
    assert plan["transformer.layers.0.attention.query_key_value.weight"] == Split(0, 3)           # [q | k | v]
    assert plan["mixins.rotary.vision_query_key_value_list.0.weight"] == Split(0, 3)
    assert plan["transformer.layers.0.attention.dense.weight"] == Split(1)
    assert plan["mixins.rotary.vision_dense_list.1.weight"] == Split(1)
    assert plan["mixins.mlp.gate_proj.0.weight"] == Split(0) == plan["mixins.mlp.vision_gate_proj.1.weight"]
    assert plan["mixins.mlp.vision_dense_4h_to_h_list.0.weight"] == Split(1)
    assert plan["mixins.lm.lm_head.weight"] == Split(0)
    assert plan["mixins.eva.vit_model.transformer.layers.1.attention.query_key_value.bias"] == Split(0, 3)
    assert "mixins.eva.linear_proj.linear_proj.weight" not in plan        # the adapter is whole on every rank
    assert "transformer.word_embeddings.weight" not in plan               # vocab < 1000: SAT keeps nn.Embedding


def test_strided_shard_takes_each_block_part():
    plan = {"w": Split(0, 3)}
    rows = torch.arange(12.0)[:, None]                                    # q = 0..3, k = 4..7, v = 8..11
    assert shard({"w": rows}, plan, 1, 2)["w"].flatten().tolist() == [2, 3, 6, 7, 10, 11]


@pytest.mark.parametrize("fixture", FIXTURES.values(), ids=FIXTURES.keys())
@pytest.mark.parametrize("size", [2, 4])
def test_shard_then_merge_is_exact(fixture, size):
    full = read_state_dict(states_file(fixture / "checkpoint"))
    config = json.loads((fixture / "checkpoint" / "model_config.json").read_text())
    from cogvlm.utils.checkpoint_io.loading import config_from_model_config
    plan = split_plan(build_model(config_from_model_config(config)))
    shards = [shard(full, plan, rank, size) for rank in range(size)]
    assert shards[0]["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape[0] == 128 // size
    merged = merge(shards, plan)
    assert list(merged) == list(full) and all(torch.equal(merged[k], full[k]) for k in full)


def test_lora_tensors_follow_their_linear():
    plan = {"a.qkv.weight": Split(0, 3), "a.dense.weight": Split(1)}
    full = {"a.qkv.original.weight": torch.randn(12, 4), "a.qkv.matrix_A.0": torch.randn(2, 4),
            "a.qkv.matrix_B.0": torch.randn(4, 2), "a.dense.original.weight": torch.randn(4, 4),
            "a.dense.matrix_A.0": torch.randn(2, 4), "a.dense.matrix_B.0": torch.randn(4, 2)}
    shards = [shard(full, plan, rank, 2) for rank in range(2)]
    assert shards[0]["a.qkv.matrix_A.0"].shape == (2, 4) and shards[0]["a.qkv.matrix_B.0"].shape == (2, 2)
    assert shards[0]["a.dense.matrix_A.0"].shape == (2, 2) and shards[0]["a.dense.matrix_B.0"].shape == (4, 2)
    merged = merge(shards, plan)
    assert all(torch.equal(merged[k], full[k]) for k in full)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_two_processes_match_published_logits_and_tokens(mp2_runs, name):
    cases = torch.load(FIXTURES[name] / "cases.pt", weights_only=False)["cases"]
    results = mp2_runs[name]["results"]
    assert results["heads_per_rank"] == 2                                 # 4 heads, really split
    for case_name, case in cases.items():
        torch.testing.assert_close(results["logits"][case_name], case["logits"], atol=1e-5, rtol=1e-5)
        assert results["tokens"][case_name] == case["generation"]["new_token_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_two_processes_batch_every_case_as_one_process_does(mp2_runs, name):
    """The continuous-batching engine at mp=2 (3 slots for 9 cases): both ranks step the same batches, and every
    row gives the published (mp=1) tokens and step logits."""
    cases = torch.load(FIXTURES[name] / "cases.pt", weights_only=False)["cases"]
    results = mp2_runs[name]["results"]
    batched, traces = results["batched"], results["engine_traces"]
    assert len(traces) == 2 and traces[0] == traces[1] and max(map(len, traces[0])) == 3
    for case_name, case in cases.items():
        assert batched["tokens"][case_name] == case["generation"]["new_token_ids"], case_name
        torch.testing.assert_close(batched["step_logits"][case_name], case["generation"]["step_logits"],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_checkpoint_saved_at_mp2_loads_at_mp1(mp2_runs, name):
    checkpoint = mp2_runs[name]["checkpoint"]
    assert json.loads((checkpoint / "model_config.json").read_text())["model_parallel_size"] == 2
    shards = [read_state_dict(states_file(checkpoint, rank)) for rank in range(2)]
    assert shards[0]["transformer.layers.0.attention.query_key_value.weight"].shape == (96, 64)
    data = torch.load(FIXTURES[name] / "cases.pt", weights_only=False)
    model, _ = load_model(checkpoint)
    case = data["cases"]["chat_history"]
    images = ImageInputs(data["image"]["pixel_values"], data.get("cross_image", {}).get("pixel_values"))
    with torch.no_grad():
        logits = model(case["input_ids"], case["position_ids"], images=images,
                       image_embed_mask=case["image_embed_mask"], vision_expert_mask=case["vision_expert_mask"])[0]
    torch.testing.assert_close(logits, case["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_missing_shard_is_named(mp2_runs, tmp_path):
    shutil.copytree(mp2_runs["cogvlm-tiny"]["checkpoint"], tmp_path / "ckpt")
    (tmp_path / "ckpt" / "1" / "mp_rank_01_model_states.pt").unlink()
    with pytest.raises(CheckpointError, match="saved at model parallel size 2, but its shards mp_rank_01"):
        load_model(tmp_path / "ckpt")


def test_a_size_that_does_not_divide_the_model_is_a_clear_error():
    with pytest.raises(ValueError, match="size 3 does not divide the model's attention heads 4, hidden size 64"):
        check_divisible(TINY_CONFIG, 3)
    check_divisible(TINY_CONFIG, 4)
