"""Torch-TensorRT on a machine with no GPU: the few CUDA stand-ins its import and conversion need."""

from __future__ import annotations

import importlib.util

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
