"""--compiler tensorrt's own call, torch_tensorrt.dynamo.compile, run on a machine with no GPU.

The lowered graph goes through utils.compile_lowered with the options run_llm.py builds from its flags
(and the plugin backend through plugin/compile.py), so the keywords, the input specs, the partitioner
and the runtime module are the product's. Only what needs a GPU is stood in for (trt_helpers).
Each test prints the engines and the nodes left to PyTorch it counted (`pytest -s` shows them).
"""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, lowered_graph, tiny_model
from options import CACHES, CompileOptions, ModelOptions
from static_cache_common import cache_inputs
from trt_helpers import engines_and_leftovers, engines_built_not_loaded, import_torch_tensorrt

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow]
MAX_SEQ_LEN = 16


def compile_as_run_llm_does(gm, family: str, cache: str):
    """utils.compile_lowered for `--compiler tensorrt --cache CACHE --precision FP32` on the CPU."""
    import_torch_tensorrt()
    from compilers.in_place_step import InPlaceCacheStep
    from utils import compile_lowered

    with engines_built_not_loaded():
        compiled = compile_lowered(gm, CompileOptions("tensorrt", cache), ModelOptions(family, "FP32"), MAX_SEQ_LEN)
    return compiled.model if isinstance(compiled, InPlaceCacheStep) else compiled


def assert_one_engine_nothing_left(compiled, what: str):
    engines, leftovers = engines_and_leftovers(compiled)
    print(f"\n{what}: {len(engines)} TensorRT engine(s), {len(leftovers)} node(s) left to PyTorch")
    assert leftovers == []
    assert len(engines) == 1
    assert len(engines[0].serialized_engine) > 100_000
    return engines[0]


@pytest.mark.parametrize("cache", ["", *CACHES])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_user_call_gives_one_engine_and_nothing_left_to_pytorch(family, cache):
    gm = lowered_graph(tiny_model(family), 1, MAX_SEQ_LEN, cache)
    caches = [node.name for node in cache_inputs(gm)]
    assert len(caches) == (2 * tiny_model(family).config.num_hidden_layers if cache else 0)
    engine = assert_one_engine_nothing_left(compile_as_run_llm_does(gm, family, cache), f"{family} {cache or 'no cache'}")
    # Every cache reaches the engine as an input and comes back as an output, after the logits.
    assert set(caches) <= set(engine.input_binding_names)
    assert len(engine.output_binding_names) == 1 + len(caches)


@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_vlm_language_models_give_one_engine(family):
    from export import export_llm
    from utils import lower
    from vlm_fixtures import tiny_vlm

    vlm = tiny_vlm(family)
    gm = lower(export_llm(vlm.language_model(), 1, MAX_SEQ_LEN, embeds=True, position_rows=vlm.position_rows),
               "static_v2", MAX_SEQ_LEN)
    assert_one_engine_nothing_left(compile_as_run_llm_does(gm, family, "static_v2"), f"{family} language model")


def test_the_plugin_backend_gives_one_engine(monkeypatch):
    """TensorRT-RTX has no plugin layers: the stand-in creator (as in test_plugin.py) and a stand-in
    plugin layer, made of the network's own layers with the plugin's two output shapes, take their place."""
    import_torch_tensorrt()
    import numpy as np
    import tensorrt as trt

    from plugin import converter as plugin_converter
    from plugin.compile import compile_plugin_model
    from plugin.model import PluginCausalLM, allocate_plugin_caches

    model = tiny_model("tiny-qwen3")
    config = model.config
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    created = []

    class Creator:
        def create_plugin(self, name, fields):
            created.append(name)
            return (name, fields)

    class Layer:
        def __init__(self, outputs):
            self.outputs, self.name = outputs, None

        def get_output(self, index):
            return self.outputs[index]

    def add_plugin_v2(network, inputs, plugin):
        qkv = network.add_shuffle(inputs[0])
        qkv.reshape_dims = (0, 0, hq + 2 * hkv, d)  # [B, L, heads, D]

        def heads(first, count):
            index = network.add_constant((count,), trt.Weights(np.arange(first, first + count, dtype=np.int32)))
            return network.add_gather(qkv.get_output(0), index.get_output(0), 2).get_output(0)

        delta = network.add_shuffle(heads(hq, 2 * hkv))
        delta.reshape_dims = (0, 0, 2, hkv, d)
        delta.second_transpose = (0, 2, 3, 1, 4)  # [B, 2, Hkv, L, D]
        return Layer([heads(0, hq), delta.get_output(0)])

    monkeypatch.setattr(plugin_converter, "plugin_creator", lambda: Creator())
    monkeypatch.setattr(trt.INetworkDefinition, "add_plugin_v2", add_plugin_v2, raising=False)
    caches = allocate_plugin_caches(model, 1, MAX_SEQ_LEN, torch.float32, "cpu")
    with engines_built_not_loaded():
        compiled = compile_plugin_model(PluginCausalLM(model), CompileOptions("tensorrt"), caches, MAX_SEQ_LEN)
    assert_one_engine_nothing_left(compiled, "plugin backend, tiny-qwen3")
    assert len(created) == config.num_hidden_layers


def test_a_node_left_to_pytorch_is_counted(monkeypatch):
    """The count can fail: with the canonical attention left to PyTorch, its nodes split the engine."""
    torch_tensorrt = import_torch_tensorrt()

    attention = torch.ops.llm_tools.attention.default
    compile_ = torch_tensorrt.dynamo.compile
    monkeypatch.setattr(torch_tensorrt.dynamo, "compile",
                        lambda *args, **kwargs: compile_(*args, **kwargs, torch_executed_ops={attention}))
    compiled = compile_as_run_llm_does(lowered_graph(tiny_model("tiny-llama"), 1, MAX_SEQ_LEN, "static_v2"),
                                       "tiny-llama", "static_v2")
    engines, leftovers = engines_and_leftovers(compiled)
    assert len([node for node in leftovers if "llm_tools.attention" in node]) == 2  # one per layer
    assert len(engines) > 1
