"""Plugin backend: the op against an independent reference, generation against Hugging Face, the checks
that run before any weights load, and the converter's wiring (on a TensorRT without plugin layers)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import plugin_utils
from conftest import ROOT, prompt_ids, script_module, tiny_model
from errors import UsageError
from generation.baselines import hf_generate
from generation.loops import StopRule
from load.models import load_config
from options import ModelOptions
from plugin import attention as plugin_attention
from plugin.model import PluginCausalLM, allocate_plugin_caches, generate_plugin

EXAMPLES = os.path.join(ROOT, "examples", "dynamo")


def _example(name: str):
    return script_module("examples", "dynamo", f"{name}.py")


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_generation_matches_hugging_face(family, batch_size):
    model = tiny_model(family)
    ids = prompt_ids(model, batch_size, 10)
    expected = hf_generate(model, ids, 14, StopRule([257], 258))
    caches = allocate_plugin_caches(model, batch_size, 24, model.dtype, "cpu")
    with torch.no_grad():
        tokens = generate_plugin(PluginCausalLM(model), model, ids, 14, StopRule([257], 258), caches)
    assert torch.equal(tokens, expected)


def test_attention_example_agrees_in_all_four_cases():
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "attention_plugin_example.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len([line for line in lines if "max abs difference" in line]) == 4
    assert lines[-1] == "All four cases agree to 1e-05: True"


def test_a_rope_at_the_wrong_positions_is_caught(monkeypatch):
    """The reference comparison can fail: RoPE one position late changes the attention and the delta K."""
    example = _example("attention_plugin_example")
    inputs, positions = example.case("prefill, past context", 3, [4, 9], True, torch.float32, "cpu")
    original = plugin_attention.apply_rope
    monkeypatch.setattr(plugin_attention, "apply_rope", lambda x, table, pos: original(x, table, pos + 1))
    out, delta = torch.ops.llm_tools.edgellm_attention(*inputs, example.HQ, example.HKV, example.D)
    ref_out, ref_delta = example.reference(*inputs[:3], inputs[4], positions)
    assert (out.double() - ref_out).abs().max() > 1e-3


def test_end_to_end_example_matches():
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "end_to_end_llm_generation_example.py"),
                             "--model", "tiny-qwen3", "--precision", "FP32", "--num_tokens", "12"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Plugin backend and Hugging Face outputs match: True"


def test_plugin_model_exports_with_one_plugin_op_per_layer():
    model = tiny_model("tiny-qwen3")
    caches = allocate_plugin_caches(model, 2, 16, model.dtype, "cpu")
    per_row = torch.zeros(2, dtype=torch.int32)
    rope = plugin_attention.rope_table(model.model.rotary_emb, 16)
    seq = torch.export.Dim("seq", min=1, max=16)
    program = torch.export.export(PluginCausalLM(model), (torch.zeros(2, 3, dtype=torch.long), per_row, rope,
                                                          per_row, *caches),
                                  dynamic_shapes=({1: seq}, None, None, None, (None,) * len(caches)), strict=False)
    ops = [n for n in program.graph.nodes if n.target == torch.ops.llm_tools.edgellm_attention.default]
    assert len(ops) == model.config.num_hidden_layers
    copy.deepcopy(model)  # the swapped model keeps none of the export's fake tensors


# ----------------------------------------------------------------------------- bad input


def _check(compiler="tensorrt", precision="FP16", plugin_path="/opt/lib/libNvInfer_edgellm_plugin.so", config=None):
    """check_plugin_backend as run_llm.py calls it, for model "m" on a GPU."""
    plugin_utils.check_plugin_backend(ModelOptions("m", precision, "cuda"), compiler, plugin_path, config or _config())


def _config(model_type="llama", head_dim=64):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, head_dim=head_dim, hidden_size=8 * head_dim, num_attention_heads=8)


@pytest.fixture
def gpu_with_plugin(monkeypatch, tmp_path):
    """An SM 8.6 GPU and a library file whose loading registers an IPluginV2 AttentionPlugin v1."""
    library = tmp_path / "libNvInfer_edgellm_plugin.so"
    library.write_bytes(b"")
    monkeypatch.setattr(plugin_utils.torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(plugin_utils, "_load_library", lambda path: None)
    monkeypatch.setattr(plugin_utils, "_registered_creator", lambda: object())
    monkeypatch.setattr(plugin_utils, "_is_v2_creator", lambda creator: True)
    return str(library)


def test_a_usable_setup_passes(gpu_with_plugin):
    _check(plugin_path=gpu_with_plugin)


@pytest.mark.parametrize("change, message", [
    ({"check": {"plugin_path": "/nonexistent/lib.so"}}, "/nonexistent/lib.so does not exist"),
    ({"check": {"precision": "FP32"}}, "FP16 only"),
    ({"config": {"head_dim": 96}}, "head sizes (64, 128)"),
    ({"config": {"model_type": "gemma3_text"}}, "not gemma3_text"),
    ({"capability": (9, 0)}, "compute capability 9.0"),
    ({"wheel": True}, "tensorrt-edgellm wheel"),
    ({"load_error": True}, "cannot load"),
    ({"creator": None}, "registered no AttentionPlugin"),
    ({"v2": False}, "another kind"),
])
def test_each_bad_setup_is_one_clear_error(gpu_with_plugin, monkeypatch, tmp_path, change, message):
    check = {"plugin_path": gpu_with_plugin, **change.get("check", {}), "config": _config(**change.get("config", {}))}
    if "capability" in change:
        monkeypatch.setattr(plugin_utils.torch.cuda, "get_device_capability", lambda device=None: change["capability"])
    if change.get("wheel"):
        wheel = tmp_path / "site-packages" / "tensorrt_edgellm" / "libNvInfer_edgellm_plugin.so"
        wheel.parent.mkdir(parents=True)
        wheel.write_bytes(b"")
        check["plugin_path"] = str(wheel)
    if change.get("load_error"):
        def fail(path):
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        monkeypatch.setattr(plugin_utils, "_load_library", fail)
    if "creator" in change:
        monkeypatch.setattr(plugin_utils, "_registered_creator", lambda: change["creator"])
    if "v2" in change:
        monkeypatch.setattr(plugin_utils, "_is_v2_creator", lambda creator: change["v2"])
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _check(**check)


def test_eager_needs_no_library_but_checks_a_given_path():
    config = load_config(ModelOptions("tiny-llama"))
    _check(compiler="eager", plugin_path=None, precision="FP32", config=config)
    with pytest.raises(UsageError, match="does not exist"):
        _check(compiler="eager", plugin_path="/nonexistent/x.so", config=config)


def test_unsupported_family_from_the_command_line():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run_llm.py"), "--model", "tiny-gemma3", "--backend",
                             "plugin", "--compiler", "eager"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "run_llm.py: error: --backend plugin supports the llama, qwen2, qwen3 families, not gemma3_text; "
        "or use --backend sdpa"]


# ----------------------------------------------------------------------------- converter


@pytest.mark.tensorrt
def test_converter_packs_fields_and_wires_inputs(monkeypatch):
    """TensorRT-RTX has no plugin layers: a stand-in network and creator record what the converter asks for."""
    from trt_helpers import import_torch_tensorrt

    import_torch_tensorrt()
    from plugin import converter as plugin_converter

    created, added = {}, {}

    class Creator:
        def create_plugin(self, name, fields):
            created["fields"] = {field.name: [int(x) for x in field.data] for field in fields}
            created["types"] = {str(field.type) for field in fields}
            return "the plugin"

    class Layer:
        name = None

        def get_output(self, index):
            return f"output {index}"

    class Network:
        def add_plugin_v2(self, inputs, plugin):
            added["inputs"], added["plugin"] = inputs, plugin
            return Layer()

    monkeypatch.setattr(plugin_converter, "plugin_creator", lambda: Creator())
    inputs = ["qkv", "kv_cache", "context_lengths", "rope_table", "kv_cache_start_idx"]
    class Context:  # what a converter reads of Torch-TensorRT's conversion context
        net = Network()

    outputs = plugin_converter.convert_edgellm_attention(Context(), None, (*inputs, 14, 2, 64),
                                                         {}, "layer0")
    assert created["fields"] == {"num_q_heads": [14], "num_kv_heads": [2], "head_size": [64],
                                 "enable_tree_attention": [0], "enable_delta_kv_output": [1]}
    assert created["types"] == {"PluginFieldType.INT32"}
    assert added == {"inputs": inputs, "plugin": "the plugin"}
    assert outputs == ("output 0", "output 1")
