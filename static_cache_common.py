"""What the static cache passes (v1, v2, v3) share: adding the cache inputs and outputs to a graph.

Every cache pass gives each canonical attention node (register_sdpa.py) a K and a V cache input
[B, Hkv, max_seq_len, D], adds inputs that say where this call's L tokens go, and returns the
updated caches after the logits. v1 and v2 take `start_idx` and `end_idx` (ints, end - start == L);
v3 takes `cache_position` (an int64 tensor [L]). They differ in how the new K/V are joined to the
cache, which each passes in as `join`.
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
START_END = ("start_idx", "end_idx")
# v1/v2 caches hold one slot past the longest sequence, so that their tail cache[:, :, end:] is never one
# row long: torch.compile specializes sizes of 0 and 1, and would compile the step again for the last token.
TAIL_SLOT = 1
# join(graph, new, cache, *position inputs) -> (what attention reads, the cache to return)
Join = Callable[..., tuple[Node, Node]]


def slice_seq(graph: Graph, tensor: Node, start, end) -> Node:
    """tensor[:, :, start:end]: the sequence dimension of [B, H, S, D]."""
    return graph.call_function(aten.slice.Tensor, (tensor, 2, start, end))


def cat_seq(graph: Graph, parts: list[Node]) -> Node:
    return graph.call_function(aten.cat.default, (parts, 2))


def to_end(graph: Graph, cache: Node, end: Node) -> Node:
    """cache[:, :, end:]."""
    return slice_seq(graph, cache, end, sys.maxsize)


def add_static_cache(gm: GraphModule, cache_len: int, join: Join, name: str,
                     position_inputs: tuple[str, ...] = START_END, positions_to_attention: bool = False) -> GraphModule:
    """Add caches of `cache_len` slots; `positions_to_attention` hands the first position input to attention as
    query_positions."""
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
                node.meta["val"] = torch.empty(batch, heads, cache_len, head_dim, dtype=like.dtype,
                                               device=like.device)
        return node

    last = placeholders[-1]
    caches = []
    for i, attn in enumerate(nodes):
        k_new, v_new = attn.args[1], attn.args[2]
        k_cache = last = new_input(last, f"{KEY_CACHE}{i}", k_new.meta.get("val"))  # [B, Hkv, cache_len, D]
        v_cache = last = new_input(last, f"{VALUE_CACHE}{i}", v_new.meta.get("val"))
        caches.append((attn, k_cache, v_cache))
    positions = []
    for input_name in position_inputs:
        positions.append(last := new_input(last, input_name, None))
    new_kv = nodes[0].args[1].meta.get("val")
    if positions_to_attention and new_kv is not None and fake_mode is not None:
        with fake_mode:  # int64 [L], L the (dynamic) length of the new K/V
            positions[0].meta["val"] = torch.empty(new_kv.shape[2], dtype=torch.long, device=new_kv.device)

    cache_outputs = []
    for attn, k_cache, v_cache in caches:
        q, k_new, v_new, scale, causal, *rest = attn.args
        with graph.inserting_before(attn):
            k_attend, k_out = join(graph, k_new, k_cache, *positions)  # k_attend [B, Hkv, S, D]
            v_attend, v_out = join(graph, v_new, v_cache, *positions)
        if positions_to_attention:
            window = rest[0] if rest else None
            rest = [window, positions[0]]
        attn.args = (q, k_attend, v_attend, scale, causal, *rest)
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

