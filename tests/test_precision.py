"""utils/inference/precision.py: the prefill's multiply dtype per phase, and logit error against fp32.

fp16 and bf16 end to end through the CLI: tests/test_cli_demo_sat.py."""
import pytest
import torch
import torch.nn.functional as F

from cogvlm.models.inputs import ImageInputs
from cogvlm.utils.inference import precision
from cogvlm.utils.inference.generation import SamplingConfig, generate
from cogvlm.utils.inference.precision import matmuls_in, relative_logit_error, resolve_prefill_dtype
from conftest import COGVLM_TINY, case_inputs, one_line_error

# bf16 keeps 8 bits of mantissa: on the tiny fixture its logits are ~1e-2 (relative) from fp32; fp16 ~1e-3.
HALF_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def half_model(request):
    from cogvlm.utils.checkpoint_io.loading import load_model

    return load_model(COGVLM_TINY / "checkpoint", dtype=request.param)[0]


def inputs_of(cases, name="chat_history"):
    return case_inputs(cases["cases"][name], ImageInputs(cases["image"]["pixel_values"]))


@pytest.mark.parametrize("native", [True, False])
def test_auto_upcasts_half_precision_prefills_only_without_native_multiplies(monkeypatch, native):
    monkeypatch.setattr(precision, "native_matmul", lambda dtype, device: native)
    expected = None if native else torch.float32
    assert resolve_prefill_dtype(torch.bfloat16, "cpu") is expected
    assert resolve_prefill_dtype(torch.float16, "cpu", "auto") is expected
    assert resolve_prefill_dtype(torch.bfloat16, "cpu", "fp32") is torch.float32
    assert resolve_prefill_dtype(torch.bfloat16, "cpu", "model") is None
    assert resolve_prefill_dtype(torch.float32, "cpu", "fp32") is None            # nothing to upcast


def test_native_matmul_follows_what_onednn_reports(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not precision.native_matmul(torch.bfloat16, "cpu")
    assert precision.native_matmul(torch.float32, "cpu") and precision.native_matmul(torch.bfloat16, "cuda")


def test_an_unknown_prefill_dtype_is_a_one_line_error():
    one_line_error(ValueError, lambda: resolve_prefill_dtype(torch.bfloat16, "cpu", "fp64"), "'fp64'", "auto")


def test_linears_multiply_in_fp32_from_half_weights_and_give_the_input_dtype_back():
    x, weight, bias = torch.randn(3, 8).bfloat16(), torch.randn(5, 8).bfloat16(), torch.randn(5).bfloat16()
    with matmuls_in(torch.float32):
        out = F.linear(x, weight, bias)
        same = F.linear(x.float(), weight.float())                  # fp32 weights are left as they are
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.linear(x.float(), weight.float(), bias.float()).bfloat16())
    assert torch.equal(same, F.linear(x.float(), weight.float()))


def test_a_model_is_its_own_logits(cogvlm_model, cogvlm_cases):
    assert relative_logit_error(cogvlm_model, cogvlm_model, inputs_of(cogvlm_cases)) == 0.0


def test_half_precision_logits_are_near_fp32_with_either_prefill_dtype(half_model, cogvlm_model, cogvlm_cases):
    """The stated tolerances; an fp32 prefill of half-precision weights is as near (the weights are rounded
    either way)."""
    inputs = inputs_of(cogvlm_cases)
    error = relative_logit_error(half_model, cogvlm_model, inputs)
    with matmuls_in(torch.float32):
        upcast_error = relative_logit_error(half_model, cogvlm_model, inputs)
    assert 0 < error < HALF_TOLERANCE[half_model.dtype]
    assert 0 < upcast_error < HALF_TOLERANCE[half_model.dtype]


def test_half_precision_generation_with_an_fp32_prefill_decodes_in_the_model_dtype(half_model, cogvlm_cases):
    """Greedy tokens of both prefill dtypes: the first is chosen from logits within the tolerance of each other."""
    case = cogvlm_cases["cases"]["chat_describe"]
    sampling = SamplingConfig(max_length=case["generation"]["max_length"])
    own = list(generate(half_model, inputs_of(cogvlm_cases, "chat_describe"), sampling))
    upcast = list(generate(half_model, inputs_of(cogvlm_cases, "chat_describe"), sampling,
                           prefill_dtype=torch.float32))
    assert len(own) == len(upcast) == len(case["generation"]["new_token_ids"])
    assert own[0] == upcast[0] == case["generation"]["new_token_ids"][0]
