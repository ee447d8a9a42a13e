"""Static KV cache, version 2: attend to the cache prefix joined with the new K/V; keep the tail apart.

Like version 1 it adds K and V cache inputs [B, Hkv, max_seq_len + 1, D] per layer and `start_idx`/
`end_idx` inputs, and returns the updated caches after the logits. It builds the attended K/V
without first materialising the full-length cache:

    attended = cat(cache[:, :, :start], new)                   # [B, Hkv, end, D]
    cache'   = cat(attended, cache[:, :, end:])                # [B, Hkv, max_seq_len + 1, D], returned only
"""

from __future__ import annotations

from torch.fx import Graph, GraphModule, Node

from static_cache_common import TAIL_SLOT, add_static_cache, cat_seq, slice_seq, to_end


def _attend_prefix_and_new(graph: Graph, new: Node, cache: Node, start: Node, end: Node) -> tuple[Node, Node]:
    attended = cat_seq(graph, [slice_seq(graph, cache, 0, start), new])
    return attended, cat_seq(graph, [attended, to_end(graph, cache, end)])


def insert_static_cache_v2(gm: GraphModule, max_seq_len: int) -> GraphModule:
    return add_static_cache(gm, max_seq_len + TAIL_SLOT, _attend_prefix_and_new, "static_cache_v2")

