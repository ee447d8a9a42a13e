"""A numpy evaluation of a built TensorRT network, layer by layer, for the layer types our converter emits.

It reads each layer's parameters from the network definition (the same object TensorRT builds the
engine from) and computes its outputs, so the converter's math can be checked where no engine can run.
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt

_DTYPES = {trt.float32: np.float32, trt.float16: np.float16, trt.int32: np.int32, trt.int64: np.int64,
           trt.bool: np.bool_}
_ELEMENTWISE = {
    trt.ElementWiseOperation.SUM: np.add, trt.ElementWiseOperation.SUB: np.subtract,
    trt.ElementWiseOperation.PROD: np.multiply, trt.ElementWiseOperation.DIV: np.divide,
    trt.ElementWiseOperation.MAX: np.maximum, trt.ElementWiseOperation.MIN: np.minimum,
    trt.ElementWiseOperation.GREATER: np.greater, trt.ElementWiseOperation.LESS: np.less,
    trt.ElementWiseOperation.EQUAL: np.equal, trt.ElementWiseOperation.OR: np.logical_or,
    trt.ElementWiseOperation.AND: np.logical_and, trt.ElementWiseOperation.FLOOR_DIV: np.floor_divide,
}
_CLASSES = {
    trt.LayerType.SHUFFLE: trt.IShuffleLayer, trt.LayerType.MATRIX_MULTIPLY: trt.IMatrixMultiplyLayer,
    trt.LayerType.CONSTANT: trt.IConstantLayer, trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer,
    trt.LayerType.SHAPE: trt.IShapeLayer, trt.LayerType.GATHER: trt.IGatherLayer,
    trt.LayerType.FILL: trt.IFillLayer, trt.LayerType.CAST: trt.ICastLayer,
    trt.LayerType.SELECT: trt.ISelectLayer, trt.LayerType.SOFTMAX: trt.ISoftMaxLayer,
    trt.LayerType.CONCATENATION: trt.IConcatenationLayer,
}


def _shuffle(layer, x, dims_input=None):
    x = np.transpose(x, tuple(layer.first_transpose)[: x.ndim])
    if dims_input is not None:  # the dimensions come from a shape tensor
        return np.transpose(x.reshape([int(d) for d in dims_input]), tuple(layer.second_transpose)[: len(dims_input)])
    dims = list(layer.reshape_dims)
    if dims or len(layer.reshape_dims) == 0:
        if layer.zero_is_placeholder:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        x = x.reshape(dims)
    return np.transpose(x, tuple(layer.second_transpose)[: x.ndim])


def _matmul(layer, a, b):
    if layer.op0 == trt.MatrixOperation.TRANSPOSE:
        a = np.swapaxes(a, -1, -2)
    if layer.op1 == trt.MatrixOperation.TRANSPOSE:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def _fill(layer, inputs):
    assert layer.operation == trt.FillOperation.LINSPACE
    shape = [int(n) for n in inputs[0]]
    start, step = float(inputs[1]), inputs[2].astype(np.float64)
    assert len(shape) == 1
    return (start + step[0] * np.arange(shape[0])).astype(_DTYPES[layer.to_type])


def _softmax(layer, x):
    axis = int(np.log2(layer.axes))
    shifted = x.astype(np.float32) - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def evaluate(network: trt.INetworkDefinition, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network's outputs for the given inputs, by name, computed layer by layer in numpy."""
    values = {name: np.asarray(array) for name, array in inputs.items()}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = layer.type
        if kind not in _CLASSES:
            raise NotImplementedError(f"layer {layer.name} of type {kind}")
        layer.__class__ = _CLASSES[kind]
        args = [values[layer.get_input(i).name] if layer.get_input(i) is not None else None
                for i in range(layer.num_inputs)]
        if kind == trt.LayerType.SHUFFLE:
            out = _shuffle(layer, args[0], args[1] if len(args) > 1 else None)
        elif kind == trt.LayerType.MATRIX_MULTIPLY:
            out = _matmul(layer, *args)
        elif kind == trt.LayerType.CONSTANT:
            out = np.asarray(layer.weights).reshape(tuple(layer.shape))
        elif kind == trt.LayerType.ELEMENTWISE:
            out = _ELEMENTWISE[layer.op](*args)
        elif kind == trt.LayerType.SHAPE:
            out = np.array(args[0].shape, dtype=np.int64)
        elif kind == trt.LayerType.GATHER:
            out = np.take(args[0], args[1], axis=layer.axis)
        elif kind == trt.LayerType.FILL:
            out = _fill(layer, args)
        elif kind == trt.LayerType.CAST:
            out = args[0].astype(_DTYPES[layer.to_type])
        elif kind == trt.LayerType.SELECT:
            out = np.where(*args)
        elif kind == trt.LayerType.CONCATENATION:
            out = np.concatenate(args, axis=layer.axis)
        else:
            out = _softmax(layer, args[0])
        values[layer.get_output(0).name] = np.asarray(out)
    return {network.get_output(i).name: values[network.get_output(i).name] for i in range(network.num_outputs)}
