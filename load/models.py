"""The model's config and the Hugging Face model itself: built in for presets and --random_weights, else loaded."""

from __future__ import annotations

import difflib
import glob
import os

import torch

from errors import UsageError
from load.presets import LLM_FAMILIES, MODEL_CONFIGS, TINY_PRESETS, VLM_FAMILIES, builtin_config, is_tiny_preset
from options import ModelOptions

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
NO_DOWNLOAD = "for no download, use a tiny-* preset (python run_llm.py --help lists them) or --random_weights"


def load_config(model: ModelOptions):
    """The model's config: built in for presets and --random_weights, read from a local folder, the Hugging
    Face cache or the Hub otherwise. An unknown or unreachable name fails at once, in one line."""
    from transformers import AutoConfig

    name = model.name
    if is_tiny_preset(name) or (model.random_weights and name in MODEL_CONFIGS):
        return builtin_config(name)
    local = os.path.isdir(name)
    if not local and name.startswith("tiny-"):
        raise UsageError(f"there is no preset '{name}'{_did_you_mean(name)}; the presets: {', '.join(TINY_PRESETS)}")
    if not local:
        _check_hub_has(name, model.random_weights)
    try:  # --random_weights never downloads: its config is local or cached
        config = AutoConfig.from_pretrained(name, trust_remote_code=True, local_files_only=model.random_weights)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load the config of '{name}' ({str(err).splitlines()[0]}){_did_you_mean(name)}; "
                         + NO_DOWNLOAD) from None
    if local and not model.random_weights and not any(glob.glob(os.path.join(name, p)) for p in WEIGHT_FILES):
        raise UsageError(f"the folder {name} has a config but no weights (*.safetensors or *.bin); "
                         "add --random_weights to build it with random weights")
    return config


def _did_you_mean(name: str) -> str:
    if name in MODEL_CONFIGS:
        return " (it has a built-in config: add --random_weights to run it without a download)"
    close = difflib.get_close_matches(name, [*TINY_PRESETS, *MODEL_CONFIGS], n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_hub_has(name: str, random_weights: bool) -> None:
    """A Hub id not in the local cache gets one attempt at the Hub (no retries): offline, unknown and
    private names fail here, before any slow work."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except HFValidationError:
        raise UsageError(f"'{name}' is neither a folder here nor a Hub id (namespace/name){_did_you_mean(name)}; "
                         "check the path or the name") from None
    if random_weights:
        raise UsageError(f"--random_weights has no built-in config for '{name}' and it is not in the local "
                         f"Hugging Face cache{_did_you_mean(name)}; give a model id of the README's tables, "
                         "a local folder, or a tiny-* preset")
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"'{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
                         f"{_did_you_mean(name)}; " + NO_DOWNLOAD)
    try:
        response = get_session().get(f"{constants.ENDPOINT}/api/models/{name}", headers=build_hf_headers(),
                                     timeout=10)
    except Exception as err:  # any transport failure: no network, DNS, proxy, TLS
        raise UsageError(f"cannot reach the Hugging Face Hub for '{name}' ({type(err).__name__})"
                         f"{_did_you_mean(name)}; check the network, or " + NO_DOWNLOAD) from None
    if response.status_code in (401, 403, 404):
        raise UsageError(f"the Hub has no model '{name}' that this login can read (HTTP {response.status_code})"
                         f"{_did_you_mean(name)}; check the name, run `hf auth login` for a gated model, or "
                         + NO_DOWNLOAD)


def check_llm_family(config, script: str = "run_llm.py") -> None:
    """run_llm.py runs causal LMs of the README's families; a VLM goes to run_vlm.py."""
    model_type = getattr(config, "model_type", "?")
    if model_type in VLM_FAMILIES:
        raise UsageError(f"{script} runs text-only LLMs, and this is a vision-language model "
                         f"({VLM_FAMILIES[model_type]}); use run_vlm.py")
    if model_type not in LLM_FAMILIES:
        raise UsageError(f"{script} runs causal LMs of the families {', '.join(sorted(set(LLM_FAMILIES.values())))} "
                         f"(model_type {', '.join(LLM_FAMILIES)}), not model_type '{model_type}'")


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
