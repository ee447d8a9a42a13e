"""What static_cache_v1 and static_cache_v2 share: adding the cache inputs and outputs to a graph.

Both passes give every canonical attention node (register_sdpa.py) a K and a V cache input
[B, Hkv, max_seq_len, D], add `start_idx` and `end_idx` inputs (the positions of this call's
tokens, end_idx - start_idx == L), and return the updated caches after the logits. They differ
only in how the new K/V are joined to the cache, which each passes in as `join`.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, GraphModule, Node

from register_sdpa import attention_nodes

aten = torch.ops.aten
KEY_CACHE, VALUE_CACHE = "key_cache_", "value_cache_"
# join(graph, new, cache, start, end) -> (what attention reads, the cache to return)
Join = Callable[[Graph, Node, Node, Node, Node], tuple[Node, Node]]


def slice_seq(graph: Graph, tensor: Node, start, end) -> Node:
    """tensor[:, :, start:end]: the sequence dimension of [B, H, S, D]."""
    return graph.call_function(aten.slice.Tensor, (tensor, 2, start, end))


def cat_seq(graph: Graph, parts: list[Node]) -> Node:
    return graph.call_function(aten.cat.default, (parts, 2))


def to_end(graph: Graph, cache: Node, end: Node) -> Node:
    """cache[:, :, end:]."""
    return slice_seq(graph, cache, end, sys.maxsize)


def add_static_cache(gm: GraphModule, max_seq_len: int, join: Join, name: str) -> GraphModule:
    nodes = attention_nodes(gm)
    if not nodes:
        raise ValueError(f"{name}: the graph has no canonical attention node; run register_sdpa first")
    if any(n.name.startswith(KEY_CACHE) for n in gm.graph.find_nodes(op="placeholder")):
        raise ValueError(f"{name}: the graph already has static cache inputs")
    graph = gm.graph
    placeholders = graph.find_nodes(op="placeholder")
    fake_mode = detect_fake_mode([p.meta.get("val") for p in placeholders])

    def new_input(after: Node, input_name: str, like: torch.Tensor | None) -> Node:
        with graph.inserting_after(after):
            node = graph.placeholder(input_name)
        if like is not None and fake_mode is not None:
            batch, heads, _, head_dim = like.shape
            with fake_mode:
                node.meta["val"] = torch.empty(batch, heads, max_seq_len, head_dim, dtype=like.dtype,
                                               device=like.device)
        return node

    last = placeholders[-1]
    caches = []
    for i, attn in enumerate(nodes):
        k_new, v_new = attn.args[1], attn.args[2]
        k_cache = last = new_input(last, f"{KEY_CACHE}{i}", k_new.meta.get("val"))  # [B, Hkv, max_seq_len, D]
        v_cache = last = new_input(last, f"{VALUE_CACHE}{i}", v_new.meta.get("val"))
        caches.append((attn, k_cache, v_cache))
    start = last = new_input(last, "start_idx", None)
    end = new_input(last, "end_idx", None)

    cache_outputs = []
    for attn, k_cache, v_cache in caches:
        q, k_new, v_new, *rest = attn.args
        with graph.inserting_before(attn):
            k_attend, k_out = join(graph, k_new, k_cache, start, end)  # k_attend [B, Hkv, S, D]
            v_attend, v_out = join(graph, v_new, v_cache, start, end)
        attn.args = (q, k_attend, v_attend, *rest)
        cache_outputs += [k_out, v_out]

    output = graph.find_nodes(op="output")[0]
    old = output.args[0]
    old = list(old) if isinstance(old, (tuple, list)) else [old]
    output.args = (tuple(old + cache_outputs),)
    graph.lint()
    gm.recompile()
    return gm


def cache_inputs(gm: GraphModule) -> list[Node]:
    """The cache placeholders of a graph that went through a static cache pass, in input order."""
    return [n for n in gm.graph.find_nodes(op="placeholder") if n.name.startswith((KEY_CACHE, VALUE_CACHE))]


def register_cache_pass(insert: Callable[[GraphModule], GraphModule]) -> None:
    """Register a cache pass as a Torch-TensorRT lowering pass, on request only.

    It is not registered on import: a global cache pass would also add caches to every other
    graph compiled in the process (a vision tower, say). Graphs that already have caches are left alone.
    """
    from torch_tensorrt.dynamo.lowering.passes._aten_lowering_pass import _aten_lowering_pass

    def static_cache_pass(gm: GraphModule, settings) -> GraphModule:
        return gm if cache_inputs(gm) else insert(gm)

    _aten_lowering_pass(static_cache_pass)
