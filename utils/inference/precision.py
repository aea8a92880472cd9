"""Compute dtypes per phase, and how far a half-precision model's logits are from fp32.

A bf16 or fp16 model halves the bytes a decode step reads (decode is bound by memory bandwidth), but its prefill
is a compute-bound matrix multiply, and a CPU without native half-precision matrix instructions (bf16: AVX512-BF16
or AMX; fp16: AVX512-FP16 or AMX-FP16) converts inside the kernel and runs it several times slower than fp32.
There, the prefill runs its linear layers in fp32 from the half-precision weights, upcasting one weight at a
time (a transient copy of one layer's weight, not a second model), and the decode steps stay in the model's dtype.

    native_matmul(dtype, device)        does this device multiply `dtype` matrices natively?
    resolve_prefill_dtype(dtype, device, choice)   "auto" | "fp32" | "model" -> the prefill's multiply dtype
    matmuls_in(dtype)                   a context in which F.linear on half-precision weights computes in `dtype`
    relative_logit_error(a, b, inputs)  ||logits_a - logits_b|| / ||logits_b|| of one prompt
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


from cogvlm.utils.inference.options import PREFILL_DTYPES
HALF_DTYPES = (torch.bfloat16, torch.float16)


def native_matmul(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether `device` multiplies `dtype` matrices natively. fp32 always; on CUDA, every dtype; on CPU, bf16 with
    AVX512-BF16 or AMX and fp16 with AVX512-FP16 or AMX-FP16, as oneDNN reports them."""
    if dtype not in HALF_DTYPES or torch.device(device).type != "cpu":
        return True
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


def resolve_prefill_dtype(model_dtype: torch.dtype, device: torch.device | str, choice: str = "auto"
                          ) -> torch.dtype | None:
    """The dtype the prefill multiplies in, None for the weights' own: "model" theirs, "fp32" fp32, "auto" fp32
    for half-precision weights on a device without native half-precision multiplies, else theirs."""
    if choice not in PREFILL_DTYPES:
        raise ValueError(f"prefill dtype {choice!r} is not one of {', '.join(PREFILL_DTYPES)}")
    upcast = choice == "fp32" or (choice == "auto" and not native_matmul(model_dtype, device))
    return torch.float32 if upcast and model_dtype != torch.float32 else None


class _LinearsIn(TorchFunctionMode):
    """F.linear on a plain half-precision weight computes in `dtype`; its output goes back to the input's dtype, so
    everything around the linears (norms, attention, the KV cache) keeps the model's dtype. Quantised weights
    (a tensor subclass with kernels of their own) are left to themselves."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and _upcastable(args[1] if len(args) > 1 else kwargs.get("weight"), self.dtype):
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            out = F.linear(x.to(self.dtype), weight.to(self.dtype), None if bias is None else bias.to(self.dtype))
            return out.to(x.dtype)
        return func(*args, **kwargs)


def _upcastable(weight, dtype: torch.dtype) -> bool:
    return (type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype in HALF_DTYPES
            and weight.dtype != dtype)


def matmuls_in(dtype: torch.dtype | None):
    """A context in which the linear layers of a half-precision model multiply in `dtype` (None: unchanged)."""
    return nullcontext() if dtype is None else _LinearsIn(dtype)


@torch.inference_mode()
def relative_logit_error(model_a, model_b, inputs) -> float:
    """||logits_a - logits_b|| / ||logits_b|| over every position of one prompt (a ModelInputs), both in fp32: how
    far `model_a` (e.g. bf16, fp16 or quantised) is from `model_b` (e.g. the fp32 model of the same checkpoint)."""
    logits_a = model_a.forward_inputs(inputs.to(model_a.device, model_a.dtype))[0].float()
    logits_b = model_b.forward_inputs(inputs.to(model_b.device, model_b.dtype))[0].float()
    return float((logits_a - logits_b).norm() / logits_b.norm())
