"""static_cache_v1 / v2: the lowered graph against the Hugging Face model's own generate."""

from __future__ import annotations

import pytest
import torch

import static_cache_common
from conftest import DEVICES, FAMILIES, lowered_graph, prompt_ids, tiny_model
from generate import (StopRule, allocate_caches, forward_with_cache, generate_no_cache, generate_static_cache,
                      hf_generate)
from register_sdpa import register_sdpa
from utils import export_llm

CACHES = ["", "static_v1", "static_v2"]
PROMPT_LEN, NEW_TOKENS = 10, 14  # tiny-gemma3's window is 8: generation runs past it


def _stop(model):
    eos = model.config.eos_token_id
    return StopRule(eos if isinstance(eos, list) else [eos], 258)


def _lowered_tokens(model, gm, ids, cache, new_tokens=NEW_TOKENS):
    max_seq_len = ids.shape[1] + new_tokens
    with torch.no_grad():
        if not cache:
            return generate_no_cache(gm, ids, new_tokens, _stop(model))
        caches = allocate_caches(gm, ids.shape[0], max_seq_len, model.dtype, ids.device)
        return generate_static_cache(gm, ids, new_tokens, _stop(model), caches)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_match_hugging_face(family, cache, batch_size, device):
    model = tiny_model(family, device)
    ids = prompt_ids(model, batch_size, PROMPT_LEN)
    gm = lowered_graph(model, batch_size, PROMPT_LEN + NEW_TOKENS, cache)
    expected = hf_generate(model, ids, NEW_TOKENS, _stop(model))
    assert torch.equal(_lowered_tokens(model, gm, ids, cache), expected)


@pytest.mark.parametrize("cache", ["static_v1", "static_v2"])
def test_gemma3_past_sliding_window(cache):
    """A short prompt and a long generation: most decode steps see more keys than the window."""
    model = tiny_model("tiny-gemma3")
    assert model.config.sliding_window == 8
    ids = prompt_ids(model, 2, 3, seed=5)
    gm = lowered_graph(model, 2, 3 + 30, cache)
    expected = hf_generate(model, ids, 30, _stop(model))
    assert expected.shape[1] > 3 + model.config.sliding_window
    assert torch.equal(_lowered_tokens(model, gm, ids, cache, 30), expected)


@pytest.mark.parametrize("cache", ["static_v1", "static_v2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_one_prefill(family, cache):
    model = tiny_model(family)
    ids = prompt_ids(model, 2, 13, seed=3)
    gm = lowered_graph(model, 2, 20, cache)
    with torch.no_grad():
        whole, whole_caches = forward_with_cache(gm, ids, allocate_caches(gm, 2, 20, model.dtype, "cpu"), 0)
        _, caches = forward_with_cache(gm, ids[:, :8], allocate_caches(gm, 2, 20, model.dtype, "cpu"), 0)
        second, chunk_caches = forward_with_cache(gm, ids[:, 8:], caches, 8)
    torch.testing.assert_close(second, whole[:, 8:], atol=1e-5, rtol=1e-5)
    for a, b in zip(chunk_caches, whole_caches):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", ["static_v1", "static_v2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_inputs_are_hkv_wide(family, cache):
    model = tiny_model(family)
    config = model.config
    gm = lowered_graph(model, 3, 40, cache)
    inputs = static_cache_common.cache_inputs(gm)
    assert len(inputs) == 2 * config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for node in inputs:
        assert tuple(node.meta["val"].shape) == (3, kv_heads, 40, head_dim)
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
    expected = hf_generate(model, ids, NEW_TOKENS, _stop(model))
    assert not torch.equal(_lowered_tokens(model, gm, ids, "forgetful"), expected)
