"""The pipeline of run_llm.py and run_vlm.py in stage order: load, export, lower, compile, generate's cached model.

Each stage lives in its own room (README: "Stage map"); this file only strings them together so
that both scripts, the benchmarks and the tests build a model the same way:

    load_config, load_model, load_tokenizer (load/)  ->  export_llm (export.py)  ->  lower (below:
    register_sdpa, fuse_projections, fold_lm_head_batch, the --cache pass)  ->  compile_lowered
    (compilers/)  ->  cached_model (generation/loops.py)  ->  report/
"""

from __future__ import annotations

from typing import Callable

from torch.fx import GraphModule

from compilers.in_place_step import InPlaceCacheStep
from fold_lm_head_batch import fold_lm_head_batch
from fuse_projections import fuse_projections
from generation.loops import CachedModel
from options import CompileOptions, ModelOptions
from register_sdpa import register_sdpa
from static_cache_v1 import insert_static_cache_v1
from static_cache_v2 import insert_static_cache_v2
from static_cache_v3 import insert_static_cache_v3, takes_cache_position

CACHE_PASSES = {"static_v1": insert_static_cache_v1, "static_v2": insert_static_cache_v2,
                "static_v3": insert_static_cache_v3}


def lower(gm: GraphModule, cache: str, max_seq_len: int) -> GraphModule:
    """The passes every compiler sees: canonical attention, fused projections, one lm_head product over the
    batch, then the chosen static cache ("" for none)."""
    gm = fold_lm_head_batch(fuse_projections(register_sdpa(gm)))
    if cache:
        gm = CACHE_PASSES[cache](gm, max_seq_len)
    return gm


def captured(options: CompileOptions) -> bool:
    """Whether generation.loops.CachedModel captures the static-cache step as CUDA graphs: with --cudagraph,
    for eager and inductor (a TensorRT engine has its own CUDA-graph mode, compilers/tensorrt.py)."""
    return bool(options.cudagraph and options.cache and options.compiler != "tensorrt")


def compile_lowered(gm: GraphModule, options: CompileOptions, model: ModelOptions, max_seq_len: int) -> Callable:
    """Compile the lowered graph with the chosen compiler; all three take the same graph.

    A static_v3 graph comes back as a step that updates the caches in place (see
    generation.loops.CachedModel): an InPlaceCacheStep, or a TensorRT engine whose KV-cache update
    layers write them; so does a v1/v2 graph that is to be captured as CUDA graphs.
    """
    if options.compiler == "inductor":
        from compilers.inductor import compile_with_inductor

        return compile_with_inductor(gm, options.cudagraph, options.tuning)
    positions = 1 if takes_cache_position(gm) else 2
    in_place = positions == 1 or captured(options)
    if options.compiler == "eager":
        return InPlaceCacheStep(gm, positions) if in_place else gm
    from compilers.tensorrt import compile_with_tensorrt, writes_caches_in_place

    compiled = compile_with_tensorrt(gm, options, model, max_seq_len)
    return InPlaceCacheStep(compiled) if positions == 1 and not writes_caches_in_place(compiled) else compiled


def cached_model(compiled: Callable, lowered: GraphModule, options: CompileOptions, model: ModelOptions,
                 batch_size: int, max_seq_len: int) -> CachedModel:
    """The compiled static-cache step with its caches, made once and used for every generation of a run.

    Eager and inductor steps are captured as CUDA graphs here with --cudagraph; a TensorRT engine has
    its own CUDA-graph mode (compilers/tensorrt.py) and fixed-shape cache inputs.
    """
    return CachedModel(compiled, lowered, batch_size, max_seq_len, model.dtype, model.device,
                       cuda_graphs=captured(options), fixed_cache_shape=options.compiler == "tensorrt",
                       in_place=captured(options))
