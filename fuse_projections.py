"""Fuse the linear projections that read the same input into one matrix multiply.

Attention's q, k and v projections read the same hidden states, and so do an MLP's gate and up
projections. One [in, sum(out)] product instead of three or two narrow ones halves the number of
kernels of a decode step, where each of them is too small to keep the GPU busy, and gives
prefill wider, more efficient matrix multiplies.

The fused weight is one new parameter; the original parameters become views into it, so the
Hugging Face model that owns them keeps working and no weight is stored twice.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node

aten = torch.ops.aten
_TRANSPOSES = (aten.permute.default, aten.t.default)


def _weight(node: Node) -> str | None:
    """The get_attr target of a transposed weight (permute(w, [1, 0]) or t(w)), else None."""
    if node.op != "call_function" or node.target not in _TRANSPOSES:
        return None
    if node.target == aten.permute.default and list(node.args[1]) != [1, 0]:
        return None
    source = node.args[0]
    return source.target if source.op == "get_attr" else None


def _source(x: Node) -> tuple:
    """What a projection reads: each linear flattens the same hidden states with its own view node."""
    if x.op == "call_function" and x.target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return (x.args[0], tuple(str(size) for size in x.args[1]))
    return (x,)


def _projections(gm: GraphModule) -> dict[tuple, list[tuple[Node, str, str | None]]]:
    """mm / addmm nodes grouped by what they read and by op: (node, weight target, bias target or None)."""
    groups = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default) or node.kwargs:
            continue
        if node.target == aten.mm.default:
            x, weight_t = node.args
            bias = None
        else:
            bias_node, x, weight_t = node.args
            if bias_node.op != "get_attr":
                continue
            bias = bias_node.target
        weight = _weight(weight_t)
        if weight is not None:
            groups[(_source(x), node.target)].append((node, weight, bias))
    return groups


def _fuse(gm: GraphModule, index: int, x: Node, target, members: list[tuple[Node, str, str | None]]) -> None:
    weights = [gm.get_parameter(w) for _, w, _ in members]
    fused_weight = torch.nn.Parameter(torch.cat([w.detach() for w in weights], dim=0), requires_grad=False)
    name = f"fused_projection_{index}"
    gm.register_parameter(f"{name}_weight", fused_weight)
    offsets = [0]
    for w in weights:
        w.data = fused_weight.data[offsets[-1]:offsets[-1] + w.shape[0]]  # a view: the owner keeps working
        offsets.append(offsets[-1] + w.shape[0])
    if target == aten.addmm.default:
        biases = [gm.get_parameter(b) for _, _, b in members]
        fused_bias = torch.nn.Parameter(torch.cat([b.detach() for b in biases]), requires_grad=False)
        gm.register_parameter(f"{name}_bias", fused_bias)
        for b, start, end in zip(biases, offsets, offsets[1:]):
            b.data = fused_bias.data[start:end]

    graph = gm.graph
    with graph.inserting_before(members[0][0]):  # the first of them in graph order
        weight_t = graph.call_function(aten.permute.default, (graph.get_attr(f"{name}_weight"), [1, 0]))
        if target == aten.addmm.default:
            fused = graph.call_function(aten.addmm.default, (graph.get_attr(f"{name}_bias"), x, weight_t))
        else:
            fused = graph.call_function(aten.mm.default, (x, weight_t))
        x_val = x.meta.get("val")
        fake_mode = detect_fake_mode([x_val])
        if fake_mode is not None:
            with fake_mode:
                fused.meta["val"] = torch.empty(x_val.shape[0], offsets[-1], dtype=x_val.dtype, device=x_val.device)
        parts = [graph.call_function(aten.slice.Tensor, (fused, 1, start, end))
                 for start, end in zip(offsets, offsets[1:])]
    for (node, _, _), part in zip(members, parts):
        part.meta = dict(node.meta)
        node.replace_all_uses_with(part)
        graph.erase_node(node)


def fuse_projections(gm: GraphModule) -> GraphModule:
    """Fuse every group of two or more projections of one input (same op, all with or all without bias)."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    groups = [(key, members) for key, members in _projections(gm).items() if len(members) > 1]
    for index, ((_, target), members) in enumerate(groups):
        members.sort(key=lambda member: order[member[0]])
        x = members[0][0].args[0 if target == aten.mm.default else 1]  # the first one's input, defined before all
        _fuse(gm, index, x, target, members)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
