"""Static KV cache, version 3: fixed shapes in decode, so that every decode step is one CUDA graph.

Like v1 and v2 it adds K and V cache inputs [B, Hkv, max_seq_len, D] per layer and returns the
updated caches after the logits, but the positions of the new tokens come in as a tensor
`cache_position` (int64 [L]) rather than as ints, and attention reads the whole cache:

    cache'    = cache.index_copy(2, cache_position, new)       # [B, Hkv, max_seq_len, D]
    attention(q, cache', query_positions=cache_position)       # keys past a query's position are masked

A decode step therefore has the same shapes and the same inputs' addresses at every position.
compilers/in_place_step.py writes the returned caches back into the caller's buffers, so that
CUDA graphs see the same cache buffers at every step.
"""

from __future__ import annotations

import torch
from torch.fx import Graph, GraphModule, Node

from static_cache_common import add_static_cache

POSITION_INPUT = "cache_position"


def _write_at_positions(graph: Graph, new: Node, cache: Node, cache_position: Node) -> tuple[Node, Node]:
    updated = graph.call_function(torch.ops.aten.index_copy.default, (cache, 2, cache_position, new))
    return updated, updated


def insert_static_cache_v3(gm: GraphModule, max_seq_len: int) -> GraphModule:
    return add_static_cache(gm, max_seq_len, _write_at_positions, "static_cache_v3",
                            position_inputs=(POSITION_INPUT,), positions_to_attention=True)


def takes_cache_position(gm: GraphModule) -> bool:
    return any(n.name == POSITION_INPUT for n in gm.graph.find_nodes(op="placeholder"))
