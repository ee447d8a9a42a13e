"""--engine_cache_dir: Torch-TensorRT's disk engine cache, with a key that tells models apart.

Torch-TensorRT keys a cached engine by the sequence of node ops and targets, the input specs and the
engine-relevant settings, and refits a hit with the new graph's weights. That key leaves out every
node's arguments and every weight's shape, so two models with the same layers and different widths
(Qwen3-0.6B and Qwen3-1.7B: 28 layers, the same KV-cache shape) or another attention scale or norm
epsilon would share an engine. The key here adds those; the weights' values stay out of it (a refit
brings them in), so a new checkpoint of the same architecture still reuses its engine.
"""

from __future__ import annotations

import hashlib
import operator
import os

import torch

from options import CompileOptions

PROJECT_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_tensorrt_llm")
DEFAULT_ENGINE_CACHE_DIR = os.path.join(PROJECT_CACHE_DIR, "engines")
ENGINE_CACHE_BYTES = 64 << 30  # the engines are stored without weights; the oldest go first past this


def structure_key(gm: torch.fx.GraphModule, attention: str = "") -> str:
    """A hash of every node's op, target, arguments and output shape (a weight's: its shape and dtype),
    and of the layers the attention converts to."""
    lines = [attention]
    for node in gm.graph.nodes:
        value = operator.attrgetter(node.target)(gm) if node.op == "get_attr" else node.meta.get("val")  # a weight
        shape = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else None
        lines.append(f"{node.op} {node.target} {node.args} {node.kwargs} {shape}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def disk_engine_cache(directory: str):
    """Torch-TensorRT's DiskEngineCache in `directory`, keyed also by structure_key."""
    from torch_tensorrt.dynamo._engine_cache import DiskEngineCache

    class StructureKeyedEngineCache(DiskEngineCache):
        @staticmethod
        def get_hash(gm, input_specs, settings) -> str:
            import sdpa_converter  # the attention's conversion (one engine or the other for the same graph)

            return DiskEngineCache.get_hash(gm, input_specs, settings) + structure_key(gm, sdpa_converter.LAYERS)

    return StructureKeyedEngineCache(directory, ENGINE_CACHE_BYTES)


def engine_cache_settings(options: CompileOptions) -> dict:
    """torch_tensorrt.dynamo.compile's engine-cache keywords for --engine_cache_dir (none without one).

    A cached engine is refitted with the weights of the run that reuses it, so it must be refittable.
    """
    if options.engine_cache_dir is None:
        return {}
    return {"cache_built_engines": True, "reuse_cached_engines": True, "immutable_weights": False,
            "custom_engine_cache": disk_engine_cache(options.engine_cache_dir)}
