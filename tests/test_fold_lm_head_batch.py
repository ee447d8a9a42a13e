"""fold_lm_head_batch: at batch > 1 the lm_head reads its weight once; the logits stay the Hugging Face model's."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, assert_last_logits_match, tiny_model
from export import export_llm
from fold_lm_head_batch import fold_lm_head_batch
from fuse_projections import fuse_projections
from register_sdpa import register_sdpa

aten = torch.ops.aten
BATCH, LENGTH = 3, 12


def _lm_heads_read_per_batch_item(gm, vocab_size: int) -> list:
    """Batched products into the vocabulary whose weight operand is repeated over the batch (batch stride 0)."""
    return [node for node in gm.graph.nodes
            if node.op == "call_function" and node.target == aten.bmm.default
            and node.meta["val"].shape[-1] == vocab_size and node.args[1].meta["val"].stride(0) == 0]


def _exported(family):
    model = tiny_model(family)
    return model, fuse_projections(register_sdpa(export_llm(model, BATCH, 32)))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lm_head_reads_its_weight_once_and_logits_match(family):
    model, gm = _exported(family)
    vocab_size = model.config.get_text_config().vocab_size
    assert _lm_heads_read_per_batch_item(gm, vocab_size), "the exported lm_head is expected to be a bmm"
    gm = fold_lm_head_batch(gm)
    assert _lm_heads_read_per_batch_item(gm, vocab_size) == []
    assert_last_logits_match(model, gm, BATCH, LENGTH)


def test_a_fold_that_mixes_up_the_batch_rows_is_caught():
    """The logits comparison can fail: rows of the folded product fed in the wrong order change the logits."""
    model, gm = _exported("tiny-llama")
    gm = fold_lm_head_batch(gm)
    product = next(node for node in gm.graph.nodes if node.target == aten.mm.default
                   and node.args[0].target == aten.reshape.default)
    with gm.graph.inserting_before(product):
        flipped = gm.graph.call_function(aten.flip.default, (product.args[0], [0]))
    product.args = (flipped, product.args[1])
    gm.recompile()
    with pytest.raises(AssertionError):
        assert_last_logits_match(model, gm, BATCH, LENGTH)
