"""static_cache_v1 / v2 / v3: the lowered graph against the Hugging Face model's own generate."""

from __future__ import annotations

import pytest
import torch

import options
import static_cache_common
from compilers.in_place_step import InPlaceCacheStep
from conftest import DEVICES, FAMILIES, eager_cached, eos_stop, lowered_graph, prompt_ids, tiny_model
from export import export_llm
from generation.baselines import hf_generate
from generation.loops import CachedModel, Prompt, StopRule, generate_no_cache, generate_static_cache, positions
from options import CompileOptions, ModelOptions
from register_sdpa import register_sdpa
from utils import cached_model, compile_lowered

STATIC_CACHES = list(options.CACHES)  # every --cache choice, so a new pass is tested here by registering it
CACHES = ["", *STATIC_CACHES]
PROMPT_LEN, NEW_TOKENS = 10, 14  # tiny-gemma3's window is 8: generation runs past it


def _lowered_tokens(model, gm, ids, cache, new_tokens=NEW_TOKENS):
    max_seq_len = ids.shape[1] + new_tokens
    with torch.no_grad():
        if not cache:
            return generate_no_cache(gm, Prompt.text(ids), new_tokens, eos_stop(model))
        cached = eager_cached(gm, ids.shape[0], max_seq_len, model.dtype, ids.device)
        return generate_static_cache(cached, Prompt.text(ids), new_tokens, eos_stop(model))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_match_hugging_face(family, cache, batch_size, device):
    model = tiny_model(family, device)
    ids = prompt_ids(model, batch_size, PROMPT_LEN)
    gm = lowered_graph(model, batch_size, PROMPT_LEN + NEW_TOKENS, cache)
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    assert torch.equal(_lowered_tokens(model, gm, ids, cache), expected)


@pytest.mark.parametrize("cache", STATIC_CACHES)
def test_gemma3_past_sliding_window(cache):
    """A short prompt and a long generation: most decode steps see more keys than the window."""
    model = tiny_model("tiny-gemma3")
    assert model.config.sliding_window == 8
    ids = prompt_ids(model, 2, 3, seed=5)
    gm = lowered_graph(model, 2, 3 + 30, cache)
    expected = hf_generate(model, ids, 30, eos_stop(model))
    assert expected.shape[1] > 3 + model.config.sliding_window
    assert torch.equal(_lowered_tokens(model, gm, ids, cache, 30), expected)


