"""A static_v3 step replayed as one CUDA graph per input shape (prefill and decode).

The first call at a shape warms the step up (compilation, autotuning and lazy initialisation run
then, outside any capture) and captures it; every later call at that shape copies its inputs into
the graph's input buffers and replays it. A decode step then costs one graph launch and a few small
copies on the host: no Python per layer, no guards, no launches per kernel, so the host stays ahead
of the GPU. This works the same over the eager graph and over inductor's compiled code (which is
therefore compiled without its own CUDA graphs, see compile_inductor.py).

Only steps that write their caches in place can be captured (static_v3 through InPlaceCacheStep):
a captured graph reads and writes the addresses it saw, so the caches must be the same buffers
at every call, which __call__ checks.
"""

from __future__ import annotations

from typing import Callable

import torch


class CudaGraphStep:
    """step(inputs, position_ids, *caches, cache_position) -> (logits,), replayed from CUDA graphs.

    The logits returned live in the graph's output buffer: read them before the next call.
    """

    def __init__(self, step: Callable):
        self.step = step
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor, list[int]]] = {}

    def __call__(self, inputs: torch.Tensor, position_ids: torch.Tensor, *caches_and_position: torch.Tensor):
        *caches, cache_position = caches_and_position
        key = (tuple(inputs.shape), tuple(position_ids.shape), tuple(caches[0].shape))
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, position_ids, caches, cache_position)
        graph, buffers, logits, cache_addresses = self.graphs[key]
        if [cache.data_ptr() for cache in caches] != cache_addresses:
            raise RuntimeError("a captured step was called with other cache buffers than it was captured with")
        self._load_inputs(buffers, (inputs, position_ids, cache_position))
        graph.replay()
        return (logits,)

    @staticmethod
    def _load_inputs(buffers: list[torch.Tensor], values: tuple[torch.Tensor, ...]) -> None:
        for buffer, value in zip(buffers, values):
            buffer.copy_(value)

    def _capture(self, inputs, position_ids, caches, cache_position):
        buffers = [inputs.clone(), position_ids.clone(), cache_position.clone()]
        # Warm up on a side stream, as CUDA graph capture asks; this run writes the same K/V the replay will.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step(buffers[0], buffers[1], *caches, buffers[2])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step(buffers[0], buffers[1], *caches, buffers[2])[0]
        return graph, buffers, logits, [cache.data_ptr() for cache in caches]
