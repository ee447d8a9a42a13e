"""Fold the batch into the rows of one matrix multiply where a batched product repeats one weight.

With batch size above 1, the exported graph computes the lm_head of the last position
(hidden[:, -1:] @ W^T) as a `bmm` of [B, 1, K] by the weight expanded to [B, K, N]: the slice's
batch stride depends on the sequence length, so the linear cannot flatten its input into a plain
`mm`. A batched product reads its second operand once per batch item, so every decode step would
read the lm_head's weight (the largest of a small model) B times. One `mm` of [B * M, K] by [K, N]
reads it once; the rows are the same, so the logits are the same.

Only products whose rows have static sizes are folded (the lm_head's always do: one position per
sequence); a product over a dynamic length keeps its bmm.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node

aten = torch.ops.aten
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _weight_repeated_over_batch(operand: Node) -> Node | None:
    """The 2-D tensor that a bmm operand [B, K, N] repeats over its batch (through expand and views), else None."""
    while operand.op == "call_function" and operand.target in _VIEWS:
        operand = operand.args[0]
    if operand.op != "call_function" or operand.target != aten.expand.default:
        return None
    source = operand.args[0]
    value = source.meta.get("val")
    return source if isinstance(value, torch.Tensor) and value.dim() == 2 else None


def _with_value(node: Node, value: torch.Tensor) -> Node:
    node.meta["val"] = value
    return node


def fold_lm_head_batch(gm: GraphModule) -> GraphModule:
    """Each bmm(x [B, M, K], weight [K, N] expanded to [B, K, N]) with static B and M becomes one mm."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.bmm.default:
            continue
        rows, operand = node.args
        weight = _weight_repeated_over_batch(operand)
        rows_value = rows.meta.get("val")
        if weight is None or rows_value is None or not all(isinstance(size, int) for size in rows_value.shape):
            continue
        batch, m, k = rows_value.shape
        n = weight.meta["val"].shape[1]
        with graph.inserting_before(node), detect_fake_mode([rows_value]) or nullcontext():
            flat_value = rows_value.reshape(batch * m, k)  # [B*M, K]
            flat = _with_value(graph.call_function(aten.reshape.default, (rows, [batch * m, k])), flat_value)
            product_value = flat_value @ weight.meta["val"]
            product = _with_value(graph.call_function(aten.mm.default, (flat, weight)), product_value)  # [B*M, N]
            out = graph.call_function(aten.reshape.default, (product, [batch, m, n]))  # [B, M, N], as the bmm gave
            _with_value(out, product_value.reshape(batch, m, n))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm
