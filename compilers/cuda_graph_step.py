"""A static-cache step replayed from CUDA graphs, one per input shape (and, for v1/v2, per position).

The first call at a key warms the step up (compilation, autotuning and lazy initialisation run
then, outside any capture) and captures it; every later call at that key copies its inputs into
the graph's input buffers and replays it. A decode step then costs one graph launch and a few small
copies on the host: no Python per layer, no guards, no launches per kernel, so the host stays ahead
of the GPU. This works the same over the eager graph and over inductor's compiled code (which is
therefore compiled without its own CUDA graphs, see compilers/inductor.py).

A v3 step takes its positions as a tensor, so one graph serves every decode step. A v1/v2 step
takes them as ints, which shape its slices: each position gets its own graph, captured the first
time it is seen and replayed when it comes again (every benchmark iteration, the teacher-forced
comparison). All graphs of one step share a memory pool: they never run at the same time.

Only steps that write their caches in place can be captured (InPlaceCacheStep): a captured graph
reads and writes the addresses it saw, so the caches must be the same buffers at every call, which
__call__ checks.
"""

from __future__ import annotations

from typing import Callable

import torch


class CudaGraphStep:
    """step(inputs, position_ids, *caches, *positions) -> (logits,), replayed from CUDA graphs.

    `position_count` position inputs end the call: tensors are copied into the graph's buffers, ints
    are part of the key. The logits returned live in the graph's output buffer: read them before the
    next call.
    """

    def __init__(self, step: Callable, position_count: int = 1):
        self.step = step
        self.position_count = position_count
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor, list[int]]] = {}
        self.pool = None

    def __call__(self, inputs: torch.Tensor, position_ids: torch.Tensor, *caches_and_positions):
        caches = list(caches_and_positions[:-self.position_count])
        positions = caches_and_positions[-self.position_count:]
        baked = tuple(p for p in positions if not isinstance(p, torch.Tensor))
        key = (tuple(inputs.shape), tuple(position_ids.shape), tuple(caches[0].shape), baked)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, position_ids, caches, positions)
        graph, buffers, logits, cache_addresses = self.graphs[key]
        if [cache.data_ptr() for cache in caches] != cache_addresses:
            raise RuntimeError("a captured step was called with other cache buffers than it was captured with")
        self._load_inputs(buffers, (inputs, position_ids, *(p for p in positions if isinstance(p, torch.Tensor))))
        graph.replay()
        return (logits,)

    @staticmethod
    def _load_inputs(buffers: list[torch.Tensor], values: tuple[torch.Tensor, ...]) -> None:
        for buffer, value in zip(buffers, values):
            buffer.copy_(value)

    def _capture(self, inputs, position_ids, caches, positions):
        buffers = [inputs.clone(), position_ids.clone()]
        arguments = []  # the positions as the graph is called with them: tensors through buffers, ints as they are
        for position in positions:
            if isinstance(position, torch.Tensor):
                buffers.append(position.clone())
                position = buffers[-1]
            arguments.append(position)

        def run():
            return self.step(buffers[0], buffers[1], *caches, *arguments)[0]

        # Warm up on a side stream, as CUDA graph capture asks; this run writes the same K/V the replay will.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = run()
        return graph, buffers, logits, [cache.data_ptr() for cache in caches]
