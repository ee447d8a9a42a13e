"""--compiler inductor: torch.compile of the lowered graph, with the canonical attention opened up.

Rewrites make the graph one compiled region whose small ops inductor can fuse:
  - `aten.sym_size.int` calls become `.size()` calls: TorchDynamo would otherwise break the graph
    at each of them when shapes are static (it cannot put an op that returns an int in a graph).
  - Each canonical attention node becomes a call of plain PyTorch, which TorchDynamo traces through.
  - In a decode step (at most DECODE_ROWS rows per matrix product, known when the static_v3 step is
    traced for its shape), attention and the projections are written as sums of products rather
    than library calls. At one row a matrix product only streams its weight, and a library kernel
    per projection costs more in launch and tail than the read itself; as reductions, inductor
    generates them with their neighbours (bias, residual, mask, softmax) fused in. Prefill keeps
    sdpa and cuBLAS.
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


DECODE_ROWS = 8  # query rows per sequence (attention) or rows in all (matrix products) of a decode step


def attention_for_inductor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                           sliding_window: int | None = None, query_positions: torch.Tensor | None = None):
    """The canonical node in plain PyTorch: sums of products for a decode step's few queries, else sdpa."""
    batch, q_heads, q_len, head_dim = q.shape
    if q_len > DECODE_ROWS:
        return attention_reference(q, k, v, scale, causal, sliding_window, query_positions)
    kv_heads, kv_len = k.shape[1], k.shape[2]
    groups = q_heads // kv_heads
    rows = q.reshape(batch, kv_heads, groups * q_len, 1, head_dim).float()  # row g * L + l: query head h * G + g
    scores = (rows * k.float().unsqueeze(2)).sum(-1) * scale  # [B, Hkv, G * L, S]
    if causal:
        mask = causal_mask(q_len, kv_len, sliding_window, q.device, query_positions).repeat(groups, 1)
        scores = scores.masked_fill(~mask, float("-inf"))  # a query always sees its own key: no empty row
    probs = scores.softmax(-1).unsqueeze(-1)  # [B, Hkv, G * L, S, 1]
    out = (probs * v.float().unsqueeze(2)).sum(3)  # [B, Hkv, G * L, D]
    return heads_inner(out.to(q.dtype).reshape(batch, q_heads, q_len, head_dim))


def mm_for_inductor(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight_t [K, N]; for a decode step's few rows, a sum over K that inductor generates."""
    if x.shape[0] > DECODE_ROWS:
        return torch.mm(x, weight_t)
    return (x.unsqueeze(-1) * weight_t.unsqueeze(0)).sum(1, dtype=torch.float32).to(x.dtype)


def addmm_for_inductor(bias: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    if x.shape[0] > DECODE_ROWS:
        return torch.addmm(bias, x, weight_t)
    return bias + mm_for_inductor(x, weight_t)


_PLAIN = {torch.ops.aten.mm.default: mm_for_inductor, torch.ops.aten.addmm.default: addmm_for_inductor}


def open_attention(gm: GraphModule) -> GraphModule:
    """Call plain PyTorch for attention and the matrix products, so that the compiler sees their ops."""
    for node in attention_nodes(gm):
        node.target = attention_for_inductor
    for target, plain in _PLAIN.items():
        for node in gm.graph.find_nodes(op="call_function", target=target):
            if not node.kwargs:
                node.target = plain
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
