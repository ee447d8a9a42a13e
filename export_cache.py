"""The export cache: a traced graph kept on disk without its weights, for later runs of the same structure.

Tracing a model (export, then its decompositions) with a symbolic sequence length is most of a warm
run's setup, so each traced graph is saved in `--export_cache_dir`, keyed by what it depends on
(`_structure_key`), with the model's tensors left out; a later run reads it back and fills in its own
model's tensors. Two forms are kept:
  - an LLM's plain graph (export.export_llm), pickled with its shapes by torch's GraphPickler, which reads
    back several times faster than a saved ExportedProgram: reading is most of a warm run's export;
  - an ExportedProgram (a VLM's vision tower), which Torch-TensorRT compiles as it is.
A cache file is whole or absent; one that cannot be read (another torch, damaged) is traced again.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.fx import GraphModule

from errors import logger, only_errors_from

_cache_outcomes: Counter = Counter()  # "hit" and "miss" of this process's exports that had a cache folder


def export_cache_state() -> str:
    """How this process's exports went: 'warm' (every graph came from the cache), 'cold' (none did),
    'partly warm', or 'none' (no export used a cache)."""
    hits, misses = _cache_outcomes["hit"], _cache_outcomes["miss"]
    if not hits and not misses:
        return "none"
    return "warm" if not misses else "cold" if not hits else "partly warm"


@dataclass(frozen=True)
class _Form:
    """How one kind of traced object is saved, read back, and where it holds the model's tensors."""

    suffix: str
    save: Callable[[Any, str], None]
    load: Callable[[str], Any]
    slots: Callable[[Any], list[tuple[str, dict, str]]]  # (qualified name, holding dict, its key there)


def _program_slots(program: torch.export.ExportedProgram) -> list[tuple[str, dict, str]]:
    return [(name, table, name) for table in (program.state_dict, program.constants) for name in table]


QUIET_WHILE_LOADING = ("torch._export.serde.serialize", "torch.export.pt2_archive._package")  # torch's loggers


def _load_program(path: str) -> torch.export.ExportedProgram:
    # torch notes at every load the symbols the graph no longer uses and (torch 2.11) the weights saved empty
    with only_errors_from(*QUIET_WHILE_LOADING):
        return torch.export.load(path)


def _graph_slots(gm: GraphModule) -> list[tuple[str, dict, str]]:
    slots = []
    for prefix, module in gm.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            slots += [(f"{prefix}.{key}" if prefix else key, table, key) for key in table if table[key] is not None]
    return slots


def _save_graph(gm: GraphModule, path: str) -> None:
    from torch.fx._graph_pickler import GraphPickler, Options

    # every op is allowed: a quantized model's graph holds llm_tools::quantized_linear, which the run that reads
    # it has registered (it quantized or loaded the same model)
    Path(path).write_bytes(GraphPickler.dumps(gm, Options(ops_filter=None)))


def _load_graph(path: str) -> GraphModule:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx._graph_pickler import GraphPickler
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    gm = GraphPickler.loads(Path(path).read_bytes(), FakeTensorMode(shape_env=ShapeEnv()))
    if not isinstance(gm, GraphModule):
        raise TypeError(f"{path} holds a {type(gm).__name__}, not a graph")
    gm.recompile()
    return gm


PROGRAM = _Form(".pt2", lambda program, path: torch.export.save(program, path), _load_program, _program_slots)
GRAPH = _Form(".graph", _save_graph, _load_graph, _graph_slots)


def cached_export(module: torch.nn.Module, arguments: tuple, export: Callable[[], torch.export.ExportedProgram],
                  cache_dir: str | None) -> torch.export.ExportedProgram:
    """`export()`, or with `cache_dir` the program an earlier run saved there for the same module structure and
    `arguments` (what else the export depends on), with this module's tensors filled in."""
    return _cached(PROGRAM, module, arguments, export, cache_dir)


def cached_graph(module: torch.nn.Module, arguments: tuple, trace: Callable[[], GraphModule],
                 cache_dir: str | None) -> GraphModule:
    """`trace()` (a plain graph whose attributes are the module's tensors), or with `cache_dir` the graph an
    earlier run saved there, as cached_export."""
    return _cached(GRAPH, module, arguments, trace, cache_dir)


def _cached(form: _Form, module: torch.nn.Module, arguments: tuple, trace: Callable[[], Any], cache_dir: str | None):
    if not cache_dir:
        return trace()
    tensors = _model_tensors(module)
    path = os.path.join(cache_dir, _structure_key(module, tensors, *arguments) + form.suffix)
    traced = _read(form, path, tensors)
    _cache_outcomes["hit" if traced is not None else "miss"] += 1
    if traced is None:
        traced = trace()
        _save_without_weights(form, traced, path, tensors)
    return traced


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
    """What a traced graph depends on: the torch and transformers versions, the export and this file and the
    files of the model's module classes, its modules, config and every tensor's name, shape, dtype and
    device, and the export's own arguments."""
    import transformers

    config = getattr(model, "config", None)
    here = Path(__file__)
    lines = [torch.__version__, transformers.__version__, here.read_text(), (here.parent / "export.py").read_text(),
             repr(model), config.to_json_string() if config is not None else "", repr(arguments)]
    lines += [Path(file).read_text() for file in _source_files(model)]
    lines += [f"{name} {tuple(t.shape)} {t.dtype} {t.device}" for name, t in tensors.items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def _save_without_weights(form: _Form, traced, path: str, tensors: dict[str, torch.Tensor]) -> None:
    """Save `traced` with the model's `tensors` replaced by empty ones (written to a temporary file, then
    renamed: a cache file is whole or absent); `traced` is left as it was."""
    slots = [(table, key, table[key]) for name, table, key in form.slots(traced) if name in tensors]
    for table, key, value in slots:
        empty = torch.empty(0, dtype=value.dtype)
        table[key] = torch.nn.Parameter(empty, requires_grad=False) if isinstance(value, torch.nn.Parameter) \
            else empty
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=form.suffix)
        os.close(handle)
        form.save(traced, temporary)
        os.replace(temporary, path)
    except Exception as error:  # noqa: BLE001 - a cache that cannot be written costs the next run time, not this run
        logger.warning("the exported graph could not be cached in %s (%s)", os.path.dirname(path), error)
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
    finally:
        for table, key, value in slots:
            table[key] = value


def _read(form: _Form, path: str, tensors: dict[str, torch.Tensor]):
    """The cached object with the model's `tensors` filled in; None where there is none (or it cannot be read)."""
    if not os.path.exists(path):
        return None
    try:
        traced = form.load(path)
    except Exception as error:  # noqa: BLE001 - written by another torch, or damaged: export again
        logger.debug("exported graph cache %s not used: %s", path, error)
        return None
    for name, table, key in form.slots(traced):
        if name in tensors:
            table[key] = tensors[name]
    logger.info("the exported graph came from the cache (%s)", path)
    return traced
