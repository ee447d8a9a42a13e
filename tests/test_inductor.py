"""compilers/inductor.py's written-out decode attention and one-row products against independent references."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from compilers import inductor
from compilers.decode_tuning import DecodeTuning
from conftest import FAMILIES, eager_cached, lowered_graph, prompt_ids, tiny_model, tuned_step_code
from generation.baselines import hf_generate
from generation.loops import CachedModel, Prompt, StopRule, generate_static_cache
from register_sdpa import attention_reference

PROMPT_LEN, NEW_TOKENS = 10, 14


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
    torch.testing.assert_close(inductor.attention_as_sums(*args), attention_reference(*args),
                               atol=1e-5, rtol=1e-5)


def test_a_query_one_position_late_is_caught():
    q, k, v = _inputs(8, 2, 1, 40)
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([9]))
    late = inductor.attention_as_sums(q, k, v, 0.3, True, None, torch.tensor([10]))
    assert not torch.allclose(late, expected, atol=1e-3)


def test_prefill_and_long_caches_off_the_gpu_keep_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(inductor, "attention_reference", lambda *args: calls.append(args[0].shape))
    tuning = DecodeTuning()
    for q_len, kv_len in [(tuning.decode_rows + 1, 64), (1, tuning.decode_keys + 1)]:
        inductor.attention_for_inductor(tuning)(*_inputs(4, 4, q_len, kv_len), 0.3, True, None,
                                                        torch.arange(kv_len - q_len, kv_len))
    assert len(calls) == 2


# --------------------------------------------------------------------------- one-row products


def _product_inputs(rows, inner, outer, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, inner, generator=generator)
    weight = torch.randn(outer, inner, generator=generator)  # as nn.Linear keeps it: [N, K]
    return x, weight, torch.randn(outer, generator=generator)


@pytest.mark.parametrize("with_bias", [False, True])
def test_product_as_sums_equals_a_float64_matmul(with_bias):
    x, weight, bias = _product_inputs(1, 96, 40)
    expected = x.double() @ weight.double().t() + (bias.double() if with_bias else 0)
    out = inductor.product_as_sums(x, weight.t(), bias if with_bias else None)
    torch.testing.assert_close(out, expected.float(), atol=1e-4, rtol=1e-4)
    half = inductor.product_as_sums(x.half(), weight.t().half(), bias.half() if with_bias else None)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expected.float(), atol=0.05, rtol=0.01)


def test_a_product_with_the_weight_the_wrong_way_round_is_caught():
    x, weight, _ = _product_inputs(1, 64, 64)
    expected = x @ weight.t()
    assert not torch.allclose(inductor.product_as_sums(x, weight), expected, atol=1e-3)


def _one_row_logits(family, monkeypatch, store_inputs=False):
    """The logits of every step of a greedy generation by the static_v3 graph with its one-row products
    written out (run eagerly on the CPU), and the Hugging Face model's logits over the same tokens."""
    monkeypatch.setattr(inductor, "_one_row_on_gpu", lambda x: x.shape[0] == 1)
    calls = []
    product_as_sums = inductor.product_as_sums
    monkeypatch.setattr(inductor, "product_as_sums", lambda *args: calls.append(1) or product_as_sums(*args))
    model = copy.deepcopy(tiny_model(family))  # its biases change below: not the shared one
    with torch.no_grad():
        for name, bias in model.named_parameters():
            if name.endswith(".bias"):  # initialised to zeros: give them a part to play
                bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = lowered_graph(model, 1, PROMPT_LEN + NEW_TOKENS, "static_v3")
    gm = inductor.write_out_one_row_products(gm, store_inputs)
    cached = eager_cached(gm, 1, PROMPT_LEN + NEW_TOKENS, model.dtype)
    logits = []

    def recorded(*args):
        logits.append(cached(*args)[:, -1])
        return logits[-1][:, None]

    with torch.no_grad():
        tokens = generate_static_cache(recorded, Prompt.text(ids), NEW_TOKENS, StopRule([], 0, False))
        expected = model(tokens[:, :-1]).logits[:, PROMPT_LEN - 1:]  # [1, NEW_TOKENS, V]
    written_out = (inductor.mm_for_inductor, inductor.addmm_for_inductor)
    products = sum(node.target in written_out for node in gm.graph.nodes)
    assert products and len(calls) >= (NEW_TOKENS - 1) * products  # every product of every decode step
    return torch.stack(logits, dim=1), expected


