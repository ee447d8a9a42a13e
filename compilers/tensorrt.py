"""--compiler tensorrt: the lowered graph through torch_tensorrt.dynamo.compile, with sdpa_converter registered.

The lowered graph is exported once more (its canonical attention nodes have fake implementations)
with the sequence length dynamic from 1 to max_seq_len, and compiled with the dtype the model
already has (Torch-TensorRT 2.14 builds strongly typed networks). Two rewrites come first, for
what Torch-TensorRT cannot convert as it stands:
  - static_cache_v3's `index_copy` becomes the equivalent `scatter` along the sequence dimension;
  - a `view` whose size list has a -1 where the size is a known constant gets that constant
    (TensorRT cannot always solve a wildcard next to a dynamic dimension; GPT-2 has one).
Static caches are fixed-shape inputs; static_v1/v2's `start_idx`/`end_idx` are shape-tensor inputs.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from options import CompileOptions, ModelOptions
from static_cache_common import START_END, cache_inputs
from static_cache_v3 import POSITION_INPUT


def scatter_rows(cache: torch.Tensor, cache_position: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """cache.index_copy(2, cache_position, new) written as a scatter: cache [B, H, S, D], new [B, H, L, D]."""
    index = cache_position.view(1, 1, -1, 1).expand(new.shape)
    return cache.scatter(2, index, new)


def prepare_for_tensorrt(gm: GraphModule) -> GraphModule:
    """The two rewrites of the module docstring, in place."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten.index_copy.default and node.args[1] == 2:
            cache, _, cache_position, new = node.args
            node.target, node.args = scatter_rows, (cache, cache_position, new)
        elif node.target == torch.ops.aten.view.default and -1 in list(node.args[1]) and "val" in node.meta:
            shape = node.meta["val"].shape
            sizes = [shape[i] if size == -1 and isinstance(shape[i], int) else size
                     for i, size in enumerate(node.args[1])]
            node.args = (node.args[0], sizes)
    gm.recompile()
    return gm


def tensorrt_program(gm: GraphModule, max_seq_len: int, device) -> tuple:
    """(exported program, Torch-TensorRT input specs) of a lowered graph, with or without static caches."""
    import torch_tensorrt

    gm = prepare_for_tensorrt(gm)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    example_len = min(3, max_seq_len)
    args, dynamic, specs = [], [], []
    for node in gm.graph.find_nodes(op="placeholder")[:2]:  # ids or embeddings, and position ids
        meta = node.meta["val"]
        sizes = [(i, size) for i, size in enumerate(meta.shape)]
        seq_dims = [i for i, size in sizes if isinstance(size, torch.SymInt)]  # the sequence length

        def shape(length):
            return tuple(length if i in seq_dims else int(size) for i, size in sizes)

        args.append(torch.zeros(shape(example_len), dtype=meta.dtype, device=device))
        dynamic.append({i: seq for i in seq_dims})
        specs.append(torch_tensorrt.Input(min_shape=shape(1), opt_shape=shape(max_seq_len),
                                          max_shape=shape(max_seq_len), dtype=meta.dtype))
    for node in cache_inputs(gm):
        meta = node.meta["val"]
        args.append(torch.zeros(meta.shape, dtype=meta.dtype, device=device))
        dynamic.append(None)
        specs.append(torch_tensorrt.Input(shape=tuple(meta.shape), dtype=meta.dtype))
    names = [node.name for node in gm.graph.find_nodes(op="placeholder")]
    if POSITION_INPUT in names:
        args.append(torch.arange(example_len, device=device))
        dynamic.append({0: seq})
        specs.append(torch_tensorrt.Input(min_shape=(1,), opt_shape=(max_seq_len,), max_shape=(max_seq_len,),
                                          dtype=torch.int64))
    elif START_END[0] in names:
        args += [0, example_len]
        dynamic += [torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC]
        # Scalar shape tensors: min/opt/max are the values start_idx and end_idx take.
        specs += [torch_tensorrt.Input(min_shape=(0,), opt_shape=(0,), max_shape=(max_seq_len - 1,),
                                       dtype=torch.int64, is_shape_tensor=True),
                  torch_tensorrt.Input(min_shape=(1,), opt_shape=(max_seq_len,), max_shape=(max_seq_len,),
                                       dtype=torch.int64, is_shape_tensor=True)]
    program = torch.export.export(gm, tuple(args), dynamic_shapes=tuple(dynamic), strict=False)
    return program, specs


def compile_with_tensorrt(gm: GraphModule, options: CompileOptions, model: ModelOptions, max_seq_len: int):
    """The lowered graph as a Torch-TensorRT module (one engine where every node converts)."""
    import torch_tensorrt

    import sdpa_converter  # noqa: F401  (registers the canonical node's converter)

    program, specs = tensorrt_program(gm, max_seq_len, model.device)
    compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, min_block_size=options.min_block_size,
                                             use_fp32_acc=model.precision == "FP16")
    torch_tensorrt.runtime.set_cudagraphs_mode(options.cudagraph)
    return compiled
