"""--compiler inductor: torch.compile of the lowered graph, with the canonical attention opened up.

Rewrites make the graph one compiled region whose small ops inductor can fuse:
  - `aten.sym_size.int` calls become `.size()` calls: TorchDynamo would otherwise break the graph
    at each of them when shapes are static (it cannot put an op that returns an int in a graph).
  - Each canonical attention node becomes a call of plain PyTorch or of a Triton kernel, chosen per
    node by `decode_tuning.choose_attention` (its docstring is the rule).
  - A small (or quantized) model's batch-1 static_v3 step (`tuned_for_small_decode`) also has its one-row
    matrix products written as sums of products, and its decode step is compiled with coordinate-descent
    tuning and programmatic dependent launch, its candidates timed by their kernels' GPU time
    (kernel_timer.py), and, where the tuning asks, those products' inputs stored first (stored.py); the
    prefill is compiled untuned.
  - A quantized linear (quantize/quantized_linear.py) becomes plain ops over its one-byte weight.
Why each choice, with the figures: docs/decode_tuning.md.

A static_v3 graph is compiled for static shapes (one graph for prefill, one for the decode step).
The others stay dynamic in the sequence length. Static-cache steps are compiled without inductor's
CUDA graphs: with --cudagraph, generation.loops.CachedModel captures each whole step itself
(cuda_graph_step.py), a v1/v2 step once per position, so it is compiled to write its caches in
place. A graph without a cache gets inductor's CUDA graphs (mode "reduce-overhead").
"""

from __future__ import annotations

import logging
import operator
from typing import Callable

import torch
from torch.fx import GraphModule

from compilers.decode_tuning import Attention, DecodeTuning, choose_attention
from compilers.in_place_step import InPlaceCacheStep
from compilers.kernel_timer import tuned_by_kernel_time
from quantize.quantized_linear import QUANTIZED_LINEAR, dequantized_weight, fake_quantize, to_fp8
from register_sdpa import as_sdpa_output_layout, attention_nodes, attention_reference, causal_mask
from static_cache_common import cache_inputs
from static_cache_v3 import takes_cache_position


