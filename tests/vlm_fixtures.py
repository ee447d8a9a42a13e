"""Tiny vision-language models for the tests, built offline once per name."""

from __future__ import annotations

import argparse

from utils import load_config

_vlms: dict = {}


def tiny_vlm(name: str):
    """The run_vlm.py family object (vlm.py) around a tiny preset, FP32 on the CPU."""
    if name not in _vlms:
        from vlm import FAMILIES

        args = argparse.Namespace(model=name, random_weights=False, precision="FP32", device="cpu", tokenizer=None)
        config = load_config(args)
        _vlms[name] = FAMILIES[config.model_type].load(args, config)
    return _vlms[name]
