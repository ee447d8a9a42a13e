"""Quantized models under --compiler tensorrt: engines with INT8 and FP8 weights build on the CPU machine, their
networks (evaluated layer by layer, trt_reference.py) compute the quantized lowered graph, and a planted wrong
weight scale in the converter is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import lowered_graph
from test_tensorrt_compile import assert_one_engine_nothing_left, compile_as_run_llm_does
from test_tensorrt_network import STEPS, errors_over_steps
from trt_helpers import import_torch_tensorrt, network_of_engine

pytest.importorskip("modelopt")
from test_quantize import FORMATS, canonical_model, quantized_pair  # noqa: E402

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow, pytest.mark.xdist_group("built_engines")]
TOLERANCE = 1e-4  # as test_tensorrt_network.py: the engine computes the same quantized graph
CASES = [("tiny-llama", "int8-weight-only"), ("tiny-llama", "fp8"), ("tiny-llama", "int8-smoothquant"),
         ("tiny-llama", "nvfp4-weight-only"), ("tiny-qwen3", "fp8-weight-only"), ("tiny-qwen3", "int8"),
         ("tiny-qwen3", "nvfp4-weight-only"), ("tiny-llama", "nvfp4")]
STORED = {"int8": np.dtype(np.int8), "fp8": "FP8", "nvfp4": "FP4"}  # Weights name INT8 by numpy's dtype
_BUILT: dict = {}


def built(family: str, fmt: str):
    """(quantized lowered static_v3 graph, its compiled module), built once per family and format."""
    import_torch_tensorrt()
    if (family, fmt) not in _BUILT:
        gm = lowered_graph(canonical_model(family, fmt), 1, 24, "static_v3")
        compiled, _ = compile_as_run_llm_does(gm, family, "static_v3")
        _BUILT[family, fmt] = gm, compiled
    return _BUILT[family, fmt]


@pytest.mark.parametrize("family,fmt", CASES)
def test_a_quantized_engine_stores_one_byte_weights_and_computes_the_quantized_graph(family, fmt):
    gm, compiled = built(family, fmt)
    import tensorrt as trt
    engine = assert_one_engine_nothing_left(compiled, f"{family} {fmt} static_v3")
    network = network_of_engine(engine)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    kinds = [layer.type for layer in layers]
    constants = [layer for layer in layers if layer.type == trt.LayerType.CONSTANT and layer.name.endswith("_weight")]
    for layer in constants:
        layer.__class__ = trt.IConstantLayer  # the network hands out ILayer; its weights are the subclass's
    stored = {layer.weights.dtype for layer in constants}
    linears = 7 * 2  # q, k, v, o, gate, up, down in each of the 2 layers
    weight_only = "weight-only" in fmt
    expected = STORED[fmt.split("-")[0]]
    assert stored == {expected if isinstance(expected, np.dtype) else getattr(trt.DataType, expected)}
    nvfp4 = fmt.startswith("nvfp4")  # its block scales are dequantized too, the activations' at run time
    dequantized = (1 if weight_only else 2) * (2 if nvfp4 else 1)
    assert kinds.count(trt.LayerType.DEQUANTIZE) == linears * dequantized
    quantize = trt.LayerType.DYNAMIC_QUANTIZE if nvfp4 else trt.LayerType.QUANTIZE
    assert kinds.count(quantize) == (0 if weight_only else linears)
    errors = errors_over_steps(gm, compiled, "static_v3", family)
    print(f"\n{family} {fmt}: engine {len(engine.serialized_engine)} bytes; {kinds.count(trt.LayerType.DEQUANTIZE)} "
          f"dequantize, {kinds.count(quantize)} {'dynamic ' if nvfp4 else ''}quantize layers; largest relative error "
          f"{max(errors):.1e} over {len(STEPS)} steps")
    assert max(errors) <= TOLERANCE


def test_a_wrong_weight_scale_in_the_converter_is_caught(monkeypatch):
    """The converter planted to dequantize with twice the scale: the evaluated network parts from the graph."""
    from compilers import quantized_linear_converter

    import_torch_tensorrt()
    dequantize = quantized_linear_converter._dequantize

    def doubled(ctx, quantized, scale, name, output_type):
        return dequantize(ctx, quantized, scale * 2 if name.endswith("_weight_dequantize") else scale, name,
                          output_type)

    monkeypatch.setattr(quantized_linear_converter, "_dequantize", doubled)
    _, canonical, _ = quantized_pair("tiny-llama", FORMATS["int8-weight-only"][0])
    gm = lowered_graph(canonical, 1, 24, "static_v3")
    compiled, _ = compile_as_run_llm_does(gm, "tiny-llama", "static_v3")
    errors = errors_over_steps(gm, compiled, "static_v3", "tiny-llama")
    print(f"\nplanted: weights dequantized with twice their scale: largest relative error {max(errors):.1e}")
    assert max(errors) > 1e-2


def test_nvfp4_activations_left_unquantized_by_the_converter_are_caught(monkeypatch):
    """The converter planted to skip the dynamic quantization of NVFP4 inputs: the network parts from the graph."""
    import_torch_tensorrt()
    from compilers import quantized_linear_converter

    monkeypatch.setattr(quantized_linear_converter, "_nvfp4_input", lambda ctx, x, scale, name: x)
    gm = lowered_graph(canonical_model("tiny-llama", "nvfp4"), 1, 24, "static_v3")
    compiled, _ = compile_as_run_llm_does(gm, "tiny-llama", "static_v3")
    errors = errors_over_steps(gm, compiled, "static_v3", "tiny-llama")
    print(f"\nplanted: NVFP4 inputs not quantized: largest relative error {max(errors):.1e}")
    assert max(errors) > 1e-2


def test_an_int8_engine_is_about_half_the_size_of_an_fp16_one():
    """A Llama of 14M parameters (large enough that weights, not kernels, make most of an engine) in FP16:
    the engine of its INT8 weight-only graph against the engine of its FP16 graph, both static_v3."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantize import modelopt_quantize

    import_torch_tensorrt()
    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1024, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    quantized = modelopt_quantize.quantize_model(model, FORMATS["int8-weight-only"][0], 24, tokenizer=None)
    sizes = {}
    for name, source in (("FP16", model), ("int8 weight-only", quantized)):
        compiled, _ = compile_as_run_llm_does(lowered_graph(source, 1, 24, "static_v3"), "tiny-llama", "static_v3",
                                              precision="FP16")
        sizes[name] = len(assert_one_engine_nothing_left(compiled, f"14M Llama {name}").serialized_engine)
    ratio = sizes["int8 weight-only"] / sizes["FP16"]
    print(f"\nengine bytes: FP16 {sizes['FP16']}, int8 weight-only {sizes['int8 weight-only']}: ratio {ratio:.2f}")
    assert ratio < 0.65
