"""GLM-4V-9B / CogAgent-9B through the project's runtime: a saved checkpoint loaded with `--quant 8/4` and in bf16
(utils/checkpoint_io/loading.py), then run by the engine. The fp32 parity itself is tests/test_glm4v.py."""
from __future__ import annotations

import pytest
import torch

from glm4v_reference import COGAGENT9B_TINY, GLM4V_TINY, build_fixture_model, case_inputs, load_cases

# Relative logit error against the published fp32 logits (random weights, whose logits have no margins): int8
# stays close, int4 does not (the same bounds as tests/test_quantization.py for CogVLM).
INT8_LOGIT_RTOL = 0.05
INT4_LOGIT_RTOL = 0.4
BF16_LOGIT_RTOL = 0.05


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """fixture -> a SAT checkpoint folder of its fp32 model (as the converter would write it)."""
    from cogvlm.utils.checkpoint_io.loading import save_model

    folders = {}
    for fixture in (GLM4V_TINY, COGAGENT9B_TINY):
        model, _ = build_fixture_model(fixture)
        folders[fixture.name] = save_model(model, tmp_path_factory.mktemp(fixture.name) / "ckpt")
    return folders


def last_logits(model, fixture, case="image_question"):
    """(vocab subset logits at every position of `case`, the published ones, its greedy argmax at the end)."""
    cases = load_cases(fixture)
    data = cases["cases"][case]
    inputs = case_inputs(cases, data, model.config)
    with torch.no_grad():
        logits = model.forward_inputs(inputs.to(model.device, model.dtype))[0].float()
    subset = cases["vocab_subset"]
    return logits[0, -1, subset], data["logits_last_subset"][0], logits[0].argmax(-1), data["argmax"][0]


@pytest.mark.parametrize("fixture", [GLM4V_TINY, COGAGENT9B_TINY], ids=lambda f: f.name)
def test_quantised_logits_stay_near_the_published_fp32_logits(checkpoints, fixture):
    from cogvlm.utils.checkpoint_io.loading import load_model

    for bits, tolerance in ((8, INT8_LOGIT_RTOL), (4, INT4_LOGIT_RTOL)):
        model, _ = load_model(checkpoints[fixture.name], quant=bits)
        logits, published, argmax, published_argmax = last_logits(model, fixture)
        error = relative_error(logits, published)
        assert 0 < error < tolerance, (bits, error)           # 0 would mean nothing was quantised
        if bits == 8:
            assert (argmax == published_argmax).float().mean().item() >= 0.9


def test_quantisation_targets_the_decoder_not_the_vision_tower(checkpoints):
    from cogvlm.utils.checkpoint_io.loading import load_model
    from cogvlm.utils.quantization.weight_only import QuantizedWeight

    model, _ = load_model(checkpoints[GLM4V_TINY.name], quant=8)
    quantised = {name for name, module in model.named_modules()
                 if isinstance(getattr(module, "weight", None), QuantizedWeight)}
    assert {"transformer.layers.0.attention.query_key_value", "transformer.layers.1.attention.dense",
            "transformer.layers.0.mlp.dense_h_to_4h", "mixins.swiglu.up_proj.1",
            "transformer.layers.1.mlp.dense_4h_to_h", "mixins.lm.lm_head"} <= quantised
    assert not {name for name in quantised if name.startswith("mixins.image.")}


@pytest.mark.parametrize("quant", [None, 8])
def test_bf16_model_generates_near_fp32(checkpoints, quant):
    from cogvlm.utils.checkpoint_io.loading import load_model
    from cogvlm.utils.inference.engine import Request, collect, generate_batch
    from cogvlm.utils.inference.generation import SamplingConfig

    model, config = load_model(checkpoints[COGAGENT9B_TINY.name], dtype=torch.bfloat16, quant=quant)
    assert model.dtype == torch.bfloat16
    logits, published, _, _ = last_logits(model, COGAGENT9B_TINY)
    tolerance = BF16_LOGIT_RTOL if quant is None else BF16_LOGIT_RTOL + INT8_LOGIT_RTOL
    assert relative_error(logits, published) < tolerance
    cases = load_cases(COGAGENT9B_TINY)
    batch = case_inputs(cases, cases["cases"]["batch_left_pad"], config)
    requests = [Request(batch.row(row), SamplingConfig(max_length=len(batch.row(row)) + 4, top_k=1))
                for row in range(2)]
    results = collect(generate_batch(model, requests))
    assert [len(results[row][0]) for row in range(2)] == [4, 4]
    assert {results[row][1].finish_reason for row in range(2)} == {"length"}