@pytest.mark.parametrize("family", FAMILIES)
def test_written_out_one_row_products_match_hugging_face(family, monkeypatch):
    logits, expected = _one_row_logits(family, monkeypatch)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_written_out_products_reading_stored_inputs_match_hugging_face(monkeypatch):
    stored = []
    stored_if = inductor._stored_if
    monkeypatch.setattr(inductor, "_stored_if", lambda x, store: stored.append(store) or stored_if(x, store))
    logits, expected = _one_row_logits("tiny-llama", monkeypatch, store_inputs=True)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert stored and all(stored)


def _compiled_product_of_a_pointwise(store: bool) -> tuple[torch.Tensor, int, torch.Tensor]:
    """A one-row product of g * u + g by a [64, 512] weight, compiled by inductor on the CPU: its output, the
    number of IR nodes inductor made for it, and the float64 reference."""
    from torch._inductor import metrics

    generator = torch.Generator().manual_seed(3)
    g, u, weight = torch.randn(1, 512, generator=generator), torch.randn(1, 512, generator=generator), \
        torch.randn(64, 512, generator=generator)
    torch._dynamo.reset()
    metrics.reset()
    product = torch.compile(lambda g, u, w: inductor.product_as_sums(inductor._stored_if(g * u + g, store), w.t()))
    out = product(g, u, weight)
    return out, metrics.ir_nodes_pre_fusion, ((g * u + g).double() @ weight.double().t()).float()


def test_a_stored_product_input_is_computed_once_by_its_own_node():
    """Inductor inlines g * u + g into the product's reduction, which then computes it in every program; stored
    makes it a buffer of its own, computed once, with the same result."""
    inlined, inlined_nodes, expected = _compiled_product_of_a_pointwise(store=False)
    stored, stored_nodes, _ = _compiled_product_of_a_pointwise(store=True)
    torch.testing.assert_close(stored, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(inlined, expected, atol=1e-4, rtol=1e-4)
    assert (inlined_nodes, stored_nodes) == (1, 2)


def test_a_written_out_product_without_its_bias_is_caught(monkeypatch):
    product_as_sums = inductor.product_as_sums
    without_bias = lambda x, weight_t, bias=None: product_as_sums(x, weight_t)  # noqa: E731
    monkeypatch.setattr(inductor, "product_as_sums", without_bias)
    logits, expected = _one_row_logits("tiny-qwen2", monkeypatch)  # its q, k and v projections have biases
    assert not torch.allclose(logits, expected, atol=1e-2)


def test_small_decode_tuning_is_for_gpus_only():
    gm = lowered_graph(tiny_model("tiny-llama"), 1, 16, "static_v3")
    assert not inductor.tuned_for_small_decode(gm, DecodeTuning())


@pytest.mark.gpu
def test_small_decode_tuning_is_for_small_models_at_batch_1():
    model = tiny_model("tiny-llama", "cuda")
    assert inductor.tuned_for_small_decode(lowered_graph(model, 1, 16, "static_v3"), DecodeTuning())
    assert not inductor.tuned_for_small_decode(lowered_graph(model, 8, 16, "static_v3"), DecodeTuning())
    small = DecodeTuning(small_model_parameters=1000)  # tiny-llama has more
    assert not inductor.tuned_for_small_decode(lowered_graph(model, 1, 16, "static_v3"), small)


@pytest.mark.parametrize("cache", ["static_v1"])  # v1 writes its concatenation over the cache it reads
def test_a_v1_v2_step_compiled_for_capture_writes_its_caches_in_place(cache):
    """--compiler inductor --cudagraph compiles a v1/v2 step that writes its caches back (for CachedModel to
    capture one graph per position); compiled on the CPU, it generates Hugging Face's tokens into the same
    cache buffers."""
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = lowered_graph(model, 1, PROMPT_LEN + NEW_TOKENS, cache)
    step = inductor.compile_with_inductor(gm, cudagraph=True)
    cached = CachedModel(step, gm, 1, PROMPT_LEN + NEW_TOKENS, model.dtype, "cpu", in_place=True)
    addresses = [c.data_ptr() for c in cached.caches]
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad():
        tokens = generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, stop)
    assert torch.equal(tokens, hf_generate(model, ids, NEW_TOKENS, stop))
    assert [c.data_ptr() for c in cached.caches] == addresses
    assert any(c.abs().sum() > 0 for c in cached.caches)  # the K/V went into the caller's buffers


