"""The exported-graph cache: a second export of the same structure reads the graph from disk, computes
with the model's own weights (not the weights of the run that wrote it), and other structures miss it."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import export
import export_cache
from conftest import FAMILIES, tiny_model
from export import export_llm
from utils import lower


def _last_logits(gm, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gm(ids, torch.arange(ids.shape[1]).expand(ids.shape[0], -1))[0][:, -1]


def _hf_last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -1]


def _reweighted(model):
    """The same structure with other weights."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return other


def _no_trace(*args, **kwargs):
    raise AssertionError("exported again: the cache was not used")


def test_a_cached_graph_computes_with_the_new_models_weights(tmp_path, monkeypatch):
    model = tiny_model("tiny-llama")
    export_llm(model, 1, 32, cache_dir=str(tmp_path))
    (saved,) = os.listdir(tmp_path)
    stored = list(export_cache.GRAPH.load(str(tmp_path / saved)).parameters())
    assert stored and all(tensor.numel() == 0 for tensor in stored)  # the graph without its weights

    other = _reweighted(model)
    monkeypatch.setattr(export, "_exported_program", _no_trace)
    gm = export_llm(other, 1, 32, cache_dir=str(tmp_path))
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_last_logits(gm, ids), _hf_last_logits(other, ids), rtol=1e-4, atol=1e-4)


def test_a_cache_that_kept_the_writers_weights_is_caught(tmp_path, monkeypatch):
    """The comparison above fails for a cache whose graph computes with the weights of the run that wrote it."""
    model = tiny_model("tiny-llama")
    export_llm(model, 1, 32, cache_dir=str(tmp_path))
    (saved,) = os.listdir(tmp_path)
    with_weights = export.plain_graph_module(export._exported_program(model, 1, 32, False, 0))
    export_cache.GRAPH.save(with_weights, str(tmp_path / saved))
    monkeypatch.setattr(export_cache, "_read", lambda form, path, tensors: form.load(path))  # none filled in
    other = _reweighted(model)
    gm = export_llm(other, 1, 32, cache_dir=str(tmp_path))
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_last_logits(gm, ids), _hf_last_logits(other, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", ["batch size", "sequence length", "model"])
def test_another_structure_exports_again(tmp_path, change):
    model = tiny_model("tiny-llama")
    export_llm(model, 1, 32, cache_dir=str(tmp_path))
    if change == "batch size":
        export_llm(model, 2, 32, cache_dir=str(tmp_path))
    elif change == "sequence length":
        export_llm(model, 1, 48, cache_dir=str(tmp_path))
    else:
        export_llm(tiny_model("tiny-qwen3"), 1, 32, cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2


def test_a_damaged_cache_file_is_exported_again(tmp_path):
    model = tiny_model("tiny-llama")
    export_llm(model, 1, 32, cache_dir=str(tmp_path))
    (saved,) = os.listdir(tmp_path)
    (tmp_path / saved).write_bytes(b"not a program")
    gm = export_llm(model, 1, 32, cache_dir=str(tmp_path))
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_last_logits(gm, ids), _hf_last_logits(model, ids), rtol=1e-4, atol=1e-4)
    assert os.path.getsize(tmp_path / saved) > len(b"not a program")  # and written anew


def test_a_graph_that_cannot_be_saved_leaves_the_run_and_no_file_behind(tmp_path, monkeypatch):
    from torch.fx._graph_pickler import GraphPickler

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot serialize")

    monkeypatch.setattr(GraphPickler, "dumps", refuse)
    model = tiny_model("tiny-llama")
    gm = export_llm(model, 1, 32, cache_dir=str(tmp_path))
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_last_logits(gm, ids), _hf_last_logits(model, ids), rtol=1e-4, atol=1e-4)
    assert os.listdir(tmp_path) == []

