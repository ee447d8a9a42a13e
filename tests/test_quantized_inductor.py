"""Quantized linears under inductor (compilers/inductor.py): the quantized graph compiled, FP8 products on
torch._scaled_mm, the written-out one-row products of the decode step, and the GPU step with CUDA graphs."""

from __future__ import annotations

import operator

import pytest
import torch

from conftest import lowered_graph, tiny_model
from quantize.calibration import random_batches

pytest.importorskip("modelopt")

from test_quantize import FORMATS, fresh_model, ids_for, modelopt_quantize, quantized_pair, relative_error  # noqa: E402


def test_inductor_compiles_the_quantized_graph_to_the_same_logits():
    from compilers.inductor import compile_with_inductor

    _, canonical, model = quantized_pair("tiny-llama", FORMATS["int8-smoothquant"][0])
    ids, positions = ids_for(model), torch.arange(24).expand(2, -1)
    gm = lowered_graph(canonical, 2, 32, "")
    with torch.no_grad():
        expected = gm(ids, positions)[0]
        actual = compile_with_inductor(lowered_graph(canonical, 2, 32, ""))(ids, positions)[0]
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8-weight-only", "fp8"])
def test_the_inductor_step_of_a_quantized_model_generates_its_tokens_on_the_gpu(fmt):
    """As run_llm.py --compiler inductor --cache static_v3 runs a quantized model on a GPU (the small-model decode
    tuning, one-row products written out over the one-byte weights, CUDA graphs): the tokens of Hugging Face's
    generate on the same quantized model."""
    from compilers.inductor import compile_with_inductor
    from conftest import hf_generate, prompt_ids
    from generation.loops import CachedModel, Prompt, StopRule, generate_static_cache

    model = fresh_model("tiny-llama", "cuda")
    batches = random_batches(model.config.vocab_size, 32, "cuda")
    calibrated = modelopt_quantize.calibrated_with_modelopt(model, FORMATS[fmt][0], batches)
    canonical = modelopt_quantize.with_linears(model, modelopt_quantize.canonical_linears(calibrated))
    prompt_len, new_tokens = 10, 16
    gm = lowered_graph(canonical, 1, prompt_len + new_tokens, "static_v3")
    step = compile_with_inductor(gm, cudagraph=True)
    cached = CachedModel(step, gm, 1, prompt_len + new_tokens, model.dtype, "cuda", cuda_graphs=True)
    ids = prompt_ids(model, 1, prompt_len)
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad():
        tokens = generate_static_cache(cached, Prompt.text(ids), new_tokens, stop)
    assert torch.equal(tokens, hf_generate(canonical, ids, new_tokens, stop))


@pytest.mark.gpu
def test_a_quantized_step_is_tuned_for_decode_at_any_size():
    from compilers.decode_tuning import DecodeTuning
    from compilers.inductor import tuned_for_small_decode

    _, canonical, _ = quantized_pair("tiny-llama", FORMATS["int8-weight-only"][0])
    gm = lowered_graph(canonical.cuda(), 1, 16, "static_v3")
    assert tuned_for_small_decode(gm, DecodeTuning(small_model_parameters=1000))  # tiny-llama has more
    assert not tuned_for_small_decode(lowered_graph(tiny_model("tiny-llama", "cuda"), 1, 16, "static_v3"),
                                      DecodeTuning(small_model_parameters=1000))


def _fp8_graph_and_reference():
    """The lowered FP8 (weights and activations) graph opened for inductor, ModelOpt's model, and inputs."""
    from compilers.inductor import open_quantized_linears

    calibrated, canonical, model = quantized_pair("tiny-llama", FORMATS["fp8"][0])
    ids, positions = ids_for(model), torch.arange(24).expand(2, -1)
    with torch.no_grad():
        expected = calibrated(input_ids=ids).logits[:, -1]
    return open_quantized_linears(lowered_graph(canonical, 2, 32, "")), expected, ids, positions


