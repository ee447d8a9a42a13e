"""Rewrite every attention of an exported graph into one canonical attention node.

Hugging Face models export attention as `aten.scaled_dot_product_attention` with an explicit
bool mask built from aranges, GQA as repeat_kv (unsqueeze, expand, clone, view) before it.
This pass replaces each such node with `torch.ops.llm_tools.attention`, whose semantics are
explicit, so that cache passes and converters need not read masks:

    q [B, Hq, L, D], k/v [B, Hkv, S, D]   (GQA kept: no repeat_kv, caches stay Hkv wide)
    query i sees key j when j <= p_i            (causal; p_i = i + S - L, aligned bottom-right)
                       and j >  p_i - window   (when sliding_window is set)

A cache pass may give the query positions p as a tensor instead (static_cache_v3: keys are the
whole cache, the queries sit wherever the new tokens were written). Positions are cache slots,
distinct and ascending, so queries that fill all S slots sit at 0..S-1 and the mask is the plain
causal one.

Bottom-right alignment makes one node right for prefill (L == S), decode (L == 1) and
chunked prefill (L < S). A mask is replaced only when evaluating it at several lengths shows it
is exactly this causal (or sliding-window) mask and it depends on nothing but the sequence
length; any other mask (padding, packed sequences) is left in place with its sdpa node.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch
from torch.fx import GraphModule, Node

logger = logging.getLogger(__name__)

aten = torch.ops.aten
SDPA_TARGETS = (aten.scaled_dot_product_attention.default,)
# Ops that only re-lay out K/V between repeat_kv's expand and the attention.
_LAYOUT_OPS = (aten.clone.default, aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                        sliding_window: int | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The canonical node's PyTorch implementation, also traced into compiled graphs (compile_inductor.py)."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    if causal and sliding_window is None and q_len == kv_len:  # with or without positions: 0..L-1
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=True,
                                                               enable_gqa=q.shape[1] != k.shape[1])
    elif causal:
        mask = causal_mask(q_len, kv_len, sliding_window, q.device, query_positions)  # [L, S]
        out = _masked_attention(q, k, v, mask, scale)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,
                                                               enable_gqa=q.shape[1] != k.shape[1])
    return as_sdpa_output_layout(out)


@torch.library.custom_op("llm_tools::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
              sliding_window: int | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The canonical attention node: see the module docstring for its semantics."""
    return attention_reference(q, k, v, scale, causal, sliding_window, query_positions)


@attention.register_fake
def _(q, k, v, scale, causal, sliding_window=None, query_positions=None):
    return as_sdpa_output_layout(torch.empty_like(q))


def as_sdpa_output_layout(out: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] stored as [B, L, H, D], the layout sdpa's kernels return and the graph views it in."""
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """sdpa under a [L, S] mask, with GQA done by folding each K/V head's query heads into the rows.

    q [B, Hq, L, D] -> [B, Hkv, G * L, D] and the mask tiled G times, so that the masked kernels
    (which have no GQA of their own) read each K/V head once instead of a repeated copy.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads = k.shape[1]
    groups = q_heads // kv_heads
    folded = q.reshape(batch, kv_heads, groups * q_len, head_dim)  # row g * L + l: query head h * G + g
    out = torch.nn.functional.scaled_dot_product_attention(folded, k, v, attn_mask=mask.repeat(groups, 1),
                                                           scale=scale)
    return out.reshape(batch, q_heads, q_len, head_dim)  # the kernels may return [B, Hkv, G * L, D] strided


def causal_mask(q_len: int, kv_len: int, sliding_window: int | None, device=None,
                query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [L, S]: True where query i may see key j (causal, optional window).

    Query i sits at query_positions[i] when given, else at i + S - L (aligned bottom-right); key j at j.
    """
    if query_positions is None:
        i = torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)
    else:
        i = query_positions.unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    mask = j <= i
    if sliding_window is not None:
        mask = mask & (j > i - sliding_window)
    return mask


def attention_nodes(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.llm_tools.attention.default]


def _strip_repeat_kv(node: Node, num_q_heads: int) -> Node:
    """The K or V before repeat_kv, or `node` itself when it was not repeated."""
    cur = node
    while cur.op == "call_function" and cur.target in _LAYOUT_OPS:
        cur = cur.args[0]
    if not (cur.op == "call_function" and cur.target == aten.expand.default):
        return node
    unsqueezed = cur.args[0]
    if not (unsqueezed.op == "call_function" and unsqueezed.target == aten.unsqueeze.default
            and unsqueezed.args[1] == 2):
        return node
    source = unsqueezed.args[0]
    kv_heads = source.meta["val"].shape[1]
    if kv_heads * cur.args[1][2] != num_q_heads:
        return node
    return source


