"""Stage 2, export: torch.export of an LLM (or a VLM's language model) into a plain ATen graph.

The graph takes (input_ids | inputs_embeds, position_ids) and returns the last position's logits;
it is dynamic in the sequence length, static in the batch size, and keeps attention as one sdpa
node (popped from the decomposition table) for register_sdpa to rewrite.

Tracing a model twice (export, then its decompositions) with a symbolic sequence length is most of a
run's setup, so the graph is kept in a cache folder for later runs of the same structure (export_cache.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import torch
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from export_cache import cached_graph


@contextmanager
def _no_packed_sequences():
    """Generation feeds one contiguous sequence per row, so no packed-sequence mask term is exported.

    Without this, transformers derives a packed-sequence mask from the position_ids input, which
    makes every attention mask depend on input values (and keeps it out of the canonical node).
    """
    from transformers import masking_utils

    with mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None):
        yield


# Shape and dtype checks that export leaves in the graph: the generation loops call it with
# consistent inputs, and TorchDynamo would break the graph at each of them.
_RUNTIME_CHECKS = (torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default)


def plain_graph_module(program: torch.export.ExportedProgram) -> GraphModule:
    """The program as a plain GraphModule: positional inputs, a flat tuple of outputs, no input guards or checks.

    Passes add inputs and outputs to it, which the exported program's pytree signature and its
    shape-guard submodule would refuse.
    """
    unlifted = program.module()
    for node in list(unlifted.graph.nodes):
        if (node.op == "call_module" and node.target == "_guards_fn") or node.target in _RUNTIME_CHECKS:
            unlifted.graph.erase_node(node)
    unlifted.graph.eliminate_dead_code()
    gm = GraphModule(unlifted, unlifted.graph)
    gm.graph._codegen = CodeGen()
    output = gm.graph.find_nodes(op="output")[0]
    flat = output.args[0]
    output.args = (tuple(flat) if isinstance(flat, (list, tuple)) else (flat,),)
    gm.recompile()
    return gm


def export_llm(model: torch.nn.Module, batch_size: int, max_seq_len: int, embeds: bool = False,
               position_rows: int = 0, cache_dir: str | None = None) -> GraphModule:
    """torch.export of model(input_ids|inputs_embeds, position_ids) -> (logits [B, 1, V],) of the last position.

    The graph is dynamic in the sequence length, up to `length_bound(max_seq_len)` so that runs of nearby
    lengths share a cached graph; the batch size is static (one export per batch size).
    `position_rows` > 0 gives position_ids [rows, B, L] (Qwen2.5-VL's multimodal RoPE takes 3).
    Attention stays one sdpa node: it is popped from the decomposition table. With `cache_dir` the graph is
    read from (or written to) that folder, keyed by the model's structure and these arguments (export_cache.py).
    """
    model.config.use_cache = False  # before the key: the config is part of it
    bound = length_bound(max_seq_len, getattr(model.config, "max_position_embeddings", None))
    gm = cached_graph(model, (batch_size, bound, embeds, position_rows),
                      lambda: plain_graph_module(_exported_program(model, batch_size, bound, embeds, position_rows)),
                      cache_dir)
    for node in gm.graph.find_nodes(op="placeholder"):
        if node.name == "logits_to_keep" and not node.users:  # specialised to 1; not an input of the graph
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def length_bound(max_seq_len: int, max_positions: int | None) -> int:
    """The longest sequence the exported graph takes: max_seq_len rounded up to a power of two, within the
    model's positions. The later stages bound the length by max_seq_len themselves (caches, TensorRT's
    profiles), so a graph exported for longer sequences serves shorter ones unchanged."""
    rounded = 1 << (max_seq_len - 1).bit_length()
    return max(max_seq_len, min(rounded, max_positions or rounded))


def _exported_program(model: torch.nn.Module, batch_size: int, max_seq_len: int, embeds: bool,
                      position_rows: int) -> torch.export.ExportedProgram:
    device = next(model.parameters()).device
    example_len = min(4, max_seq_len)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    position_ids = torch.arange(example_len, device=device).expand(batch_size, -1)
    if position_rows:
        position_ids = position_ids.expand(position_rows, -1, -1)
    if embeds:
        hidden = model.get_input_embeddings().embedding_dim
        first = torch.zeros(batch_size, example_len, hidden, dtype=model.dtype, device=device)
        kwargs = {"inputs_embeds": first, "position_ids": position_ids}
    else:
        kwargs = {"input_ids": torch.zeros(batch_size, example_len, dtype=torch.long, device=device),
                  "position_ids": position_ids}
    dynamic_shapes = {k: {position_ids.dim() - 1 if k == "position_ids" else 1: seq} for k in kwargs}
    kwargs["logits_to_keep"] = 1  # every loop reads the last position's logits only: skip the rest of lm_head
    dynamic_shapes["logits_to_keep"] = None
    with torch.no_grad(), _no_packed_sequences():
        # Deferred asserts: some kernels' meta functions emit guards (such as min(64*seq, 256*seq) == 64*seq)
        # that hold for every length but that the solver cannot prove.
        program = torch.export.export(model, (), kwargs, dynamic_shapes=dynamic_shapes, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        decompositions = torch.export.default_decompositions()
        decompositions.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
        return program.run_decompositions(decompositions)
