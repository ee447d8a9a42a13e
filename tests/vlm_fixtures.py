"""Tiny vision-language models for the tests, built offline once per name."""

from __future__ import annotations

from load.models import load_config
from options import ModelOptions

_vlms: dict = {}


def tiny_vlm(name: str):
    """The run_vlm.py family object (vlm/) around a tiny preset, FP32 on the CPU."""
    if name not in _vlms:
        from vlm.families import FAMILIES

        options = ModelOptions(name, "FP32", "cpu")
        config = load_config(options)
        _vlms[name] = FAMILIES[config.model_type].load(options, config)
    return _vlms[name]