def test_the_key_follows_the_models_source_files(tmp_path, monkeypatch):
    """A model whose modeling code changed (a remote-code update, say) exports again."""
    model, cache = tiny_model("tiny-llama"), str(tmp_path / "cache")
    export_llm(model, 1, 32, cache_dir=cache)
    files = export_cache._source_files(model)
    (llama_file,) = [file for file in files if file.endswith("modeling_llama.py")]
    edited = tmp_path / "modeling_llama.py"
    edited.write_text(open(llama_file).read() + "\n# edited\n")
    monkeypatch.setattr(export_cache, "_source_files", lambda model: [str(edited) if f == llama_file else f for f in files])
    export_llm(model, 1, 32, cache_dir=cache)
    assert len(os.listdir(cache)) == 2


def test_nearby_lengths_share_a_graph_that_serves_each(tmp_path, monkeypatch):
    """Lengths up to the same power of two share one cached graph; read back for the shorter run, it computes
    that run's logits (the caches and TensorRT's profiles bound the length themselves)."""
    model = tiny_model("tiny-llama")
    export_llm(model, 1, 60, cache_dir=str(tmp_path))
    monkeypatch.setattr(export, "_exported_program", _no_trace)
    gm = export_llm(model, 1, 40, cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1
    ids = torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_last_logits(gm, ids), _hf_last_logits(model, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_seq_len, max_positions, bound", [(40, 2048, 64), (64, 2048, 64), (65, 2048, 128),
                                                               (1000, 1024, 1024), (1030, 1024, 1030), (7, None, 8)])
def test_length_bound(max_seq_len, max_positions, bound):
    assert export.length_bound(max_seq_len, max_positions) == bound


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cached_graph_lowers_to_the_same_code_as_a_fresh_export(tmp_path, family):
    model = tiny_model(family)
    export_llm(model, 1, 32, cache_dir=str(tmp_path))
    fresh, cached = export_llm(model, 1, 32), export_llm(model, 1, 32, cache_dir=str(tmp_path))
    assert lower(cached, "static_v3", 32).code == lower(fresh, "static_v3", 32).code


def test_eagle2s_vision_tower_is_read_from_the_cache_with_its_own_weights(tmp_path, monkeypatch):
    from load.models import load_config
    from options import CompileOptions, ModelOptions
    from vlm.families import FAMILIES

    options = ModelOptions("tiny-eagle2", "FP32", "cpu")
    config = load_config(options)
    compile_options = CompileOptions("eager", export_cache_dir=str(tmp_path))
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    FAMILIES[config.model_type].load(options, config).compile_vision(compile_options, options, 1)

    vlm = FAMILIES[config.model_type].load(options, config)
    vlm.vision = _reweighted(vlm.vision)
    with torch.no_grad():
        expected = vlm.vision(pixels)
    monkeypatch.setattr(torch.export, "export", _no_trace)
    vlm.compile_vision(compile_options, options, 1)
    with torch.no_grad():
        torch.testing.assert_close(vlm.vision(pixels), expected, rtol=1e-4, atol=1e-4)
    assert len(os.listdir(tmp_path)) == 1


def test_torchs_notes_while_loading_a_cached_program_are_kept_from_the_user(tmp_path, monkeypatch):
    """A cached ExportedProgram (a vision tower's) is read with torch's loaders kept to errors."""
    import logging

    module, example = torch.nn.Linear(4, 3), torch.randn(2, 4)
    export_cache.cached_export(module, (), lambda: torch.export.export(module, (example,)), str(tmp_path))
    loggers = [logging.getLogger(name) for name in export_cache.QUIET_WHILE_LOADING]
    warned_while_loading = []
    load = torch.export.load

    def noting_load(path):
        warned_while_loading.extend(each.isEnabledFor(logging.WARNING) for each in loggers)
        return load(path)

    monkeypatch.setattr(torch.export, "load", noting_load)
    program = export_cache.cached_export(module, (), _no_trace, str(tmp_path))
    assert warned_while_loading == [False, False]
    torch.testing.assert_close(program.module()(example), module(example))
