"""Pre-quantized ModelOpt checkpoints (quantize/checkpoint.py): made by ModelOpt's own export of a tiny model, loaded
into the canonical form without calibrating again, never built in full precision first, and run as a user runs them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("modelopt")

from options import QuantOptions  # noqa: E402
from test_quantize import (FORMATS, fresh_model, ids_for, modelopt_nvfp4, modelopt_quantize,  # noqa: E402
                           quantized_linears, quantized_pair, relative_error)


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


def exported_nvfp4_checkpoint(folder, input_amax: float) -> None:
    """tiny-llama with ModelOpt's NVFP4 quantizers (weights and activations), saved with ModelOpt's own export.
    ModelOpt calibrates NVFP4 on a GPU only, so the max calibration is done by hand: each weight quantizer's amax
    is its weight's largest magnitude, each input quantizer's `input_amax`."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    with modelopt_quantize._quietly():
        quantized = mtq.quantize(fresh_model("tiny-llama"), modelopt_quantize.modelopt_config(QuantOptions("nvfp4")))
        for module in quantized.modules():
            if hasattr(module, "input_quantizer") and module.input_quantizer.is_enabled:
                module.weight_quantizer.amax = module.weight.detach().abs().amax()
                module.input_quantizer.amax = torch.tensor(input_amax)
        quantized.config.architectures = ["LlamaForCausalLM"]
        export_hf_checkpoint(quantized, export_dir=str(folder))


def modelopt_nvfp4_reference(folder):
    """The model the NVFP4 checkpoint in `folder` describes, each quantized linear computing with ModelOpt's own
    dequantization of its saved FP4 weight and with ModelOpt's NVFP4 quantization of its input (the saved
    input_scale as the global scale): the checkpoint read by ModelOpt, not by the loader under test."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    model = fresh_model("tiny-llama")
    names = [key.removesuffix(".weight_scale_2") for key in state if key.endswith(".weight_scale_2")]
    for name in names:
        packed = state.pop(f"{name}.weight")
        rows, columns = packed.shape[0], packed.shape[1] * 2
        scale, double_scale = state.pop(f"{name}.weight_scale"), state.pop(f"{name}.weight_scale_2")
        state[f"{name}.weight"] = NVFP4QTensor((rows, columns), torch.float32, packed).dequantize(
            dtype=torch.float32, scale=scale, double_scale=double_scale, block_sizes={-1: 16})
        input_scale = state.pop(f"{name}.input_scale")
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, input_scale=input_scale: (modelopt_nvfp4(args[0], input_scale),))
    model.load_state_dict(state)
    return model, len(names)


def test_a_prequantized_nvfp4_checkpoint_loads_as_modelopt_saved_it(tmp_path):
    """An NVFP4 checkpoint (FP4 weights, FP8 block scales, NVFP4 activations) loads into the canonical form and
    computes what ModelOpt's own NVFP4 quantization of the same weights and inputs computes."""
    from load.models import load_config
    from options import ModelOptions
    from quantize.checkpoint import checkpoint_quantization, load_prequantized

    exported_nvfp4_checkpoint(tmp_path, input_amax=3.0)
    options = ModelOptions(str(tmp_path), "FP32")
    config = load_config(options)
    assert checkpoint_quantization(config) == QuantOptions("nvfp4", prequantized=True)
    loaded = load_prequantized(options, config)
    reference, quantized = modelopt_nvfp4_reference(tmp_path)
    ids = ids_for(reference)
    with torch.no_grad():
        actual, expected = loaded(input_ids=ids).logits, reference(input_ids=ids).logits
        unquantized = fresh_model("tiny-llama")(input_ids=ids).logits
    assert {linear.weight.dtype for linear in quantized_linears(loaded)} == {torch.uint8}
    assert len(quantized_linears(loaded)) == quantized == 7 * 2
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(actual, unquantized) < 0.3
    for linear in quantized_linears(loaded):  # a loader that dropped the activations' quantization is caught
        linear.input_scale = None
    with torch.no_grad():
        assert relative_error(loaded(input_ids=ids).logits, expected) > 1e-2


def test_a_prequantized_nvfp4_checkpoint_needs_blackwell(tmp_path):
    from test_cli import assert_usage_error, run_llm

    exported_nvfp4_checkpoint(tmp_path, input_amax=3.0)
    assert_usage_error(run_llm("--model", str(tmp_path), "--compiler", "eager", "--precision", "FP32"),
                       "nvfp4 needs an NVIDIA GPU of compute capability 10.0 or newer")


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
