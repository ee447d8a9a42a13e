"""report/timing.py's arithmetic on a synthetic timing sequence, checked against hand-computed figures."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from report import timing
from report.timing import (
    Iteration,
    achieved_bandwidth_tb_s,
    decode_bytes_per_step,
    metrics,
    run_benchmark,
    summarize,
    time_generation,
    token_agreement,
)


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
    # decode: 20 tokens in 0.100, 0.200, 0.100 s -> TPOT 10, 20, 10 ms; batch / TPOT
    assert result["tpot_ms"]["median"] == pytest.approx(10.0)
    assert result["decode_tokens_per_s"]["median"] == pytest.approx(200.0)
    assert result["decode_tokens_per_s"]["mean"] == pytest.approx(60 / 0.400)  # every timed step: 60 tokens in 0.4 s
    # end to end: 22 tokens in 0.150, 0.270, 0.160 s
    assert result["e2e_tokens_per_s"]["median"] == pytest.approx(22 / 0.160)


def test_decode_rate_and_tpot_agree_over_an_even_number_of_iterations():
    """A median of two rates is not the rate of the median of two times; both columns come from TPOT."""
    iterations = [Iteration(ttft_s=0.010, total_s=0.110), Iteration(ttft_s=0.010, total_s=0.410)]
    result = metrics(iterations, batch_size=4, new_tokens=11)
    assert result["tpot_ms"]["median"] == pytest.approx(25.0)  # 10 and 40 ms
    assert result["decode_tokens_per_s"]["median"] * result["tpot_ms"]["median"] == pytest.approx(4 * 1e3)


def test_time_generation_splits_at_the_first_token(monkeypatch):
    clock = iter([1.0, 1.25, 2.0])  # start, first token, end
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    iteration = time_generation(lambda on_first_token: on_first_token(), lambda: None)
    assert iteration == Iteration(ttft_s=0.25, total_s=1.0)


def test_compile_time_and_bandwidth_from_a_synthetic_run(monkeypatch):
    # warm-up 5 s, then three runs of 1 s (first token after 0.2 s); 10 new tokens
    clock = iter([0.0, 5.0] + [t for start in (10.0, 20.0, 30.0) for t in (start, start + 0.2, start + 1.0)])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))

    def run(on_first_token):
        on_first_token()
        return torch.zeros(1, 3)

    measured = run_benchmark(run, "cpu", iterations=3, batch_size=1, new_tokens=10, build_s=2.0, decode_bytes=4e9)
    figures = measured.figures
    assert figures["compile_s"] == pytest.approx(2.0 + 5.0 - 1.0)  # build + the warm-up's extra time
    assert figures["tpot_ms"]["median"] == pytest.approx(800 / 9)
    assert figures["decode_bandwidth_tb_s"] is None and figures["peak_memory_gb"] is None  # GPU figures, on a CPU
    assert achieved_bandwidth_tb_s(4e9, 800 / 9) == pytest.approx(4e9 / (0.8 / 9) / 1e12)


def test_token_agreement_counts_new_tokens_only():
    reference = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 7, 8, 9, 9]])
    tokens = torch.tensor([[1, 2, 3, 4, 0, 6], [0, 0, 7, 0, 9, 0]])
    assert token_agreement(reference, tokens, prompt_len=2) == pytest.approx(5 / 8)


def test_decode_bytes_are_weights_and_average_kv():
    model = tiny_model("tiny-llama")
    config = model.config
    # untied: the embedding table is not read in decode
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name) * 4
    kv = 2 * config.num_hidden_layers * 3 * config.num_key_value_heads * config.head_dim * (20 + 4 / 2) * 4
    assert decode_bytes_per_step(model, batch_size=3, isl=20, new_tokens=4) == pytest.approx(weights + kv)
