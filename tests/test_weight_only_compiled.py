"""QuantConfig(8, compile_decode=True): one-row int8 matmuls through the compiled reduction of
utils/quantization/weight_only.py, several rows through PyTorch's int8 kernel, and the same answers."""
import pytest
import torch
import torch.nn.functional as F

from cogvlm import PACKAGE_ROOT
from cogvlm.utils.quantization.weight_only import QuantConfig, QuantizationError, quantize

CAPTCHA = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"


@pytest.fixture(scope="module")
def weights():
    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))                      # (out, in)
    return quantize(weight, QuantConfig(8)), quantize(weight, QuantConfig(8, compile_decode=True))


def test_one_row_is_the_exact_product_with_the_dequantised_weight(weights):
    _, compiled = weights
    x = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(1))                         # (B, T, in)
    out = F.linear(x, compiled)
    exact = F.linear(x, compiled.dequantize(torch.float32))         # fp32 throughout: no bf16 activations
    assert out.shape == (1, 1, 96) and out.dtype == torch.float32
    torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5)


def test_several_rows_take_the_int8_kernel(weights):
    plain, compiled = weights
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2))
    assert torch.equal(F.linear(x, compiled), F.linear(x, plain))


def test_compile_decode_is_int8_only():
    with pytest.raises(QuantizationError, match="int8 weights only"):
        QuantConfig(4, compile_decode=True)


def test_the_embedded_model_still_reads_the_captcha():
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig

    chat = ChatModel.from_pretrained(CAPTCHA, quant=QuantConfig(8, compile_decode=True))
    image = chat.prepare_image(str(CAPTCHA / "examples" / "3640.png"))
    answer = chat.answer("What text is written in the image?", [], image, SamplingConfig(max_length=2048, top_k=1))
    assert answer == "3640"
