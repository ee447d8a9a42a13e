"""Quantization through ModelOpt (quantize/): the canonical quantized linears against ModelOpt's own fake-quantized
model, the error against the unquantized model per format, a planted wrong scale, and the run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, lowered_graph
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


def modelopt_nvfp4(x: torch.Tensor, global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x quantized to NVFP4 by ModelOpt's own NVFP4 tensor (with this global scale, or one from x's largest
    magnitude) and dequantized again, in float32."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    quantized, block_scale, global_scale = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=global_scale)
    return quantized.dequantize(dtype=torch.float32, scale=block_scale, double_scale=global_scale,
                                block_sizes={-1: 16})


def nvfp4_pair(family: str, activations: bool = False):
    """(the model whose linears compute with ModelOpt's own dequantization of the NVFP4 tensors, the canonical NVFP4
    model, the unquantized model). ModelOpt's calibration needs a GPU for NVFP4; its NVFP4 tensor quantizes on
    the CPU: each weight (block scales from each block's maximum), and with `activations` each linear's input
    at every call, with the global scale of a max calibration (ModelOpt's amax / (6 * 448))."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

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


@pytest.mark.parametrize("pytorch_run", [True, False], ids=["with-pytorch-run", "without"])
def test_load_models_quantizes_a_copy_and_keeps_the_reference_only_for_a_pytorch_run(pytorch_run):
    """run_llm.load_models (also profile_step.py's): the model compiled is the quantized copy, the reference the
    unquantized model while a PyTorch run needs it, and the quantized one otherwise."""
    import run_llm
    from load.models import load_config
    from options import CompileOptions, ModelOptions, Options, RunOptions

    options = Options(ModelOptions("tiny-llama", "FP32", "cpu"), CompileOptions("eager"),
                      RunOptions(enable_pytorch_run=pytorch_run), quant=QuantOptions("int8", weight_only=True))
    reference, compiled = run_llm.load_models(options, load_config(options.model), False, 16, None)
    linears = quantized_linears(compiled)
    assert linears and all(linear.weight.dtype == torch.int8 for linear in linears)
    assert (reference is compiled) != pytorch_run
    assert pytorch_run == (not quantized_linears(reference))


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
