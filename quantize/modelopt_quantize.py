"""--quant_format / --quant_algo / --weight_only: NVIDIA ModelOpt quantizes and calibrates the model, and each
quantized nn.Linear becomes the canonical QuantizedLinear (quantize/quantized_linear.py).

ModelOpt is imported only here, and only when a run quantizes: it is an optional dependency.
The scales and quantized weights come from ModelOpt's own export functions, the ones its Hugging
Face checkpoint export uses, so a model quantized here and a pre-quantized checkpoint agree.
"""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import contextmanager, redirect_stdout
from typing import Callable, Iterator

import torch

from errors import UsageError, logger, only_errors_from
from options import QuantOptions
from quantize import INSTALL_MODELOPT
from quantize.calibration import CalibrationData, calibration_batches
from quantize.quantized_linear import NVFP4_BLOCK, QuantizedLinear


@contextmanager
def _quietly() -> Iterator[None]:
    """ModelOpt prints its progress on stdout (which holds the run's results) and warns about versions and
    deprecations it uses: its lines go to the debug log instead."""
    printed = io.StringIO()
    try:  # torch.utils.cpp_extension: "No CUDA runtime is found" on a CPU
        with only_errors_from("torch.utils.cpp_extension"), warnings.catch_warnings(), redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        for line in printed.getvalue().splitlines():
            logger.debug("ModelOpt: %s", line)


def _modelopt():
    try:
        with _quietly():
            import modelopt.torch.quantization as mtq
            from modelopt.torch.export import quant_utils
    except ImportError as error:
        raise UsageError(f"--quant_format needs NVIDIA ModelOpt ({error}); install it with "
                         f"{INSTALL_MODELOPT}") from None
    return mtq, quant_utils


def modelopt_config(quant: QuantOptions) -> dict:
    """ModelOpt's own configuration for the flags; FP8 weight-only is its FP8 one with the inputs left unquantized."""
    mtq, _ = _modelopt()
    if quant.format == "int8":
        name = ("INT8_WEIGHT_ONLY_CFG" if quant.weight_only else
                "INT8_SMOOTHQUANT_CFG" if quant.algo == "smoothquant" else "INT8_DEFAULT_CFG")
    elif quant.format == "fp8":
        name = "FP8_DEFAULT_CFG"
    else:
        name = "W4A16_NVFP4_CFG" if quant.weight_only else "NVFP4_DEFAULT_CFG"
    config = copy.deepcopy(getattr(mtq, name))
    if quant.weight_only and quant.format == "fp8":  # ModelOpt has no FP8 weight-only config: no input quantizers
        config["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    return config


def canonical_linear(module, quant_utils) -> QuantizedLinear | None:
    """ModelOpt's quantized linear as the canonical form, or None where ModelOpt left it unquantized (lm_head)."""
    fmt = quant_utils.get_quantization_format(module)
    if fmt in (None, "unquantized"):
        return None
    if fmt not in ("int8_wo", "int8_sq", "fp8", "w4a16_nvfp4", "nvfp4"):
        raise UsageError(f"ModelOpt quantized a layer as {fmt}, which this toolkit cannot lower yet")
    nvfp4 = fmt in ("w4a16_nvfp4", "nvfp4")
    weight_scale = quant_utils.get_weight_scaling_factor(module)
    weight_scale_2 = quant_utils.get_weight_scaling_factor_2(module) if nvfp4 else None
    weight = quant_utils.to_quantized_weight(module.weight.detach(), weight_scale, fmt, weight_scale_2, NVFP4_BLOCK)
    input_scale = quant_utils.get_activation_scaling_factor(module)
    pre_quant_scale = getattr(module.input_quantizer, "_pre_quant_scale", None)
    bias = None if module.bias is None else module.bias.detach()
    if nvfp4:  # NVFP4 activations (fmt nvfp4): input_scale is their global scale
        return QuantizedLinear(weight, weight_scale, None if input_scale is None else input_scale.reshape(()), bias,
                               None, weight_scale_2.reshape(()))
    return QuantizedLinear(weight, weight_scale.reshape(-1) if weight_scale.numel() > 1 else weight_scale.reshape(()),
                           None if input_scale is None else input_scale.reshape(()), bias,
                           None if pre_quant_scale is None else pre_quant_scale.detach().to(module.weight.dtype))


def canonical_linears(calibrated: torch.nn.Module) -> dict[str, QuantizedLinear]:
    """The canonical form of every linear ModelOpt quantized in `calibrated`, by module name."""
    _, quant_utils = _modelopt()
    canonical = {}
    with _quietly():
        for name, module in calibrated.named_modules():
            if hasattr(module, "weight_quantizer"):
                linear = canonical_linear(module, quant_utils)
                if linear is not None:
                    canonical[name] = linear.to(module.weight.device)
    return canonical


def with_linears(model: torch.nn.Module, linears: dict[str, torch.nn.Module]) -> torch.nn.Module:
    """A copy of `model` with the named linears replaced; the other weights are copied as they are. The
    replaced linears are never copied: deepcopy's memo hands out their replacements."""
    memo = {id(model.get_submodule(name)): linear for name, linear in linears.items()}
    return copy.deepcopy(model, memo)


def causal_lm_forward(model: torch.nn.Module, ids: torch.Tensor) -> object:
    return model(input_ids=ids)


def calibrated_with_modelopt(model: torch.nn.Module, quant: QuantOptions, batches: CalibrationData,
                             forward: Callable = causal_lm_forward) -> torch.nn.Module:
    """A copy of `model` that ModelOpt quantized and calibrated (fake-quantized: its own reference)."""
    mtq, _ = _modelopt()

    def calibrate(m):
        with torch.no_grad():
            for ids in batches.ids:
                forward(m, ids)

    with _quietly():
        return mtq.quantize(copy.deepcopy(model), modelopt_config(quant), calibrate)


def quantize_model(model: torch.nn.Module, quant: QuantOptions, max_seq_len: int, tokenizer,
                   forward: Callable[[torch.nn.Module, torch.Tensor], object] = causal_lm_forward) -> torch.nn.Module:
    """A quantized copy of `model`, its quantized linears in the canonical form; `model` itself stays the
    unquantized reference. `forward(model, ids)` runs it on calibration tokens. ModelOpt calibrates a
    throw-away copy (it converts every module it touches), and only the canonical linears it yields go into
    a clean copy, which exports as any Hugging Face model does."""
    batches = calibration_batches(quant.calib_data, model.config.get_text_config().vocab_size, max_seq_len,
                                  tokenizer, next(model.parameters()).device)
    logger.info("quantizing with ModelOpt: %s, calibrated on %s", quant.describe(), batches.description)
    calibrated = calibrated_with_modelopt(model, quant, batches, forward)
    linears = canonical_linears(calibrated)
    del calibrated
    if not linears:
        raise UsageError(f"ModelOpt quantized no linear layer of this model with {quant.describe()}")
    logger.info("quantized %d linear layers (%s)", len(linears), next(iter(linears.values())).format)
    return with_linears(model, linears)
