"""GLM-4V-9B / CogAgent-9B under model parallelism: the grouped-query QKV split plan, and 2 CPU processes giving the
published logits and greedy tokens (mp=2 equal to mp=1)."""
import pytest
import torch

from cogvlm.models.config import TINY_GLM4V_CONFIG
from cogvlm.utils.checkpoint_io.loading import build_model
from cogvlm.utils.parallel.model_parallel import Split, check_divisible, merge, shard, split_plan
from conftest import run_under_torchrun
from glm4v_reference import COGAGENT9B_TINY, GLM4V_TINY, build_fixture_model, load_cases, sat_weights


def test_grouped_query_qkv_splits_heads_and_groups_in_proportion():
    plan = split_plan(build_model(TINY_GLM4V_CONFIG))
    qkv = plan["transformer.layers.0.attention.query_key_value.weight"]
    assert qkv == Split(0, (4, 2, 2)) == plan["transformer.layers.1.attention.query_key_value.bias"]
    assert plan["mixins.mlp.w2.1.weight"] == Split(0) == plan["transformer.layers.0.mlp.dense_h_to_4h.weight"]
    assert plan["transformer.layers.0.mlp.dense_4h_to_h.weight"] == Split(1)
    assert plan["mixins.chatglm-final.lm_head.weight"] == Split(0)
    rows = torch.arange(8.0)[:, None]                         # q heads 0..3, k groups 4, 5, v groups 6, 7
    assert shard({"w": rows}, {"w": qkv}, 1, 2)["w"].flatten().tolist() == [2, 3, 5, 7]


def test_shard_then_merge_is_exact():
    full = sat_weights(GLM4V_TINY)
    plan = split_plan(build_model(TINY_GLM4V_CONFIG))
    shards = [shard(full, plan, rank, 2) for rank in range(2)]
    qkv = shards[1]["transformer.layers.0.attention.query_key_value.weight"]
    assert qkv.shape == (64, 64)                                      # (2 q heads + 1 k + 1 v group) x 16 rows
    merged = merge(shards, plan)
    assert merged.keys() == full.keys() and all(torch.equal(merged[k], full[k]) for k in full)


@pytest.mark.parametrize("size", [4, 8])
def test_more_ranks_than_kv_groups_is_a_clear_error(size):
    from cogvlm.models.config import GLM4V_9B_CONFIG

    with pytest.raises(ValueError, match=f"size {size} does not divide the model's K/V groups 2$"):
        check_divisible(GLM4V_9B_CONFIG, size)
    check_divisible(GLM4V_9B_CONFIG, 2)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", [GLM4V_TINY, COGAGENT9B_TINY], ids=lambda f: f.name)
def test_two_processes_match_published_logits_and_tokens(tmp_path, fixture):
    from cogvlm.utils.checkpoint_io.loading import save_model

    model, _ = build_fixture_model(fixture)
    save_model(model, tmp_path / "ckpt")
    run_under_torchrun(GLM4V_TINY.parent.parent / "glm4v_model_parallel_worker.py", "--checkpoint", tmp_path / "ckpt",
                       "--fixture", fixture, "--out", tmp_path / "results.pt")
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    assert (results["heads_per_rank"], results["kv_groups_per_rank"]) == (2, 1)      # really split
    cases = load_cases(fixture)
    for name in cases["case_order"]:
        data = cases["cases"][name]
        torch.testing.assert_close(results["logits"][name][:, -1], data["logits_last_subset"], atol=1e-5, rtol=1e-5)
        assert results["tokens"][name] == data["generation"]["new_token_ids"].tolist()