def _mask_inputs(mask: Node) -> dict[Node, object] | None:
    """The mask's sym_size leaves (with their symbolic sizes), or None when it reads an input's values."""
    leaves, stack, seen = {}, [mask], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_function" and node.target == aten.sym_size.int:
            leaves[node] = node.meta["val"]
            continue
        if node.op == "placeholder":
            return None  # the mask reads an input's values: padding or packed sequences
        stack.extend(n for n in node.all_input_nodes)
    return leaves


def _evaluate(gm: GraphModule, mask: Node, sizes: dict[Node, int]) -> torch.Tensor:
    """Run the mask's subgraph with the given sizes substituted for its sym_size leaves."""
    env: dict[Node, object] = dict(sizes)

    def run(node: Node):
        if node in env:
            return env[node]
        if node.op == "get_attr":
            value = getattr(gm, node.target)
        else:
            args = torch.fx.node.map_arg(node.args, run)
            kwargs = torch.fx.node.map_arg(node.kwargs, run)
            value = node.target(*args, **kwargs)
        env[node] = value
        return value

    return run(mask)


def _expected_window(gm: GraphModule, mask: Node, probe: int, leaves: dict[Node, object]) -> int | None:
    """Read the window off the mask's last row at length `probe`; None when every earlier key is visible."""
    values = _evaluate(gm, mask, {leaf: probe for leaf in leaves})
    visible = int(_as_bool(values)[0, 0, -1].sum())
    return visible if visible < probe else None


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive float mask: 0 visible, very negative hidden


def _classify_mask(gm: GraphModule, mask: Node | None, is_causal: bool, max_len: int) -> tuple[bool, int | None] | None:
    """(causal, sliding_window) when the mask equals the canonical node's, else None."""
    if mask is None:
        return is_causal, None
    if is_causal:
        return None  # a mask on top of is_causal: keep it as it is
    leaves = _mask_inputs(mask)
    if leaves is None or not leaves:
        return None
    # Every sym_size leaf must be the one sequence length (L == S in an exported no-cache graph).
    if len({str(v) for v in leaves.values()}) != 1:
        return None
    probe = max(2, min(max_len, 1024))
    window = _expected_window(gm, mask, probe, leaves)
    lengths = {1, 2, 3, min(max_len, 17), probe - 1, probe}
    if window:
        lengths |= {window - 1, window, window + 1, 2 * window + 3}  # both sides of the window's edge
    for length in sorted(n for n in lengths if 1 <= n <= max_len):
        actual = _as_bool(_evaluate(gm, mask, {leaf: length for leaf in leaves}))
        expected = causal_mask(length, length, window, actual.device)
        if actual.shape[-2:] != expected.shape or not torch.equal(actual, expected.expand_as(actual)):
            return None
    return True, window


def _max_seq_len(gm: GraphModule) -> int:
    """The upper bound of the inputs' dynamic sequence dimension (1024 when unbounded)."""
    for node in gm.graph.find_nodes(op="placeholder"):
        for size in getattr(node.meta.get("val"), "shape", ()):
            if isinstance(size, torch.SymInt):
                upper = size.node.shape_env.var_to_range[size.node.expr].upper
                return int(upper) if upper.is_finite else 1024
    return 1024


def register_sdpa(gm: GraphModule) -> GraphModule:
    """Replace each provably causal sdpa node (and the repeat_kv before it) with the canonical node."""
    max_len = _max_seq_len(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SDPA_TARGETS:
            continue
        q, k, v = node.args[:3]
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        is_causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
        dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
        scale = node.kwargs.get("scale")
        head_dim = q.meta["val"].shape[-1]
        kind = _classify_mask(gm, mask, is_causal, max_len) if dropout == 0.0 else None
        if kind is None:
            logger.warning("attention %s keeps its own mask: not a plain causal or sliding-window mask", node.name)
            continue
        causal, window = kind
        num_q_heads = q.meta["val"].shape[1]
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(
                torch.ops.llm_tools.attention.default,
                (q, _strip_repeat_kv(k, num_q_heads), _strip_repeat_kv(v, num_q_heads),
                 float(scale if scale is not None else head_dim ** -0.5), bool(causal), window),
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _register_with_torch_tensorrt() -> None:
    """Also run this pass inside torch_tensorrt.dynamo.compile, where Torch-TensorRT can serve.

    It is registered when torch_tensorrt is already imported, or is installed and a GPU is there to
    import it on. The pass is idempotent, so graphs lowered beforehand go through unchanged.
    """
    usable = sys.modules.get("torch_tensorrt") is not None or (
        importlib.util.find_spec("torch_tensorrt") is not None and torch.cuda.is_available())
    if not usable:
        return
    from torch_tensorrt.dynamo.lowering.passes._aten_lowering_pass import _aten_lowering_pass

    def register_sdpa_pass(gm: GraphModule, settings) -> GraphModule:
        return register_sdpa(gm)

    _aten_lowering_pass(index=0)(register_sdpa_pass)


_register_with_torch_tensorrt()
