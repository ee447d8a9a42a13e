"""Quantization through ModelOpt (quantize/): the canonical quantized linears against ModelOpt's own fake-quantized
model, the error against the unquantized model per format, a planted wrong scale, and the run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from conftest import ROOT, lowered_graph, tiny_model
from options import QuantOptions
from quantize.calibration import random_batches, text_batches
from quantize.quantized_linear import QUANTIZED_LINEAR, QuantizedLinear, quantized_linears

pytest.importorskip("modelopt")

from quantize import modelopt_quantize  # noqa: E402

FORMATS = {  # the flags, and the largest relative logit error against the unquantized tiny model
    "int8-weight-only": (QuantOptions("int8", weight_only=True), 0.02),
    "fp8-weight-only": (QuantOptions("fp8", weight_only=True), 0.06),
    "int8-smoothquant": (QuantOptions("int8", "smoothquant"), 0.04),
    "int8": (QuantOptions("int8"), 0.04),
    "fp8": (QuantOptions("fp8"), 0.08),
}
FAMILIES = ["tiny-llama", "tiny-qwen3"]


def fresh_model(family: str, device: str = "cpu"):
    """A tiny preset built for the caller alone (the same seeded weights as conftest's shared one, which other
    tests may have changed: the plugin backend swaps its attention modules in place)."""
    from load.models import load_config, load_model
    from options import ModelOptions

    options = ModelOptions(family, "FP32", device)
    return load_model(options, load_config(options))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


def quantized_pair(family: str, quant: QuantOptions):
    """(ModelOpt's calibrated model, the same quantization in the canonical form, the unquantized model)."""
    model = fresh_model(family)
    batches = random_batches(model.config.vocab_size, 32, "cpu")
    calibrated = modelopt_quantize.calibrated_with_modelopt(model, quant, batches)
    canonical = modelopt_quantize.with_linears(model, modelopt_quantize.canonical_linears(calibrated))
    return calibrated, canonical, model


def _input_amax(model, names: list[str], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The largest input magnitude each named linear sees over forwards of the batches (a max calibration)."""
    amax, hooks = {}, []
    for name in names:
        def record(module, args, name=name):
            amax[name] = torch.maximum(amax.get(name, torch.tensor(0.0)), args[0].detach().abs().amax())
        hooks.append(model.get_submodule(name).register_forward_pre_hook(record))
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return amax


def nvfp4_pair(family: str, activations: bool = False):
    """(the model whose linears compute with ModelOpt's own dequantization of the NVFP4 tensors, the canonical NVFP4
    model, the unquantized model). ModelOpt's calibration needs a GPU for NVFP4; its NVFP4 tensor quantizes on
    the CPU: each weight (block scales from each block's maximum), and with `activations` each linear's input
    at every call, with the global scale of a max calibration (ModelOpt's amax / (6 * 448))."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    def modelopt_nvfp4(x, global_scale=None):
        quantized, block_scale, global_scale = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=global_scale)
        return quantized.dequantize(dtype=torch.float32, scale=block_scale, double_scale=global_scale,
                                    block_sizes={-1: 16})

    _, int8, model = quantized_pair(family, FORMATS["int8-weight-only"][0])  # which linears ModelOpt quantizes
    names = [name for name, module in int8.named_modules() if module in quantized_linears(int8)]
    amax = _input_amax(model, names, random_batches(model.config.vocab_size, 32, "cpu").ids) if activations else {}
    linears, dequantized = {}, {}
    for name in names:
        linear = model.get_submodule(name)
        quantized, block_scale, global_scale = NVFP4QTensor.quantize(linear.weight.detach(), 16)
        input_scale = amax[name] / (6 * 448) if activations else None
        linears[name] = QuantizedLinear(quantized._quantized_data, block_scale, input_scale,
                                        None if linear.bias is None else linear.bias.detach(), None, global_scale)
        plain = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        plain.weight = torch.nn.Parameter(modelopt_nvfp4(linear.weight.detach()))
        plain.bias = linear.bias
        if activations:
            plain.register_forward_pre_hook(lambda module, args, s=input_scale: (modelopt_nvfp4(args[0], s),))
        dequantized[name] = plain
    return (modelopt_quantize.with_linears(model, dequantized), modelopt_quantize.with_linears(model, linears),
            model)


def canonical_model(family: str, fmt: str):
    """The canonical quantized model of a format of FORMATS, or NVFP4 ("nvfp4-weight-only", "nvfp4")."""
    if fmt.startswith("nvfp4"):
        return nvfp4_pair(family, activations=fmt == "nvfp4")[1]
    return quantized_pair(family, FORMATS[fmt][0])[1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("activations", [False, True], ids=["weight-only", "activations"])
def test_nvfp4_computes_what_modelopt_dequantizes(family, activations):
    """NVFP4 in the canonical form (FP4 weights two a byte, FP8 block scales, a global scale; with activations,
    each input quantized in blocks of 16 at every call), lowered and compiled by inductor, against the model that
    computes with ModelOpt's own NVFP4 quantization of the same weights and inputs."""
    from compilers.inductor import compile_with_inductor

    reference, canonical, model = nvfp4_pair(family, activations)
    ids, positions = ids_for(model), torch.arange(24).expand(2, -1)
    with torch.no_grad():
        expected, unquantized = reference(input_ids=ids).logits[:, -1], model(input_ids=ids).logits[:, -1]
        actual = lowered_graph(canonical, 2, 32, "")(ids, positions)[0][:, -1]
        compiled = compile_with_inductor(lowered_graph(canonical, 2, 32, ""))(ids, positions)[0][:, -1]
    assert {linear.weight.dtype for linear in quantized_linears(canonical)} == {torch.uint8}
    assert all((linear.input_scale is not None) == activations for linear in quantized_linears(canonical))
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(compiled, expected) < 1e-4
    print(f"{family} nvfp4 {'weights and activations' if activations else 'weight-only'}: relative logit error "
          f"{relative_error(actual, unquantized):.1e}")
    assert relative_error(actual, unquantized) < 0.3


def test_nvfp4_activations_left_unquantized_are_caught():
    """The comparison can fail: the W4A4 reference against the same weights with the inputs left in FP32."""
    reference, canonical, model = nvfp4_pair("tiny-llama", activations=True)
    for linear in quantized_linears(canonical):
        linear.input_scale = None
    ids = ids_for(model)
    with torch.no_grad():
        assert relative_error(canonical(input_ids=ids).logits, reference(input_ids=ids).logits) > 1e-2


def ids_for(model) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_lowered_quantized_graph_computes_what_modelopt_computes(family, fmt):
    """The lowered static_v3 graph of the canonical model (weights stored at one byte) gives the logits of
    ModelOpt's fake-quantized model, the independent reference; and it stays within the format's error of
    the unquantized model."""
    quant, bound = FORMATS[fmt]
    calibrated, canonical, model = quantized_pair(family, quant)
    ids = ids_for(model)
    with torch.no_grad():
        expected = calibrated(input_ids=ids).logits[:, -1]
        unquantized = model(input_ids=ids).logits[:, -1]
        gm = lowered_graph(canonical, 2, 32, "")
        nodes = gm.graph.find_nodes(op="call_function", target=QUANTIZED_LINEAR)
        weights = {gm.get_parameter(node.args[1].target).dtype for node in nodes}
        actual = gm(ids, torch.arange(24).expand(2, -1))[0][:, -1]
    assert len(nodes) == len(quantized_linears(canonical)) > 0
    assert weights == {torch.int8 if fmt.startswith("int8") else torch.float8_e4m3fn}
    assert relative_error(actual, expected) < 1e-5
    print(f"{family} {fmt}: relative logit error {relative_error(actual, unquantized):.1e} (bound {bound})")
    assert relative_error(actual, unquantized) < bound


@pytest.mark.parametrize("fmt", ["int8-weight-only", "fp8"])
def test_a_wrong_scale_is_caught(fmt):
    """One weight scale doubled in one layer: the comparison with ModelOpt's model fails."""
    calibrated, canonical, model = quantized_pair("tiny-llama", FORMATS[fmt][0])
    quantized_linears(canonical)[3].weight_scale.mul_(2)
    ids = ids_for(model)
    with torch.no_grad():
        error = relative_error(canonical(input_ids=ids).logits, calibrated(input_ids=ids).logits)
    assert error > 1e-2


def test_inductor_compiles_the_quantized_graph_to_the_same_logits():
    from compilers.inductor import compile_with_inductor

    _, canonical, model = quantized_pair("tiny-llama", FORMATS["int8-smoothquant"][0])
    ids, positions = ids_for(model), torch.arange(24).expand(2, -1)
    gm = lowered_graph(canonical, 2, 32, "")
    with torch.no_grad():
        expected = gm(ids, positions)[0]
        actual = compile_with_inductor(lowered_graph(canonical, 2, 32, ""))(ids, positions)[0]
    assert relative_error(actual, expected) < 1e-4


def test_a_weight_only_model_keeps_one_byte_weights_and_its_other_weights():
    _, canonical, model = quantized_pair("tiny-llama", FORMATS["int8-weight-only"][0])
    linears = quantized_linears(canonical)
    assert len(linears) == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down; lm_head stays
    assert all(linear.weight.dtype == torch.int8 and linear.input_scale is None for linear in linears)
    assert canonical.lm_head.weight.dtype == model.lm_head.weight.dtype
    assert torch.equal(canonical.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert not quantized_linears(model)  # the reference stays unquantized


def test_calibration_text_is_cut_into_full_rows():
    from load.tokenizer import ByteTokenizer

    data = text_batches(ByteTokenizer(None, None, None), 64, "cpu")
    assert all(ids.shape[1] == 64 for ids in data.ids) and sum(ids.shape[0] for ids in data.ids) >= 16
    assert "built-in calibration text" in data.description


def test_a_quantized_run_reports_its_accuracy_against_the_unquantized_model(tmp_path):
    """As a user runs it: generation prints the teacher-forced figures, the benchmark's JSON holds them and names
    the quantization; both compare with the unquantized PyTorch model of the same run."""
    import json

    from test_cli import run_llm

    flags = ["--model", "tiny-llama", "--compiler", "eager", "--cache", "static_v3", "--precision", "FP32",
             "--quant_format", "int8", "--weight_only", "--enable_pytorch_run"]
    generated = run_llm(*flags, "--num_tokens", "8")
    assert generated.returncode == 0, generated.stderr
    assert "calibrated on 16 sequences of" in generated.stderr
    forced = generated.stdout.splitlines()[-2]
    assert forced.startswith("Teacher-forced, Eager fed PyTorch's tokens:") and "relative logit error" in forced
    out = tmp_path / "r.json"
    timed = run_llm(*flags, "--num_tokens", "4", "--benchmark", "--isl", "8", "--iterations", "1",
                    "--output_json", str(out))
    assert timed.returncode == 0, timed.stderr
    report = json.loads(out.read_text())
    assert report["setup"]["quantization"] == "int8 weight-only, max calibration"
    row = report["results"]["Eager, static_v3, int8 weight-only"]
    assert 0 < row["forced_relative_logit_error"] < 0.05 and row["forced_top1"] > 0.5


def exported_checkpoint(folder, fmt: str) -> None:
    """tiny-llama quantized by ModelOpt and saved with ModelOpt's own Hugging Face export."""
    from modelopt.torch.export import export_hf_checkpoint

    calibrated, _, _ = quantized_pair("tiny-llama", FORMATS[fmt][0])
    calibrated.config.architectures = ["LlamaForCausalLM"]  # the export reads it; a preset's config has none
    with modelopt_quantize._quietly():
        export_hf_checkpoint(calibrated, export_dir=str(folder))


@pytest.mark.parametrize("fmt", ["fp8", "int8-weight-only"])
def test_a_prequantized_checkpoint_loads_as_modelopt_saved_it(fmt, tmp_path):
    """The checkpoint's quantized linears load into the canonical form with no calibration, and compute what the
    ModelOpt model that was saved computes (the independent reference)."""
    from load.models import load_config
    from options import ModelOptions
    from quantize.checkpoint import checkpoint_quantization, load_prequantized

    exported_checkpoint(tmp_path, fmt)
    options = ModelOptions(str(tmp_path), "FP32")
    config = load_config(options)
    assert checkpoint_quantization(config) == replace(FORMATS[fmt][0], prequantized=True)
    loaded = load_prequantized(options, config)
    calibrated, canonical, model = quantized_pair("tiny-llama", FORMATS[fmt][0])
    ids = ids_for(model)
    with torch.no_grad():
        actual, expected = loaded(input_ids=ids).logits, calibrated(input_ids=ids).logits
    assert len(quantized_linears(loaded)) == len(quantized_linears(canonical))
    assert relative_error(actual, expected) < 1e-5


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """The shapes of the floating-point tensors allocated (not on the meta device) while it is on."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (func in (torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default)
                and not out.is_meta and out.is_floating_point()):
            self.shapes.add(tuple(out.shape))
        return out


@pytest.mark.parametrize("loading", ["checkpoint", "full-precision build"])
def test_a_prequantized_checkpoint_never_allocates_its_linears_in_full_precision(loading, tmp_path):
    """Loading an FP8 checkpoint allocates no floating-point tensor of a quantized linear's weight shape (the model
    is never built in full precision first); the check sees the ones a plain build of the model allocates."""
    from transformers import AutoModelForCausalLM

    from load.models import load_config
    from options import ModelOptions
    from quantize.checkpoint import load_prequantized

    exported_checkpoint(tmp_path, "fp8")
    options = ModelOptions(str(tmp_path), "FP32")
    config = load_config(options)
    allocations = _Allocations()
    with allocations:
        if loading == "checkpoint":
            loaded = load_prequantized(options, config)
        else:
            loaded = AutoModelForCausalLM.from_config(config)
    linear_shapes = {tuple(m.weight.shape) for m in fresh_model("tiny-llama").modules()
                     if isinstance(m, torch.nn.Linear) and m.weight.shape[0] != config.vocab_size}
    full_precision_linears = linear_shapes & allocations.shapes
    assert (full_precision_linears == set()) == (loading == "checkpoint"), full_precision_linears
    assert not any(tensor.is_meta for tensor in loaded.state_dict().values())


def test_a_prequantized_checkpoint_runs_as_a_user_runs_it(tmp_path):
    from test_cli import assert_usage_error, run_llm

    exported_checkpoint(tmp_path / "fp8", "fp8")
    flags = ["--model", str(tmp_path / "fp8"), "--compiler", "eager", "--cache", "static_v3", "--precision", "FP32"]
    result = run_llm(*flags, "--num_tokens", "8", "--enable_pytorch_run")
    assert result.returncode == 0, result.stderr
    assert ("loaded a pre-quantized ModelOpt checkpoint: 14 linear layers in fp8 weights and activations"
            in result.stderr)
    assert "quantizing" not in result.stderr  # nothing is calibrated again
    assert result.stdout.splitlines()[-1] == "PyTorch and Eager outputs match: True"
    assert_usage_error(run_llm(*flags, "--quant_format", "int8"), "already quantized (fp8)",
                       "leave out --quant_format int8")
    config = tmp_path / "fp8" / "config.json"
    config.write_text(config.read_text().replace('"quant_algo": "FP8"', '"quant_algo": "INT4_AWQ"'))
    assert_usage_error(run_llm(*flags), "quantization INT4_AWQ is not one this toolkit loads")


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


@pytest.mark.gpu
@pytest.mark.parametrize("weight_only", [True, False], ids=["weight-only", "activations"])
def test_modelopts_nvfp4_calibration_lowers_to_the_canonical_form(weight_only):
    """ModelOpt's NVFP4 quantization (which needs a GPU, not a Blackwell one, for its fake quantization) in the
    canonical form computes what ModelOpt's own fake-quantized model computes."""
    quant = QuantOptions("nvfp4", weight_only=weight_only)
    model = fresh_model("tiny-llama", "cuda")
    calibrated = modelopt_quantize.calibrated_with_modelopt(model, quant, random_batches(512, 32, "cuda"))
    canonical = modelopt_quantize.with_linears(model, modelopt_quantize.canonical_linears(calibrated))
    ids = ids_for(model).cuda()
    with torch.no_grad():
        actual, expected = canonical(input_ids=ids).logits, calibrated(input_ids=ids).logits
    assert {linear.weight.dtype for linear in quantized_linears(canonical)} == {torch.uint8}
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize("capability,refusal", [((9, 0), "this GPU is 9.0"), ((10, 0), None), ((12, 0), None)])
def test_nvfp4_runs_on_blackwell_and_newer_only(monkeypatch, capability, refusal):
    """Weights and activations (upstream's default) or --weight_only alike."""
    import cli
    from errors import UsageError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    if refusal is None:
        cli.check_nvfp4_runs_here("cuda")
    else:
        with pytest.raises(UsageError, match=refusal):
            cli.check_nvfp4_runs_here("cuda")


@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_run_vlm_quantizes_the_language_model(family):
    """run_vlm.py with --quant_format: ModelOpt quantizes the language model only (its 7 linears a layer), and
    the teacher-forced comparison with the unquantized model of the same run is printed."""
    from load.presets import builtin_config

    flags = ["--model", family, "--compiler", "eager", "--cache", "static_v3", "--precision", "FP32", "--num_tokens",
             "8", "--quant_format", "int8", "--weight_only", "--enable_pytorch_run"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run_vlm.py"), *flags], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    layers = builtin_config(family).get_text_config().num_hidden_layers
    assert f"quantized {7 * layers} linear layers (int8 weight-only)" in result.stderr
    forced = re.search(r"relative logit error (\S+)", result.stdout.splitlines()[-2])
    assert forced and 0 < float(forced.group(1)) < 0.1



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
    owner, _, name = node.args[2].target.rpartition(".")
    getattr(gm.get_submodule(owner) if owner else gm, name).mul_(2)
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


@pytest.mark.parametrize("fmt", ["int8", "fp8", "nvfp4"])
def test_the_written_out_one_row_product_computes_the_op(monkeypatch, fmt):
    """The decode step's one-row quantized product (sums over the stored weight, its scales applied as the format
    says) against the op's own definition; a scale left out is caught."""
    from compilers import inductor
    from quantize.quantized_linear import quantized_linear_reference

    monkeypatch.setattr(inductor, "_one_row_on_gpu", lambda rows: rows.shape[0] == 1)  # the GPU branch, here
    weight, weight_scale, weight_scale_2 = _one_row_cases()[fmt]
    x, bias = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(6)), torch.randn(48)
    expected = quantized_linear_reference(x, weight, weight_scale, None, bias, weight_scale_2)
    actual = inductor.quantized_linear_for_inductor(x, weight, weight_scale, None, bias, weight_scale_2)
    assert relative_error(actual, expected) < 1e-6
    doubled = (weight_scale.float() * 2).to(weight_scale.dtype)
    wrong = inductor.quantized_linear_for_inductor(x, weight, doubled, None, bias, weight_scale_2)
    assert relative_error(wrong, expected) > 0.1
