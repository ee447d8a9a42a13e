"""Static KV cache, version 1: write the new K/V into the full-length cache, then attend to its prefix.

For each attention layer the graph gets K and V cache inputs [B, Hkv, max_seq_len + 1, D] and
`start_idx`/`end_idx` inputs, and returns the updated caches after the logits:

    cache' = cat(cache[:, :, :start], new, cache[:, :, end:])   # [B, Hkv, max_seq_len + 1, D]
    attention reads cache'[:, :, :end]                          # [B, Hkv, end, D]

The canonical node's bottom-right causal mask makes this right for prefill, decode and chunked prefill.
"""

from __future__ import annotations

from torch.fx import Graph, GraphModule, Node

from static_cache_common import TAIL_SLOT, add_static_cache, cat_seq, slice_seq, to_end


def _write_into_full_cache(graph: Graph, new: Node, cache: Node, start: Node, end: Node) -> tuple[Node, Node]:
    updated = cat_seq(graph, [slice_seq(graph, cache, 0, start), new, to_end(graph, cache, end)])
    return slice_seq(graph, updated, 0, end), updated


def insert_static_cache_v1(gm: GraphModule, max_seq_len: int) -> GraphModule:
    return add_static_cache(gm, max_seq_len + TAIL_SLOT, _write_into_full_cache, "static_cache_v1")

