"""A numpy evaluation of a TensorRT network definition, layer by layer, for every layer type that
Torch-TensorRT and our converters emit for the project's graphs.

It reads each layer's parameters from the network definition (the object TensorRT builds the engine
from) and computes its outputs from TensorRT's documented semantics, so what TensorRT was asked to
compute can be checked where no engine can run. A layer type it does not know is an error, and so is
an output whose shape disagrees with the shape the network declares for it.
"""

from __future__ import annotations

import math

import numpy as np
import tensorrt as trt

from trt_quantize_reference import constant, dequantize, dynamic_quantize, quantize

_DTYPES = {trt.float32: np.float32, trt.float16: np.float16, trt.int32: np.int32, trt.int64: np.int64,
           trt.bool: np.bool_, trt.int8: np.int8, trt.uint8: np.uint8, trt.fp8: np.float32, trt.fp4: np.float32}
if hasattr(trt, "bfloat16"):  # numpy has no bfloat16, FP8 or FP4: their values in float32 (FP8/FP4 exactly)
    _DTYPES[trt.bfloat16] = np.float32


def _int_div(a, b):
    """TensorRT's DIV of integers rounds toward zero (C's integer division), unlike numpy's //."""
    return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return _int_div(a, b)
    return np.divide(a, b)


def _floor_div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.floor_divide(a, b)
    return np.floor(np.divide(a, b))


_ELEMENTWISE = {
    trt.ElementWiseOperation.SUM: np.add, trt.ElementWiseOperation.SUB: np.subtract,
    trt.ElementWiseOperation.PROD: np.multiply, trt.ElementWiseOperation.DIV: _div,
    trt.ElementWiseOperation.MAX: np.maximum, trt.ElementWiseOperation.MIN: np.minimum,
    trt.ElementWiseOperation.POW: np.power,
    trt.ElementWiseOperation.GREATER: np.greater, trt.ElementWiseOperation.LESS: np.less,
    trt.ElementWiseOperation.EQUAL: np.equal, trt.ElementWiseOperation.OR: np.logical_or,
    trt.ElementWiseOperation.AND: np.logical_and, trt.ElementWiseOperation.XOR: np.logical_xor,
    trt.ElementWiseOperation.FLOOR_DIV: _floor_div,
}
_UNARY = {
    trt.UnaryOperation.EXP: np.exp, trt.UnaryOperation.LOG: np.log, trt.UnaryOperation.SQRT: np.sqrt,
    trt.UnaryOperation.RECIP: np.reciprocal, trt.UnaryOperation.ABS: np.abs, trt.UnaryOperation.NEG: np.negative,
    trt.UnaryOperation.SIN: np.sin, trt.UnaryOperation.COS: np.cos, trt.UnaryOperation.TAN: np.tan,
    trt.UnaryOperation.SINH: np.sinh, trt.UnaryOperation.COSH: np.cosh, trt.UnaryOperation.ASIN: np.arcsin,
    trt.UnaryOperation.ACOS: np.arccos, trt.UnaryOperation.ATAN: np.arctan, trt.UnaryOperation.ASINH: np.arcsinh,
    trt.UnaryOperation.ACOSH: np.arccosh, trt.UnaryOperation.ATANH: np.arctanh, trt.UnaryOperation.CEIL: np.ceil,
    trt.UnaryOperation.FLOOR: np.floor, trt.UnaryOperation.NOT: np.logical_not, trt.UnaryOperation.SIGN: np.sign,
    trt.UnaryOperation.ROUND: np.rint,  # half to even, as TensorRT documents
    trt.UnaryOperation.ISINF: np.isinf, trt.UnaryOperation.ISNAN: np.isnan,
    trt.UnaryOperation.ERF: np.vectorize(math.erf, otypes=[np.float64]),
}
_REDUCE = {trt.ReduceOperation.SUM: np.sum, trt.ReduceOperation.PROD: np.prod, trt.ReduceOperation.MAX: np.max,
           trt.ReduceOperation.MIN: np.min, trt.ReduceOperation.AVG: np.mean}


