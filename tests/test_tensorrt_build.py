"""Whole models through Torch-TensorRT into serialized engines, on a machine with no GPU (nothing runs).

The exported program and input specs are the ones --compiler tensorrt builds (compilers/tensorrt.py), through
Torch-TensorRT's engine-only entry point; tests/test_tensorrt_compile.py runs the product's own call for every
family and cache.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from conftest import lowered_graph, tiny_model
from trt_helpers import engines_built_not_loaded, import_torch_tensorrt

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow]
MAX_SEQ_LEN = 64


def build_engine(family: str, cache: str, batch_size: int = 1) -> tuple[bytes, list]:
    """The serialized engine of a family's lowered graph, and the targets of every converted node."""
    import_torch_tensorrt()
    from compilers.tensorrt import tensorrt_program

    gm = lowered_graph(tiny_model(family), batch_size, MAX_SEQ_LEN, cache)
    return build_program(*tensorrt_program(gm, MAX_SEQ_LEN, "cpu"))


def build_program(program, specs) -> tuple[bytes, list]:
    torch_tensorrt = import_torch_tensorrt()
    from torch_tensorrt.dynamo.conversion import _TRTInterpreter

    converted = []
    original_run_node = _TRTInterpreter.TRTInterpreter.run_node

    def recording_run_node(self, node):
        if node.op == "call_function":
            converted.append(node.target)
        return original_run_node(self, node)

    with engines_built_not_loaded(), mock.patch.object(_TRTInterpreter.TRTInterpreter, "run_node", recording_run_node):
        # One engine for the whole graph: this call fails if any node has no converter.
        engine = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program, arg_inputs=specs, min_block_size=1)
    return bytes(engine), converted


@pytest.mark.parametrize("cache", [""])  # batch-2 static_v2/v3 engines: test_tensorrt_network's generations
def test_a_batch_builds_an_engine_with_one_lm_head_product(cache):
    """At batch 2 the lm_head is folded into one matrix multiply (fold_lm_head_batch.py): the engine
    builds, and it converts as many batched products as at batch 1 (RoPE's), none for the lm_head."""
    engine, converted = build_engine("tiny-llama", cache, batch_size=2)
    assert len(engine) > 100_000
    _, converted_at_batch_1 = build_engine("tiny-llama", cache)
    bmm = torch.ops.aten.bmm.default
    assert converted.count(bmm) == converted_at_batch_1.count(bmm)
    assert converted.count(torch.ops.aten.mm.default) == converted_at_batch_1.count(torch.ops.aten.mm.default)


@pytest.mark.parametrize("cache", [""])  # static_v2 through the product's call: test_tensorrt_compile
def test_vlm_language_model_builds_an_engine(cache):
    """Qwen2.5-VL's language model: embeddings and [3, B, L] positions in, every attention converted."""
    import_torch_tensorrt()
    from compilers.tensorrt import tensorrt_program
    from export import export_llm
    from utils import lower
    from vlm_fixtures import tiny_vlm

    vlm = tiny_vlm("tiny-qwen2.5-vl")
    gm = lower(export_llm(vlm.language_model(), 1, MAX_SEQ_LEN, embeds=True, position_rows=3), cache, MAX_SEQ_LEN)
    program, specs = tensorrt_program(gm, MAX_SEQ_LEN, "cpu")
    assert specs[0].shape["max_shape"] == (1, MAX_SEQ_LEN, vlm.config.get_text_config().hidden_size)
    assert specs[1].shape["max_shape"] == (3, 1, MAX_SEQ_LEN)
    engine, converted = build_program(program, specs)
    assert len(engine) > 100_000
    assert converted.count(torch.ops.llm_tools.attention.default) == vlm.config.get_text_config().num_hidden_layers


def test_eagle2_language_model_and_vision_tower_build_engines():
    import_torch_tensorrt()
    from export import export_llm
    from test_tensorrt_compile import assert_one_engine_nothing_left, compile_as_run_llm_does
    from utils import lower
    from vlm.eagle2 import _VisionHidden
    from vlm_fixtures import tiny_vlm

    vlm = tiny_vlm("tiny-eagle2")
    gm = lower(export_llm(vlm.language_model(), 1, MAX_SEQ_LEN, embeds=True), "static_v3", MAX_SEQ_LEN)
    # The product's call: the engine-only entry point cannot return the KV-cache update layers' aliased outputs
    # (it unflattens every engine output into the graph's own outputs, the logits).
    compiled, _ = compile_as_run_llm_does(gm, "tiny-eagle2", "static_v3", max_seq_len=MAX_SEQ_LEN)
    assert_one_engine_nothing_left(compiled, "tiny-eagle2 language model, static_v3")

    size = vlm.config.vision_config.image_size  # the vision tower: static shapes, as run_vlm.py compiles it
    pixels = torch.zeros(2, 3, size, size)
    program = torch.export.export(_VisionHidden(vlm.model.vision_model), (pixels,))
    engine, converted = build_program(program, [pixels])
    assert len(engine) > 100_000
    # SigLIP's (non-causal) attention goes through Torch-TensorRT's sdpa converter, or through ours where
    # register_sdpa is registered as a Torch-TensorRT lowering pass in this process
    attention_ops = (torch.ops.aten.scaled_dot_product_attention.default, torch.ops.llm_tools.attention.default)
    assert sum(converted.count(op) for op in attention_ops) == vlm.config.vision_config.num_hidden_layers
