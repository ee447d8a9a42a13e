"""--compiler tensorrt: the lowered graph through torch_tensorrt.dynamo.compile, with sdpa_converter registered.

The lowered graph is exported once more (its canonical attention nodes have fake implementations)
with the sequence length dynamic from 1 to max_seq_len, and compiled with the dtype the model
already has (Torch-TensorRT 2.14 builds strongly typed networks).
"""

from __future__ import annotations

import argparse

import torch
from torch.fx import GraphModule

from static_cache_common import cache_inputs
from utils import UsageError


def compile_with_tensorrt(gm: GraphModule, args: argparse.Namespace, batch_size: int, max_seq_len: int):
    import torch_tensorrt

    import sdpa_converter  # noqa: F401  (registers the canonical node's converter)

    if cache_inputs(gm):
        raise UsageError("--compiler tensorrt does not take static cache graphs yet; use --cache '' with TensorRT, "
                         "or --compiler inductor / eager with a static cache")
    device = args.device
    example = torch.zeros(batch_size, min(4, max_seq_len), dtype=torch.long, device=device)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    program = torch.export.export(gm, (example, example), dynamic_shapes=({1: seq}, {1: seq}), strict=False)
    specs = [torch_tensorrt.Input(min_shape=(batch_size, 1), opt_shape=(batch_size, max_seq_len),
                                  max_shape=(batch_size, max_seq_len), dtype=torch.int64)] * 2
    compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, min_block_size=args.min_block_size,
                                             use_fp32_acc=args.precision == "FP16")
    torch_tensorrt.runtime.set_cudagraphs_mode(args.cudagraph)
    return compiled
