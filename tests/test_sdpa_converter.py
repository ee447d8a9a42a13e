"""sdpa_converter: the TensorRT layers it emits, evaluated layer by layer, against the canonical node."""

from __future__ import annotations

import pytest
import torch

from test_register_sdpa import CASES, _qkv
from trt_helpers import import_torch_tensorrt, network_of

pytestmark = pytest.mark.tensorrt


@pytest.fixture(autouse=True, params=["attention_layer", "matmul_softmax"])
def layers(request, monkeypatch):
    """Every test runs for both conversions: TensorRT's attention layer and the composed fallback."""
    import_torch_tensorrt()
    import tensorrt as trt

    import sdpa_converter

    if request.param == sdpa_converter.ATTENTION_LAYER and not hasattr(trt.INetworkDefinition, "add_attention_v2"):
        pytest.skip("this TensorRT has no attention layer")
    monkeypatch.setattr(sdpa_converter, "LAYERS", request.param)
    return request.param


class Attention(torch.nn.Module):
    def __init__(self, scale, window):
        super().__init__()
        self.scale, self.window = scale, window

    def forward(self, q, k, v):
        return torch.ops.llm_tools.attention(q, k, v, self.scale, True, self.window)


def attention_network(q_heads, kv_heads, scale, window, max_len=64):
    """The network Torch-TensorRT builds for one canonical node, dynamic in L and S (1..max_len)."""
    torch_tensorrt = import_torch_tensorrt()
    from export import plain_graph_module

    q, k, v = _qkv(q_heads, kv_heads, 3, 7)  # example lengths only: the network takes any L, S
    L, S = torch.export.Dim("L", min=1, max=max_len), torch.export.Dim("S", min=1, max=max_len)
    program = torch.export.export(Attention(scale, window), (q, k, v), dynamic_shapes=({2: L}, {2: S}, {2: S}))
    specs = [torch_tensorrt.Input(min_shape=(*t.shape[:2], 1, t.shape[3]), opt_shape=tuple(t.shape),
                                  max_shape=(*t.shape[:2], max_len, t.shape[3]), dtype=t.dtype) for t in (q, k, v)]
    return network_of(plain_graph_module(program), specs)


def evaluate_attention(network, q, k, v):
    from trt_reference import evaluate

    names = [network.get_input(i).name for i in range(network.num_inputs)]
    (out,) = evaluate(network, dict(zip(names, (q.numpy(), k.numpy(), v.numpy())))).values()
    return torch.from_numpy(out)


def _scale(q, scale):
    return scale if scale is not None else q.shape[-1] ** -0.5


