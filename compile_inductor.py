"""--compiler inductor: torch.compile of the lowered graph, with the canonical attention opened up.

Two rewrites make the graph one compiled region whose small ops inductor can fuse:
  - `aten.sym_size.int` calls become `.size()` calls: TorchDynamo would otherwise break the graph
    at each of them when shapes are static (it cannot put an op that returns an int in a graph).
  - Each canonical attention node becomes a call of its plain PyTorch implementation, which TorchDynamo
    traces through: the mask of the static_v3 decode step is then built once, fused, and shared by the
    layers, instead of running a few small kernels inside an opaque op per layer.
A static_v3 graph is compiled for static shapes (one graph for prefill, one for the decode step);
the others stay dynamic in the sequence length.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from torch.fx import GraphModule

from register_sdpa import attention_nodes, attention_reference
from static_cache_v3 import InPlaceCacheStep, takes_cache_position


def open_attention(gm: GraphModule) -> GraphModule:
    """Call the canonical node's implementation directly, so that the compiler sees its ops."""
    for node in attention_nodes(gm):
        node.target = attention_reference
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.sym_size.int:
            with gm.graph.inserting_before(node):
                size = gm.graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def compile_with_inductor(gm: GraphModule, args: argparse.Namespace) -> Callable:
    mode = "reduce-overhead" if args.cudagraph else None
    in_place = takes_cache_position(gm)
    gm = open_attention(gm)
    if in_place:
        return torch.compile(InPlaceCacheStep(gm), dynamic=False, mode=mode)
    return torch.compile(gm, dynamic=True, mode=mode)
