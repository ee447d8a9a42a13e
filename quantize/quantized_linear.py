"""The one quantized-linear form of the lowered graph: `llm_tools::quantized_linear`.

    quantized_linear(x, weight, weight_scale, input_scale, bias, weight_scale_2)
        = fq(x) @ (weight * weight_scale [* weight_scale_2]).T + bias

- `weight` [N, K] is stored quantized: int8, or float8_e4m3fn; or NVFP4, two FP4 (E2M1) values a byte,
  uint8 [N, K / 2], the even element in the low four bits.
- `weight_scale` is float32, [N] (one per output channel, INT8) or [] (one per tensor, FP8); for NVFP4,
  float8_e4m3fn [N, K / 16], one per block of 16, itself scaled by `weight_scale_2` (float32 []).
- `input_scale` is None for weight-only formats; else a float32 [] scale, and fq(x) quantizes x to the
  weight's type with it and dequantizes it again (INT8 SmoothQuant, FP8): what the matrix product of
  two quantized operands computes. For NVFP4 activations it is the global scale of a dynamic block
  quantization: each block of 16 along K gets the FP8 scale (its largest magnitude / 6) / input_scale.
- SmoothQuant's per-channel input factor is a multiplication before the op, not part of it.

The names and semantics are those of ModelOpt's exported checkpoints (`weight`, `weight_scale`,
`input_scale`, `pre_quant_scale`), so a pre-quantized checkpoint and a model quantized in this run
lower to the same nodes. Eager runs the op's PyTorch implementation below; inductor gets the same
computation as plain ops it can fuse (compilers/inductor.py); TensorRT converts it to quantize and
dequantize layers around real INT8/FP8 weights.
"""

from __future__ import annotations

import torch

INT8_RANGE = (-128, 127)
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale in FP8 E4M3, saturated at its largest value."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, quantized_dtype: torch.dtype) -> torch.Tensor:
    """x quantized to `quantized_dtype` with `scale` and dequantized again, in x's dtype (uint8: NVFP4)."""
    if quantized_dtype == torch.uint8:
        return nvfp4_fake_quantize(x, scale)
    if quantized_dtype == torch.int8:
        quantized = (x.float() / scale).round().clamp(*INT8_RANGE)
    else:
        quantized = to_fp8(x, scale).float()
    return (quantized * scale).to(x.dtype)


E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)  # by 4-bit code
NVFP4_BLOCK = 16
E2M1_MAX = 6.0
_E2M1_TIES_UP = (0.75, 1.75, 3.5)  # halfway points whose upper neighbour has the even code


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest FP4 (E2M1) value, halfway cases to the even code, saturated at +-6."""
    magnitudes = torch.tensor(E2M1_VALUES[:8], device=x.device)
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    size = x.abs().clamp(max=E2M1_MAX)
    index = torch.bucketize(size, midpoints)  # a halfway value goes down ...
    index = index + torch.isin(size, torch.tensor(_E2M1_TIES_UP, device=x.device)).long()  # ... or up, to even
    return torch.sign(x) * magnitudes[index]


def nvfp4_fake_quantize(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """NVFP4's dynamic quantization of activations, dequantized again in x's dtype: each block of 16 along the
    last axis scaled by its FP8 block scale (largest magnitude / 6, relative to `global_scale`) and rounded to
    FP4."""
    blocks = x.float().reshape(*x.shape[:-1], -1, NVFP4_BLOCK)
    block_scale = blocks.abs().amax(-1, keepdim=True) / (E2M1_MAX * global_scale)
    scale = block_scale.clamp(max=FP8_MAX).to(torch.float8_e4m3fn).float() * global_scale
    quantized = round_to_e2m1(blocks / torch.where(scale > 0, scale, 1.0))
    return (quantized * scale).reshape(x.shape).to(x.dtype)


def fp4_values(packed: torch.Tensor) -> torch.Tensor:
    """float32 [N, K] from NVFP4's packed uint8 [N, K / 2] (the even element in the low four bits)."""
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    return torch.tensor(E2M1_VALUES, device=packed.device)[codes.long()]


def dequantized_weight(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype,
                       weight_scale_2: torch.Tensor | None = None) -> torch.Tensor:
    if weight.dtype == torch.uint8:  # NVFP4: a scale per block of 16 along K
        values = fp4_values(weight)
        rows, columns = values.shape
        scales = weight_scale.float() * weight_scale_2.float()
        return (values.reshape(rows, -1, NVFP4_BLOCK) * scales.unsqueeze(-1)).reshape(rows, columns).to(dtype)
    scale = weight_scale.reshape(-1, 1) if weight_scale.dim() else weight_scale
    return (weight.float() * scale).to(dtype)


def quantized_linear_reference(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                               input_scale: torch.Tensor | None, bias: torch.Tensor | None,
                               weight_scale_2: torch.Tensor | None = None) -> torch.Tensor:
    """What the op computes, in plain PyTorch ops."""
    if input_scale is not None:
        x = fake_quantize(x, input_scale, weight.dtype)
    return torch.nn.functional.linear(x, dequantized_weight(weight, weight_scale, x.dtype, weight_scale_2), bias)


@torch.library.custom_op("llm_tools::quantized_linear", mutates_args=())
def quantized_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     input_scale: torch.Tensor | None, bias: torch.Tensor | None,
                     weight_scale_2: torch.Tensor | None = None) -> torch.Tensor:
    return quantized_linear_reference(x, weight, weight_scale, input_scale, bias, weight_scale_2)


@quantized_linear.register_fake
def _(x, weight, weight_scale, input_scale, bias, weight_scale_2=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


QUANTIZED_LINEAR = torch.ops.llm_tools.quantized_linear.default


class QuantizedLinear(torch.nn.Module):
    """A linear layer in the canonical form: what every quantized nn.Linear of the model becomes before export."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, pre_quant_scale: torch.Tensor | None = None,
                 weight_scale_2: torch.Tensor | None = None):
        super().__init__()
        packed = 2 if weight.dtype == torch.uint8 else 1  # NVFP4: two values a byte
        self.out_features, self.in_features = weight.shape[0], weight.shape[1] * packed
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # a parameter: weight counts see its bytes
        # NVFP4's block scales stay FP8; the other formats' scales are float32
        self.register_buffer("weight_scale", weight_scale if weight.dtype == torch.uint8 else weight_scale.float())
        self.register_buffer("weight_scale_2", None if weight_scale_2 is None else weight_scale_2.float())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float())
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.register_buffer("pre_quant_scale", pre_quant_scale)

    @property
    def format(self) -> str:
        return format_of(self.weight.dtype, self.input_scale is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale.to(x.dtype)
        return quantized_linear(x, self.weight, self.weight_scale, self.input_scale, self.bias, self.weight_scale_2)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


def format_of(weight_dtype: torch.dtype, weight_only: bool) -> str:
    name = {torch.int8: "int8", torch.float8_e4m3fn: "fp8", torch.uint8: "nvfp4"}[weight_dtype]
    return f"{name} weight-only" if weight_only else f"{name} weights and activations"


def quantized_linears(model: torch.nn.Module) -> list[QuantizedLinear]:
    return [module for module in model.modules() if isinstance(module, QuantizedLinear)]