@pytest.mark.parametrize("case", list(CASES))
def test_converter_layers_match_canonical_node(case):
    q_heads, kv_heads, q_len, kv_len, window, scale = CASES[case]
    q, k, v = _qkv(q_heads, kv_heads, q_len, kv_len)
    scale = _scale(q, scale)
    network = attention_network(q_heads, kv_heads, scale, window)
    expected = torch.ops.llm_tools.attention(q, k, v, scale, True, window)
    torch.testing.assert_close(evaluate_attention(network, q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_one_network_serves_two_lengths():
    """Dynamic shapes: the same network, evaluated at two query/key lengths."""
    network = attention_network(8, 2, 0.25, 5)
    for q_len, kv_len in ((4, 10), (1, 23)):
        q, k, v = _qkv(8, 2, q_len, kv_len)
        expected = torch.ops.llm_tools.attention(q, k, v, 0.25, True, 5)
        torch.testing.assert_close(evaluate_attention(network, q, k, v), expected, atol=1e-5, rtol=1e-5)


class PositionedAttention(torch.nn.Module):
    """static_cache_v3's node: queries at given positions, keys the whole (fixed-length) cache."""

    def __init__(self, window):
        super().__init__()
        self.window = window

    def forward(self, q, k, v, positions):
        return torch.ops.llm_tools.attention(q, k, v, 0.25, True, self.window, positions)


@pytest.mark.parametrize("window", [None, 4])
def test_query_positions_match_canonical_node(window):
    """Decode at position 9 and a chunk at 5..8 against a 16-slot cache, from one network."""
    torch_tensorrt = import_torch_tensorrt()
    from export import plain_graph_module

    q, k, v = _qkv(8, 2, 3, 16)
    L = torch.export.Dim("L", min=1, max=16)
    program = torch.export.export(PositionedAttention(window), (q, k, v, torch.arange(3)),
                                  dynamic_shapes=({2: L}, None, None, {0: L}))
    specs = [torch_tensorrt.Input(min_shape=(2, 8, 1, 16), opt_shape=(2, 8, 3, 16), max_shape=(2, 8, 16, 16)),
             torch_tensorrt.Input(shape=(2, 2, 16, 16)), torch_tensorrt.Input(shape=(2, 2, 16, 16)),
             torch_tensorrt.Input(min_shape=(1,), opt_shape=(3,), max_shape=(16,), dtype=torch.int64)]
    network = network_of(plain_graph_module(program), specs)
    from trt_reference import evaluate

    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for positions in (torch.tensor([9]), torch.arange(5, 9)):
        q, _, _ = _qkv(8, 2, len(positions), 16)
        expected = torch.ops.llm_tools.attention(q, k, v, 0.25, True, window, positions)
        (out,) = evaluate(network, dict(zip(names, (q.numpy(), k.numpy(), v.numpy(), positions.numpy())))).values()
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-5, rtol=1e-5)
        # the positions matter: the bottom-right default (query at 15) differs
        assert not torch.allclose(expected, torch.ops.llm_tools.attention(q, k, v, 0.25, True, window), atol=1e-3)


def test_gqa_is_not_materialised(layers):
    """K/V enter the attention Hkv wide: repeated K/V are broadcast (matrix products) or left to the
    attention layer, never built."""
    import tensorrt as trt

    network = attention_network(8, 2, 0.25, None)
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    if layers == "attention_layer":
        (index,) = [i for i, kind in enumerate(kinds) if kind == trt.LayerType.ATTENTION_OUTPUT]
        layer = network.get_layer(index)
        layer.__class__ = trt.IAttentionOutputLayer
        assert layer.attention.get_input(0).shape[1] == 8 and layer.attention.get_input(1).shape[1] == 2
        assert trt.LayerType.MATRIX_MULTIPLY not in kinds
        return
    products = [network.get_layer(i) for i, kind in enumerate(kinds) if kind == trt.LayerType.MATRIX_MULTIPLY]
    assert len(products) == 2
    for layer in products:
        assert layer.get_input(1).shape[1:3] == (2, 1)  # [B, Hkv, 1, S|D, D|S]


def test_a_wrong_causal_mask_is_caught(layers, monkeypatch):
    """The comparison can fail: a top-left causal mask (no S - L offset) breaks chunked prefill. The
    composed mask loses its offset; the attention layer is given the top-left causal kind."""
    import tensorrt as trt

    import sdpa_converter

    if layers == "attention_layer":
        original = trt.INetworkDefinition.add_attention_v2
        monkeypatch.setattr(trt.INetworkDefinition, "add_attention_v2", lambda net, q, k, v, norm, causal: original(
            net, q, k, v, norm, trt.CausalMaskKind.UPPER_LEFT if causal == trt.CausalMaskKind.LOWER_RIGHT else causal))
    else:
        original = sdpa_converter._elementwise

        def no_offset(ctx, name, a, b, op):
            if name.endswith("_offset"):  # S - L  ->  L - L = 0
                return original(ctx, name, b, b, op)
            return original(ctx, name, a, b, op)

        monkeypatch.setattr(sdpa_converter, "_elementwise", no_offset)
    network = attention_network(4, 4, 0.25, None)
    q, k, v = _qkv(4, 4, 5, 12)
    expected = torch.ops.llm_tools.attention(q, k, v, 0.25, True, None)
    assert not torch.allclose(evaluate_attention(network, q, k, v), expected, atol=1e-3)


def test_register_sdpa_is_a_torch_tensorrt_lowering_pass():
    import_torch_tensorrt()
    from torch_tensorrt.dynamo.lowering.passes import ATEN_POST_LOWERING_PASSES

    import register_sdpa

    register_sdpa._register_with_torch_tensorrt()  # this session imported register_sdpa before torch_tensorrt
    assert "register_sdpa_pass" in [p.__name__ for p in ATEN_POST_LOWERING_PASSES.passes]
