"""The canonical quantized linear (quantize/quantized_linear.py) as TensorRT layers around real INT8/FP8/FP4 weights.

    x ──[quantize → dequantize, with input_scale, where the format quantizes activations]──┐
                                                                                          matmul(x, Wᵀ) (+ bias)
    weight (an INT8 or FP8 constant) ── dequantize(weight_scale, per channel or tensor) ───┘

NVFP4 weights are FP4 constants, dequantized by FP8 block scales that the global scale dequantizes first; NVFP4
activations go through a dynamic quantize layer (FP4 data and FP8 block scales of each block of 16, computed at
run time, relative to input_scale) and the same two dequantize layers.
The engine stores the weight at one byte (half a byte for FP4); TensorRT fuses the dequantize layers into its quantized
matrix-multiply kernels (and the activations' quantize/dequantize pair into an INT8 or FP8 product).
The scales are float32 constants, as TensorRT's quantize layers ask.

Importing this module registers the converter; it needs torch_tensorrt.
"""

from __future__ import annotations

import tensorrt as trt
import torch
from torch_tensorrt.dynamo.conversion._ConversionContext import ConversionContext
from torch_tensorrt.dynamo.conversion._ConverterRegistry import ConverterPriority, dynamo_tensorrt_converter
from torch_tensorrt.dynamo.conversion.converter_utils import get_trt_tensor

from quantize.quantized_linear import NVFP4_BLOCK, QUANTIZED_LINEAR

_QUANTIZED_TYPES = {torch.int8: trt.int8, torch.float8_e4m3fn: trt.fp8}


def _scale(ctx: ConversionContext, scale: torch.Tensor, name: str) -> trt.ITensor:
    scale = scale.detach().float().cpu()
    return get_trt_tensor(ctx, scale.reshape(-1) if scale.dim() else scale, name, dtype=torch.float32, min_rank=0)


def _dequantize(ctx: ConversionContext, quantized: trt.ITensor, scale: torch.Tensor, name: str,
                output_type: trt.DataType) -> trt.ITensor:
    layer = ctx.net.add_dequantize(quantized, _scale(ctx, scale, f"{name}_scale"), output_type)
    if scale.dim():  # one scale per output channel: the weight's rows
        layer.axis = 0
    layer.name = name
    return layer.get_output(0)


def _fake_quantize(ctx: ConversionContext, x: trt.ITensor, scale: torch.Tensor, quantized_type: trt.DataType,
                   name: str) -> trt.ITensor:
    quantize = ctx.net.add_quantize(x, _scale(ctx, scale, f"{name}_scale"), quantized_type)
    quantize.name = f"{name}_quantize"
    return _dequantize(ctx, quantize.get_output(0), scale, f"{name}_dequantize", x.dtype)


def _nvfp4_dequantize(ctx: ConversionContext, data: trt.ITensor, block_scale: trt.ITensor, global_scale: trt.ITensor,
                      scale_type: trt.DataType, output_type: trt.DataType, axis: int, name: str) -> trt.ITensor:
    """FP4 data dequantized by its FP8 block scales along `axis`, which the global scale dequantizes first
    (TensorRT reads the block size from the scales' shape)."""
    block = ctx.net.add_dequantize(block_scale, global_scale, scale_type)
    block.name = f"{name}_block_scale_dequantize"
    dequantized = ctx.net.add_dequantize(data, block.get_output(0), output_type)
    dequantized.axis = axis
    dequantized.name = f"{name}_dequantize"
    return dequantized.get_output(0)


def _nvfp4_weight(ctx: ConversionContext, weight: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor,
                  name: str, output_type: trt.DataType) -> trt.ITensor:
    """NVFP4: the FP4 constant [N, K], dequantized by its FP8 block scales [N, K / 16] and the global scale."""
    stored = get_trt_tensor(ctx, weight.detach().cpu().contiguous(), f"{name}_weight",
                            target_quantized_type=trt.DataType.FP4)
    scales = get_trt_tensor(ctx, block_scale.detach().cpu().contiguous(), f"{name}_block_scale")
    return _nvfp4_dequantize(ctx, stored, scales, _scale(ctx, global_scale, f"{name}_global_scale"), trt.float32,
                             output_type, -1, f"{name}_weight")


def _nvfp4_input(ctx: ConversionContext, x: trt.ITensor, global_scale: torch.Tensor, name: str) -> trt.ITensor:
    """NVFP4 activations: x quantized at run time in blocks of 16 along its last axis (FP4 data, FP8 block scales
    relative to the global scale) and dequantized again, the input of an NVFP4 product. The block scales are
    dequantized to x's type: TensorRT builds no FP16 dequantize of FP4 data by float32 scales."""
    scale, axis = _scale(ctx, global_scale, f"{name}_global_scale"), len(x.shape) - 1
    quantize = ctx.net.add_dynamic_quantize(x, axis, NVFP4_BLOCK, trt.DataType.FP4, trt.DataType.FP8)
    quantize.set_input(1, scale)
    quantize.name = f"{name}_dynamic_quantize"
    return _nvfp4_dequantize(ctx, quantize.get_output(0), quantize.get_output(1), scale, x.dtype, x.dtype, axis, name)


@dynamo_tensorrt_converter(QUANTIZED_LINEAR, supports_dynamic_shapes=True, priority=ConverterPriority.HIGH)
def convert_quantized_linear(ctx: ConversionContext, target, args, kwargs, name: str):
    x, weight, weight_scale, input_scale, bias, weight_scale_2 = (list(args) + [None] * 6)[:6]
    if not isinstance(weight, torch.Tensor) or weight.dtype not in (*_QUANTIZED_TYPES, torch.uint8):
        raise RuntimeError(f"{name}: the quantized weight must be an INT8, FP8 or NVFP4 constant")
    if weight.dtype == torch.uint8:
        weight_t = _nvfp4_weight(ctx, weight, weight_scale, weight_scale_2, name, x.dtype)
    else:
        stored = get_trt_tensor(ctx, weight.detach().cpu().contiguous(), f"{name}_weight")  # [N, K], one byte each
        weight_t = _dequantize(ctx, stored, weight_scale, f"{name}_weight_dequantize", x.dtype)
    if input_scale is not None and weight.dtype == torch.uint8:
        x = _nvfp4_input(ctx, x, input_scale, f"{name}_input")
    elif input_scale is not None:
        x = _fake_quantize(ctx, x, input_scale, _QUANTIZED_TYPES[weight.dtype], f"{name}_input")
    if len(x.shape) > 2:  # [..., K] @ [K, N]: the weight broadcast over the leading dimensions
        expand = ctx.net.add_shuffle(weight_t)
        expand.reshape_dims = (1,) * (len(x.shape) - 2) + tuple(weight_t.shape)
        expand.name = f"{name}_weight_broadcast"
        weight_t = expand.get_output(0)
    product = ctx.net.add_matrix_multiply(x, trt.MatrixOperation.NONE, weight_t, trt.MatrixOperation.TRANSPOSE)
    product.name = f"{name}_matmul"
    out = product.get_output(0)
    if bias is not None:
        bias_tensor = get_trt_tensor(ctx, bias.detach().cpu().reshape((1,) * (len(x.shape) - 1) + (-1,)),
                                     f"{name}_bias", dtype=bias.dtype)
        add = ctx.net.add_elementwise(out, bias_tensor, trt.ElementWiseOperation.SUM)
        add.name = f"{name}_bias_add"
        out = add.get_output(0)
    return out
