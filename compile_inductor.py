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
    Llama-3.1-8B), so longer caches keep sdpa, as does prefill. But sdpa's kernels share out the work
    by heads and query blocks, so a decode step's few query rows over a long cache get few programs
    (Qwen2.5-0.5B at ISL 2048: cuDNN's flash kernel, 33.7 us per layer). So a decode step's attention
    over a longer cache (any model and batch, on the GPU) is decode_attention.py's kernel with each
    row's keys split among programs, and a second kernel that combines the splits: 6.7 us per layer
    for the two, and the 0.5B's step 1488 -> 769 us replayed back to back (benchmarks/profile_step.py
    at ISL 2048, one H200, one process after the other). LONG_DECODE_KERNEL = False
    (benchmarks/profile_step.py --long_decode_sdpa) goes back to sdpa.
  - Small models (at most SMALL_MODEL_PARAMETERS), batch 1, static_v3: one-row matrix products
    (every projection and the lm_head in a decode step) are written as sums of products too, and the
    step is compiled with coordinate-descent tuning of each kernel's block sizes and programmatic
    dependent launch. A decode step of such a model is a few hundred small kernels whose fixed
    costs dominate: with cuBLAS each projection took 4.4-7 us whatever its size. Measured on the
    H200 (FP16, cache of 256, decode step in the generation loop, separate benchmarks/profile_step.py
    runs):
    Qwen2.5-0.5B 1074 -> 889 us, Llama-3.2-1B 1161 -> 1005 us. Not one of the three alone (0.5B):
    the tuning without the rewrite 1225 us (its attention kernels slowed), rewrite and tuning
    without PDL 1010 us, rewrite and PDL without tuning 1093 us. Larger models keep cuBLAS and
    inductor's defaults: the rewrite without tuning slowed Llama-3.1-8B (6.0 -> 8.1 ms per step at
    ISL 2048), and the combination is not measured there, nor at batch 8.
    In that tuned step, decode attention is one Triton kernel per layer (decode_attention.py) rather
    than the sums' three: Qwen2.5-0.5B 989 -> 801 us per step in the generation loop (separate
    processes one after the other on one H200, benchmarks/profile_step.py and its --attention_sums).
    With DECODE_ATTENTION_KERNEL = False the step goes back to the sums.
    Inductor times each candidate configuration around its launch, which for kernels this small is
    mostly launch time, so its tuning was chance: four compiles of the 0.5B step from empty inductor
    caches ran at 0.95, 0.94, 0.96 and 0.80 ms per step (run_llm.py's TPOT, one H200). So the
    candidates are timed by their kernels' GPU time (kernel_timer.py): two compiles from empty caches
    0.75 and 0.74 ms. TUNE_BY_KERNEL_TIME = False (benchmarks/profile_step.py --inductor_timer) goes
    back to inductor's timer.
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

from kernel_timer import tuned_by_kernel_time
from register_sdpa import attention_nodes, attention_reference, causal_mask, heads_inner
from static_cache_v3 import InPlaceCacheStep, takes_cache_position


DECODE_ROWS = 8  # query rows per sequence in a decode step
DECODE_KEYS = 512  # cache length up to which decode attention is written out (see the module docstring)
SMALL_MODEL_PARAMETERS = 2_000_000_000  # up to this size, a batch-1 static_v3 step is tuned for decode (docstring)
DECODE_ATTENTION_KERNEL = True  # the tuned step's decode attention as decode_attention.py's kernel (docstring)
TUNE_BY_KERNEL_TIME = True  # the tuned step's candidates timed by kernel_timer.py (docstring)
LONG_DECODE_KERNEL = True  # decode attention over a cache longer than DECODE_KEYS as split kernels (docstring)


def _decode_step(q: torch.Tensor, k: torch.Tensor) -> bool:
    """A decode step traced for static shapes (not a v1/v2 graph's dynamic length)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    return isinstance(q_len, int) and isinstance(kv_len, int) and q_len <= DECODE_ROWS


def _short_decode(q: torch.Tensor, k: torch.Tensor) -> bool:
    return _decode_step(q, k) and k.shape[2] <= DECODE_KEYS


def _kernel_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  query_positions: torch.Tensor | None) -> bool:
    """Whether decode_attention.py's kernels can run this causal attention at known positions."""
    from decode_attention import fits

    return causal and query_positions is not None and q.is_cuda and fits(q, k, v)


def attention_for_inductor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                           sliding_window: int | None = None, query_positions: torch.Tensor | None = None):
    """The canonical node in plain PyTorch: sums of products for a short decode step, decode_attention.py's
    split kernels for a long one on the GPU (LONG_DECODE_KERNEL), else sdpa."""
    long_decode = _decode_step(q, k) and k.shape[2] > DECODE_KEYS
    if LONG_DECODE_KERNEL and long_decode and _kernel_takes(q, k, v, causal, query_positions):
        from decode_attention import decode_attention

        return decode_attention(q, k, v, scale, sliding_window, query_positions, split_keys=True)
    if not _short_decode(q, k):
        return attention_reference(q, k, v, scale, causal, sliding_window, query_positions)
    batch, q_heads, q_len, head_dim = q.shape
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


