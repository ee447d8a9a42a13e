"""fuse_projections: fewer matrix multiplies, the same logits as the Hugging Face model, no weight stored twice."""

from __future__ import annotations

import pytest
import torch

import fuse_projections
from conftest import assert_last_logits_match, tiny_model
from export import export_llm
from register_sdpa import register_sdpa

aten = torch.ops.aten


def _matmuls(gm) -> int:
    return sum(n.op == "call_function" and n.target in (aten.mm.default, aten.addmm.default) for n in gm.graph.nodes)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"])
def test_projections_fuse_and_logits_match(family):
    model = tiny_model(family)
    gm = register_sdpa(export_llm(model, 2, 32))
    before = _matmuls(gm)
    gm = fuse_projections.fuse_projections(gm)
    # per layer q, k, v -> one and gate, up -> one: three fewer
    assert _matmuls(gm) == before - 3 * model.config.num_hidden_layers
    layer = model.model.layers[0]
    fused = [p for name, p in gm.named_parameters() if name.startswith("fused_projection")]
    q_bytes = layer.self_attn.q_proj.weight.nbytes
    # k's rows follow q's inside one fused weight: views, not copies
    assert any(layer.self_attn.k_proj.weight.data_ptr() == p.data_ptr() + q_bytes for p in fused)
    assert_last_logits_match(model, gm, 2, 12, seed=1)


def test_misplaced_rows_are_caught(monkeypatch):
    """The logits comparison can fail: slicing the fused output at the wrong offsets changes the logits."""
    model = tiny_model("tiny-llama")
    gm = register_sdpa(export_llm(model, 2, 32))
    original_call = torch.fx.Graph.call_function

    def shifted(graph, target, args=(), kwargs=None, *rest):
        if target == aten.slice.Tensor and args[1] == 1 and args[2] == 0:
            args = (args[0], 1, 1, args[3] + 1)  # every first part one column late
        return original_call(graph, target, args, kwargs, *rest)

    monkeypatch.setattr(torch.fx.Graph, "call_function", shifted)
    gm = fuse_projections.fuse_projections(gm)
    monkeypatch.undo()
    with pytest.raises(AssertionError):
        assert_last_logits_match(model, gm, 2, 12, seed=1)
