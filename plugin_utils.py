"""Plugin backend: finding, loading and checking the TensorRT Edge-LLM AttentionPlugin library.

The library is looked for at --plugin_path, then at $TRT_EDGELLM_PLUGIN_PATH, then at
DEFAULT_PLUGIN_PATH (build it as the README's "Plugin Backend Setup" says). Only `--compiler
tensorrt` needs it: under eager and inductor the op runs its PyTorch implementation
(plugin/attention.py). Everything here runs before any weights load.
"""

from __future__ import annotations

import ctypes
import os

import torch

from errors import UsageError, logger
from load.presets import head_dim
from options import ModelOptions
from plugin.attention import PLUGIN_NAME, PLUGIN_VERSION

PLUGIN_PATH_ENV = "TRT_EDGELLM_PLUGIN_PATH"
DEFAULT_PLUGIN_PATH = os.path.expanduser("~/TensorRT-Edge-LLM/build/libNvInfer_edgellm_plugin.so")
PLUGIN_FAMILIES = ("llama", "qwen2", "qwen3")
PLUGIN_HEAD_SIZES = (64, 128)
# Compute capabilities the plugin's kernels are built for: not 9.0 (H100, H200).
PLUGIN_CAPABILITIES = {(8, 0), (8, 6), (8, 7), (8, 9), (10, 0), (10, 1), (12, 0), (12, 1)}
_FALLBACK = "or use --backend sdpa"


def plugin_path(flag: str | None) -> str:
    """--plugin_path, else $TRT_EDGELLM_PLUGIN_PATH, else DEFAULT_PLUGIN_PATH."""
    return flag or os.environ.get(PLUGIN_PATH_ENV) or DEFAULT_PLUGIN_PATH


def _load_library(path: str) -> None:
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # its static initialisers register the plugin creators


def _registered_creator():
    """The AttentionPlugin creator in TensorRT's plugin registry (of any version or kind), or None."""
    import tensorrt as trt

    for creator in trt.get_plugin_registry().all_creators:
        if getattr(creator, "name", None) == PLUGIN_NAME:
            return creator
    return None


def _is_v2_creator(creator) -> bool:
    import tensorrt as trt

    return isinstance(creator, trt.IPluginCreator) and getattr(creator, "plugin_version", None) == PLUGIN_VERSION


def check_plugin_backend(model: ModelOptions, compiler: str, plugin_path_flag: str | None, config,
                         fallback: str = _FALLBACK) -> None:
    """Fail with one line when the plugin backend cannot serve this run (before any weights load);
    `fallback` ends the line with what to do instead."""
    family = getattr(config, "model_type", "?")
    if family not in PLUGIN_FAMILIES:
        raise UsageError(f"--backend plugin supports the {', '.join(PLUGIN_FAMILIES)} families, not {family}; "
                         + fallback)
    path = plugin_path(plugin_path_flag)
    if compiler != "tensorrt":
        if plugin_path_flag is not None and not os.path.isfile(path):
            raise UsageError(f"--plugin_path {path} does not exist; build the library (README: Plugin Backend "
                             f"Setup), or leave --plugin_path out to run the plugin op's PyTorch implementation")
        logger.warning("--backend plugin with --compiler %s runs the AttentionPlugin op's PyTorch implementation; "
                       "the plugin library itself is used by --compiler tensorrt", compiler)
        return
    if model.precision != "FP16":
        raise UsageError(f"--backend plugin with --compiler tensorrt runs in FP16 only (the plugin's kernels), "
                         f"not {model.precision}; use --precision FP16, or --compiler eager")
    if head_dim(config) not in PLUGIN_HEAD_SIZES:
        raise UsageError(f"the AttentionPlugin handles head sizes {PLUGIN_HEAD_SIZES}, and {model.name} has "
                         f"{head_dim(config)}; " + fallback)
    capability = torch.cuda.get_device_capability(model.device)
    if capability not in PLUGIN_CAPABILITIES:
        raise UsageError(f"the AttentionPlugin has no kernels for this GPU (compute capability "
                         f"{capability[0]}.{capability[1]}; it covers 8.0, 8.6, 8.7, 8.9, 10.0, 10.1, 12.0, 12.1); "
                         + fallback)
    if not os.path.isfile(path):
        raise UsageError(f"--backend plugin needs the Edge-LLM AttentionPlugin library, and {path} does not exist; "
                         f"build it (README: Plugin Backend Setup) and pass --plugin_path or set ${PLUGIN_PATH_ENV}, "
                         + fallback)
    if "tensorrt_edgellm" in path:
        raise UsageError(f"{path} is from the tensorrt-edgellm wheel, whose plugin has another contract (IPluginV3, "
                         "paged KV cache); build the feature branch the README names, " + fallback)
    try:
        _load_library(path)
    except OSError as err:
        raise UsageError(f"cannot load {path} ({str(err).splitlines()[0]}); it needs TensorRT 10's libnvinfer, "
                         + fallback) from None
    creator = _registered_creator()
    if creator is None:
        raise UsageError(f"{path} loaded but registered no {PLUGIN_NAME}; build the feature branch the README names, "
                         + fallback)
    if not _is_v2_creator(creator):
        raise UsageError(f"{path} registers an {PLUGIN_NAME} of another kind (not the IPluginV2 version "
                         f"{PLUGIN_VERSION} of the feature branch; the tensorrt-edgellm wheel's is IPluginV3), "
                         + fallback)
