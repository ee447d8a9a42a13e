"""The model's config and the Hugging Face model itself: built in for presets and --random_weights, else loaded."""

from __future__ import annotations

import torch

from errors import UsageError
from load.presets import MODEL_CONFIGS, TINY_PRESETS, builtin_config, is_tiny_preset
from options import ModelOptions


def load_config(model: ModelOptions):
    """The model's config, built in for presets and --random_weights, read from disk or the Hub otherwise."""
    from transformers import AutoConfig

    if is_tiny_preset(model.name):
        return builtin_config(model.name)
    if model.random_weights and model.name in MODEL_CONFIGS:
        return builtin_config(model.name)
    try:
        return AutoConfig.from_pretrained(model.name, trust_remote_code=True, local_files_only=model.random_weights)
    except (OSError, ValueError) as err:
        known = ", ".join(list(TINY_PRESETS) + list(MODEL_CONFIGS))
        hint = (f"--random_weights knows these ids: {known}" if model.random_weights
                else f"check the name and the network, or use a tiny-* preset or --random_weights with one of: {known}")
        raise UsageError(f"cannot load model '{model.name}' ({str(err).splitlines()[0]}); {hint}") from None


def check_positions(config, total: int, what: str) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and total > limit:
        raise UsageError(f"{what} = {total} tokens is more than the model's {limit} positions; "
                         "lower --isl or --num_tokens (or shorten the prompt)")


def load_model(model: ModelOptions, config, auto_class=None):
    """The Hugging Face model in eval mode, with sdpa attention, on model.device in model.precision.

    `auto_class` defaults to AutoModelForCausalLM; a VLM family passes its own class.
    """
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    config._attn_implementation = "sdpa"
    if is_tiny_preset(model.name) or model.random_weights:
        torch.manual_seed(0)
        with torch.device(model.device):
            loaded = auto_class.from_config(config, dtype=model.dtype)
    else:
        loaded = auto_class.from_pretrained(model.name, config=config, dtype=model.dtype,
                                            trust_remote_code=True).to(model.device)
    return loaded.eval()
