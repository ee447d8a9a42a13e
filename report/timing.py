"""Timing for benchmark mode: warm-up, timed iterations, statistics, bandwidth.

Every timed region ends with a device sync, so GPU work is inside the figure. One iteration
records the time to the first token (prefill) and the end-to-end time; decode is the difference.
Beside the timings each backend reports its peak device memory, its compile time (build plus the
extra time of the first, warm-up run, where lazy compilers compile) and the memory bandwidth its
decode steps achieved, to be read against the device's measured copy bandwidth.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from load.presets import head_dim


def device_sync(device: str) -> Callable[[], None]:
    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


@dataclass
class Iteration:
    """One timed generation: seconds to the first token and to the last."""

    ttft_s: float
    total_s: float


def time_generation(run: Callable[[Callable[[], None]], object], sync: Callable[[], None]) -> Iteration:
    """Time `run(on_first_token)`; `run` calls on_first_token once the first token exists."""
    marks = {}

    def on_first_token():
        sync()
        marks["first"] = time.perf_counter()

    sync()
    start = time.perf_counter()
    run(on_first_token)
    sync()
    end = time.perf_counter()
    return Iteration(marks.get("first", end) - start, end - start)


def summarize(values: list[float]) -> dict[str, float]:
    """median, mean, p90, p99 and std of a list of figures."""
    ordered = sorted(values)

    def percentile(p: float) -> float:
        # Linear interpolation between closest ranks, as numpy's default does.
        rank = (len(ordered) - 1) * p / 100
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    return {
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "p90": percentile(90),
        "p99": percentile(99),
        "std": statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
    }


def metrics(iterations: list[Iteration], batch_size: int, new_tokens: int) -> dict[str, dict[str, float]]:
    """Per-iteration figures turned into the reported metrics, each summarized over the iterations."""
    ttft_ms = [it.ttft_s * 1e3 for it in iterations]
    e2e_ms = [it.total_s * 1e3 for it in iterations]
    decode_steps = new_tokens - 1
    decode_s = [max(it.total_s - it.ttft_s, 1e-12) for it in iterations]
    result = {
        "ttft_ms": summarize(ttft_ms),
        "e2e_latency_ms": summarize(e2e_ms),
        "e2e_tokens_per_s": summarize([batch_size * new_tokens / it.total_s for it in iterations]),
    }
    if decode_steps > 0:
        tpot_ms = summarize([s * 1e3 / decode_steps for s in decode_s])
        result["tpot_ms"] = tpot_ms
        # From the same statistics as TPOT, so the two columns always agree: the median step's rate,
        # and the mean rate over every timed decode step.
        result["decode_tokens_per_s"] = {stat: batch_size * 1e3 / tpot_ms[stat] for stat in ("median", "mean")}
    return result


@dataclass
class Measured:
    """What run_benchmark found: the figures to report, and the warm-up run's output for token checks."""

    figures: dict
    tokens: torch.Tensor


def run_benchmark(run: Callable[[Callable[[], None]], torch.Tensor], device: str, iterations: int,
                  batch_size: int, new_tokens: int, build_s: float = 0.0,
                  decode_bytes: float | None = None) -> Measured:
    """One warm-up run (which also compiles whatever compiles lazily), then `iterations` timed runs.

    `decode_bytes`: bytes a decode step must read (weights and KV cache), for the achieved bandwidth.
    """
    sync = device_sync(device)
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    tokens = run(lambda: None)
    sync()
    warmup_s = time.perf_counter() - start
    timed = [time_generation(run, sync) for _ in range(iterations)]
    figures = metrics(timed, batch_size, new_tokens)
    steady_s = figures["e2e_latency_ms"]["median"] / 1e3
    figures["compile_s"] = build_s + max(warmup_s - steady_s, 0.0)
    figures["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    if decode_bytes is not None and "tpot_ms" in figures:  # a GPU's figure: a CPU's is not memory-bound alone
        figures["decode_bandwidth_tb_s"] = achieved_bandwidth_tb_s(decode_bytes, figures["tpot_ms"]["median"]) \
            if cuda else None
    return Measured(figures, tokens)


def achieved_bandwidth_tb_s(bytes_per_step: float, step_ms: float) -> float:
    return bytes_per_step / (step_ms / 1e3) / 1e12


def stored_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor holds; a tensor subclass (torchao's quantized weights) holds them in its inner tensors."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def decode_bytes_per_step(model, batch_size: int, isl: int, new_tokens: int) -> float:
    """Bytes one decode step must read: the weights it multiplies by, and the K/V of the average context.

    The input embedding table is left out unless it is also the output projection (one row is read).
    """
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    weights = sum(stored_bytes(p) for p in model.parameters() if tied or p is not embedding)
    config = model.config.get_text_config()
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    average_context = isl + new_tokens / 2
    kv = 2 * config.num_hidden_layers * batch_size * kv_heads * head_dim(config) * average_context \
        * embedding.element_size()
    return weights + kv


def copy_bandwidth_tb_s(device: str, megabytes: int = 512, repeats: int = 10) -> float | None:
    """Measured device-to-device copy bandwidth, counting the bytes read and written (median of `repeats`);
    None on a CPU, where it would not bound a decode step.

    Each copy is timed with CUDA events: a host sync around a copy of a few tenths of a millisecond
    would add its own latency to the figure.
    """
    if not str(device).startswith("cuda"):
        return None
    src = torch.empty(megabytes * 2 ** 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / statistics.median(times) / 1e12


def token_agreement(reference: torch.Tensor, tokens: torch.Tensor, prompt_len: int) -> float:
    """Share of generated positions where two runs chose the same token."""
    new_ref, new = reference[:, prompt_len:].cpu(), tokens[:, prompt_len:].cpu()
    length = min(new_ref.shape[1], new.shape[1])
    if length == 0:
        return 0.0
    return float((new_ref[:, :length] == new[:, :length]).float().mean())
