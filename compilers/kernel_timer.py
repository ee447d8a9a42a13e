"""Kernels' time on the GPU, read from the profiler: for benchmarks/profile_step.py and for inductor's tuning.

Inductor's coordinate-descent tuner times each candidate configuration of a kernel with CUDA events
around its launch from Python. A small model's decode kernels run in a few microseconds, less than
their launch, so those events mostly time the launch and pick a configuration by chance
(the figures are in docs/decode_tuning.md).

`tuned_by_kernel_time(step)` runs the step's calls (inductor tunes a kernel at its first call) with
the tuner's timer replaced by `kernel_time_ms`: the candidate's kernels' own GPU time, as the
profiler records it, with the L2 cache flushed before every call (in a decode step the weights
arrive from memory, not from L2). Where that cannot be measured (a profiler already running, a
stream capturing, a CPU, a profile without the candidate's kernels), inductor's own timer is used.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import defaultdict
from typing import Callable, Iterator

import torch

REPS = 10  # timed calls per candidate


def gpu_work(run: Callable[[], object], runs: int) -> dict[str, list[float]]:
    """Kernels and copies on the GPU while `run` runs, by name: [calls, microseconds] per run."""
    with warnings.catch_warnings():  # the profiler's notes, at every use, are not the user's business
        warnings.simplefilter("ignore", UserWarning)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            run()
            torch.cuda.synchronize()
    work = defaultdict(lambda: [0.0, 0.0])
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            work[event.name][0] += 1 / runs
            work[event.name][1] += event.device_time / runs
    return work


def _l2_flush() -> torch.Tensor:
    """A buffer twice the L2 cache: zeroing it evicts what the call before read."""
    l2_bytes = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
    return torch.empty(2 * (l2_bytes or 64 << 20) // 4, dtype=torch.int32, device="cuda")


@functools.lru_cache(maxsize=None)
def _flush_kernels() -> frozenset[str]:
    """The names of the kernels that zero the flush buffer (left out of a call's time)."""
    return frozenset(gpu_work(_l2_flush().zero_, 1))


def kernel_time_ms(call: Callable[[], object], reps: int = REPS) -> float:
    """The GPU time of the kernels `call` launches, per call, in ms: launch and host time left out."""
    call()  # the first call loads the kernel
    flush, flush_kernels = _l2_flush(), _flush_kernels()

    def timed() -> None:
        for _ in range(reps):
            flush.zero_()
            call()

    work = gpu_work(timed, reps)
    return sum(us for name, (_, us) in work.items() if name not in flush_kernels) / 1e3


def _measurable(device) -> bool:
    on_gpu = device is None or torch.device(device).type == "cuda"
    return (on_gpu and torch.cuda.is_available() and not torch.autograd.profiler._is_profiler_enabled
            and not torch.cuda.is_current_stream_capturing())


class KernelTimeBenchmarker:
    """Stands in for inductor's benchmarker while a tuned step runs: GPU candidates get kernel_time_ms, the
    rest inductor's timer, as does a candidate whose kernels the profiler did not see (0 ms: a tie of zeros
    would decide nothing)."""

    def __init__(self, inductors: object):
        self.inductors = inductors

    def benchmark(self, fn: Callable, fn_args: tuple | None = None, fn_kwargs: dict | None = None,
                  device=None, **kwargs) -> float:
        ms = _measurable(device) and kernel_time_ms(functools.partial(fn, *(fn_args or ()), **(fn_kwargs or {})))
        return ms or self.inductors.benchmark(fn, fn_args, fn_kwargs, device=device, **kwargs)

    def benchmark_gpu(self, fn: Callable, *args, **kwargs) -> float:
        ms = _measurable(None) and kernel_time_ms(fn)
        return ms or self.inductors.benchmark_gpu(fn, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inductors, name)


@contextlib.contextmanager
def tuning_timed_by_kernels() -> Iterator[None]:
    """Inductor's tuner times candidates with KernelTimeBenchmarker inside this block."""
    from torch._inductor.runtime import triton_heuristics

    inductors = getattr(triton_heuristics, "benchmarker", None)
    if inductors is None or isinstance(inductors, KernelTimeBenchmarker):  # another torch, or already inside
        yield
        return
    triton_heuristics.benchmarker = KernelTimeBenchmarker(inductors)
    try:
        yield
    finally:
        triton_heuristics.benchmarker = inductors


def tuned_by_kernel_time(step: Callable) -> Callable:
    """`step`, whose kernels are tuned by their GPU time when they first run (see the module docstring)."""

    def run(*args):
        with tuning_timed_by_kernels():
            return step(*args)

    return run
