"""Timing for benchmark mode: warm-up, timed iterations, statistics, a table and JSON.

Every timed region ends with a device sync, so GPU work is inside the figure. One iteration
records the time to the first token (prefill) and the end-to-end time; decode is the difference.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


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
        result["decode_tokens_per_s"] = summarize([batch_size * decode_steps / s for s in decode_s])
        result["tpot_ms"] = summarize([s * 1e3 / decode_steps for s in decode_s])
    return result


def run_benchmark(run: Callable[[Callable[[], None]], object], sync: Callable[[], None], iterations: int,
                  batch_size: int, new_tokens: int) -> dict[str, dict[str, float]]:
    """One untimed warm-up, then `iterations` timed runs."""
    run(lambda: None)
    timed = [time_generation(run, sync) for _ in range(iterations)]
    return metrics(timed, batch_size, new_tokens)


COLUMNS = [("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"), ("tpot_ms", "TPOT ms"),
           ("e2e_latency_ms", "E2E ms"), ("e2e_tokens_per_s", "E2E tok/s")]


def format_table(setup, results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of medians, one row per backend, under a line that says what ran."""
    lines = [", ".join(f"{k}={v}" for k, v in asdict(setup).items()),
             "| backend | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for backend, figures in results.items():
        cells = [f"{figures[key]['median']:.2f}" if key in figures else "-" for key, _ in COLUMNS]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, setup, results: dict, extra: dict | None = None) -> None:
    with open(path, "w") as f:
        json.dump({"setup": asdict(setup), "results": results, **(extra or {})}, f, indent=2)