def _gelu_erf(x):
    return 0.5 * x * (1 + _UNARY[trt.UnaryOperation.ERF](x / np.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


_ACTIVATION = {
    trt.ActivationType.RELU: lambda x, a, b: np.maximum(x, 0),
    trt.ActivationType.SIGMOID: lambda x, a, b: 1 / (1 + np.exp(-x)),
    trt.ActivationType.TANH: lambda x, a, b: np.tanh(x),
    trt.ActivationType.GELU_ERF: lambda x, a, b: _gelu_erf(x),
    trt.ActivationType.GELU_TANH: lambda x, a, b: _gelu_tanh(x),
    trt.ActivationType.LEAKY_RELU: lambda x, a, b: np.where(x >= 0, x, a * x),
    trt.ActivationType.CLIP: lambda x, a, b: np.clip(x, a, b),
    trt.ActivationType.SOFTPLUS: lambda x, a, b: a * np.log1p(np.exp(b * x)),
    trt.ActivationType.SCALED_TANH: lambda x, a, b: a * np.tanh(b * x),
}
_CLASSES = {
    trt.LayerType.SHUFFLE: trt.IShuffleLayer, trt.LayerType.MATRIX_MULTIPLY: trt.IMatrixMultiplyLayer,
    trt.LayerType.CONSTANT: trt.IConstantLayer, trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer,
    trt.LayerType.SHAPE: trt.IShapeLayer, trt.LayerType.GATHER: trt.IGatherLayer,
    trt.LayerType.FILL: trt.IFillLayer, trt.LayerType.CAST: trt.ICastLayer,
    trt.LayerType.SELECT: trt.ISelectLayer, trt.LayerType.SOFTMAX: trt.ISoftMaxLayer,
    trt.LayerType.CONCATENATION: trt.IConcatenationLayer, trt.LayerType.SLICE: trt.ISliceLayer,
    trt.LayerType.UNARY: trt.IUnaryLayer, trt.LayerType.REDUCE: trt.IReduceLayer,
    trt.LayerType.ACTIVATION: trt.IActivationLayer, trt.LayerType.SCATTER: trt.IScatterLayer,
    trt.LayerType.UNSQUEEZE: trt.IUnsqueezeLayer, trt.LayerType.SQUEEZE: trt.ISqueezeLayer,
    trt.LayerType.NORMALIZATION: trt.INormalizationLayer, trt.LayerType.IDENTITY: trt.IIdentityLayer,
    trt.LayerType.QUANTIZE: trt.IQuantizeLayer, trt.LayerType.DEQUANTIZE: trt.IDequantizeLayer,
    trt.LayerType.DYNAMIC_QUANTIZE: trt.IDynamicQuantizeLayer}
if hasattr(trt, "IKVCacheUpdateLayer"):
    _CLASSES[trt.LayerType.KV_CACHE_UPDATE] = trt.IKVCacheUpdateLayer
_ATTENTION_INPUT = _ATTENTION_OUTPUT = None  # TensorRT's attention layer, where this TensorRT has one
if hasattr(trt, "IAttention"):
    _ATTENTION_INPUT, _ATTENTION_OUTPUT = trt.LayerType.ATTENTION_INPUT, trt.LayerType.ATTENTION_OUTPUT
    _CLASSES[_ATTENTION_INPUT] = trt.IAttentionInputLayer
    _CLASSES[_ATTENTION_OUTPUT] = trt.IAttentionOutputLayer


def _axes(bits: int, ndim: int) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if bits >> i & 1)


def _shuffle(layer, x, dims_input=None):
    x = np.transpose(x, tuple(layer.first_transpose)[: x.ndim])
    # the dimensions come from a shape tensor, or are the layer's own (None: no reshape)
    dims = [int(d) for d in dims_input] if dims_input is not None else layer.reshape_dims
    if dims is not None:
        if layer.zero_is_placeholder:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        x = x.reshape(list(dims))
    return np.transpose(x, tuple(layer.second_transpose)[: x.ndim])


def _matmul(layer, a, b):
    vector_a, vector_b = layer.op0 == trt.MatrixOperation.VECTOR, layer.op1 == trt.MatrixOperation.VECTOR
    if layer.op0 == trt.MatrixOperation.TRANSPOSE:
        a = np.swapaxes(a, -1, -2)
    if layer.op1 == trt.MatrixOperation.TRANSPOSE:
        b = np.swapaxes(b, -1, -2)
    if vector_a:
        a = a[..., None, :]
    if vector_b:
        b = b[..., :, None]
    out = np.matmul(a, b)
    if vector_a:
        out = out[..., 0, :]
    if vector_b:
        out = out[..., 0]
    return out


def _fill(layer, inputs):
    if layer.operation != trt.FillOperation.LINSPACE:
        raise NotImplementedError(f"fill {layer.operation} of layer {layer.name}")
    shape = [int(n) for n in inputs[0]] if inputs and inputs[0] is not None else list(layer.shape)
    start = inputs[1] if len(inputs) > 1 and inputs[1] is not None else np.asarray(layer.alpha)
    step = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.asarray(layer.beta)
    step = np.broadcast_to(np.asarray(step, dtype=np.float64).reshape(-1), (len(shape),))
    grid = np.indices(shape, dtype=np.float64)  # value at index i: start + sum_d step[d] * i[d]
    value = float(np.asarray(start).reshape(-1)[0]) + np.tensordot(step, grid, axes=1)
    return value.astype(_DTYPES[layer.to_type])


def _slice(layer, args):
    """out[i] = x[start + i * stride] per axis; a start/size/stride input replaces the static one."""
    x = args[0]
    start, size, stride = (  # the layer's own values are read only where no input gives them
        [int(v) for v in (args[i] if len(args) > i and args[i] is not None else getattr(layer, static))]
        for i, static in ((1, "start"), (2, "shape"), (3, "stride")))
    if len(args) > 5 and args[5] is not None:
        raise NotImplementedError(f"slice {layer.name} with an axes input")
    index = []
    for axis in range(x.ndim):
        positions = start[axis] + stride[axis] * np.arange(size[axis])
        if layer.mode == trt.SampleMode.CLAMP:
            positions = np.clip(positions, 0, x.shape[axis] - 1)
        elif layer.mode == trt.SampleMode.WRAP:
            positions = positions % x.shape[axis]
        elif layer.mode != trt.SampleMode.STRICT_BOUNDS:
            raise NotImplementedError(f"slice mode {layer.mode} of layer {layer.name}")
        elif size[axis] and (positions.min() < 0 or positions.max() >= x.shape[axis]):
            raise IndexError(f"slice {layer.name} reads {positions.min()}..{positions.max()} "
                             f"of axis {axis} of length {x.shape[axis]}")
        index.append(positions)
    return x[np.ix_(*index)] if x.ndim else x


def _gather(layer, data, indices):
    if layer.mode == trt.GatherMode.ELEMENT:
        return np.take_along_axis(data, indices, axis=layer.axis)
    if layer.mode == trt.GatherMode.ND:
        batch = layer.num_elementwise_dims
        if batch:
            raise NotImplementedError(f"gather ND with {batch} elementwise dims ({layer.name})")
        return data[tuple(np.moveaxis(indices, -1, 0))]
    if layer.num_elementwise_dims:
        raise NotImplementedError(f"gather with {layer.num_elementwise_dims} elementwise dims ({layer.name})")
    axis = layer.axis
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take(data, indices, axis=axis)


def _scatter(layer, data, indices, updates):
    out = data.copy()
    if layer.mode == trt.ScatterMode.ELEMENT:
        np.put_along_axis(out, indices, updates, axis=layer.axis)
    else:  # ND: the last axis of indices addresses data's leading axes
        out[tuple(np.moveaxis(indices, -1, 0))] = updates
    return out


def _kv_cache_update(layer, cache, update, write_indices):
    """LINEAR mode: output[b, :, write_indices[b] + s, :] = update[b, :, s, :], the rest is the cache.
    A write past the cache's end is an error (TensorRT leaves it undefined)."""
    assert layer.cache_mode == trt.KVCacheMode.LINEAR, layer.cache_mode
    out, length = cache.copy(), update.shape[2]
    for b, start in enumerate(np.asarray(write_indices).reshape(-1)):
        if not 0 <= start <= cache.shape[2] - length:
            raise AssertionError(f"layer {layer.name}: rows {start}..{start + length - 1} of {cache.shape[2]}")
        out[b, :, start:start + length] = update[b]
    return out


def _softmax(layer, x):
    axis = int(np.log2(layer.axes))
    shifted = x.astype(np.float32) - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _normalization(layer, x, scale, bias):
    if layer.num_groups != 1:
        raise NotImplementedError(f"group normalization ({layer.name})")
    axes = _axes(layer.axes, x.ndim)
    centered = x - x.mean(axis=axes, keepdims=True)
    variance = (centered ** 2).mean(axis=axes, keepdims=True)
    return centered / np.sqrt(variance + layer.epsilon) * scale + bias


def _attention(attention, q, k, v, mask):
    """TensorRT's attention layer as documented: softmax(q k^T, masked) v over [B, H, L|S, D], with
    Hkv dividing Hq (each K/V head serves Hq / Hkv consecutive query heads), no scale of its own, a
    causal kind aligned top-left (key j <= i) or bottom-right (j <= i + S - L), and a mask that either
    says which keys a query may see (bool) or is added to the scores."""
    if attention.norm_op != trt.AttentionNormalizationOp.SOFTMAX:
        raise NotImplementedError(f"attention {attention.name} with normalization {attention.norm_op}")
    if attention.query_lengths is not None or attention.key_value_lengths is not None:
        raise NotImplementedError(f"attention {attention.name} with ragged lengths")
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise AssertionError(f"attention {attention.name}: {heads} query heads over {kv_heads} K/V heads")
    k, v = (np.repeat(t.astype(np.float64), heads // kv_heads, axis=1) for t in (k, v))
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2)  # [B, Hq, L, S]
    length, kv_len = scores.shape[-2:]
    i, j = np.arange(length)[:, None], np.arange(kv_len)[None, :]
    visible = np.ones((length, kv_len), dtype=bool)
    if attention.causal_kind == trt.CausalMaskKind.LOWER_RIGHT:
        visible = j <= i + kv_len - length
    elif attention.causal_kind == trt.CausalMaskKind.UPPER_LEFT:
        visible = j <= i
    if mask is not None and mask.dtype == np.bool_:
        visible = visible & mask
    elif mask is not None:
        scores = scores + mask
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return ((weights / weights.sum(axis=-1, keepdims=True)) @ v).astype(q.dtype)


def _attention_inputs(layer) -> list:
    """An attention layer's tensors: query, key, value and the optional mask."""
    attention = layer.attention
    return [attention.get_input(i) for i in range(3)] + ([attention.mask] if attention.mask is not None else [])


def _new_axes(axes, ndim):
    return sorted(int(a) + ndim if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))


def _evaluate_layer(layer, kind, args, constants):
    if kind == trt.LayerType.SHUFFLE:
        return _shuffle(layer, args[0], args[1] if len(args) > 1 else None)
    if kind == trt.LayerType.MATRIX_MULTIPLY:
        return _matmul(layer, *args)
    if kind == trt.LayerType.CONSTANT:
        return constant(layer, constants)
    if kind in (trt.LayerType.QUANTIZE, trt.LayerType.DYNAMIC_QUANTIZE):  # the dynamic one: (data, block scales)
        return (quantize if kind == trt.LayerType.QUANTIZE else dynamic_quantize)(layer, *args)
    if kind == trt.LayerType.DEQUANTIZE:
        return dequantize(layer, *args, _DTYPES[layer.to_type])
    if kind == trt.LayerType.ELEMENTWISE:
        return _ELEMENTWISE[layer.op](*args)
    if kind == trt.LayerType.SHAPE:
        return np.array(args[0].shape, dtype=np.int64)
    if kind == trt.LayerType.GATHER:
        return _gather(layer, *args)
    if kind == trt.LayerType.FILL:
        return _fill(layer, args)
    if kind == trt.LayerType.CAST:
        return args[0].astype(_DTYPES[layer.to_type])
    if kind == trt.LayerType.SELECT:
        return np.where(*args)
    if kind == trt.LayerType.CONCATENATION:
        return np.concatenate(args, axis=layer.axis)
    if kind == trt.LayerType.SOFTMAX:
        return _softmax(layer, args[0])
    if kind == trt.LayerType.SLICE:
        return _slice(layer, args)
    if kind == trt.LayerType.UNARY:
        x = args[0]
        return _UNARY[layer.op](x).astype(np.bool_ if layer.op in (trt.UnaryOperation.ISINF, trt.UnaryOperation.ISNAN)
                                          else x.dtype)
    if kind == trt.LayerType.REDUCE:
        x = args[0]
        return _REDUCE[layer.op](x, axis=_axes(layer.axes, x.ndim), keepdims=layer.keep_dims).astype(x.dtype)
    if kind == trt.LayerType.ACTIVATION:
        x = args[0]
        return _ACTIVATION[layer.type](x.astype(np.float64), layer.alpha, layer.beta).astype(x.dtype)
    if kind == trt.LayerType.SCATTER:
        return _scatter(layer, *args)
    if kind == trt.LayerType.UNSQUEEZE:
        x = args[0]
        return np.expand_dims(x, tuple(_new_axes(args[1], x.ndim + np.asarray(args[1]).size)))
    if kind == trt.LayerType.SQUEEZE:
        x = args[0]
        return np.squeeze(x, tuple(_new_axes(args[1], x.ndim)))
    if kind == trt.LayerType.NORMALIZATION:
        x = args[0]
        return _normalization(layer, x.astype(np.float64), *args[1:]).astype(x.dtype)
    if kind == trt.LayerType.IDENTITY:
        return args[0].copy()
    if kind == trt.LayerType.KV_CACHE_UPDATE:
        return _kv_cache_update(layer, *args)
    if kind == _ATTENTION_INPUT:  # the attention is computed at its output layer
        return np.zeros(0)
    if kind == _ATTENTION_OUTPUT:
        q, k, v, *mask = args
        return _attention(layer.attention, q, k, v, mask[0] if mask else None)
    raise AssertionError(kind)


def _check_shape(tensor, value, what):
    declared = tuple(tensor.shape)
    if len(declared) != value.ndim or any(d not in (-1, n) for d, n in zip(declared, value.shape)):
        raise AssertionError(f"{what} {tensor.name}: computed shape {value.shape}, network says {declared}")


def _layer_inputs(layer) -> list:
    """The tensors a layer's output is computed from (an attention's output: the attention's inputs)."""
    if layer.type == _ATTENTION_OUTPUT:
        layer.__class__ = _CLASSES[_ATTENTION_OUTPUT]
        return _attention_inputs(layer)
    return [layer.get_input(i) for i in range(layer.num_inputs)]


def _in_dependency_order(network: trt.INetworkDefinition) -> list:
    """The layers, each after the layers that make its inputs. A converter may add a layer and set one
    of its inputs later to a tensor made after it, so the order layers were added in is not enough."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(o).name: i for i, layer in enumerate(layers) for o in range(layer.num_outputs)}
    inputs = [_layer_inputs(layer) for layer in layers]
    order, state = [], [0] * len(layers)  # 0 unvisited, 1 in progress, 2 done
    for root in range(len(layers)):
        stack = [(root, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                state[index] = 2
                order.append(layers[index])
                continue
            if state[index] == 2:
                continue
            if state[index] == 1:
                raise AssertionError(f"layer {layers[index].name} depends on itself")
            state[index] = 1
            stack.append((index, True))
            for tensor in inputs[index]:
                if tensor is not None and tensor.name in producer and state[producer[tensor.name]] != 2:
                    stack.append((producer[tensor.name], False))
    return order


def evaluate(network: trt.INetworkDefinition, inputs: dict[str, np.ndarray],
             constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The network's outputs for the given inputs, by name, computed layer by layer in numpy. Every network input
    must be given, in the shape the network declares (-1 dimensions take any size). `constants`: the values of
    FP8 and FP4 constant layers, by layer name (the weights the network was given)."""
    values = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in inputs:
            raise KeyError(f"network input {tensor.name} was not given")
        value = np.asarray(inputs[tensor.name])
        if tensor.is_shape_tensor and value.ndim < len(tensor.shape):
            value = value.reshape(tuple(tensor.shape))
        _check_shape(tensor, value, "input")
        values[tensor.name] = value.astype(_DTYPES[tensor.dtype])
    for layer in _in_dependency_order(network):
        kind = layer.type
        if kind not in _CLASSES:
            raise NotImplementedError(f"layer {layer.name} of type {kind}")
        layer.__class__ = _CLASSES[kind]
        args = [values[tensor.name] if tensor is not None else None for tensor in _layer_inputs(layer)]
        out = _evaluate_layer(layer, kind, args, constants or {})
        for index, value in enumerate(map(np.asarray, out if isinstance(out, tuple) else (out,))):
            if kind != _ATTENTION_INPUT:
                _check_shape(layer.get_output(index), value, f"layer {layer.name} output {index}")
            values[layer.get_output(index).name] = value
    return {network.get_output(i).name: values[network.get_output(i).name] for i in range(network.num_outputs)}
