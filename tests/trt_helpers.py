"""Torch-TensorRT on a machine with no GPU: the few CUDA stand-ins its import and conversion need."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from unittest import mock

import numpy as np
import pytest
import torch


def import_torch_tensorrt():
    """Import torch_tensorrt (skipping where it is not installed) with CUDA device queries stood in for.

    Its import asks for the device's compute capability and the current device, and conversion asks
    for free memory; without a driver each raises. Engines are only built, never run.
    """
    if importlib.util.find_spec("torch_tensorrt") is None:
        pytest.skip("torch_tensorrt is not installed")
    if not torch.cuda.is_available():
        torch.cuda.get_device_capability = lambda *a, **k: (8, 6)
        torch.cuda.current_device = lambda: 0
        torch.cuda.mem_get_info = lambda *a, **k: (64 << 30, 80 << 30)
    import torch_tensorrt

    import sdpa_converter  # noqa: F401  (registers the converter)
    return torch_tensorrt


def network_of(gm: torch.fx.GraphModule, inputs):
    """The TensorRT network definition Torch-TensorRT builds for `gm` (nothing is built or run)."""
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.conversion import TRTInterpreter

    interpreter = TRTInterpreter(gm, inputs, compilation_settings=CompilationSettings())
    interpreter._construct_trt_network_def()
    return interpreter.ctx.net


class _BuiltEngine:
    """Stands in for a deserialized engine: deserializing needs a GPU; the bytes are already built."""

    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data

    def get_aliased_input_tensor(self, name):
        return None

    def create_serialization_config(self):
        return mock.Mock()  # its flags (weights left out of a cached engine) only matter to a real engine

    def serialize_with_config(self, config):
        return self.data


# The network definition of every engine built under engines_built_not_loaded, by the engine's digest
# (with its interpreter, which keeps the network's weights alive), for engines_evaluated.
_NETWORKS: dict[str, object] = {}


def _digest(serialized) -> str:
    return hashlib.sha256(bytes(serialized)).hexdigest()


@contextlib.contextmanager
def engines_built_not_loaded():
    """Torch-TensorRT's build and partitioning run as they do on a GPU; what needs one is stood in for:
    deserializing the built engine; the C++ runtime module's engine and execution context (its
    TorchTensorRTModule keeps the serialized engine and its input and output names) and the one setting
    made on that engine when an engine's output is the graph's; the refit of an engine taken from the
    engine cache (it refits a deserialized engine). Yields the list of those refits, one graph module each."""
    torch_tensorrt = import_torch_tensorrt()
    import tensorrt as trt
    from torch_tensorrt.dynamo import _refit
    from torch_tensorrt.dynamo.conversion import _TRTInterpreter

    runtime_module = torch_tensorrt.dynamo.runtime.TorchTensorRTModule
    refits = []
    run = _TRTInterpreter.TRTInterpreter.run

    def recording_run(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        _NETWORKS[_digest(result.engine.serialize())] = self
        return result

    with mock.patch.object(trt.Runtime, "deserialize_cuda_engine", lambda self, data: _BuiltEngine(data),
                           create=True), \
            mock.patch.object(runtime_module, "setup_engine", lambda self: None), \
            mock.patch.object(runtime_module, "set_output_tensors_as_unowned", lambda self, enabled: None), \
            mock.patch.object(_refit, "_refit_single_trt_engine_with_gm",
                              lambda new_gm, **kwargs: refits.append(new_gm)), \
            mock.patch.object(_TRTInterpreter.TRTInterpreter, "run", recording_run):
        yield refits


def network_of_engine(engine_module):
    """The network definition a TorchTensorRTModule's engine was built from (built in this session)."""
    return _NETWORKS[_digest(engine_module.serialized_engine)].ctx.net


def fp8_and_fp4_constants_of_engine(engine_module) -> dict[str, np.ndarray]:
    """The FP8 and FP4 weights the engine's network was given, by constant layer name, as float32 values:
    Torch-TensorRT records every constant's tensor as `<layer name> CONSTANT` (numpy cannot read FP8 or FP4
    weights back from the network). FP4 comes packed two a byte; ModelOpt's NVFP4 tensor unpacks it."""
    recorded = _NETWORKS[_digest(engine_module.serialized_engine)].ctx.weight_refit_map
    values = {}
    for name, tensor in recorded.items():
        if tensor.dtype == torch.float8_e4m3fn:
            values[name.removesuffix(" CONSTANT")] = tensor.float().numpy()
        elif tensor.dtype == torch.uint8:
            from modelopt.torch.quantization.qtensor import NVFP4QTensor

            rows, packed = tensor.shape
            unpacked = NVFP4QTensor((rows, 2 * packed), torch.float32, tensor).dequantize(
                dtype=torch.float32, scale=torch.ones(rows, 2 * packed // 16), double_scale=torch.tensor(1.0),
                block_sizes={-1: 16})
            values[name.removesuffix(" CONSTANT")] = unpacked.numpy()
    return values


def _evaluated_forward(self, *inputs):
    """TorchTensorRTModule.forward with the engine's network evaluated in numpy instead of executed:
    the same inputs in binding order (ints become shape-tensor values), the outputs in binding order.
    As the runtime does with an engine's aliased outputs (a KV-cache update layer's), each is written
    into the input tensor it aliases and left out of what is returned."""
    from torch_tensorrt.dynamo.runtime._TorchTensorRTModule import user_output_count

    from trt_reference import evaluate

    assert len(inputs) == len(self.input_binding_names)
    bound = dict(zip(self.input_binding_names, inputs))
    feeds = {name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
             for name, value in bound.items()}
    values = evaluate(network_of_engine(self), feeds, fp8_and_fp4_constants_of_engine(self))
    for output_name, (input_name, _) in self.aliased_io.items():
        bound[input_name].copy_(torch.from_numpy(values[output_name]))
    names = self.output_binding_names[:user_output_count(self.output_binding_names, self.aliased_io)]
    outputs = [torch.from_numpy(values[name]) for name in names]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


@contextlib.contextmanager
def engines_evaluated():
    """Compiled Torch-TensorRT modules run as if their engines executed, each engine's network evaluated
    layer by layer (trt_reference.py), with the module's own graph around the engines as it is."""
    torch_tensorrt = import_torch_tensorrt()
    with mock.patch.object(torch_tensorrt.dynamo.runtime.TorchTensorRTModule, "forward", _evaluated_forward):
        yield


def engines_and_leftovers(compiled: torch.fx.GraphModule) -> tuple[list, list[str]]:
    """The TensorRT engines of a Torch-TensorRT compiled module, and the nodes it left to PyTorch: every
    node that computes, at the top or inside a PyTorch-run submodule (`_run_on_gpu_N`), other than an
    engine call and the unpacking of its outputs."""
    import operator

    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    engines, leftovers = [], []
    for node in compiled.graph.nodes:
        if node.op == "call_module":
            submodule = compiled.get_submodule(node.target)
            if isinstance(submodule, TorchTensorRTModule):
                engines.append(submodule)
            elif isinstance(submodule, torch.fx.GraphModule):
                inner_engines, inner_leftovers = engines_and_leftovers(submodule)
                engines += inner_engines
                leftovers += inner_leftovers
            else:
                leftovers.append(node.format_node())
        elif node.op in ("call_function", "call_method") and node.target is not operator.getitem:
            leftovers.append(node.format_node())
    return engines, leftovers
