"""The hf_compiled_step baseline (HF forward + StaticCache, decode step compiled) against the model's own generate."""

from __future__ import annotations

import pytest
import torch

from conftest import eos_stop, prompt_ids, tiny_model
from generation.baselines import HFCompiledStep, hf_generate
from generation.loops import Prompt, generate_static_cache

PROMPT_LEN, NEW_TOKENS = 10, 14


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_compiled_step_matches_generate(family):
    """Two generations over one HFCompiledStep (compiled once, cache reset in between), FP32 on the CPU."""
    model = tiny_model(family)
    ids = prompt_ids(model, 2, PROMPT_LEN)
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    step = HFCompiledStep(model, PROMPT_LEN + NEW_TOKENS)
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(generate_static_cache(step, Prompt.text(ids), NEW_TOKENS, eos_stop(model)), expected)


def test_a_step_without_the_cache_is_caught():
    """The comparison can fail: decode steps that do not see the static cache (the prompt) give other tokens."""
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    expected = hf_generate(model, ids, NEW_TOKENS, eos_stop(model))
    step = HFCompiledStep(model, PROMPT_LEN + NEW_TOKENS)
    step.decode_step = lambda past_key_values, **inputs: model(past_key_values=None, **inputs)  # eager, no cache
    with torch.no_grad():
        assert not torch.equal(generate_static_cache(step, Prompt.text(ids), NEW_TOKENS, eos_stop(model)), expected)


def _graphs_compiled(step: HFCompiledStep, model, ids) -> int:
    """Graphs TorchDynamo compiles over two generations through one HFCompiledStep."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        with torch.no_grad():
            generate_static_cache(step, Prompt.text(ids), NEW_TOKENS, eos_stop(model))
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_the_decode_step_compiles_once():
    """A baseline that recompiled at every position would be slow for a reason of ours, not Hugging Face's."""
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    assert _graphs_compiled(HFCompiledStep(model, PROMPT_LEN + NEW_TOKENS), model, ids) == 1


@pytest.mark.slow
def test_a_step_that_recompiles_is_caught():
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    step = HFCompiledStep(model, PROMPT_LEN + NEW_TOKENS)
    compiled = step.decode_step
    # a Python int that changes from step to step: each new value is a guard failure
    step.decode_step = lambda logits_to_keep, **inputs: compiled(**inputs, logits_to_keep=int(inputs["position_ids"]))
    assert _graphs_compiled(step, model, ids) > 1
