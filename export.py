"""Stage 2, export: torch.export of an LLM (or a VLM's language model) into a plain ATen graph.

The graph takes (input_ids | inputs_embeds, position_ids) and returns the last position's logits;
it is dynamic in the sequence length, static in the batch size, and keeps attention as one sdpa
node (popped from the decomposition table) for register_sdpa to rewrite.

Tracing a model twice (export, then its decompositions) with a symbolic sequence length is most of a
warm run's setup, so the exported program is kept in a cache folder without its weights (the graph
alone) and later runs of the same model structure fill in the model's own tensors.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from errors import logger, only_errors_from


@contextmanager
def _no_packed_sequences():
    """Generation feeds one contiguous sequence per row, so no packed-sequence mask term is exported.

    Without this, transformers derives a packed-sequence mask from the position_ids input, which
    makes every attention mask depend on input values (and keeps it out of the canonical node).
    """
    from transformers import masking_utils

    with mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None):
        yield


_cache_outcomes: Counter = Counter()  # "hit" and "miss" of this process's exports that had a cache folder


def export_cache_state() -> str:
    """How this process's exports went: 'warm' (every graph came from the cache), 'cold' (none did),
    'partly warm', or 'none' (no export used a cache)."""
    hits, misses = _cache_outcomes["hit"], _cache_outcomes["miss"]
    if not hits and not misses:
        return "none"
    return "warm" if not misses else "cold" if not hits else "partly warm"


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
    Attention stays one sdpa node: it is popped from the decomposition table. With `cache_dir` the exported
    program is read from (or written to) that folder, keyed by the model's structure and these arguments.
    """
    model.config.use_cache = False  # before the key: the config is part of it
    bound = length_bound(max_seq_len, getattr(model.config, "max_position_embeddings", None))
    program = cached_export(model, (batch_size, bound, embeds, position_rows),
                            lambda: _exported_program(model, batch_size, bound, embeds, position_rows), cache_dir)
    gm = plain_graph_module(program)
    for node in gm.graph.find_nodes(op="placeholder"):
        if node.name == "logits_to_keep" and not node.users:  # specialised to 1; not an input of the graph
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def cached_export(module: torch.nn.Module, arguments: tuple, export: Callable[[], torch.export.ExportedProgram],
                  cache_dir: str | None) -> torch.export.ExportedProgram:
    """`export()`, or with `cache_dir` the program an earlier run saved there for the same module structure and
    `arguments` (what else the export depends on), with this module's tensors filled in."""
    if not cache_dir:
        return export()
    tensors = _model_tensors(module)
    path = os.path.join(cache_dir, _structure_key(module, tensors, *arguments) + ".pt2")
    program = _cached_program(path, tensors)
    _cache_outcomes["hit" if program is not None else "miss"] += 1
    if program is None:
        program = export()
        _save_without_weights(program, path, tensors)
    return program


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


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name, tied ones under each name (an exported program's keys)."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    return {**tensors, **dict(model.named_buffers(remove_duplicate=False))}


def _source_files(model: torch.nn.Module) -> list[str]:
    """The files that define the model's module classes (a remote-code model's own among them)."""
    files = set()
    for module in model.modules():
        try:
            files.add(inspect.getsourcefile(type(module)))
        except TypeError:  # a class defined outside any file
            pass
    return sorted(file for file in files if file)


def _structure_key(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *arguments) -> str:
    """What the exported graph depends on: the torch and transformers versions, this file and the files of
    the model's module classes, its modules, config and every tensor's name, shape, dtype and device, and
    the export's own arguments."""
    import transformers

    config = getattr(model, "config", None)
    lines = [torch.__version__, transformers.__version__, Path(__file__).read_text(), repr(model),
             config.to_json_string() if config is not None else "", repr(arguments)]
    lines += [Path(file).read_text() for file in _source_files(model)]
    lines += [f"{name} {tuple(t.shape)} {t.dtype} {t.device}" for name, t in tensors.items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def _save_without_weights(program: torch.export.ExportedProgram, path: str,
                          tensors: dict[str, torch.Tensor]) -> None:
    """Save the program with the model's `tensors` replaced by empty ones (written to a temporary file, then
    renamed: a cache file is whole or absent)."""
    tables = (program.state_dict, program.constants)
    kept = [dict(table) for table in tables]
    for table in tables:
        for name, value in table.items():
            if name in tensors:
                empty = torch.empty(0, dtype=value.dtype)
                table[name] = torch.nn.Parameter(empty, requires_grad=False) if isinstance(value, torch.nn.Parameter) \
                    else empty
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".pt2")
        os.close(handle)
        torch.export.save(program, temporary)
        os.replace(temporary, path)
    except Exception as error:  # noqa: BLE001 - a cache that cannot be written costs the next run time, not this run
        logger.warning("the exported graph could not be cached in %s (%s)", os.path.dirname(path), error)
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
    finally:
        for table, values in zip(tables, kept):
            table.update(values)


QUIET_WHILE_LOADING = ("torch._export.serde.serialize", "torch.export.pt2_archive._package")  # torch's loggers


def _cached_program(path: str, tensors: dict[str, torch.Tensor]) -> torch.export.ExportedProgram | None:
    """The cached program with the model's `tensors` filled in; None where there is none (or it cannot be read)."""
    if not os.path.exists(path):
        return None
    try:
        # torch notes at every load the symbols the graph no longer uses and (torch 2.11) the weights saved empty
        with only_errors_from(*QUIET_WHILE_LOADING):
            program = torch.export.load(path)
    except Exception as error:  # noqa: BLE001 - written by another torch, or damaged: export again
        logger.debug("exported graph cache %s not used: %s", path, error)
        return None
    for table in (program.state_dict, program.constants):
        for name in table:
            if name in tensors:
                table[name] = tensors[name]
    logger.info("the exported graph came from the cache (%s)", path)
    return program
