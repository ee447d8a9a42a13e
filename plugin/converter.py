"""Torch-TensorRT converter: `llm_tools::edgellm_attention` -> the Edge-LLM AttentionPlugin layer.

The plugin (IPluginV2DynamicExt "AttentionPlugin" version "1") takes its five inputs in the op's
order and has two outputs, the attention and the delta K/V; its fields are INT32 scalars.
Importing this module registers the converter; plugin_utils.check_plugin_backend has loaded the
library (which registers the creator) before any conversion.
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt
import torch
from torch_tensorrt.dynamo.conversion._ConversionContext import ConversionContext
from torch_tensorrt.dynamo.conversion._ConverterRegistry import ConverterPriority, dynamo_tensorrt_converter

from plugin.attention import PLUGIN_NAME, PLUGIN_VERSION  # also defines torch.ops.llm_tools.edgellm_attention

EDGELLM_ATTENTION = torch.ops.llm_tools.edgellm_attention.default


def plugin_fields(num_q_heads: int, num_kv_heads: int, head_size: int) -> trt.PluginFieldCollection:
    values = {"num_q_heads": num_q_heads, "num_kv_heads": num_kv_heads, "head_size": head_size,
              "enable_tree_attention": 0, "enable_delta_kv_output": 1}
    return trt.PluginFieldCollection([trt.PluginField(name, np.array([value], dtype=np.int32),
                                                      trt.PluginFieldType.INT32) for name, value in values.items()])


def plugin_creator():
    return trt.get_plugin_registry().get_plugin_creator(PLUGIN_NAME, PLUGIN_VERSION, "")


@dynamo_tensorrt_converter(EDGELLM_ATTENTION, supports_dynamic_shapes=True, priority=ConverterPriority.HIGH)
def convert_edgellm_attention(ctx: ConversionContext, target, args, kwargs, name: str):
    qkv, kv_cache, context_lengths, rope_table, start_idx, num_q_heads, num_kv_heads, head_size = args
    creator = plugin_creator()
    if creator is None:
        raise RuntimeError(f"TensorRT has no {PLUGIN_NAME} version {PLUGIN_VERSION}: load the plugin library first")
    plugin = creator.create_plugin(name, plugin_fields(num_q_heads, num_kv_heads, head_size))
    layer = ctx.net.add_plugin_v2([qkv, kv_cache, context_lengths, rope_table, start_idx], plugin)
    layer.name = name
    return layer.get_output(0), layer.get_output(1)
