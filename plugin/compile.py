"""The plugin backend's compile: a PluginCausalLM as it is, under torch.compile, or as one TensorRT engine.

Under TensorRT each layer's `llm_tools::edgellm_attention` op becomes the Edge-LLM AttentionPlugin
layer (plugin/converter.py); under eager and inductor the op runs its PyTorch implementation.
"""

from __future__ import annotations

from typing import Callable

import torch

from compilers.engine_cache import engine_cache_settings
from compilers.tensorrt import sequence_profiles
from options import CompileOptions
from plugin.attention import rope_table
from plugin.model import PluginCausalLM


def compile_plugin_model(plugin_lm: PluginCausalLM, options: CompileOptions, caches: list[torch.Tensor],
                         max_seq_len: int) -> Callable:
    """The PluginCausalLM under --compiler: itself (eager), torch.compile, or a TensorRT engine with the plugin."""
    if options.compiler == "eager":
        return plugin_lm
    if options.compiler == "inductor":
        return torch.compile(plugin_lm, dynamic=True, mode="reduce-overhead" if options.cudagraph else None)
    return compile_plugin_with_tensorrt(plugin_lm, options, caches, max_seq_len)


def compile_plugin_with_tensorrt(plugin_lm: PluginCausalLM, options: CompileOptions, caches: list[torch.Tensor],
                                 max_seq_len: int):
    """A PluginCausalLM (plugin/model.py) as one engine, its attention the Edge-LLM AttentionPlugin."""
    import torch_tensorrt

    import plugin.converter  # noqa: F401  (registers the op's converter)

    batch_size, device = caches[0].shape[0], caches[0].device
    rope = rope_table(plugin_lm.model.model.rotary_emb, max_seq_len, device)
    tokens = torch.zeros(batch_size, min(3, max_seq_len), dtype=torch.long, device=device)
    per_row = torch.zeros(batch_size, dtype=torch.int32, device=device)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    program = torch.export.export(plugin_lm, (tokens, per_row, rope, per_row, *caches),
                                  dynamic_shapes=({1: seq}, None, None, None, (None,) * len(caches)), strict=False)
    specs = [torch_tensorrt.Input(profiles=sequence_profiles(lambda length: (batch_size, length), max_seq_len),
                                  dtype=torch.int64),
             torch_tensorrt.Input(shape=(batch_size,), dtype=torch.int32),
             torch_tensorrt.Input(shape=tuple(rope.shape), dtype=torch.float32),
             torch_tensorrt.Input(shape=(batch_size,), dtype=torch.int32),
             *[torch_tensorrt.Input(shape=tuple(c.shape), dtype=c.dtype) for c in caches]]
    compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, min_block_size=options.min_block_size,
                                             **engine_cache_settings(options))
    torch_tensorrt.runtime.set_cudagraphs_mode(options.cudagraph)
    return compiled