def _compiles_of_a_generation(cache: str) -> int:
    """How many graphs torch.compile made for one tiny-llama generation through --compiler inductor."""
    from torch._dynamo.utils import counters

    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = lowered_graph(model, 1, PROMPT_LEN + NEW_TOKENS, cache)
    cached = CachedModel(inductor.compile_with_inductor(gm), gm, 1, PROMPT_LEN + NEW_TOKENS, model.dtype, "cpu")
    torch._dynamo.reset()
    counters.clear()
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad():
        tokens = generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, stop)
    assert torch.equal(tokens, hf_generate(model, ids, NEW_TOKENS, stop))
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("cache", ["static_v1", "static_v2"])
def test_a_v1_v2_generation_compiles_its_step_twice(cache):
    """Once for the prefill (start_idx 0) and once for every decode step; the caches' spare slot keeps the
    last token's tail from being one row long, a size torch.compile would compile the step again for."""
    assert _compiles_of_a_generation(cache) == 2


def test_without_the_spare_slot_the_last_token_compiles_again(monkeypatch):
    import static_cache_v1

    monkeypatch.setattr(static_cache_v1, "TAIL_SLOT", 0)
    assert _compiles_of_a_generation("static_v1") == 3


def test_only_one_token_steps_go_to_the_tuned_compile():
    """The decode tuning is compiled for one-token steps only; a prefill or a chunk goes to the plain compile."""
    calls = []
    step = inductor.decode_tuned_only(lambda ids, *rest: calls.append("plain"),
                                      lambda ids, *rest: calls.append("tuned"))
    for length in (10, 1, 3, 1):
        step(torch.zeros(1, length, dtype=torch.long), "positions", "caches")
    assert calls == ["plain", "tuned", "plain", "tuned"]


def _reductions_computing_silu(codes) -> list[str]:
    names = re.findall(r"def (triton_(?:red|per)_fused_\w+)\(", "".join(codes))
    return [name for name in names if "silu" in name or "sigmoid" in name]


@pytest.mark.gpu
def test_the_tuned_step_with_stored_product_inputs_matches_hugging_face():
    """With stored inputs the down projection's reduction reads SiLU(gate) * up from memory; without, it
    recomputes it (the check that would miss a stored op that stores nothing)."""
    assert _reductions_computing_silu(tuned_step_code("tiny-llama", DecodeTuning())[1])
    assert not _reductions_computing_silu(tuned_step_code("tiny-llama", DecodeTuning(store_product_inputs=True))[1])


def test_the_tuned_steps_block_sizes_are_tuned_unless_the_setting_says_not():
    assert inductor.small_decode_options(DecodeTuning())["coordinate_descent_tuning"] is True
    assert inductor.small_decode_options(DecodeTuning(block_size_tuning=False))["coordinate_descent_tuning"] is False
