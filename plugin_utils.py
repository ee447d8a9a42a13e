"""Plugin backend: locating the TensorRT Edge-LLM AttentionPlugin library.

The library is looked for at --plugin_path, then at $TRT_EDGELLM_PLUGIN_PATH, then at
DEFAULT_PLUGIN_PATH (build it as the README's "Plugin Backend Setup" says).
"""

from __future__ import annotations

import argparse
import os

from utils import UsageError

PLUGIN_PATH_ENV = "TRT_EDGELLM_PLUGIN_PATH"
DEFAULT_PLUGIN_PATH = os.path.expanduser("~/TensorRT-Edge-LLM/build/libNvInfer_edgellm_plugin.so")


def plugin_path(args: argparse.Namespace) -> str:
    return args.plugin_path or os.environ.get(PLUGIN_PATH_ENV) or DEFAULT_PLUGIN_PATH


def check_plugin_backend(args: argparse.Namespace) -> None:
    """Fail with one line, before any weights load, when the plugin backend cannot serve this run."""
    path = plugin_path(args)
    if not os.path.isfile(path):
        raise UsageError(f"--backend plugin needs the Edge-LLM AttentionPlugin library, and {path} does not exist; "
                         f"build it (README: Plugin Backend Setup) and pass --plugin_path or set ${PLUGIN_PATH_ENV}, "
                         "or use --backend sdpa")
    raise UsageError("--backend plugin: generation through the AttentionPlugin is not available in this version; "
                     "use --backend sdpa")
