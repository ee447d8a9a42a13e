"""Static KV cache, version 3: fixed shapes in decode, so that every decode step is one CUDA graph.

Like v1 and v2 it adds K and V cache inputs [B, Hkv, max_seq_len, D] per layer and returns the
updated caches after the logits, but the positions of the new tokens come in as a tensor
`cache_position` (int64 [L]) rather than as ints, and attention reads the whole cache:

    cache'    = cache.index_copy(2, cache_position, new)       # [B, Hkv, max_seq_len, D]
    attention(q, cache', query_positions=cache_position)       # keys past a query's position are masked

A decode step therefore has the same shapes and the same inputs' addresses at every position.
`InPlaceCacheStep` writes the returned caches back into the caller's buffers; under torch.compile
that copy and the index_copy fuse into an in-place write, and CUDA graphs see static cache buffers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import Graph, GraphModule, Node

from static_cache_common import add_static_cache, register_cache_pass

POSITION_INPUT = "cache_position"


def _join(graph: Graph, new: Node, cache: Node, cache_position: Node) -> tuple[Node, Node]:
    updated = graph.call_function(torch.ops.aten.index_copy.default, (cache, 2, cache_position, new))
    return updated, updated


def insert_static_cache_v3(gm: GraphModule, max_seq_len: int) -> GraphModule:
    return add_static_cache(gm, max_seq_len, _join, "static_cache_v3", position_inputs=(POSITION_INPUT,),
                            positions_to_attention=True)


def takes_cache_position(gm: GraphModule) -> bool:
    return any(n.name == POSITION_INPUT for n in gm.graph.find_nodes(op="placeholder"))


class InPlaceCacheStep(torch.nn.Module):
    """model(ids, position_ids, *caches, cache_position) -> (logits,), the caches updated in place."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, *caches_and_position):
        *caches, cache_position = caches_and_position
        logits, *updated = self.model(input_ids, position_ids, *caches, cache_position)
        for cache, new in zip(caches, updated):
            cache.copy_(new)
        return (logits,)


def register_with_torch_tensorrt(max_seq_len: int) -> None:
    """Run this pass inside every later torch_tensorrt.dynamo.compile of this process (see static_cache_common)."""
    register_cache_pass(lambda gm: insert_static_cache_v3(gm, max_seq_len))
