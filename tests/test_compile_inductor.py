"""compile_inductor's written-out decode attention against the canonical node's reference implementation."""

from __future__ import annotations

import pytest
import torch

import compile_inductor
from register_sdpa import attention_reference


def _inputs(q_heads, kv_heads, q_len, kv_len, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, q_heads, q_len, 16, generator=generator)
    k, v = (torch.randn(2, kv_heads, kv_len, 16, generator=generator) for _ in range(2))
    return q, k, v


CASES = {
    "decode at position 9 of a 40-slot cache, GQA 4:1": dict(heads=(8, 2), q_len=1, kv_len=40, positions=[9]),
    "three queries mid-cache": dict(heads=(4, 4), q_len=3, kv_len=40, positions=[20, 21, 22]),
    "decode with a window of 5": dict(heads=(6, 2), q_len=1, kv_len=40, positions=[30], window=5),
    "bottom-right, no positions": dict(heads=(8, 2), q_len=2, kv_len=12, positions=None),
    "not causal": dict(heads=(8, 2), q_len=1, kv_len=12, positions=None, causal=False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_written_out_attention_equals_the_reference(case):
    q, k, v = _inputs(*case["heads"], case["q_len"], case["kv_len"])
    positions = torch.tensor(case["positions"]) if case["positions"] is not None else None
    args = (q, k, v, 0.3, case.get("causal", True), case.get("window"), positions)
    torch.testing.assert_close(compile_inductor.attention_for_inductor(*args), attention_reference(*args),
                               atol=1e-5, rtol=1e-5)


def test_a_query_one_position_late_is_caught():
    q, k, v = _inputs(8, 2, 1, 40)
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([9]))
    late = compile_inductor.attention_for_inductor(q, k, v, 0.3, True, None, torch.tensor([10]))
    assert not torch.allclose(late, expected, atol=1e-3)


def test_prefill_and_long_caches_keep_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(compile_inductor, "attention_reference", lambda *args: calls.append(args[0].shape))
    for q_len, kv_len in [(compile_inductor.DECODE_ROWS + 1, 64), (1, compile_inductor.DECODE_KEYS + 1)]:
        compile_inductor.attention_for_inductor(*_inputs(4, 4, q_len, kv_len), 0.3, True, None,
                                                torch.arange(kv_len - q_len, kv_len))
    assert len(calls) == 2
