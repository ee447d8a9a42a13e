"""register_sdpa: the canonical attention op against an independent reference, and the pass on real models."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAMILIES, tiny_model
from export import export_llm
from register_sdpa import attention, attention_nodes, register_sdpa

aten = torch.ops.aten


def reference_attention(q, k, v, scale, window=None, aligned="bottom-right"):
    """Plain softmax attention with K/V repeated per group and a mask built element by element."""
    batch, q_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    k = k.repeat_interleave(q_heads // kv_heads, dim=1)
    v = v.repeat_interleave(q_heads // kv_heads, dim=1)
    offset = kv_len - q_len if aligned == "bottom-right" else 0
    allowed = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(kv_len):
            allowed[i, j] = j <= i + offset and (window is None or j > i + offset - window)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


CASES = {
    # name: (q_heads, kv_heads, q_len, kv_len, window, scale)
    "prefill": (4, 4, 9, 9, None, None),
    "decode": (4, 4, 1, 13, None, None),
    "chunked-prefill": (4, 4, 5, 12, None, None),
    "gqa-4to1": (8, 2, 6, 6, None, None),
    "gqa-decode": (8, 2, 1, 10, None, None),
    "sliding-window-prefill": (4, 2, 20, 20, 6, None),
    "sliding-window-decode": (4, 2, 1, 20, 6, None),
    "sliding-window-chunk": (4, 2, 7, 20, 6, None),
    "custom-scale": (4, 2, 8, 8, None, 0.05),
}


def _qkv(q_heads, kv_heads, q_len, kv_len, head_dim=16, batch=2):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch, q_heads, q_len, head_dim, generator=gen)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    return q, k, v


@pytest.mark.parametrize("case", list(CASES))
def test_attention_op_matches_reference(case):
    q_heads, kv_heads, q_len, kv_len, window, scale = CASES[case]
    q, k, v = _qkv(q_heads, kv_heads, q_len, kv_len)
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    out = attention(q, k, v, scale, True, window)
    torch.testing.assert_close(out, reference_attention(q, k, v, scale, window), atol=1e-5, rtol=1e-5)


def test_reference_tells_top_left_from_bottom_right():
    """The comparison above can fail: top-left alignment (plain is_causal) is wrong for chunked prefill."""
    q, k, v = _qkv(4, 4, 5, 12)
    scale = 0.25
    out = attention(q, k, v, scale, True, None)
    assert not torch.allclose(out, reference_attention(q, k, v, scale, aligned="top-left"), atol=1e-3)
    assert not torch.allclose(attention(q, k, v, scale, True, 3), reference_attention(q, k, v, scale), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_attention_becomes_canonical(family):
    model = tiny_model(family)
    config = model.config
    gm = register_sdpa(export_llm(model, 2, 64))
    nodes = attention_nodes(gm)
    assert len(nodes) == config.num_hidden_layers
    assert not [n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default]
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    for i, node in enumerate(nodes):
        assert node.args[1].meta["val"].shape[1] == kv_heads  # no repeat_kv before the node
        assert node.args[4] is True
        layer_types = getattr(config, "layer_types", None)
        expected_window = config.sliding_window if layer_types and layer_types[i] == "sliding_attention" else None
        assert node.args[5] == expected_window
    # The lowered graph computes what the model computes, past the sliding window too.
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(30).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(gm(ids, pos)[0], model(input_ids=ids).logits[:, -1:], atol=1e-5, rtol=1e-5)


def test_padding_mask_is_kept():
    """A mask that reads an input's values (padding) cannot be proved causal, so its sdpa node stays."""
    model = tiny_model("tiny-llama")
    seq = torch.export.Dim("seq", min=2, max=32)
    ids = torch.zeros(2, 4, dtype=torch.long)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    program = torch.export.export(model, (), kwargs, dynamic_shapes={k: {1: seq} for k in kwargs}, strict=False)
    decompositions = torch.export.default_decompositions()
    decompositions.pop(aten.scaled_dot_product_attention.default)
    gm = program.run_decompositions(decompositions).module()
    gm = register_sdpa(torch.fx.GraphModule(gm, gm.graph))
    assert not attention_nodes(gm)
    assert len([n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default]) == 2