@pytest.mark.parametrize("cache", STATIC_CACHES)
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_one_prefill(family, cache):
    model = tiny_model(family)
    ids = prompt_ids(model, 2, 13, seed=3)
    gm = lowered_graph(model, 2, 20, cache)
    whole, chunked = eager_cached(gm, 2, 20, model.dtype), eager_cached(gm, 2, 20, model.dtype)
    with torch.no_grad():
        whole_logits = whole(ids, positions(0, 13, 2, "cpu"), 0)
        chunked(ids[:, :8], positions(0, 8, 2, "cpu"), 0)
        second = chunked(ids[:, 8:], positions(8, 13, 2, "cpu"), 8)
    assert second.shape[1] == 1  # logits of the last position only
    torch.testing.assert_close(second, whole_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(chunked.caches, whole.caches):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", STATIC_CACHES)
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_inputs_are_hkv_wide(family, cache):
    model = tiny_model(family)
    config = model.config
    gm = lowered_graph(model, 3, 40, cache)
    inputs = static_cache_common.cache_inputs(gm)
    assert len(inputs) == 2 * config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    slots = 40 + (static_cache_common.TAIL_SLOT if cache != "static_v3" else 0)  # v1/v2: one spare slot
    for node in inputs:
        assert tuple(node.meta["val"].shape) == (3, kv_heads, slots, head_dim)
    if family != "tiny-gpt2":
        assert kv_heads < config.num_attention_heads  # GQA: the caches are narrower than the query heads


def test_a_cache_that_forgets_the_past_is_caught():
    """The token comparison can fail: attending only to the new K/V (no cache prefix) gives other tokens."""
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = register_sdpa(export_llm(model, 1, PROMPT_LEN + NEW_TOKENS))

    def forgetful(graph, new, cache, start, end):
        return new, static_cache_common.cat_seq(graph, [static_cache_common.slice_seq(graph, cache, 0, start), new,
                                                        static_cache_common.to_end(graph, cache, end)])

    gm = static_cache_common.add_static_cache(gm, PROMPT_LEN + NEW_TOKENS, forgetful, "forgetful")
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    assert not torch.equal(_lowered_tokens(model, gm, ids, "forgetful"), expected)


def test_v3_without_query_positions_is_caught():
    """The comparison can fail for v3 too: attention that ignores cache_position sees the empty cache slots."""
    import static_cache_v3

    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = register_sdpa(export_llm(model, 1, PROMPT_LEN + NEW_TOKENS))
    gm = static_cache_common.add_static_cache(gm, PROMPT_LEN + NEW_TOKENS, static_cache_v3._write_at_positions,
                                              "unpositioned", position_inputs=(static_cache_v3.POSITION_INPUT,))
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    assert not torch.equal(_lowered_tokens(model, gm, ids, "unpositioned"), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_v3_prefill_on_the_cache_prefix_equals_prefill_on_the_whole_cache(family):
    """A prompt's prefill sees the caches' first L slots (plain causal attention) or all of them (a TensorRT
    engine's fixed shape, attention under the position mask): the same logits and K/V either way."""
    model = tiny_model(family)
    ids = prompt_ids(model, 2, 13, seed=4)
    gm = lowered_graph(model, 2, 20, "static_v3")
    prefix, whole = eager_cached(gm, 2, 20, model.dtype), eager_cached(gm, 2, 20, model.dtype, fixed_cache_shape=True)
    with torch.no_grad():
        for cache in whole.caches:
            cache.normal_()  # what a longer earlier generation may have left: must stay unseen
        on_prefix = prefix(ids, positions(0, 13, 2, "cpu"), 0)
        on_whole = whole(ids, positions(0, 13, 2, "cpu"), 0)
    torch.testing.assert_close(on_prefix, on_whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(prefix.caches, whole.caches):
        torch.testing.assert_close(a[:, :, :13], b[:, :, :13], atol=1e-5, rtol=1e-5)


def _product_cached(gm, cache: str, batch_size: int, max_seq_len: int, device: str, cudagraph: bool):
    """The lowered graph compiled and wrapped as run_llm.py --compiler eager does it (utils.py)."""
    compile_options, model_options = CompileOptions("eager", cache, cudagraph), ModelOptions("", "FP32", device)
    step = compile_lowered(gm, compile_options, model_options, max_seq_len)
    return cached_model(step, gm, compile_options, model_options, batch_size, max_seq_len)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("cache", STATIC_CACHES)
@pytest.mark.parametrize("family", FAMILIES)
def test_captured_steps_match_hugging_face(family, cache, batch_size):
    """Every step replayed from CUDA graphs, twice over one CachedModel as a benchmark runs it: static_v3 from
    one graph for the prefill and one for every decode step, static_v1/v2 from one graph per position."""
    model = tiny_model(family, "cuda")
    ids = prompt_ids(model, batch_size, PROMPT_LEN)
    gm = lowered_graph(model, batch_size, PROMPT_LEN + NEW_TOKENS, cache)
    cached = _product_cached(gm, cache, batch_size, PROMPT_LEN + NEW_TOKENS, "cuda", cudagraph=True)
    stop = StopRule([], 0, stop_on_eos=False)  # every row runs the full length: every position is captured
    expected = hf_generate(model, ids, NEW_TOKENS, stop)
    for _ in range(2):
        with torch.no_grad():
            tokens = generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, stop)
        assert torch.equal(tokens, expected)
    assert len(cached.model.graphs) == (2 if cache == "static_v3" else NEW_TOKENS)


@pytest.mark.parametrize("cache", ["static_v1", "static_v2"])
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_v1_v2_steps_writing_their_caches_in_place_match_hugging_face(family, cache):
    """The form a captured v1/v2 step takes (its caches written back into the same buffers), off the GPU."""
    model = tiny_model(family)
    ids = prompt_ids(model, 2, PROMPT_LEN)
    gm = lowered_graph(model, 2, PROMPT_LEN + NEW_TOKENS, cache)
    cached = CachedModel(InPlaceCacheStep(gm, position_count=2), gm, 2, PROMPT_LEN + NEW_TOKENS, model.dtype, "cpu",
                         in_place=True)
    addresses = [c.data_ptr() for c in cached.caches]
    with torch.no_grad():
        tokens = generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, eos_stop(model))
    assert torch.equal(tokens, hf_generate(model, ids, NEW_TOKENS, eos_stop(model)))
    assert [c.data_ptr() for c in cached.caches] == addresses


def test_a_v2_step_that_does_not_write_its_caches_back_is_caught(monkeypatch):
    """The comparison above can fail: the returned caches dropped, every step sees an empty past."""
    monkeypatch.setattr(InPlaceCacheStep, "forward",
                        lambda self, ids, pos, *rest: (self.model(ids, pos, *rest)[0],))
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 2, PROMPT_LEN)
    gm = lowered_graph(model, 2, PROMPT_LEN + NEW_TOKENS, "static_v2")
    cached = CachedModel(InPlaceCacheStep(gm, position_count=2), gm, 2, PROMPT_LEN + NEW_TOKENS, model.dtype, "cpu",
                         in_place=True)
    with torch.no_grad():
        tokens = generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, eos_stop(model))
    assert not torch.equal(tokens, hf_generate(model, ids, NEW_TOKENS, eos_stop(model)))


def test_a_step_that_returns_its_caches_cannot_be_captured():
    model = tiny_model("tiny-llama")
    gm = lowered_graph(model, 1, 12, "static_v1")
    with pytest.raises(ValueError, match="in place"):
        CachedModel(gm, gm, 1, 12, model.dtype, "cpu", cuda_graphs=True)


@pytest.mark.gpu
def test_a_replay_on_stale_inputs_is_caught(monkeypatch):
    """The comparison above can fail: replaying without copying in the new token repeats the first step's input."""
    from compilers.cuda_graph_step import CudaGraphStep

    monkeypatch.setattr(CudaGraphStep, "_load_inputs", staticmethod(lambda buffers, values: None))
    model = tiny_model("tiny-llama", "cuda")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    gm = lowered_graph(model, 1, PROMPT_LEN + NEW_TOKENS, "static_v3")
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    assert len(set(expected[0, PROMPT_LEN:].tolist())) > 2  # a repeated token would hide the fault
    cached = eager_cached(gm, 1, PROMPT_LEN + NEW_TOKENS, model.dtype, "cuda", cuda_graphs=True)
    with torch.no_grad():
        assert not torch.equal(generate_static_cache(cached, Prompt.text(ids), NEW_TOKENS, eos_stop(model)), expected)
