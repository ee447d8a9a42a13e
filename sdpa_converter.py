"""Torch-TensorRT converter for the canonical attention node of register_sdpa.py.

It builds the attention out of plain TensorRT layers, with dynamic query and key lengths:

    q [B, Hq, L, D] -> [B, Hkv, G, L, D]       (G = Hq / Hkv query heads per K/V head)
    k, v [B, Hkv, S, D] -> [B, Hkv, 1, S, D]   (broadcast over G: repeated K/V are never materialised)
    scores = q @ k^T * scale                   [B, Hkv, G, L, S]
    hidden where j > p_i, or j <= p_i - window (sliding window);
        p_i = i + S - L (bottom-right causal), or query_positions[i] when the node has them (static_cache_v3)
    out = softmax(scores) @ v -> [B, Hq, L, D]

Where the installed TensorRT has its attention layer (IAttention, `add_attention_v2`), the node becomes
that layer instead: TensorRT picks a fused attention kernel for the shapes (or decomposes the layer where
it has none), with K/V Hkv heads wide (GQA), q pre-scaled as TensorRT asks, plain causal attention as
its bottom-right causal kind, and a window or query positions as a boolean mask of the visible keys.
LAYERS says which one conversion emits (feature detection; tests set it to check both).

With FP16 inputs and `use_fp32_acc` set, the matmul+softmax attention runs in FP32 and is cast back; the
attention layer takes FP16 as it is, for TensorRT's fused FP16 kernels.
Importing this module registers the converter; it needs torch_tensorrt.
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt
import torch
from torch_tensorrt.dynamo.conversion._ConversionContext import ConversionContext
from torch_tensorrt.dynamo.conversion._ConverterRegistry import ConverterPriority, dynamo_tensorrt_converter

import register_sdpa  # noqa: F401  (defines torch.ops.llm_tools.attention)

ATTENTION = torch.ops.llm_tools.attention.default
ATTENTION_LAYER, MATMUL_SOFTMAX = "attention_layer", "matmul_softmax"
LAYERS = ATTENTION_LAYER if hasattr(trt.INetworkDefinition, "add_attention_v2") else MATMUL_SOFTMAX


def _constant(ctx: ConversionContext, name: str, value: np.ndarray) -> trt.ITensor:
    layer = ctx.net.add_constant(value.shape, trt.Weights(np.ascontiguousarray(value)))
    layer.name = name
    return layer.get_output(0)


def _reshape(ctx: ConversionContext, name: str, tensor: trt.ITensor, dims: tuple[int, ...]) -> trt.ITensor:
    layer = ctx.net.add_shuffle(tensor)
    layer.reshape_dims = dims  # one -1: the dynamic length
    layer.name = name
    return layer.get_output(0)


def _cast(ctx: ConversionContext, name: str, tensor: trt.ITensor, dtype: trt.DataType) -> trt.ITensor:
    if tensor.dtype == dtype:
        return tensor
    layer = ctx.net.add_cast(tensor, dtype)
    layer.name = name
    return layer.get_output(0)


def _elementwise(ctx: ConversionContext, name: str, a: trt.ITensor, b: trt.ITensor,
                 op: trt.ElementWiseOperation) -> trt.ITensor:
    layer = ctx.net.add_elementwise(a, b, op)
    layer.name = name
    return layer.get_output(0)


def _dims(ctx: ConversionContext, name: str, tensor: trt.ITensor, axes: list[int]) -> trt.ITensor:
    """tensor.shape[axes] as an integer shape tensor [len(axes)], read at run time."""
    shape = ctx.net.add_shape(tensor)
    shape.name = f"{name}_shape"
    gather = ctx.net.add_gather(shape.get_output(0), _constant(ctx, f"{name}_axes", np.array(axes, np.int32)), 0)
    gather.name = f"{name}_gather"
    return gather.get_output(0)


def _dim(ctx: ConversionContext, name: str, tensor: trt.ITensor, axis: int) -> trt.ITensor:
    return _dims(ctx, name, tensor, [axis])


def _reshape_to(ctx: ConversionContext, name: str, tensor: trt.ITensor, parts: list[trt.ITensor]) -> trt.ITensor:
    """Reshape to the concatenation of shape tensors: no -1 wildcard, which TensorRT cannot always solve
    when more than one input dimension is only known at run time."""
    concat = ctx.net.add_concatenation(parts)
    concat.axis = 0
    concat.name = f"{name}_dims"
    layer = ctx.net.add_shuffle(tensor)
    layer.set_input(1, concat.get_output(0))
    layer.name = name
    return layer.get_output(0)


def _positions(ctx: ConversionContext, name: str, length: trt.ITensor) -> trt.ITensor:
    """float32 [n] = 0, 1, ..., n - 1 (positions stay exact in float32 up to 2**24)."""
    start = _constant(ctx, f"{name}_start", np.array(0.0, dtype=np.float32))
    step = _constant(ctx, f"{name}_step", np.array([1.0], dtype=np.float32))
    fill = ctx.net.add_fill(trt.Dims([1]), trt.FillOperation.LINSPACE, trt.float32)
    fill.set_input(0, length)
    fill.set_input(1, start)
    fill.set_input(2, step)
    fill.name = f"{name}_arange"
    return fill.get_output(0)


def _hidden_mask(ctx: ConversionContext, name: str, q_len: trt.ITensor, kv_len: trt.ITensor, rank: int,
                 window: int | None, query_positions: trt.ITensor | None) -> trt.ITensor:
    """bool [1, ..., 1, L, S] of `rank` dimensions: True where query i may NOT see key j (causal, optional
    window). Query i sits at query_positions[i] when given, else at i + S - L (bottom-right)."""
    ones = (1,) * (rank - 2)
    cols = _reshape(ctx, f"{name}_cols", _positions(ctx, f"{name}_j", kv_len), (*ones, 1, -1))  # [.., 1, S]
    if query_positions is not None:
        positions = _cast(ctx, f"{name}_positions_float", query_positions, trt.float32)
        last_visible = _reshape(ctx, f"{name}_last", positions, (*ones, -1, 1))  # [.., L, 1]
    else:
        rows = _reshape(ctx, f"{name}_rows", _positions(ctx, f"{name}_i", q_len), (*ones, -1, 1))  # [.., L, 1]
        offset = _elementwise(ctx, f"{name}_offset", _cast(ctx, f"{name}_S_float", kv_len, trt.float32),
                              _cast(ctx, f"{name}_L_float", q_len, trt.float32), trt.ElementWiseOperation.SUB)
        offset = _reshape(ctx, f"{name}_offset_r", offset, (1,) * rank)  # S - L
        last_visible = _elementwise(ctx, f"{name}_last", rows, offset, trt.ElementWiseOperation.SUM)  # i + S - L
    hidden = _elementwise(ctx, f"{name}_future", cols, last_visible, trt.ElementWiseOperation.GREATER)
    if window is not None:
        first_visible = _elementwise(ctx, f"{name}_first", last_visible,
                                     _constant(ctx, f"{name}_window", np.full((1,) * rank, window - 1, np.float32)),
                                     trt.ElementWiseOperation.SUB)  # i + S - L - window + 1
        too_old = _elementwise(ctx, f"{name}_old", cols, first_visible, trt.ElementWiseOperation.LESS)
        hidden = _elementwise(ctx, f"{name}_hidden", hidden, too_old, trt.ElementWiseOperation.OR)
    return hidden


def _np_dtype(tensor: trt.ITensor):
    return np.float16 if tensor.dtype == trt.float16 else np.float32


def matmul_softmax_attention(ctx: ConversionContext, name: str, q: trt.ITensor, k: trt.ITensor, v: trt.ITensor,
                             scale: float, causal: bool, window: int | None,
                             query_positions: trt.ITensor | None = None) -> trt.ITensor:
    """The canonical attention as matrix products and a softmax; returns out [B, Hq, L, D]."""
    q_shape = _dims(ctx, f"{name}_q", q, [0, 1, 2, 3])  # B, Hq, L, D
    kv_heads = _dims(ctx, f"{name}_Hkv", k, [1])
    groups = _elementwise(ctx, f"{name}_G", _dims(ctx, f"{name}_Hq", q, [1]), kv_heads,
                          trt.ElementWiseOperation.FLOOR_DIV)
    one = _constant(ctx, f"{name}_one", np.array([1], np.int64))
    q5 = _reshape_to(ctx, f"{name}_q5", q, [_dims(ctx, f"{name}_B", q, [0]), kv_heads, groups,
                                             _dims(ctx, f"{name}_LD", q, [2, 3])])  # [B, Hkv, G, L, D]
    k5 = _reshape_to(ctx, f"{name}_k5", k, [_dims(ctx, f"{name}_BHkv", k, [0, 1]), one,
                                             _dims(ctx, f"{name}_SD", k, [2, 3])])  # [B, Hkv, 1, S, D]
    v5 = _reshape_to(ctx, f"{name}_v5", v, [_dims(ctx, f"{name}_vBHkv", v, [0, 1]), one,
                                             _dims(ctx, f"{name}_vSD", v, [2, 3])])

    qk = ctx.net.add_matrix_multiply(q5, trt.MatrixOperation.NONE, k5, trt.MatrixOperation.TRANSPOSE)
    qk.name = f"{name}_qk"
    np_dtype = _np_dtype(q)
    scores = _elementwise(ctx, f"{name}_scale", qk.get_output(0),
                          _constant(ctx, f"{name}_scale_value", np.full((1,) * 5, scale, dtype=np_dtype)),
                          trt.ElementWiseOperation.PROD)  # [B, Hkv, G, L, S]
    if causal:
        hidden = _hidden_mask(ctx, name, _dim(ctx, f"{name}_L", q5, 3), _dim(ctx, f"{name}_S", k5, 3), 5,
                              window, query_positions)  # [1, 1, 1, L, S]
        neg_inf = _constant(ctx, f"{name}_neg_inf", np.full((1,) * 5, -np.inf, dtype=np_dtype))
        select = ctx.net.add_select(hidden, neg_inf, scores)
        select.name = f"{name}_masked"
        scores = select.get_output(0)
    softmax = ctx.net.add_softmax(scores)
    softmax.axes = 1 << 4
    softmax.name = f"{name}_softmax"
    pv = ctx.net.add_matrix_multiply(softmax.get_output(0), trt.MatrixOperation.NONE, v5, trt.MatrixOperation.NONE)
    pv.name = f"{name}_pv"
    return _reshape_to(ctx, f"{name}_out", pv.get_output(0), [q_shape])  # [B, Hq, L, D]


def tensorrt_attention_layer(ctx: ConversionContext, name: str, q: trt.ITensor, k: trt.ITensor, v: trt.ITensor,
                             scale: float, causal: bool, window: int | None,
                             query_positions: trt.ITensor | None = None) -> trt.ITensor:
    """The canonical attention as TensorRT's attention layer; returns out [B, Hq, L, D]."""
    scale_value = _constant(ctx, f"{name}_scale_value", np.full((1,) * 4, scale, _np_dtype(q)))
    q = _elementwise(ctx, f"{name}_scale", q, scale_value, trt.ElementWiseOperation.PROD)
    plain_causal = causal and window is None and query_positions is None
    attention = ctx.net.add_attention_v2(q, k, v, trt.AttentionNormalizationOp.SOFTMAX,
                                         trt.CausalMaskKind.LOWER_RIGHT if plain_causal else trt.CausalMaskKind.NONE)
    attention.name = name
    if causal and not plain_causal:  # a mask and a causal kind cannot be set together
        hidden = _hidden_mask(ctx, name, _dim(ctx, f"{name}_L", q, 2), _dim(ctx, f"{name}_S", k, 2), 4,
                              window, query_positions)  # [1, 1, L, S]
        visible = ctx.net.add_unary(hidden, trt.UnaryOperation.NOT)
        visible.name = f"{name}_visible"
        attention.mask = visible.get_output(0)
    attention.decomposable = True  # shapes or dtypes without a fused kernel still build
    return attention.get_output(0)


@dynamo_tensorrt_converter(ATTENTION, supports_dynamic_shapes=True, priority=ConverterPriority.HIGH)
def convert_attention(ctx: ConversionContext, target, args, kwargs, name: str):
    q, k, v, scale, causal = args[:5]
    window = args[5] if len(args) > 5 else kwargs.get("sliding_window")
    query_positions = args[6] if len(args) > 6 else kwargs.get("query_positions")
    if LAYERS == ATTENTION_LAYER:  # FP16 as it is: TensorRT's fused attention kernels are FP16/BF16 kernels
        return tensorrt_attention_layer(ctx, name, q, k, v, float(scale), bool(causal), window, query_positions)
    out_dtype = q.dtype
    compute = trt.float32 if ctx.compilation_settings.use_fp32_acc and q.dtype == trt.float16 else out_dtype
    q, k, v = (_cast(ctx, f"{name}_{part}_acc", t, compute) for part, t in (("q", q), ("k", k), ("v", v)))
    out = matmul_softmax_attention(ctx, name, q, k, v, float(scale), bool(causal), window, query_positions)
    return _cast(ctx, f"{name}_out_cast", out, out_dtype)
