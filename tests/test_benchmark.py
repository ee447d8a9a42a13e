"""benchmark.py's arithmetic on a synthetic timing sequence, checked against hand-computed figures."""

from __future__ import annotations

import pytest

import benchmark
from benchmark import Iteration, metrics, summarize, time_generation


def test_summarize_matches_hand_computed_statistics():
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    stats = summarize(values)
    assert stats["median"] == 30.0
    assert stats["mean"] == 40.0
    assert stats["p90"] == pytest.approx(76.0)   # rank 3.6: 40 + 0.6 * (100 - 40)
    assert stats["p99"] == pytest.approx(97.6)   # rank 3.96
    assert stats["std"] == pytest.approx(31.6227766, rel=1e-6)  # population std


def test_metrics_from_synthetic_iterations():
    # batch 2, 11 new tokens: 1 from prefill, 10 decode steps.
    iterations = [Iteration(ttft_s=0.050, total_s=0.150), Iteration(ttft_s=0.070, total_s=0.270),
                  Iteration(ttft_s=0.060, total_s=0.160)]
    result = metrics(iterations, batch_size=2, new_tokens=11)
    assert result["ttft_ms"]["median"] == pytest.approx(60.0)
    assert result["e2e_latency_ms"]["median"] == pytest.approx(160.0)
    # decode: 20 tokens in 0.100, 0.200, 0.100 s -> 200, 100, 200 tok/s
    assert result["decode_tokens_per_s"]["median"] == pytest.approx(200.0)
    assert result["decode_tokens_per_s"]["mean"] == pytest.approx(500 / 3)
    assert result["tpot_ms"]["median"] == pytest.approx(10.0)
    # end to end: 22 tokens in 0.150, 0.270, 0.160 s
    assert result["e2e_tokens_per_s"]["median"] == pytest.approx(22 / 0.160)


def test_time_generation_splits_at_the_first_token(monkeypatch):
    clock = iter([1.0, 1.25, 2.0])  # start, first token, end
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    iteration = time_generation(lambda on_first_token: on_first_token(), lambda: None)
    assert iteration == Iteration(ttft_s=0.25, total_s=1.0)
