"""What TensorRT is asked to compute, for the whole model: the network `--compiler tensorrt` builds,
evaluated layer by layer in numpy (trt_reference.py), against the lowered graph in PyTorch.

The networks are the ones torch_tensorrt.dynamo.compile builds through utils.compile_lowered
(test_tensorrt_compile.py); trt_helpers.engines_evaluated makes each engine of the compiled module
compute by evaluating its network, so the module's own graph, the runtime path's inputs and the caches'
write-back are the product's. No engine runs here.
"""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, lowered_graph, prompt_ids, tiny_model
from generation.baselines import hf_generate
from generation.loops import Prompt, StopRule, generate_static_cache
from options import CACHES, CompileOptions, ModelOptions
from static_cache_common import cache_inputs
from test_tensorrt_compile import MAX_SEQ_LEN, compile_as_run_llm_does, user_compiled
from trt_helpers import engines_evaluated, import_torch_tensorrt

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow, pytest.mark.xdist_group("built_engines")]  # one worker: shared memo
TOLERANCE = 1e-4  # largest absolute difference over the largest absolute value, FP32
STEPS = [(0, 5), (5, 1), (6, 3)]  # (start, length): prefill, decode, a chunk of prefill


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def step(module, cache: str, ids, caches, start: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One call of a lowered graph or of its compiled module, as generation/loops.py makes it:
    (logits, the caches after the step). A static_v3 engine whose KV-cache update layers write the
    caches in place returns the logits only."""
    length = ids.shape[1]
    positions = torch.arange(start, start + length).expand(ids.shape[0], -1)
    if cache == "static_v3":
        logits, *returned = module(ids, positions, *caches, torch.arange(start, start + length))
        caches = returned or caches
    elif cache:
        logits, *caches = module(ids, positions, *caches, start, start + length)
    else:
        (logits,) = module(ids, positions)  # no cache: the whole sequence each call, from position 0
    return logits, caches


def errors_over_steps(gm, compiled, cache: str, family: str) -> list[float]:
    """The relative error of the evaluated network's logits and caches at prefill, decode and a chunk
    of prefill, each network and graph fed its own caches from the step before."""
    model = tiny_model(family)
    expected_caches = [torch.zeros(node.meta["val"].shape) for node in cache_inputs(gm)]
    actual_caches = [cache.clone() for cache in expected_caches]
    ids = prompt_ids(model, 1, 9, seed=1)
    errors = []
    with torch.no_grad(), engines_evaluated():
        for start, length in STEPS:
            chunk = ids[:, start:start + length] if cache else ids[:, :start + length]
            expected, expected_caches = step(gm, cache, chunk, expected_caches, start if cache else 0)
            actual, actual_caches = step(compiled, cache, chunk, actual_caches, start if cache else 0)
            errors.append(relative_error(actual, expected))
            errors += [relative_error(a, e) for a, e in zip(actual_caches, expected_caches)]
    return errors


def assert_network_matches(family: str, cache: str) -> None:
    gm, compiled = user_compiled(family, cache)
    import sdpa_converter  # importable once torch_tensorrt is
    from compilers import kv_cache_update

    errors = errors_over_steps(gm, compiled, cache, family)
    conversion = sdpa_converter.LAYERS + (f", {kv_cache_update.CACHE_WRITE}" if cache == "static_v3" else "")
    print(f"\n{family} {cache or 'no cache'} ({conversion}): largest relative error "
          f"{max(errors):.1e} over {len(STEPS)} steps, logits and {len(cache_inputs(gm))} caches")
    assert max(errors) <= TOLERANCE


@pytest.mark.parametrize("cache", ["", *CACHES])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_network_computes_the_lowered_graph(family, cache):
    """With the attention as this TensorRT converts it by default (its attention layer, where it has one)."""
    assert_network_matches(family, cache)


@pytest.mark.parametrize(("family", "cache"), [("tiny-llama", "static_v3"), ("tiny-gemma3", "static_v2"),
                                               ("tiny-qwen3", "")])
def test_the_fallback_attention_network_computes_the_lowered_graph(family, cache, monkeypatch):
    """The attention as matrix products and a softmax, the conversion for a TensorRT without an attention
    layer: bottom-right causal, window (gemma3) and query positions (static_v3)."""
    import_torch_tensorrt()
    import sdpa_converter

    monkeypatch.setattr(sdpa_converter, "LAYERS", sdpa_converter.MATMUL_SOFTMAX)
    assert_network_matches(family, cache)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_the_scatter_cache_write_computes_the_lowered_graph(family, monkeypatch):
    """static_v3's cache write as a scatter with the caches returned, the conversion for a TensorRT
    without a KV-cache update layer."""
    import_torch_tensorrt()
    from compilers import kv_cache_update

    monkeypatch.setattr(kv_cache_update, "CACHE_WRITE", kv_cache_update.SCATTER)
    assert_network_matches(family, "static_v3")


GENERATED = 16


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("cache", ["static_v2", "static_v3"])
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_greedy_generation_through_the_network_gives_hugging_faces_tokens(family, cache, batch_size):
    """run_llm.py's generation (utils.cached_model, generation/loops.py), every step through the network:
    positions, caches and their write-back as the runtime path makes them. Gemma3's window (8) is passed."""
    from utils import cached_model

    model, prompt_len = tiny_model(family), 6
    assert prompt_len + GENERATED <= MAX_SEQ_LEN
    gm, compiled = user_compiled(family, cache, batch_size, unwrap=False)
    options, model_options = CompileOptions("tensorrt", cache), ModelOptions(family, "FP32")
    cached = cached_model(compiled, gm, options, model_options, batch_size, MAX_SEQ_LEN)
    ids = prompt_ids(model, batch_size, prompt_len, seed=2)
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad(), engines_evaluated():
        tokens = generate_static_cache(cached, Prompt.text(ids), GENERATED, stop)
    assert torch.equal(tokens, hf_generate(model, ids, GENERATED, stop))


# ------------------------------------------------------------------- planted converter mistakes


CONVERSIONS = ["attention_layer", "matmul_softmax"]


@pytest.fixture
def conversion(request, monkeypatch):
    """The attention's conversion a planted-mistake test runs with (both, by parametrizing this)."""
    import_torch_tensorrt()
    import sdpa_converter

    monkeypatch.setattr(sdpa_converter, "LAYERS", request.param)
    return request.param


def planted_errors(family: str, cache: str) -> list[float]:
    gm = lowered_graph(tiny_model(family), 1, MAX_SEQ_LEN, cache)
    compiled, _ = compile_as_run_llm_does(gm, family, cache)
    errors = errors_over_steps(gm, compiled, cache, family)
    print(f"\nplanted mistake, {family} {cache or 'no cache'}: largest relative error {max(errors):.1e}")
    return errors


@pytest.mark.parametrize("conversion", CONVERSIONS, indirect=True)
def test_an_off_by_one_causal_mask_is_caught(conversion, monkeypatch):
    """Each query sees one key past its own (its last visible key one later): prefill and the chunk go
    wrong. static_v3's query positions make the mask for either conversion of the node."""
    import_torch_tensorrt()
    import tensorrt as trt

    import sdpa_converter

    def planted(make):
        def one_later(ctx, name, *args):
            out = make(ctx, name, *args)
            if not name.endswith("_last"):
                return out
            one = sdpa_converter._constant(ctx, f"{name}_planted", torch.ones((1,) * len(out.shape)).numpy())
            return original_elementwise(ctx, f"{name}_plus_one", out, one, trt.ElementWiseOperation.SUM)
        return one_later

    original_elementwise = sdpa_converter._elementwise
    monkeypatch.setattr(sdpa_converter, "_elementwise", planted(sdpa_converter._elementwise))
    monkeypatch.setattr(sdpa_converter, "_reshape", planted(sdpa_converter._reshape))
    assert max(planted_errors("tiny-llama", "static_v3")) > TOLERANCE


@pytest.mark.parametrize("conversion", CONVERSIONS, indirect=True)
def test_a_wrong_attention_scale_is_caught(conversion, monkeypatch):
    import_torch_tensorrt()
    import sdpa_converter

    original = sdpa_converter._constant  # 1 / D for 1 / sqrt(D)
    monkeypatch.setattr(sdpa_converter, "_constant", lambda ctx, name, value: original(
        ctx, name, value ** 2 if name.endswith("_scale_value") else value))
    assert max(planted_errors("tiny-llama", "")) > TOLERANCE


@pytest.mark.parametrize("cache_write", ["kv_cache_update", "scatter"])
def test_a_cache_written_one_slot_late_is_caught(cache_write, monkeypatch):
    """static_v3's cache write with every write one slot too far: the KV-cache update layer's write
    indices, or the indices of the scatter it falls back to (Torch-TensorRT's scatter converter)."""
    import_torch_tensorrt()
    import numpy as np
    import tensorrt as trt
    from torch_tensorrt.dynamo.conversion import impl

    from compilers import kv_cache_update

    def plus_one(ctx, index):
        dtype = np.int64 if index.dtype == trt.int64 else np.int32
        one = ctx.net.add_constant((1,) * len(index.shape), trt.Weights(np.ones((1,) * len(index.shape), dtype)))
        return ctx.net.add_elementwise(index, one.get_output(0), trt.ElementWiseOperation.SUM).get_output(0)

    monkeypatch.setattr(kv_cache_update, "CACHE_WRITE", cache_write)
    if cache_write == "kv_cache_update":
        write_indices = kv_cache_update.write_indices
        monkeypatch.setattr(kv_cache_update, "write_indices",
                            lambda ctx, name, *args: plus_one(ctx, write_indices(ctx, name, *args)))
    else:
        scatter = impl.select.scatter
        monkeypatch.setattr(impl.select, "scatter", lambda ctx, target, source_ir, name, input, dim, index, src:
                            scatter(ctx, target, source_ir, name, input, dim, plus_one(ctx, index), src))
    assert max(planted_errors("tiny-llama", "static_v3")) > TOLERANCE