def test_fp8_activations_multiply_on_scaled_mm_and_compute_what_modelopt_computes(monkeypatch):
    """Under inductor an FP8 linear with FP8 activations is one torch._scaled_mm over the FP8 tensors (per-tensor
    scales), and the graph, compiled, still gives ModelOpt's logits."""
    from compilers.inductor import compile_with_inductor, fp8_linear_for_inductor

    gm, expected, ids, positions = _fp8_graph_and_reference()
    nodes = [node for node in gm.graph.nodes if node.target is fp8_linear_for_inductor]
    assert len(nodes) == 7 * 2  # every projection of the two layers
    calls, scaled_mm = [], torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, **kw: calls.append(a.dtype) or scaled_mm(a, b, **kw))
    with torch.no_grad():
        eager = gm(ids, positions)[0][:, -1]
    assert calls == [torch.float8_e4m3fn] * len(nodes)
    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    with torch.no_grad():
        compiled = compile_with_inductor(gm)(ids, positions)[0][:, -1]
    assert relative_error(eager, expected) < 1e-5
    assert relative_error(compiled, expected) < 1e-5


def test_a_wrong_scale_in_the_scaled_mm_product_is_caught():
    from compilers.inductor import fp8_linear_for_inductor

    gm, expected, ids, positions = _fp8_graph_and_reference()
    node = next(node for node in gm.graph.nodes if node.target is fp8_linear_for_inductor)
    operator.attrgetter(node.args[2].target)(gm).mul_(2)
    with torch.no_grad():
        assert relative_error(gm(ids, positions)[0][:, -1], expected) > 1e-2


def _one_row_cases():
    """(weight, weight_scale, weight_scale_2) per stored format, N = 48 outputs, K = 64 inputs."""
    g = torch.Generator().manual_seed(5)
    int8 = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8)
    fp8 = (torch.randn(48, 64, generator=g) * 100).to(torch.float8_e4m3fn)
    nvfp4 = torch.randint(0, 256, (48, 32), generator=g, dtype=torch.uint8)
    block_scales = (torch.rand(48, 4, generator=g) * 4 + 0.5).to(torch.float8_e4m3fn)
    return {"int8": (int8, torch.rand(48, generator=g) / 100, None),
            "fp8": (fp8, torch.tensor(0.003), None),
            "nvfp4": (nvfp4, block_scales, torch.tensor(0.02))}


@pytest.mark.parametrize("store_input", [False, True])
@pytest.mark.parametrize("fmt", ["int8", "fp8", "nvfp4"])
def test_the_written_out_one_row_product_computes_the_op(monkeypatch, fmt, store_input):
    """The decode step's one-row quantized product (sums over the stored weight, its scales applied as the format
    says, its input stored first or not) against the op's own definition; a scale left out is caught."""
    from compilers import inductor
    from quantize.quantized_linear import quantized_linear_reference

    monkeypatch.setattr(inductor, "_one_row_on_gpu", lambda rows: rows.shape[0] == 1)  # the GPU branch, here
    weight, weight_scale, weight_scale_2 = _one_row_cases()[fmt]
    x, bias = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(6)), torch.randn(48)
    expected = quantized_linear_reference(x, weight, weight_scale, None, bias, weight_scale_2)
    actual = inductor.quantized_linear_for_inductor(x, weight, weight_scale, None, bias, weight_scale_2, store_input)
    assert relative_error(actual, expected) < 1e-6
    doubled = (weight_scale.float() * 2).to(weight_scale.dtype)
    wrong = inductor.quantized_linear_for_inductor(x, weight, doubled, None, bias, weight_scale_2, store_input)
    assert relative_error(wrong, expected) > 0.1


@pytest.mark.gpu
def test_profile_step_profiles_the_quantized_step():
    """profile_step.py --quant_format: the step profiled is the quantized model's, and its compile time is printed."""
    from test_cli import profile_step

    result = profile_step("--model", "tiny-llama", "--compiler", "inductor", "--precision", "FP16", "--isl", "8",
                          "--num_tokens", "8", "--device", "cuda", "--quant_format", "int8", "--weight_only")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("tiny-llama, batch 1"))
    assert "FP16, int8 weight-only, max calibration" in header, result.stdout
    assert float(next(line for line in lines if line.startswith("compile s")).split(":")[-1]) > 0
    assert "quantized 14 linear layers" in result.stderr  # tiny-llama: 2 layers of 7 projections
