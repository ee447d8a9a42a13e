"""Pre-quantized ModelOpt checkpoints (for example nvidia/Llama-3.1-8B-Instruct-FP8): detected from the config's
`quantization_config` (quant_method "modelopt", which ModelOpt's export also writes to hf_quant_config.json) and
loaded into the canonical QuantizedLinear form without quantizing again.

ModelOpt's export stores each quantized linear as `<name>.weight` (INT8, FP8, or NVFP4 packed two a byte),
`<name>.weight_scale` (NVFP4's FP8 block scales, with `<name>.weight_scale_2`), and where activations are
quantized `<name>.input_scale` (and SmoothQuant's `<name>.pre_quant_scale`): the canonical form's own tensors,
so loading is a matter of putting them in place.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator

import torch

from errors import UsageError, logger
from options import ModelOptions, QuantOptions
from quantize.quantized_linear import QuantizedLinear

# ModelOpt's quant_algo names this toolkit loads, as the flags that make the same quantization here.
LOADABLE = {"FP8": QuantOptions("fp8", prequantized=True),
            "W8A16": QuantOptions("int8", weight_only=True, prequantized=True),
            "W8A8_SQ_PER_CHANNEL": QuantOptions("int8", "smoothquant", prequantized=True),
            "NVFP4": QuantOptions("nvfp4", prequantized=True)}
QUANTIZED_TENSORS = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "bias")


def checkpoint_quantization(config) -> QuantOptions | None:
    """The quantization a checkpoint was saved with; None for an unquantized one. Checked before weights load."""
    details = getattr(config, "quantization_config", None)
    if not details:
        return None
    details = details if isinstance(details, dict) else details.to_dict()
    method, algo = details.get("quant_method"), details.get("quant_algo")
    if method != "modelopt":
        raise UsageError(f"this checkpoint is quantized with {method or 'an unnamed method'}, which this toolkit "
                         f"cannot load; use a ModelOpt checkpoint ({', '.join(LOADABLE)}) or an unquantized model "
                         "with --quant_format")
    if algo not in LOADABLE:
        raise UsageError(f"this ModelOpt checkpoint's quantization {algo} is not one this toolkit loads "
                         f"({', '.join(LOADABLE)}); use an unquantized model with --quant_format")
    return LOADABLE[algo]


def check_requested(requested: QuantOptions, saved: QuantOptions) -> None:
    """--quant_format on a pre-quantized checkpoint: the same format is the checkpoint's own, another is an error."""
    if requested.format and requested.format != saved.format:
        raise UsageError(f"this checkpoint is already quantized ({saved.format}); leave out --quant_format "
                         f"{requested.format}, or quantize an unquantized model")


def _state_dict(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise UsageError(f"the pre-quantized checkpoint {folder} has no *.safetensors weights")
    state = {}
    for path in files:
        state.update(load_file(path))
    return state


def _folder_of(name: str) -> str:
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name, allow_patterns=["*.json", "*.safetensors"])


@contextlib.contextmanager
def _linear_weights_on_meta() -> Iterator[None]:
    """nn.Linear layers built inside hold their weights on the meta device, which takes no memory: a pre-quantized
    checkpoint replaces most of them and loads the rest, so the full-precision model is never allocated. Everything
    else is built as usual, so the buffers a model computes rather than loads (rotary frequencies) are real."""
    build = torch.nn.Linear.__init__

    def on_meta(self, in_features, out_features, bias=True, device=None, dtype=None):
        build(self, in_features, out_features, bias, device="meta", dtype=dtype)

    torch.nn.Linear.__init__ = on_meta
    try:
        yield
    finally:
        torch.nn.Linear.__init__ = build


def load_prequantized(model: ModelOptions, config) -> torch.nn.Module:
    """The checkpoint's model, each quantized linear a QuantizedLinear holding the saved tensors, the other
    weights in model.precision."""
    from transformers import AutoModelForCausalLM

    state = _state_dict(_folder_of(model.name))
    config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    config._attn_implementation = "sdpa"
    with torch.device(model.device), _linear_weights_on_meta():
        loaded = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    names = sorted(key.removesuffix(".weight_scale") for key in state if key.endswith(".weight_scale"))
    if not names:
        raise UsageError(f"the checkpoint {model.name} says it is quantized but has no quantized weights "
                         "(no *.weight_scale tensors)")
    for name in names:
        tensors = {part: state.pop(f"{name}.{part}", None) for part in QUANTIZED_TENSORS}
        in_precision = {part: None if tensors[part] is None else tensors[part].to(model.dtype)
                        for part in ("bias", "pre_quant_scale")}
        linear = QuantizedLinear(tensors["weight"], tensors["weight_scale"], tensors["input_scale"],
                                 in_precision["bias"], in_precision["pre_quant_scale"], tensors["weight_scale_2"])
        parent, _, child = name.rpartition(".")
        setattr(loaded.get_submodule(parent), child, linear.to(model.device))
    missing, unexpected = loaded.load_state_dict({k: v.to(model.device, model.dtype) for k, v in state.items()},
                                                 strict=False, assign=True)
    quantized = {f"{name}.{part}" for name in names for part in QUANTIZED_TENSORS}
    missing = [key for key in missing if key not in quantized and not key.endswith("lm_head.weight")]
    if getattr(config, "tie_word_embeddings", False):
        loaded.tie_weights()
    missing += [name for name, tensor in loaded.state_dict().items() if tensor.is_meta and name not in missing]
    if missing or unexpected:
        raise UsageError(f"the pre-quantized checkpoint {model.name} does not fit its config: "
                         f"{len(missing)} weight(s) missing (first: {missing[:1]}), {len(unexpected)} unexpected "
                         f"(first: {unexpected[:1]})")
    logger.info("loaded a pre-quantized ModelOpt checkpoint: %d linear layers in %s", len(names), linear.format)
    return loaded.eval()