def attention_as_sums(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                      sliding_window: int | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The canonical node as sums of products in float32, which inductor fuses with the mask and softmax."""
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
    return as_sdpa_output_layout(out.to(q.dtype).reshape(batch, q_heads, q_len, head_dim))


def attention_for_inductor(tuning: DecodeTuning = DecodeTuning(), tuned_step: bool = False) -> Callable:
    """The function that stands in for every canonical attention node of one compiled graph."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                  sliding_window: int | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        choice = choose_attention(q, k, v, causal, query_positions, tuning, tuned_step)
        if choice in (Attention.KERNEL, Attention.SPLIT_KERNEL):
            from compilers.decode_attention import decode_attention

            return decode_attention(q, k, v, scale, sliding_window, query_positions,
                                    split_keys=choice is Attention.SPLIT_KERNEL)
        if choice is Attention.SUMS:
            return attention_as_sums(q, k, v, scale, causal, sliding_window, query_positions)
        return attention_reference(q, k, v, scale, causal, sliding_window, query_positions)

    return attention


def product_as_sums(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None,
                    scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight_t [K, N] (times scale, [N] or one value) (+ bias [N]) as sums of products over K,
    accumulated in float32."""
    out = (x.float().unsqueeze(1) * weight_t.t().float().unsqueeze(0)).sum(-1)  # [M, N]
    out = out if scale is None else out * scale.float()
    return (out if bias is None else out + bias.float()).to(x.dtype)


def _one_row_on_gpu(x: torch.Tensor) -> bool:
    rows = x.shape[0]
    return isinstance(rows, int) and rows == 1 and x.is_cuda  # an int: traced for a static shape


def _stored_if(x: torch.Tensor, store: bool) -> torch.Tensor:
    """A written-out product's input, stored before the product reads it where the tuning asks (stored.py)."""
    if not store:
        return x
    from compilers.stored import stored

    return stored(x)


def mm_for_inductor(x: torch.Tensor, weight_t: torch.Tensor, store_input: bool = False) -> torch.Tensor:
    return product_as_sums(_stored_if(x, store_input), weight_t) if _one_row_on_gpu(x) else torch.mm(x, weight_t)


def addmm_for_inductor(bias: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor,
                       store_input: bool = False) -> torch.Tensor:
    if _one_row_on_gpu(x):
        return product_as_sums(_stored_if(x, store_input), weight_t, bias)
    return torch.addmm(bias, x, weight_t)


ONE_ROW_PRODUCTS = {torch.ops.aten.mm.default: mm_for_inductor, torch.ops.aten.addmm.default: addmm_for_inductor}


def write_out_one_row_products(gm: GraphModule, store_inputs: bool = False) -> GraphModule:
    """Matrix products (projections, lm_head) call the functions above, which write out the one-row ones."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in ONE_ROW_PRODUCTS and not node.kwargs:
            node.target = ONE_ROW_PRODUCTS[node.target]
            node.kwargs = {"store_input": True} if store_inputs else {}
    gm.recompile()
    return gm


def quantized_linear_for_inductor(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                                  input_scale: torch.Tensor | None, bias: torch.Tensor | None,
                                  weight_scale_2: torch.Tensor | None = None,
                                  store_input: bool = False) -> torch.Tensor:
    """The canonical quantized linear as plain ops, the weight read at its stored size: a one-row product is
    written out as sums of products over the quantized weight (a per-channel or per-tensor scale applied to
    the sums, NVFP4's block scales inside them), which inductor fuses into one kernel; longer inputs multiply
    by the dequantized weight."""
    if input_scale is not None:
        x = fake_quantize(x, input_scale, weight.dtype)
    rows = x.reshape(-1, x.shape[-1])
    if _one_row_on_gpu(rows):
        rows = _stored_if(rows, store_input)
        if weight.dtype == torch.uint8:  # NVFP4: the block scales inside the sums
            out = product_as_sums(rows, dequantized_weight(weight, weight_scale, torch.float32, weight_scale_2).t(),
                                  bias)
        else:
            out = product_as_sums(rows, weight.t(), bias, scale=weight_scale)
    else:
        weight = dequantized_weight(weight, weight_scale, x.dtype, weight_scale_2)
        out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
    return out.reshape(*x.shape[:-1], out.shape[-1])


def fp8_linear_for_inductor(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                            input_scale: torch.Tensor, bias: torch.Tensor | None,
                            weight_scale_2: torch.Tensor | None = None, store_input: bool = False) -> torch.Tensor:
    """A linear whose weights and activations are FP8 with per-tensor scales: several rows are quantized to FP8
    and multiplied on FP8 tensor cores by torch._scaled_mm, which applies both scales; one row on a GPU is the
    written-out product of quantized_linear_for_inductor."""
    rows = x.reshape(-1, x.shape[-1])
    if _one_row_on_gpu(rows):
        return quantized_linear_for_inductor(x, weight, weight_scale, input_scale, bias, store_input=store_input)
    quantized = to_fp8(rows, input_scale.float())
    fused_bias = bias if x.dtype in (torch.float16, torch.bfloat16) else None  # _scaled_mm adds no bias in FP32
    out = torch._scaled_mm(quantized, weight.t(), scale_a=input_scale.float().reshape(()),
                           scale_b=weight_scale.float().reshape(()), bias=fused_bias, out_dtype=x.dtype)
    if bias is not None and fused_bias is None:
        out = out + bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether torch._scaled_mm runs FP8 products here: the CPU, or a GPU of compute capability 8.9 or newer."""
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9))


def _attribute(gm: GraphModule, arg) -> torch.Tensor | None:
    """The tensor a get_attr argument names (a weight or a scale); None for anything else."""
    is_attribute = isinstance(arg, torch.fx.Node) and arg.op == "get_attr"
    return operator.attrgetter(arg.target)(gm) if is_attribute else None


def _takes_scaled_mm(gm: GraphModule, node) -> bool:
    """An FP8 linear with quantized activations, per-tensor scales and sizes torch._scaled_mm takes (multiples
    of 16), on a device that runs it."""
    weight, weight_scale, input_scale = (_attribute(gm, arg) for arg in node.args[1:4])
    return (weight is not None and weight.dtype == torch.float8_e4m3fn and input_scale is not None
            and weight_scale.numel() == 1 and input_scale.numel() == 1
            and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0 and fp8_tensor_cores(weight.device))


def open_quantized_linears(gm: GraphModule, store_inputs: bool = False) -> GraphModule:
    """Quantized linears call the functions above; with `store_inputs` a one-row product stores its input."""
    for node in gm.graph.find_nodes(op="call_function", target=QUANTIZED_LINEAR):
        node.target = fp8_linear_for_inductor if _takes_scaled_mm(gm, node) else quantized_linear_for_inductor
        if store_inputs:
            node.kwargs = {**node.kwargs, "store_input": True}
    gm.recompile()
    return gm


def open_attention(gm: GraphModule, implementation: Callable) -> GraphModule:
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


def batch_size_of(gm: GraphModule) -> int:
    """The static batch size of a lowered graph: the first dimension of its first input."""
    return int(gm.graph.find_nodes(op="placeholder")[0].meta["val"].shape[0])


def tuned_for_small_decode(gm: GraphModule, tuning: DecodeTuning) -> bool:
    """Whether a static_v3 step gets the small-model decode treatment: batch 1, on a GPU, a small model or a
    quantized one (whose one-row products are written out at any size: no library kernel multiplies by a
    one-byte weight, and the written-out reductions are what the tuning tunes)."""
    parameters = list(gm.parameters())
    small = sum(p.numel() for p in parameters) <= tuning.small_model_parameters
    quantized = bool(gm.graph.find_nodes(op="call_function", target=QUANTIZED_LINEAR))
    return batch_size_of(gm) == 1 and parameters[0].is_cuda and (small or quantized)


def small_decode_options(tuning: DecodeTuning) -> dict:
    """Inductor options: block sizes tuned per kernel, and programmatic dependent launch where inductor has it."""
    import torch._inductor.config as config

    options = {"coordinate_descent_tuning": tuning.block_size_tuning}
    if hasattr(config.triton, "enable_pdl"):
        options["triton.enable_pdl"] = True  # a kernel's launch overlaps the end of the one before
    return options


def decode_tuned_only(prefill: Callable, decode: Callable) -> Callable:
    """One-token steps go to the tuned compile, longer ones (prefill, chunks) to the plain one: the tuning
    pays in the step that runs at every token, and the prefill, run once, need not spend compile time on it."""

    def step(input_ids, *rest):
        return (decode if input_ids.shape[1] == 1 else prefill)(input_ids, *rest)

    return step


def compile_with_inductor(gm: GraphModule, cudagraph: bool = False, tuning: DecodeTuning = DecodeTuning()) -> Callable:
    """torch.compile of the lowered graph. With `cudagraph` a v1/v2 step writes its caches in place, for
    CachedModel to capture, and a graph without a cache gets inductor's CUDA graphs."""
    if not torch.cuda.is_available():  # inductor's C++ build warns on every CPU run that there is no CUDA
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    in_place = takes_cache_position(gm)
    tuned = in_place and tuned_for_small_decode(gm, tuning)
    store_inputs = tuned and tuning.store_product_inputs
    gm = open_quantized_linears(open_attention(gm, attention_for_inductor(tuning, tuned)), store_inputs)
    if in_place:
        step = torch.compile(InPlaceCacheStep(gm), dynamic=False)
        if not tuned:
            return step
        decode = torch.compile(InPlaceCacheStep(write_out_one_row_products(gm, store_inputs)), dynamic=False,
                               options=small_decode_options(tuning))
        return decode_tuned_only(step, tuned_by_kernel_time(decode) if tuning.tune_by_kernel_time else decode)
    if cudagraph and cache_inputs(gm):
        return torch.compile(InPlaceCacheStep(gm, position_count=2), dynamic=True)
    return torch.compile(gm, dynamic=True, mode="reduce-overhead" if cudagraph else None)
