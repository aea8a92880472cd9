"""Weight-only int8 / int4 quantisation of the language model's linears, applied from outside the model.

Which linears: every SAT ColumnParallelLinear / RowParallelLinear of the decoder (QKV, dense, the SwiGLU gate/up/
down, lm_head), of the visual expert (its QKV, dense and FFN) and of CogAgent's cross-attention (query, key_value,
dense). The vision towers (EVA2-CLIP-E, CogAgent's EVA2-CLIP-L) and the MLP adapter stay in the compute dtype
unless `include_vision` asks for them too; the embeddings and norms are never quantised.

How: a quantised linear keeps its SAT module, whose forward (with its model-parallel copy / gather / reduce) runs
unchanged; only its `weight` parameter is replaced by a `QuantizedWeight`, a tensor subclass that answers
`F.linear(x, weight, bias)` with a weight-only kernel. So the model code stays single-device code and, under model
parallelism, each rank quantises the shard it holds.

Formats (PyTorch's own weight-only kernels; torchao 0.18 adds no faster CPU path: its CPU int4 layout calls the same
int4 kernel, its eager int8 weight-only linear converts the whole weight to the activation dtype at every call):
    int8   symmetric per output channel: w = q * scale, q in [-127, 127]; torch.ops.aten._weight_int8pack_mm
    int4   asymmetric per group of `group_size` input features: w = (q - 8) * scale + zero, q in [0, 15];
           torch.ops.aten._weight_int4pack_mm_for_cpu on the packed layout of _convert_weight_to_int4pack_for_cpu
On this CPU (AVX2, no native bf16 matmul) both kernels are fast only with bf16 activations: measured on one
2816x1024 weight and one row, fp32 F.linear 297 us; int8 88 us with bf16 activations, 2029 us with fp32 ones; int4
(group 32) 251 us with bf16, 4280 us with fp32. So on CPU the activations of a quantised linear are cast to bf16
for the kernel and the output back to the compute dtype. Elsewhere (CUDA) the weight is
dequantised into the compute dtype for each call: correct, not fast (the CPU kernels are what is measured here).

`QuantConfig(8, compile_decode=True)` sends one-row int8 matmuls (a decode step at batch 1) on CPU through a
reduction that torch.compile turns into one vectorised loop instead (fp32 activations, the weight converted in
registers, never materialised): on this AVX2 CPU, one thread, it takes 230-340 us for the 2816x1024 / 1024x2816 /
3072x1024 weights where _weight_int8pack_mm takes 360-610 us and fp32 F.linear 920-1010 us. Several rows go to
the kernel, which is faster from about 8 rows on. The compile is made once per process (about 25 s, then cached by
inductor on disk) with dynamic shapes, so that every layer shares it; hence opt-in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .options import DEFAULT_INT4_GROUP_SIZE, INT4_GROUP_SIZES

INT8_MAX = 127
INT4_LEVELS = 15                 # q in [0, 15]
INT4_OFFSET = 8                  # the kernels' zero point: w = (q - 8) * scale + zero
INT4_INNER_K_TILES = 2           # the packing's tile width (2, 4 or 8); any divides the layers we quantise
KERNEL_DTYPE = torch.bfloat16    # the activation dtype the CPU kernels are fast with

# Module-name prefixes (internal names) of the parts kept in the compute dtype unless include_vision is asked.
VISION_PREFIXES = ("mixins.image.", "mixins.cross_vision.")


class QuantizationError(ValueError):
    """A quantisation setting that does not fit the model (one line, for the CLI)."""


@dataclass(frozen=True)
class QuantConfig:
    bits: int                                  # 8 or 4
    group_size: int = DEFAULT_INT4_GROUP_SIZE  # int4 only: input features sharing one scale and zero
    include_vision: bool = False               # also quantise the vision towers and the adapter
    compile_decode: bool = False               # int8 only: one-row matmuls on CPU through torch.compile

    def __post_init__(self):
        if self.bits not in (8, 4):
            raise QuantizationError(f"--quant {self.bits}: only 8 and 4 bits are supported")
        if self.compile_decode and self.bits != 8:
            raise QuantizationError("compile_decode applies to int8 weights only")
        if self.bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            raise QuantizationError(f"int4 group size {self.group_size} is not one of "
                                    f"{', '.join(map(str, INT4_GROUP_SIZES))}")

    @classmethod
    def from_args(cls, args) -> "QuantConfig | None":
        """The config that options.add_quant_arguments' --quant / --quant_group_size ask for, or None."""
        return cls(args.quant, args.quant_group_size) if args.quant else None

    @classmethod
    def of(cls, quant: "int | QuantConfig | None") -> "QuantConfig | None":
        """A config from the CLI's bit count (or a config, or None for no quantisation)."""
        return quant if quant is None or isinstance(quant, QuantConfig) else cls(bits=int(quant))


