"""--compiler inductor: torch.compile of the lowered graph, with the canonical attention opened up.

Rewrites make the graph one compiled region whose small ops inductor can fuse:
  - `aten.sym_size.int` calls become `.size()` calls: TorchDynamo would otherwise break the graph
    at each of them when shapes are static (it cannot put an op that returns an int in a graph).
  - Each canonical attention node becomes a call of plain PyTorch, which TorchDynamo traces through.
  - In a decode step (at most DECODE_ROWS queries per sequence, known when the static_v3 step is
    traced for its shape) over a short cache (at most DECODE_KEYS keys), attention is written as
    sums of products rather than an sdpa call: inductor generates it as a few small kernels with
    the mask and softmax fused in, which on the H200 took 2.7 us per layer where sdpa's kernel took
    6.6 us (Qwen2.5-0.5B, 256 keys). Over 2,176 keys it was slower (60 us against 46 us per layer,
    Llama-3.1-8B), so longer caches keep sdpa, as does prefill.
A static_v3 graph is compiled for static shapes (one graph for prefill, one for the decode step)
and without inductor's CUDA graphs: with --cudagraph, generate.CachedModel captures each whole step
itself (cuda_graph_step.py). The others stay dynamic in the sequence length, and --cudagraph gives
them inductor's CUDA graphs (mode "reduce-overhead").
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from torch.fx import GraphModule

from register_sdpa import attention_nodes, attention_reference, causal_mask, heads_inner
from static_cache_v3 import InPlaceCacheStep, takes_cache_position


DECODE_ROWS = 8  # query rows per sequence in a decode step
DECODE_KEYS = 512  # cache length up to which decode attention is written out (see the module docstring)


def attention_for_inductor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                           sliding_window: int | None = None, query_positions: torch.Tensor | None = None):
    """The canonical node in plain PyTorch: sums of products for a short decode step, else sdpa."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    traced_static = isinstance(q_len, int) and isinstance(kv_len, int)  # not a v1/v2 graph's dynamic length
    if not traced_static or q_len > DECODE_ROWS or kv_len > DECODE_KEYS:
        return attention_reference(q, k, v, scale, causal, sliding_window, query_positions)
    groups = q_heads // kv_heads
    rows = q.reshape(batch, kv_heads, groups * q_len, 1, head_dim).float()  # row g * L + l: query head h * G + g
    scores = (rows * k.float().unsqueeze(2)).sum(-1) * scale  # [B, Hkv, G * L, S]
    if causal:
        mask = causal_mask(q_len, kv_len, sliding_window, q.device, query_positions).repeat(groups, 1)
        scores = scores.masked_fill(~mask, float("-inf"))  # a query always sees its own key: no empty row
    probs = scores.softmax(-1).unsqueeze(-1)  # [B, Hkv, G * L, S, 1]
    out = (probs * v.float().unsqueeze(2)).sum(3)  # [B, Hkv, G * L, D]
    return heads_inner(out.to(q.dtype).reshape(batch, q_heads, q_len, head_dim))


def open_attention(gm: GraphModule) -> GraphModule:
    """Call the canonical node's plain PyTorch form directly, so that the compiler sees its ops."""
    for node in attention_nodes(gm):
        node.target = attention_for_inductor
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.sym_size.int:
            with gm.graph.inserting_before(node):
                size = gm.graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def compile_with_inductor(gm: GraphModule, args: argparse.Namespace) -> Callable:
    in_place = takes_cache_position(gm)
    gm = open_attention(gm)
    if in_place:
        return torch.compile(InPlaceCacheStep(gm), dynamic=False)
    return torch.compile(gm, dynamic=True, mode="reduce-overhead" if args.cudagraph else None)
