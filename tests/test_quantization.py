"""utils/quantization: weight-only int8 / int4 linears, quantised while loading, and their errors."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cogvlm import PACKAGE_ROOT
from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.checkpoint_io.loading import CheckpointError, load_model, save_model
from cogvlm.utils.quantization.weight_only import (QuantConfig, QuantizationError, QuantizedWeight, quantize_int4,
                                                   quantize_int8)
from conftest import COGAGENT_TINY, COGVLM_TINY, HANG_TIMEOUT, case_inputs

CAPTCHA = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
QUERY = "What text is written in the image?"
# Relative logit error against fp32 on the tiny fixtures (random weights, measured 0.013-0.019 for int8 and
# 0.17-0.24 for int4): int8 is close to fp32, int4 is not, on random weights whose logits have no margins.
INT8_LOGIT_RTOL = 0.05
INT4_LOGIT_RTOL = 0.4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def random_weight(out_features=96, in_features=128, seed=0) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))


# --- the quantised weight ------------------------------------------------------------------------------------------

def test_int8_matches_its_own_dequantised_weight_and_the_rounding_bound():
    weight = random_weight()
    quantized = quantize_int8(weight)
    # Each element is within half a step of its row's scale: amax / 127, stored in bf16 (rounded up, < 1.2%).
    step = weight.abs().amax(dim=1, keepdim=True) / 127 * 1.012
    assert ((quantized.dequantize() - weight).abs() <= step / 2).all()
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1))
    out = F.linear(x, quantized)
    assert out.shape == (3, 5, 96) and out.dtype == torch.float32
    # The kernel runs with bf16 activations: within bf16's rounding of the exact product with the int8 weight.
    assert relative_error(out, F.linear(x, quantized.dequantize())) < 1e-2
    assert relative_error(out, F.linear(x, weight)) < 2e-2


def test_int4_groups_hold_their_own_range():
    weight = random_weight()
    weight[:, :32] *= 100                    # one group of large values must not cost the others their precision
    quantized = quantize_int4(weight, group_size=32)
    error = (quantized.dequantize() - weight).abs()
    groups = weight.view(96, 4, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15                                        # (out, groups)
    # Half a step (bf16 scale rounded up by < 1.2%), plus the bf16 rounding of the zero (2^-9 of its size).
    zero_rounding = groups.abs().amax(-1, keepdim=True) * 2 ** -8
    assert (error.view(96, 4, 32) <= step[..., None] / 2 * 1.012 + zero_rounding).all()
    assert error[:, 32:].max() < 0.1 * error[:, :32].max()
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2))
    assert relative_error(F.linear(x, quantized), F.linear(x, quantized.dequantize())) < 1e-2


def test_bias_and_compute_dtype_are_kept():
    weight, bias = random_weight(), torch.randn(96)
    quantized = quantize_int8(weight, dtype=torch.bfloat16)
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    out = F.linear(x, quantized, bias.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out - bias.bfloat16(), F.linear(x, quantized), atol=0.05, rtol=0.02)


def test_any_other_use_of_a_quantised_weight_is_a_type_error():
    quantized = quantize_int8(random_weight())
    assert quantized.shape == (96, 128) and quantized.dtype == torch.float32
    with pytest.raises(TypeError):
        quantized.sum()


def test_a_group_size_that_does_not_divide_a_model_parallel_shard_names_the_size():
    """At mp=2 a row-parallel layer of 64 input features holds 32 per rank: group size 64 cannot quantise it."""
    from cogvlm.utils.quantization.weight_only import check_shapes

    shard = {"transformer.layers.0.attention.dense": torch.nn.Linear(32, 64, bias=False, device="meta")}
    check_shapes(shard, QuantConfig(bits=4, group_size=32), model_parallel_size=2)
    with pytest.raises(QuantizationError, match="^int4 group size 64 does not divide the input features of 1 "
                                                "layers in this rank's shard at model-parallel size 2 .*, e.g. "
                                                r"transformer.layers.0.attention.dense \(32\)$"):
        check_shapes(shard, QuantConfig(bits=4, group_size=64), model_parallel_size=2)


def test_group_size_that_does_not_divide_is_one_line():
    with pytest.raises(QuantizationError, match="^int4 group size 32 does not divide the 100 input features of x$"):
        quantize_int4(random_weight(8, 100), 32, name="x")
    with pytest.raises(QuantizationError, match="^int4 group size 48 is not one of 32, 64, 128, 256$"):
        QuantConfig(bits=4, group_size=48)
    with pytest.raises(QuantizationError, match="only 8 and 4 bits"):
        QuantConfig(bits=2)


# --- quantised while loading -------------------------------------------------------------------------------------

def quantized_names(model) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(getattr(module, "weight", None),
                                                                         QuantizedWeight)}


@pytest.mark.parametrize("fixture", [COGVLM_TINY, COGAGENT_TINY])
def test_language_and_expert_linears_are_quantised_vision_towers_are_not(fixture):
    model, config = load_model(fixture / "checkpoint", quant=8)
    names = quantized_names(model)
    layers = config.language.num_layers
    expected = {"mixins.lm.lm_head"} | {f"transformer.layers.{i}.{linear}" for i in range(layers) for linear in
                                        ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                         "mlp.dense_4h_to_h")}
    expected |= {f"mixins.visual_expert_mlp.{linear}.{i}" for i in range(layers) for linear in
                 ("gate_proj", "vision_gate_proj", "vision_dense_h_to_4h_list", "vision_dense_4h_to_h_list")}
    expected |= {f"mixins.visual_expert_attention.{linear}.{i}" for i in range(layers) for linear in
                 ("vision_query_key_value_list", "vision_dense_list")}
    if fixture == COGAGENT_TINY:
        expected |= {f"transformer.layers.{i}.cross_attention.{linear}" for i in range(layers) for linear in
                     ("query", "key_value", "dense")}
    assert names == expected
    # The quantised weights are no parameters any more; everything else loaded as before, in fp32.
    parameters = {name for name, _ in model.named_parameters()}
    assert not parameters & {f"{name}.weight" for name in names}
    assert "mixins.image.encoder.transformer.layers.0.mlp.dense_h_to_4h.weight" in parameters
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def fixture_logits(model, fixture, name):
    cases = torch.load(fixture / "cases.pt", weights_only=False)
    cross = cases["cross_image"]["pixel_values"].to(model.dtype) if "cross_image" in cases else None
    images = ImageInputs(cases["image"]["pixel_values"].to(model.dtype), cross)
    with torch.no_grad():
        return model.forward_inputs(case_inputs(cases["cases"][name], images))[0], cases["cases"][name]["logits"]


@pytest.mark.parametrize("fixture", [COGVLM_TINY, COGAGENT_TINY])
def test_quantised_logits_stay_near_the_published_fp32_logits(fixture):
    for bits, tolerance in ((8, INT8_LOGIT_RTOL), (4, INT4_LOGIT_RTOL)):
        model, _ = load_model(fixture / "checkpoint", quant=bits)
        logits, published = fixture_logits(model, fixture, "chat_describe")
        error = relative_error(logits, published)
        assert 0 < error < tolerance, (bits, error)       # 0 would mean nothing was quantised
        if bits == 8:       # the greedy token of nearly every position is kept (measured 40/40 and 39/40)
            agree = (logits.argmax(-1) == published.argmax(-1)).float().mean().item()
            assert agree >= 0.95


def test_quantised_model_reads_the_example_captchas():
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig

    examples = sorted((CAPTCHA / "examples").glob("*.png"))
    assert len(examples) == 3
    for bits in (8, 4):
        chat = ChatModel.from_pretrained(CAPTCHA, quant=bits)
        assert quantized_names(chat.model)
        sampling = SamplingConfig(max_length=2048, top_k=1)
        assert [chat.answer(QUERY, [], chat.prepare_image(str(p)), sampling) for p in examples] == [
            p.stem for p in examples]


def test_group_size_not_dividing_a_layer_is_an_error_before_loading(tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(COGVLM_TINY / "checkpoint", checkpoint)
    with pytest.raises(QuantizationError) as error:
        load_model(checkpoint, quant=QuantConfig(bits=4, group_size=256))      # hidden size 128 < 256
    assert str(error.value).startswith("int4 group size 256 does not divide the input features of ")
    assert "\n" not in str(error.value)


def test_a_quantised_model_is_not_saved(tmp_path):
    model, _ = load_model(COGVLM_TINY / "checkpoint", quant=8)
    with pytest.raises(CheckpointError, match="quantised while loading is not saved"):
        save_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_group_size_that_does_not_divide_in_one_line(capsys):
    from cogvlm.basic_demo import cli_demo_sat

    code = cli_demo_sat.main(["--quant", "4", "--quant_group_size", "256",
                              "--from_pretrained", str(COGVLM_TINY / "checkpoint"),
                              "--local_tokenizer", str(COGVLM_TINY / "tokenizer.model"),
                              "--image", str(COGVLM_TINY / "image.png"), "--query", "Hi"])
    err = capsys.readouterr().err
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("Error: ")] == [
        "Error: int4 group size 256 does not divide the input features of 21 layers, e.g. mixins.lm.lm_head (64)"]
    assert "Traceback" not in err


@pytest.mark.slow
def test_each_model_parallel_rank_quantises_its_own_shard(tmp_path):
    """int4 groups never straddle a row-parallel split (the group size divides each shard), so the two ranks
    compute what one process does with the same quantised weights, but for the order of the sums."""
    from conftest import run_under_torchrun

    run_under_torchrun(Path(__file__).parent / "model_parallel_worker.py", "--checkpoint", COGVLM_TINY / "checkpoint",
                       "--cases", COGVLM_TINY / "cases.pt", "--out", tmp_path / "results.pt", "--quant", "4")
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    assert results["heads_per_rank"] == 2                                 # 4 heads, really split
    single, _ = load_model(COGVLM_TINY / "checkpoint", quant=4)
    for name in ("chat_describe", "chat_history"):
        logits, published = fixture_logits(single, COGVLM_TINY, name)
        # bf16 partial sums are added across ranks: differences at bf16's resolution, far below int4's error
        assert relative_error(results["logits"][name], logits) < 0.02
        assert relative_error(results["logits"][name], published) > 0.05                # quantised, not fp32


def test_quantised_model_computes_in_bf16_too():
    model, _ = load_model(COGVLM_TINY / "checkpoint", dtype=torch.bfloat16, quant=8)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits, published = fixture_logits(model, COGVLM_TINY, "chat_describe")
    assert logits.dtype == torch.bfloat16
    assert relative_error(logits.float(), published) < 2 * INT8_LOGIT_RTOL      # bf16 rounding on top of int8


@pytest.mark.slow
def test_evaluate_script_quantised_reads_the_examples(tmp_path):
    """`python finetune_demo/evaluate.py --quant 4` as a user types it: the int4 model scores the examples."""
    script = CAPTCHA.parent.parent / "finetune_demo" / "evaluate.py"
    result = subprocess.run([sys.executable, str(script), "--from_pretrained", str(CAPTCHA), "--data",
                             str(CAPTCHA / "examples"), "--quant", "4", "--batch_size", "3"],
                            capture_output=True, text=True, timeout=HANG_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| examples")]
    assert "100.00" in row, result.stdout
