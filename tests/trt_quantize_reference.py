"""The quantization layers of trt_reference.py's evaluation: quantize, dynamic quantize, dequantize, and FP8/FP4
constants, from TensorRT's documented semantics (round half to even and saturate for INT8, saturating casts for
FP8; a scale per tensor, per index of an axis, or per block of the last axis)."""

from __future__ import annotations

import numpy as np
import tensorrt as trt

INT8_RANGE, FP8_MAX = (-128, 127), 448.0


def per_axis(layer, scale, shape):
    """A quantize layer's scale: one value, one per index of the layer's axis, or (a scale of the input's rank)
    one per block of the last axis, its block size the two shapes' ratio."""
    scale, ndim = np.asarray(scale, dtype=np.float32), len(shape)
    if scale.size == 1:
        return scale.reshape(())
    if scale.ndim == ndim and scale.ndim > 1:
        return np.repeat(scale, shape[-1] // scale.shape[-1], axis=-1)
    shape = [1] * ndim
    shape[layer.axis] = scale.size
    return scale.reshape(shape)


def dynamic_quantize(layer, x, double_scale):
    """TensorRT's dynamic quantize to NVFP4, by its documentation: for each block of the axis, the block scale
    (its largest magnitude / 6) quantized to FP8 by the double-quantization scale, and the block / its
    dequantized scale in FP4 (E2M1: to nearest, halfway to the even code, saturated). Returns (FP4 values,
    FP8 block-scale values), as float32."""
    import torch

    from quantize.quantized_linear import E2M1_MAX, round_to_e2m1

    if layer.to_type != trt.fp4 or layer.scale_type != trt.fp8 or layer.axis not in (-1, x.ndim - 1):
        raise NotImplementedError(f"dynamic quantize {layer.name} to {layer.to_type} along axis {layer.axis}")
    blocks = torch.from_numpy(x.astype(np.float32)).reshape(*x.shape[:-1], -1, layer.block_size)
    double_scale = float(np.asarray(double_scale).reshape(()))
    block_scale = (blocks.abs().amax(-1) / (E2M1_MAX * double_scale)).clamp(max=FP8_MAX)
    block_scale = block_scale.to(torch.float8_e4m3fn).float()
    scale = block_scale.unsqueeze(-1) * double_scale
    data = round_to_e2m1(blocks / torch.where(scale > 0, scale, 1.0))
    return data.reshape(x.shape).numpy(), block_scale.numpy()


def quantize(layer, x, scale):
    """TensorRT's quantize: x / scale rounded half to even and saturated (INT8), or cast to FP8 (saturated)."""
    scaled = x.astype(np.float32) / per_axis(layer, scale, x.shape)
    if layer.to_type == trt.int8:
        return np.clip(np.rint(scaled), *INT8_RANGE).astype(np.int8)
    if layer.to_type == trt.fp8:
        import torch

        return torch.from_numpy(np.clip(scaled, -FP8_MAX, FP8_MAX)).to(torch.float8_e4m3fn).float().numpy()
    raise NotImplementedError(f"quantize to {layer.to_type}")


def dequantize(layer, q, scale, dtype):
    return (q.astype(np.float32) * per_axis(layer, scale, q.shape)).astype(dtype)


def constant(layer, constants):
    """A constant layer's value; numpy cannot read FP8 or FP4 weights, which `constants` gives by layer name."""
    if layer.weights.dtype in (trt.fp8, trt.fp4):
        if layer.name not in constants:
            raise KeyError(f"{layer.weights.dtype} constant {layer.name}: give its value in `constants`")
        return np.asarray(constants[layer.name], dtype=np.float32).reshape(tuple(layer.shape))
    return np.asarray(layer.weights).reshape(tuple(layer.shape))