class QuantizedWeight(torch.Tensor):
    """Stands in for a linear's weight (out, in) in the compute `dtype`; holds the packed integers and scales.

    Only `F.linear` is defined on it (and the metadata: shape, dtype, device); any other use of the weight is a
    TypeError naming the operation, rather than a silently wrong value."""

    packed: torch.Tensor        # int8 (out, in) | int4 packed by _convert_weight_to_int4pack_for_cpu
    scales: torch.Tensor        # int8: (out,) | int4: (in / group, out, 2) scale and zero; in KERNEL_DTYPE
    bits: int
    group_size: int
    compile_decode: bool        # one-row int8 matmuls through compiled_int8_gemv (see the module's docstring)

    @staticmethod
    def __new__(cls, packed, scales, bits: int, group_size: int, shape: torch.Size, dtype: torch.dtype,
                compile_decode: bool = False):
        weight = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=packed.device,
                                                     requires_grad=False)
        weight.packed, weight.scales, weight.bits, weight.group_size = packed, scales, bits, group_size
        weight.compile_decode = compile_decode
        return weight

    def __repr__(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"QuantizedWeight(int{self.bits}{group}, shape={tuple(self.shape)}, dtype={self.dtype})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *bias = args
            return weight.linear(x, bias[0] if bias else kwargs.get("bias"))
        with torch._C.DisableTorchFunctionSubclass():       # metadata (shape, dtype, ...) as for any tensor
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise TypeError(f"{func} is not defined on a weight-only quantised weight (only F.linear is)")

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        if x.device.type == "cpu" and self.compile_decode and x.numel() == x.shape[-1]:           # one row
            out = compiled_int8_gemv()(x.reshape(1, -1), self.packed, self.scales)                 # (1, out) fp32
            out = out.to(x.dtype).view(*x.shape[:-1], -1)
        elif x.device.type == "cpu":
            flat = x.reshape(-1, x.shape[-1]).to(KERNEL_DTYPE)                             # (rows, in)
            out = self._cpu_kernel(flat).to(x.dtype).view(*x.shape[:-1], -1)                # (..., out)
        else:
            out = F.linear(x, self.dequantize(x.dtype))
        return out if bias is None else out + bias

    def _cpu_kernel(self, flat: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return torch.ops.aten._weight_int8pack_mm(flat, self.packed, self.scales)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales)

    def to_device(self, device: str | torch.device) -> "QuantizedWeight":
        return QuantizedWeight(self.packed.to(device), self.scales.to(device), self.bits, self.group_size,
                               self.shape, self.dtype, self.compile_decode)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight the integers stand for (through the kernel on CPU: no unpacking code of ours)."""
        if self.bits == 8:
            return (self.packed.to(dtype) * self.scales.to(dtype)[:, None])
        if self.packed.device.type != "cpu":
            raise NotImplementedError("int4 weights are packed for the CPU kernel; dequantise them on CPU")
        eye = torch.eye(self.shape[1], dtype=KERNEL_DTYPE)
        return self._cpu_kernel(eye).t().to(dtype)


def int8_gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (1, in), packed (out, in) int8, scales (out,) -> (1, out) fp32. Written as a broadcast product and a sum
    (not a matmul) so that inductor fuses the int8 -> fp32 conversion into one reduction loop over the weight."""
    return (x.float()[:, None, :] * packed[None].float()).sum(-1) * scales.float()                # (1, out)


@functools.cache
def compiled_int8_gemv():
    """int8_gemv compiled once per process, for every weight shape (dynamic shapes)."""
    return torch.compile(int8_gemv, dynamic=True)


def kernel_scale(scale: torch.Tensor) -> torch.Tensor:
    """`scale` (fp32, > 0) in KERNEL_DTYPE, rounded up, never down: a scale rounded down would push the largest
    weights of a row or group past the top integer, to be clipped. bf16 keeps 8 significant bits, so rounding to
    nearest moves a value by at most 2^-8 of it; raising it by 2^-7 first makes every result >= the input."""
    return (scale.clamp(min=torch.finfo(KERNEL_DTYPE).tiny) * (1 + 2 ** -7)).to(KERNEL_DTYPE)


# Rows quantised at a time, so that the fp32 temporaries of a large weight (lm_head) stay a few MiB: quantising
# while loading must not hold several full-precision copies of the largest tensor. A multiple of 64: the CPU int4
# packing works in blocks of 64 rows, so packed blocks concatenate to the packing of the whole.
CHUNK_ELEMENTS = 2**22
INT4_ROW_BLOCK = 64
INT4_ROW_MULTIPLE = 16           # _convert_weight_to_int4pack_for_cpu: out features divisible by 16


def _row_chunks(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    rows = max(INT4_ROW_BLOCK, CHUNK_ELEMENTS // weight.shape[1] // INT4_ROW_BLOCK * INT4_ROW_BLOCK)
    return weight.detach().split(rows)


def quantize_int8(weight: torch.Tensor, dtype: torch.dtype | None = None, compile_decode: bool = False
                  ) -> QuantizedWeight:
    """Symmetric per-output-channel int8 of an (out, in) weight."""
    integers, scales = [], []
    for rows in _row_chunks(weight):
        w = rows.float()                                                                          # (r, in)
        scale = kernel_scale(w.abs().amax(dim=1) / INT8_MAX)                                      # (r,)
        integers.append((w / scale.float()[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8))
        scales.append(scale)
    return QuantizedWeight(torch.cat(integers), torch.cat(scales), 8, 0, weight.shape, dtype or weight.dtype,
                           compile_decode)


def _int4_rows(rows: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed (r, in / 2) uint8, scales and zeros (in / group_size, r, 2)) of r rows."""
    out_features, in_features = rows.shape
    groups = rows.float().view(out_features, in_features // group_size, group_size)              # (r, G, g)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)                                          # (r, G)
    scale = kernel_scale((high - low) / INT4_LEVELS)
    zero = (low + INT4_OFFSET * scale.float()).to(KERNEL_DTYPE)   # so that (q - 8) * scale + zero = low + q * scale
    # The integers are chosen against the scale and zero as stored (bf16), so their rounding is compensated.
    q = (groups - zero.float()[..., None]).div_(scale.float()[..., None]).round_().add_(INT4_OFFSET)
    q = q.clamp_(0, INT4_LEVELS).to(torch.int32).view(out_features, in_features)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
    return packed, torch.stack([scale, zero], dim=-1).transpose(0, 1)                            # (G, r, 2)


def quantize_int4(weight: torch.Tensor, group_size: int = DEFAULT_INT4_GROUP_SIZE, dtype: torch.dtype | None = None,
                  name: str = "a linear") -> QuantizedWeight:
    """Asymmetric int4 of an (out, in) weight, one scale and zero per `group_size` input features."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise QuantizationError(f"int4 group size {group_size} does not divide the {in_features} input features "
                                f"of {name}")
    if out_features % INT4_ROW_MULTIPLE:
        raise QuantizationError(f"int4 needs output features divisible by {INT4_ROW_MULTIPLE}; {name} has "
                                f"{out_features}")
    packed, scales = zip(*(_int4_rows(rows, group_size) for rows in _row_chunks(weight)))
    return QuantizedWeight(torch.cat(packed), torch.cat(scales, dim=1).contiguous(), 4, group_size, weight.shape,
                           dtype or weight.dtype)


def quantize(weight: torch.Tensor, config: QuantConfig, dtype: torch.dtype | None = None,
             name: str = "a linear") -> QuantizedWeight:
    if config.bits == 8:
        return quantize_int8(weight, dtype, config.compile_decode)
    return quantize_int4(weight, config.group_size, dtype, name)


def quantization_targets(model, include_vision: bool = False) -> dict[str, torch.nn.Module]:
    """Internal module name -> SAT parallel linear whose weight is quantised."""
    from sat.mpu.layers import ColumnParallelLinear, RowParallelLinear

    return {name: module for name, module in model.named_modules()
            if isinstance(module, (ColumnParallelLinear, RowParallelLinear))
            and (include_vision or not name.startswith(VISION_PREFIXES))}


def install(linear: torch.nn.Module, weight: QuantizedWeight) -> None:
    """Make `linear` compute with `weight`: its weight parameter (real or meta) is dropped, so the model's
    parameters and state_dict() no longer list it."""
    linear._parameters.pop("weight", None)
    linear.weight = weight              # a plain attribute: what SAT's forward reads as self.weight


def check_shapes(targets: dict[str, torch.nn.Module], config: QuantConfig, model_parallel_size: int = 1) -> None:
    """Before any weight is read: a group size that does not divide a layer's input features is an error, and
    so are output features the int4 packing cannot take. The shapes are this rank's shard's: under model
    parallelism the error says so, since the same checkpoint quantises at another size."""
    if config.bits != 4:
        return
    shard = (f" in this rank's shard at model-parallel size {model_parallel_size} (each rank holds part of a "
             f"layer; a smaller size or group size may fit)") if model_parallel_size > 1 else ""
    bad = [f"{name} ({module.weight.shape[1]})" for name, module in targets.items()
           if module.weight.shape[1] % config.group_size]
    if bad:
        raise QuantizationError(f"int4 group size {config.group_size} does not divide the input features of "
                                f"{len(bad)} layers{shard}, e.g. {bad[0]}")
    bad = [f"{name} ({module.weight.shape[0]})" for name, module in targets.items()
           if module.weight.shape[0] % INT4_ROW_MULTIPLE]
    if bad:
        raise QuantizationError(f"int4 needs output features divisible by {INT4_ROW_MULTIPLE}, which {len(bad)} "
                                f"layers do not have{shard}, e.g. {bad[0]}")


def is_quantized(model) -> bool:
    return any(isinstance(getattr(m, "weight", None), QuantizedWeight) for m in model.modules())


def quantized_bytes(model) -> int:
    """Bytes of the packed integers and scales of every quantised weight of `model`."""
    return sum(m.weight.packed.nbytes + m.weight.scales.nbytes for m in model.modules()
               if isinstance(getattr(m, "weight", None), QuantizedWeight))
