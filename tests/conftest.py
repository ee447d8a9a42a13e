"""Shared fixtures: tiny models built offline, their lowered graphs, and what the loops need to run them."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The project's caches (exported graphs, TensorRT engines) and inductor's go to a folder of this test process, set
# before anything reads them: tests neither fill the user's cache folders nor find what they hold.
SESSION_CACHE_HOME = tempfile.mkdtemp(prefix="torch_tensorrt_llm_tests_")
os.environ["XDG_CACHE_HOME"] = SESSION_CACHE_HOME
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(SESSION_CACHE_HOME, "torch_tensorrt_llm", "inductor")
atexit.register(shutil.rmtree, SESSION_CACHE_HOME, ignore_errors=True)

from compilers.decode_tuning import DecodeTuning  # noqa: E402
from export import export_llm  # noqa: E402
from generation.baselines import hf_generate  # noqa: E402
from generation.loops import CachedModel, Prompt, StopRule, generate_static_cache  # noqa: E402
from load.models import load_config, load_model  # noqa: E402
from options import CompileOptions, ModelOptions  # noqa: E402
from utils import compile_lowered, lower  # noqa: E402

FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, no oversubscription
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_models: dict = {}


def tiny_model(name: str, device: str = "cpu", precision: str = "FP32"):
    """A tiny preset model (built once per name, device and precision)."""
    key = (name, device, precision)
    if key not in _models:
        options = ModelOptions(name, precision, device)
        _models[key] = load_model(options, load_config(options))
    return _models[key]


def lowered_graph(model, batch_size: int, max_seq_len: int, cache: str):
    return lower(export_llm(model, batch_size, max_seq_len), cache, max_seq_len)


def plant_self_only_mask(gm) -> None:
    """A planted bug for the accuracy comparisons: every attention becomes a window of one key (each query
    sees only itself)."""
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.llm_tools.attention.default):
        q, k, v, scale, causal, *rest = node.args
        node.args = (q, k, v, scale, causal, 1, *rest[1:])
    gm.recompile()


def prompt_ids(model, batch_size: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random prompt rows (distinct per row) over the byte range, on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch_size, length), generator=generator)
    return ids.to(next(model.parameters()).device)


def assert_last_logits_match(model, gm, batch_size: int, length: int, seed: int = 0) -> None:
    """The graph's logits at the last position equal the Hugging Face model's, over random prompt rows."""
    ids = prompt_ids(model, batch_size, length, seed)
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, -1:]
        actual = gm(ids, torch.arange(length).expand(batch_size, -1))[0]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def script_module(*path: str):
    """A script of the project (a benchmark, an example) imported as a module, by its path under ROOT."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(path[-1])[0], os.path.join(ROOT, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eager_cached(gm, batch_size: int, max_seq_len: int, dtype, device="cpu", **options) -> CachedModel:
    """The lowered graph, uncompiled, with its caches: called as run_llm.py calls a compiled one."""
    step = compile_lowered(gm, CompileOptions("eager"), ModelOptions("", device=device), max_seq_len)
    return CachedModel(step, gm, batch_size, max_seq_len, dtype, device, **options)


def tuned_step_code(family: str, tuning: DecodeTuning = DecodeTuning()) -> tuple:
    """A tiny model's batch-1 static_v3 step on the GPU through compilers/inductor.py (so with the small-model
    decode tuning, `tuning`), each step captured as a CUDA graph, as run_llm.py --compiler inductor --cudagraph
    runs it, generates 20 tokens after 10, which must be Hugging Face's; returns the model and the step's code."""
    from torch._inductor.utils import run_and_get_code

    from compilers.inductor import compile_with_inductor

    model, prompt_len, new_tokens = tiny_model(family, "cuda"), 10, 20
    gm = lowered_graph(model, 1, prompt_len + new_tokens, "static_v3")
    step = compile_with_inductor(gm, cudagraph=True, tuning=tuning)
    cached = CachedModel(step, gm, 1, prompt_len + new_tokens, model.dtype, "cuda", cuda_graphs=True)
    ids = prompt_ids(model, 1, prompt_len)
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad():
        tokens, codes = run_and_get_code(generate_static_cache, cached, Prompt.text(ids), new_tokens, stop)
    assert torch.equal(tokens, hf_generate(model, ids, new_tokens, stop))
    return model, codes


def eos_stop(model) -> StopRule:
    """Stop at the model's EOS, padding with 258, as Hugging Face's generate is asked to."""
    eos = model.config.eos_token_id
    return StopRule(eos if isinstance(eos, list) else [eos], 258)
