"""A static-cache step that writes its returned caches back into the caller's buffers.

Under torch.compile that copy and the cache pass's write (static_cache_v3's index_copy, v1/v2's
concatenation) fuse into an in-place write, and the cache buffers keep their addresses from step to
step, as CUDA graphs need (cuda_graph_step.py). A v3 step always runs so; a v1/v2 step does when it
is captured (utils.compile_lowered).
"""

from __future__ import annotations

from typing import Callable

import torch


class InPlaceCacheStep(torch.nn.Module):
    """model(ids, position_ids, *caches, *positions) -> (logits,), the caches updated in place.

    `position_count` is how many position inputs end the call: 1 for v3 (cache_position), 2 for v1/v2
    (start_idx, end_idx).
    """

    def __init__(self, model: Callable, position_count: int = 1):
        super().__init__()
        self.model = model
        self.position_count = position_count

    def forward(self, input_ids, position_ids, *caches_and_positions):
        caches = caches_and_positions[:-self.position_count]
        logits, *updated = self.model(input_ids, position_ids, *caches_and_positions)
        for cache, new in zip(caches, updated):
            cache.copy_(new)
        return (logits,)
