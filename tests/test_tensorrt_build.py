"""Whole models through Torch-TensorRT into serialized engines, on a machine with no GPU (nothing runs).

The exported program and input specs are the ones --compiler tensorrt builds (compile_tensorrt.py).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from conftest import FAMILIES, lowered_graph, tiny_model
from trt_helpers import import_torch_tensorrt

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow]
MAX_SEQ_LEN = 64


class _BuiltEngine:
    """Stands in for the deserialized engine: deserializing needs a GPU; the bytes are already built."""

    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data

    def get_aliased_input_tensor(self, name):
        return None


def build_engine(family: str, cache: str) -> tuple[bytes, list]:
    """The serialized engine of a family's lowered graph, and the targets of every converted node."""
    torch_tensorrt = import_torch_tensorrt()
    import tensorrt as trt
    from torch_tensorrt.dynamo.conversion import _TRTInterpreter

    from compile_tensorrt import tensorrt_program

    program, specs = tensorrt_program(lowered_graph(tiny_model(family), 1, MAX_SEQ_LEN, cache), 1, MAX_SEQ_LEN,
                                      "cpu")
    converted = []
    original_run_node = _TRTInterpreter.TRTInterpreter.run_node

    def recording_run_node(self, node):
        if node.op == "call_function":
            converted.append(node.target)
        return original_run_node(self, node)

    stand_in = mock.patch.object(trt.Runtime, "deserialize_cuda_engine", lambda self, data: _BuiltEngine(data),
                                 create=True)
    with stand_in, mock.patch.object(_TRTInterpreter.TRTInterpreter, "run_node", recording_run_node):
        # One engine for the whole graph: this call fails if any node has no converter.
        engine = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program, arg_inputs=specs, min_block_size=1)
    return bytes(engine), converted


@pytest.mark.parametrize("cache", ["", "static_v1", "static_v2", "static_v3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_graph_builds_an_engine_with_every_attention_converted(family, cache):
    engine, converted = build_engine(family, cache)
    assert len(engine) > 100_000
    attention = torch.ops.llm_tools.attention.default
    assert converted.count(attention) == tiny_model(family).config.num_hidden_layers
