"""kernel_timer.py: which timer inductor's tuner gets, and, on a GPU, that the kernel time leaves the launch out,
that inductor's tuner runs with it, and that a step tuned with it still gives Hugging Face's tokens."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._inductor.runtime import triton_heuristics

from compilers import kernel_timer
from compilers.decode_tuning import DecodeTuning
from conftest import tuned_step_code


class RecordingBenchmarker:
    """Inductor's benchmarker as the stand-in sees it: records what was handed back to it."""

    def __init__(self):
        self.calls = []

    def benchmark(self, fn, fn_args=None, fn_kwargs=None, device=None, **kwargs):
        self.calls.append(("benchmark", device))
        return 1.0

    def benchmark_gpu(self, fn, *args, **kwargs):
        self.calls.append(("benchmark_gpu", None))
        return 1.0

    def benchmark_cpu(self, fn, *args, **kwargs):
        self.calls.append(("benchmark_cpu", None))
        return 1.0


@pytest.fixture
def idle_gpu(monkeypatch):
    """What the stand-in checks before timing a candidate, as on a GPU with no capture running."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def test_the_stand_in_is_in_place_only_inside_the_block():
    inductors = triton_heuristics.benchmarker
    with kernel_timer.tuning_timed_by_kernels():
        stand_in = triton_heuristics.benchmarker
        assert isinstance(stand_in, kernel_timer.KernelTimeBenchmarker) and stand_in.inductors is inductors
        with kernel_timer.tuning_timed_by_kernels():  # nested: the same stand-in, not one wrapping another
            assert triton_heuristics.benchmarker is stand_in
        assert triton_heuristics.benchmarker is stand_in
    assert triton_heuristics.benchmarker is inductors
    with pytest.raises(ValueError):
        with kernel_timer.tuning_timed_by_kernels():
            raise ValueError("a failed call")
    assert triton_heuristics.benchmarker is inductors


def test_a_wrapped_step_runs_inside_the_block():
    seen = []
    step = kernel_timer.tuned_by_kernel_time(lambda x: seen.append(type(triton_heuristics.benchmarker)) or x + 1)
    assert step(1) == 2
    assert seen == [kernel_timer.KernelTimeBenchmarker]


def test_gpu_candidates_get_the_kernel_time_and_the_rest_inductors_timer(idle_gpu, monkeypatch):
    measured = []
    monkeypatch.setattr(kernel_timer, "kernel_time_ms", lambda call: measured.append(call) or 0.5)
    inductors = RecordingBenchmarker()
    stand_in = kernel_timer.KernelTimeBenchmarker(inductors)

    assert stand_in.benchmark(lambda: None, device="cuda") == 0.5
    assert stand_in.benchmark_gpu(lambda: None, rep=40) == 0.5
    assert len(measured) == 2 and inductors.calls == []

    assert stand_in.benchmark(lambda: None, device="cpu") == 1.0  # a CPU candidate
    assert stand_in.benchmark_cpu(lambda: None) == 1.0  # what the stand-in does not define
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):  # one profiler at a time
        assert stand_in.benchmark(lambda: None, device="cuda") == 1.0
        assert stand_in.benchmark_gpu(lambda: None) == 1.0
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # no sync inside a capture
    assert stand_in.benchmark_gpu(lambda: None) == 1.0
    assert len(measured) == 2
    assert inductors.calls == [("benchmark", "cpu"), ("benchmark_cpu", None), ("benchmark", "cuda"),
                               ("benchmark_gpu", None), ("benchmark_gpu", None)]


def test_a_candidate_the_profiler_did_not_see_gets_inductors_timer(idle_gpu, monkeypatch):
    monkeypatch.setattr(kernel_timer, "kernel_time_ms", lambda call: 0.0)
    inductors = RecordingBenchmarker()
    stand_in = kernel_timer.KernelTimeBenchmarker(inductors)
    assert stand_in.benchmark(lambda: None, device="cuda") == 1.0
    assert stand_in.benchmark_gpu(lambda: None) == 1.0
    assert inductors.calls == [("benchmark", "cuda"), ("benchmark_gpu", None)]


def test_a_candidates_arguments_reach_it(idle_gpu, monkeypatch):
    monkeypatch.setattr(kernel_timer, "kernel_time_ms", lambda call: call())
    stand_in = kernel_timer.KernelTimeBenchmarker(RecordingBenchmarker())
    assert stand_in.benchmark(lambda a, b=0: a * 10 + b, (3,), {"b": 4}, device="cuda") == 34


class WarningProfiler:
    """A profiler that notes something, as torch's does when it starts, and sees no work."""

    def __init__(self, **kwargs):
        pass

    def __enter__(self):
        warnings.warn("Profiler clears events at the end of each cycle.", UserWarning)
        return self

    def __exit__(self, *exception) -> None:
        pass

    def events(self) -> list:
        return []


def test_the_profilers_notes_do_not_reach_the_user(monkeypatch):
    monkeypatch.setattr(torch.profiler, "profile", WarningProfiler)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert kernel_timer.gpu_work(lambda: None, 1) == {}
    assert shown == []


@pytest.mark.gpu
def test_the_kernel_time_leaves_the_launch_out():
    # a copy of 4x the bytes takes about 4x the time on the GPU; timed with the launch (tens of us for these
    # few-us copies), the ratio would be near 1
    small, large = (torch.empty(n, dtype=torch.float16, device="cuda") for n in (1 << 21, 1 << 23))
    small_ms = kernel_timer.kernel_time_ms(lambda: small.add_(1))
    large_ms = kernel_timer.kernel_time_ms(lambda: large.add_(1))
    assert 0 < small_ms < large_ms
    assert 2.5 < large_ms / small_ms < 6


@pytest.mark.gpu
def test_inductors_tuner_runs_with_the_kernel_time(monkeypatch):
    measured = []
    timer = kernel_timer.kernel_time_ms
    monkeypatch.setattr(kernel_timer, "kernel_time_ms", lambda call: measured.append(timer(call)) or measured[-1])
    x, w = torch.randn(1, 1237, device="cuda"), torch.randn(2311, 1237, device="cuda")  # sizes of its own
    product = torch.compile(lambda x, w: (x * w).sum(-1), options={"coordinate_descent_tuning": True})
    # tune now, not from a cache (config.patch restores it; monkeypatch would delete the option on undo)
    with kernel_timer.tuning_timed_by_kernels(), torch._inductor.config.patch(force_disable_caches=True):
        out = product(x, w)
    torch.testing.assert_close(out, w @ x[0], rtol=1e-4, atol=1e-3)
    assert len(measured) > 1 and all(0 < ms < 1 for ms in measured)


@pytest.mark.gpu
def test_a_step_tuned_by_kernel_time_matches_hugging_face():
    with torch._inductor.config.patch(force_disable_caches=True):
        tuned_step_code("tiny-qwen2", DecodeTuning(tune_by_kernel_time=True))  # Hugging Face's tokens
