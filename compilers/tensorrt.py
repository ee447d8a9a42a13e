"""--compiler tensorrt: the lowered graph through torch_tensorrt.dynamo.compile, with sdpa_converter registered.

The lowered graph is exported once more (its canonical attention nodes have fake implementations)
with the sequence length dynamic from 1 to max_seq_len, and compiled with the dtype the model
already has (Torch-TensorRT 2.14 builds strongly typed networks). Two rewrites come first, on a
copy of the graph (the weights are shared):
  - static_cache_v3's `index_copy` becomes TensorRT's KV-cache update layer, which writes the caller's
    cache in place (compilers/kv_cache_update.py), and the graph then returns the logits only; where
    the installed TensorRT has no such layer, the equivalent `scatter` along the sequence dimension,
    and the updated caches are returned and copied back (in_place_step.py);
  - a `view` whose size list has a -1 where the size is a known constant gets that constant
    (TensorRT cannot always solve a wildcard next to a dynamic dimension; GPT-2 has one).
Static caches are fixed-shape inputs; static_v1/v2's `start_idx`/`end_idx` are shape-tensor inputs.
The canonical attention becomes TensorRT's attention layer where the installed TensorRT has one, else
matrix products and a softmax (sdpa_converter.py); the run logs which path each took.

With an engine cache directory (compilers/engine_cache.py), Torch-TensorRT's engine cache keeps each
built engine without its weights, and a later run of the same model structure, shapes, precision and
--cache refits the stored engine with its weights instead of building it.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch.fx import GraphModule

from compilers.engine_cache import engine_cache_settings
from options import CompileOptions, ModelOptions
from static_cache_common import START_END, cache_inputs
from static_cache_v3 import POSITION_INPUT

logger = logging.getLogger("llm_tools")
ATTENTION_AS = {"attention_layer": "TensorRT's attention layer (fused kernels)",
                "matmul_softmax": "matrix products and a softmax (this TensorRT has no attention layer)"}
CACHE_WRITE_AS = {"kv_cache_update": "TensorRT's KV-cache update layer, in place in the caller's caches",
                  "scatter": "a scatter, the caches returned and copied back (this TensorRT has no KV-cache "
                             "update layer)"}


def scatter_rows(cache: torch.Tensor, cache_position: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """cache.index_copy(2, cache_position, new) written as a scatter: cache [B, H, S, D], new [B, H, L, D]."""
    index = cache_position.view(1, 1, -1, 1).expand(new.shape)
    return cache.scatter(2, index, new)


def prepare_for_tensorrt(gm: GraphModule, cache_write: str) -> GraphModule:
    """The two rewrites of the module docstring, on a new graph module that shares gm's weights.
    `cache_write` is compilers.kv_cache_update.CACHE_WRITE: kv_cache_update or scatter."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))  # the nodes' metadata (their fake values) is shared
    gm = GraphModule(gm, graph)
    in_place = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten.index_copy.default and node.args[1] == 2:
            cache, _, cache_position, new = node.args
            if cache_write == "kv_cache_update":
                node.target, node.args = torch.ops.llm_tools.kv_cache_update.default, (cache, new, cache_position)
                in_place = True
            else:
                node.target, node.args = scatter_rows, (cache, cache_position, new)
        elif node.target == torch.ops.aten.view.default and -1 in list(node.args[1]) and "val" in node.meta:
            shape = node.meta["val"].shape
            sizes = [shape[i] if size == -1 and isinstance(shape[i], int) else size
                     for i, size in enumerate(node.args[1])]
            node.args = (node.args[0], sizes)
    if in_place:  # the engine writes the caches; only the logits are returned
        output = gm.graph.find_nodes(op="output")[0]
        output.args = ((output.args[0][0],),)
        gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def writes_caches_in_place(compiled: GraphModule) -> bool:
    """Whether a compiled static_v3 module writes the caches itself (the KV-cache update layer)."""
    return len(compiled.graph.find_nodes(op="output")[0].args[0]) == 1


def bound_positions(gm: GraphModule, placeholders: dict, max_seq_len: int) -> None:
    """Bound static_v1/v2's start_idx and end_idx for the export, with checks at the graph's start.

    An integer input cannot take a bounded export Dim, and Torch-TensorRT bounds only the upper end of an
    unbounded one, so without these the engine's profile lets end_idx be 0: an empty cache slice at the
    profile's minimum, which TensorRT reports as an inconsistent profile.
    """
    start_idx, end_idx = (placeholders[name] for name in START_END)
    bounds = [(start_idx, operator.ge, 0), (start_idx, operator.lt, max_seq_len),
              (end_idx, operator.ge, 1), (end_idx, operator.le, max_seq_len)]
    with gm.graph.inserting_after(list(placeholders.values())[-1]):
        for node, compare, bound in reversed(bounds):
            check = gm.graph.call_function(torch._check, (None,))
            with gm.graph.inserting_before(check):
                check.args = (gm.graph.call_function(compare, (node, bound)),)
    gm.recompile()


