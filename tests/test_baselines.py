"""The hf_compiled_step baseline (HF forward + StaticCache, decode step compiled) against the model's own generate."""

from __future__ import annotations

import pytest
import torch

from conftest import eos_stop, prompt_ids, script_module, tiny_model
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


def _torchao_copy_and_logits(model, ids):
    pytest.importorskip("torchao")
    from generation.baselines import torchao_int8_weight_only

    quantized = torchao_int8_weight_only(model)
    with torch.no_grad():
        return quantized, model(ids).logits, quantized(ids).logits


def test_torchao_copy_stores_int8_weights_and_stays_close():
    """torchao's int8 weight-only copy: the model's logits within int8 rounding, the original untouched, lm_head
    kept, and one byte a weight counted as stored (report.timing.stored_bytes) against an independent count."""
    from report.timing import stored_bytes

    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    quantized, expected, logits = _torchao_copy_and_logits(model, ids)
    error = ((logits - expected).norm() / expected.norm()).item()
    assert 0 < error < 2e-2
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # the reference stays as it was
    assert type(quantized.lm_head.weight) is torch.nn.Parameter
    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    # int8 weights, plus per output channel a float32 scale and an int8 zero point
    expected_bytes = sum(m.weight.numel() + m.weight.shape[0] * 5 for m in linears)
    quantized_linears = [m for name, m in quantized.named_modules()
                         if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    assert sum(stored_bytes(m.weight) for m in quantized_linears) == expected_bytes


def test_a_torchao_copy_with_a_wrong_scale_is_caught():
    """The closeness bound can fail: one layer's doubled scales put the logits far off."""
    model = tiny_model("tiny-llama")
    ids = prompt_ids(model, 1, PROMPT_LEN)
    quantized, expected, _ = _torchao_copy_and_logits(model, ids)
    weight = quantized.model.layers[0].mlp.down_proj.weight
    weight.scale.mul_(2)
    with torch.no_grad():
        logits = quantized(ids).logits
    assert ((logits - expected).norm() / expected.norm()).item() > 2e-2


def test_the_torchao_baseline_without_torchao_is_one_line(monkeypatch):
    """Asked for where torchao is not installed: a UsageError naming the install, before any model loads."""
    import cli

    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name: None if name == "torchao" else real_find_spec(name))
    args = script_module("run_llm.py").build_parser().parse_args(
        ["--model", "tiny-llama", "--compiler", "eager", "--enable_pytorch_run", "--baselines", "hf_dynamic",
         "torchao_int8_step"])
    with pytest.raises(cli.UsageError, match=r"torchao_int8_step baseline needs torchao.*torchao 0\.18\.0"):
        cli.options_from_args(args)