def attention_for_small_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                               sliding_window: int | None = None, query_positions: torch.Tensor | None = None):
    """The tuned step's attention: decode_attention.py's kernel for a causal short decode step on a GPU, else
    attention_for_inductor."""
    from decode_attention import decode_attention

    if _short_decode(q, k) and _kernel_takes(q, k, v, causal, query_positions):
        return decode_attention(q, k, v, scale, sliding_window, query_positions)
    return attention_for_inductor(q, k, v, scale, causal, sliding_window, query_positions)


def product_as_sums(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight_t [K, N] (+ bias [N]) as sums of products over K, accumulated in float32."""
    out = (x.float().unsqueeze(1) * weight_t.t().float().unsqueeze(0)).sum(-1)  # [M, N]
    return (out if bias is None else out + bias.float()).to(x.dtype)


def _one_row_on_gpu(x: torch.Tensor) -> bool:
    rows = x.shape[0]
    return isinstance(rows, int) and rows == 1 and x.is_cuda  # an int: traced for a static shape


def mm_for_inductor(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    return product_as_sums(x, weight_t) if _one_row_on_gpu(x) else torch.mm(x, weight_t)


def addmm_for_inductor(bias: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    return product_as_sums(x, weight_t, bias) if _one_row_on_gpu(x) else torch.addmm(bias, x, weight_t)


ONE_ROW_PRODUCTS = {torch.ops.aten.mm.default: mm_for_inductor, torch.ops.aten.addmm.default: addmm_for_inductor}


def write_out_one_row_products(gm: GraphModule) -> GraphModule:
    """Matrix products (projections, lm_head) call the functions above, which write out the one-row ones."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in ONE_ROW_PRODUCTS and not node.kwargs:
            node.target = ONE_ROW_PRODUCTS[node.target]
    gm.recompile()
    return gm


def open_attention(gm: GraphModule, implementation: Callable = attention_for_inductor) -> GraphModule:
    """Call the canonical node's plain PyTorch form directly, so that the compiler sees its ops."""
    for node in attention_nodes(gm):
        node.target = implementation
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.sym_size.int:
            with gm.graph.inserting_before(node):
                size = gm.graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def tuned_for_small_decode(gm: GraphModule, args: argparse.Namespace) -> bool:
    """Whether a static_v3 step gets the small-model decode treatment (see the module docstring)."""
    parameters = list(gm.parameters())
    return (args.batch_size == 1 and parameters[0].is_cuda
            and sum(p.numel() for p in parameters) <= SMALL_MODEL_PARAMETERS)


def small_decode_options() -> dict:
    """Inductor options: block sizes tuned per kernel, and programmatic dependent launch where inductor has it."""
    import torch._inductor.config as config

    options = {"coordinate_descent_tuning": True}
    if hasattr(config.triton, "enable_pdl"):
        options["triton.enable_pdl"] = True  # a kernel's launch overlaps the end of the one before
    return options


def compile_with_inductor(gm: GraphModule, args: argparse.Namespace) -> Callable:
    in_place = takes_cache_position(gm)
    tuned = in_place and tuned_for_small_decode(gm, args)
    gm = open_attention(gm, attention_for_small_decode if tuned and DECODE_ATTENTION_KERNEL else attention_for_inductor)
    if in_place:
        options = None
        if tuned:
            gm, options = write_out_one_row_products(gm), small_decode_options()
        step = torch.compile(InPlaceCacheStep(gm), dynamic=False, options=options)
        return tuned_by_kernel_time(step) if tuned and TUNE_BY_KERNEL_TIME else step
    return torch.compile(gm, dynamic=True, mode="reduce-overhead" if args.cudagraph else None)