def sequence_profiles(shape, max_seq_len: int) -> list[dict]:
    """TensorRT optimization profiles of an input whose sequence length varies: `shape(length)` is its
    shape at a length. Profile 0 is the decode step (one new token), profile 1 prefill (the prompt,
    up to max_seq_len, tuned at its longest); the runtime picks the first profile the inputs fit."""
    decode, longest = shape(1), shape(max_seq_len)
    return [{"min_shape": decode, "opt_shape": decode, "max_shape": decode},
            {"min_shape": decode, "opt_shape": longest, "max_shape": longest}]


def end_profiles(max_seq_len: int) -> list[dict]:
    """static_v1/v2's end_idx in the decode and prefill profiles. A profile's opt values must agree
    (end_idx - start_idx = L at start_idx 0): decode tunes for the first new token, prefill for the
    longest prompt."""
    return [{"min_shape": (1,), "opt_shape": (1,), "max_shape": (max_seq_len,)},
            {"min_shape": (1,), "opt_shape": (max_seq_len,), "max_shape": (max_seq_len,)}]


def tensorrt_program(gm: GraphModule, max_seq_len: int, device) -> tuple:
    """(exported program, Torch-TensorRT input specs) of a lowered graph, with or without static caches.

    The inputs whose length is the sequence length get the decode and prefill profiles. Torch-TensorRT
    derives a shape tensor's profile from the export (its opt is the example's value, here end_idx 5).
    """
    import torch_tensorrt

    from compilers import kv_cache_update  # registers the cache write's converter
    from compilers import quantized_linear_converter  # noqa: F401  (registers the quantized linear's converter)

    gm = prepare_for_tensorrt(gm, kv_cache_update.CACHE_WRITE)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    placeholders = {node.name: node for node in gm.graph.find_nodes(op="placeholder")}
    example_len = min(3, max_seq_len)
    if START_END[0] in placeholders:
        example_start, example_len = 2, min(3, max_seq_len - 2)
        if example_len < 2:
            raise ValueError(f"static_v1/v2 under TensorRT need max_seq_len of at least 4, got {max_seq_len}")
    args, dynamic, specs = [], [], []

    def sequence_input(meta, seq_dims, example):
        def shape(length):
            return tuple(length if i in seq_dims else int(size) for i, size in enumerate(meta.shape))

        args.append(example)
        dynamic.append({i: seq for i in seq_dims})
        specs.append(torch_tensorrt.Input(profiles=sequence_profiles(shape, max_seq_len), dtype=meta.dtype))

    for node in gm.graph.find_nodes(op="placeholder")[:2]:  # ids or embeddings, and position ids
        meta = node.meta["val"]
        seq_dims = [i for i, size in enumerate(meta.shape) if isinstance(size, torch.SymInt)]
        sizes = [example_len if i in seq_dims else int(size) for i, size in enumerate(meta.shape)]
        sequence_input(meta, seq_dims, torch.zeros(sizes, dtype=meta.dtype, device=device))
    for node in cache_inputs(gm):
        meta = node.meta["val"]
        args.append(torch.zeros(meta.shape, dtype=meta.dtype, device=device))
        dynamic.append(None)
        specs.append(torch_tensorrt.Input(shape=tuple(meta.shape), dtype=meta.dtype))
    if POSITION_INPUT in placeholders:
        sequence_input(placeholders[POSITION_INPUT].meta["val"], [0], torch.arange(example_len, device=device))
    elif START_END[0] in placeholders:
        # Not 0 or 1: torch.export specializes an int input whose example is 0 or 1 into a constant,
        # and start_idx 0 would then cut every step's cache prefix away.
        args += [example_start, example_start + example_len]
        dynamic += [torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC]
        bound_positions(gm, placeholders, max_seq_len)
        # Scalar shape tensors: their min/opt/max are the values start_idx and end_idx take. Profiles
        # may not start at 0, so start_idx has one range for both (its opt, 0, suits both).
        specs += [torch_tensorrt.Input(min_shape=(0,), opt_shape=(0,), max_shape=(max_seq_len - 1,),
                                       dtype=torch.int64, is_shape_tensor=True),
                  torch_tensorrt.Input(profiles=end_profiles(max_seq_len), dtype=torch.int64, is_shape_tensor=True)]
    program = torch.export.export(gm, tuple(args), dynamic_shapes=tuple(dynamic), strict=False)
    return program, specs


def compile_with_tensorrt(gm: GraphModule, options: CompileOptions, model: ModelOptions, max_seq_len: int):
    """The lowered graph as a Torch-TensorRT module (one engine where every node converts)."""
    import torch_tensorrt

    import sdpa_converter  # registers the canonical node's converter
    from compilers import kv_cache_update

    logger.info("TensorRT: attention as %s", ATTENTION_AS[sdpa_converter.LAYERS])
    if POSITION_INPUT in {node.name for node in gm.graph.find_nodes(op="placeholder")}:
        logger.info("TensorRT: static_v3's cache writes as %s", CACHE_WRITE_AS[kv_cache_update.CACHE_WRITE])
    program, specs = tensorrt_program(gm, max_seq_len, model.device)
    compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, min_block_size=options.min_block_size,
                                             use_fp32_acc=model.precision == "FP16",
                                             **engine_cache_settings(options))
    torch_tensorrt.runtime.set_cudagraphs_mode(options.cudagraph)
    return compiled
