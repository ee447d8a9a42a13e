"""A static_v3 step that writes its returned caches back into the caller's buffers.

Under torch.compile that copy and static_cache_v3's index_copy fuse into an in-place write, and
the cache buffers keep their addresses from step to step, as CUDA graphs need (cuda_graph_step.py).
"""

from __future__ import annotations

from typing import Callable

import torch


class InPlaceCacheStep(torch.nn.Module):
    """model(ids, position_ids, *caches, cache_position) -> (logits,), the caches updated in place."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, *caches_and_position):
        *caches, cache_position = caches_and_position
        logits, *updated = self.model(input_ids, position_ids, *caches, cache_position)
        for cache, new in zip(caches, updated):
            cache.copy_(new)
        return (logits,)
