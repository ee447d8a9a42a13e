"""static_cache_v3's cache write as TensorRT's KV-cache update layer, which writes the cache in place.

The lowered graph writes a step's new K/V with `cache.index_copy(2, cache_position, new)` and returns
the updated caches, which the step then copies back into the caller's buffers (in_place_step.py).
Where the installed TensorRT has its KV-cache update layer (IKVCacheUpdateLayer), compilers/tensorrt.py
instead turns each write into `llm_tools.kv_cache_update` and returns the logits only. The converter
below maps the op to the layer, whose output TensorRT binds to the cache input's memory: the engine
writes the L new rows into the caller's cache and a step copies no cache in or out. Torch-TensorRT
appends the layer outputs to the engine's outputs as aliased ones and its runtime returns only the
logits (`aliased_io`).

The layer writes rows writeIndices[b] .. writeIndices[b] + L - 1 of every batch row b: contiguous
positions from one start. The generation loops always pass cache_position = arange(start, start + L)
for every batch row, so the start is cache_position[0]; the op's PyTorch implementation is the
index_copy it replaces, equal to the layer's write for such positions.

Importing this module registers the converter; it needs torch_tensorrt.
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt
import torch
from torch_tensorrt.dynamo.conversion._ConversionContext import ConversionContext
from torch_tensorrt.dynamo.conversion._ConverterRegistry import ConverterPriority, dynamo_tensorrt_converter
from torch_tensorrt.dynamo.conversion.impl.slice_scatter import emit_kv_cache_update_layer

KV_CACHE_UPDATE, SCATTER = "kv_cache_update", "scatter"
CACHE_WRITE = KV_CACHE_UPDATE if hasattr(trt.INetworkDefinition, "add_kv_cache_update") else SCATTER


@torch.library.custom_op("llm_tools::kv_cache_update", mutates_args=())
def kv_cache_update(cache: torch.Tensor, update: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """cache [B, H, S, D] with rows cache_position (int64 [L], contiguous) replaced by update [B, H, L, D]."""
    return cache.index_copy(2, cache_position, update)


@kv_cache_update.register_fake
def _(cache, update, cache_position):
    return torch.empty_like(cache)


KV_CACHE_UPDATE_OP = torch.ops.llm_tools.kv_cache_update.default


def write_indices(ctx: ConversionContext, name: str, cache_position: trt.ITensor, batch_size: int) -> trt.ITensor:
    """int32 [B]: every batch row starts writing at cache_position[0]."""
    first = ctx.net.add_slice(cache_position, (0,), (1,), (1,))
    first.name = f"{name}_first_position"
    index = ctx.net.add_cast(first.get_output(0), trt.int32)
    index.name = f"{name}_first_position_int32"
    start = index.get_output(0)  # [1]
    if batch_size == 1:
        return start
    zeros = ctx.net.add_constant((batch_size,), trt.Weights(np.zeros(batch_size, np.int32)))
    zeros.name = f"{name}_batch_zeros"
    rows = ctx.net.add_elementwise(start, zeros.get_output(0), trt.ElementWiseOperation.SUM)  # broadcast to [B]
    rows.name = f"{name}_write_indices"
    return rows.get_output(0)


@dynamo_tensorrt_converter(KV_CACHE_UPDATE_OP, supports_dynamic_shapes=True, priority=ConverterPriority.HIGH)
def convert_kv_cache_update(ctx: ConversionContext, target, args, kwargs, name: str):
    cache, update, cache_position = args
    batch_size = int(cache.shape[0])
    out = emit_kv_cache_update_layer(ctx, name, cache, update, write_indices(ctx, name, cache_position, batch_size))
    if out is None:  # the cache is not a network input: the graph was not made by compilers/tensorrt.py
        raise RuntimeError(f"{name}: the KV-cache update layer needs the cache as an engine input")
    return out
