"""--compiler tensorrt's own call, torch_tensorrt.dynamo.compile, run on a machine with no GPU.

The lowered graph goes through utils.compile_lowered with the options run_llm.py builds from its flags
(and the plugin backend through plugin/compile.py), so the keywords, the input specs, the partitioner
and the runtime module are the product's. Only what needs a GPU is stood in for (trt_helpers).
Each test prints the engines and the nodes left to PyTorch it counted (`pytest -s` shows them).
"""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, lowered_graph, tiny_model
from options import CACHES, CompileOptions, ModelOptions
from static_cache_common import cache_inputs
from trt_helpers import engines_and_leftovers, engines_built_not_loaded, import_torch_tensorrt

pytestmark = [pytest.mark.tensorrt, pytest.mark.slow, pytest.mark.xdist_group("built_engines")]  # one worker: shared memo
MAX_SEQ_LEN = 24  # room for test_tensorrt_network.py's generations (6 + 16 tokens)


def compile_as_run_llm_does(gm, family: str, cache: str, precision: str = "FP32", engine_cache_dir=None,
                            max_seq_len: int = MAX_SEQ_LEN, unwrap: bool = True):
    """utils.compile_lowered for `--compiler tensorrt --cache CACHE --precision PRECISION` on the CPU
    (with `--engine_cache_dir DIR`, or `--no_engine_cache` where it is None): the Torch-TensorRT module
    (with `unwrap` off, static_v3's in-place step around it, as generation gets it), and the graph
    modules whose weights refitted an engine taken from the engine cache."""
    import_torch_tensorrt()
    from compilers.in_place_step import InPlaceCacheStep
    from utils import compile_lowered

    options = CompileOptions("tensorrt", cache, engine_cache_dir=engine_cache_dir)
    with engines_built_not_loaded() as refits:
        compiled = compile_lowered(gm, options, ModelOptions(family, precision), max_seq_len)
    return (compiled.model if unwrap and isinstance(compiled, InPlaceCacheStep) else compiled), refits


_COMPILED: dict[tuple, tuple] = {}


def user_compiled(family: str, cache: str, batch_size: int = 1, max_seq_len: int = MAX_SEQ_LEN,
                  unwrap: bool = True) -> tuple:
    """(lowered graph, compiled module) of a tiny family as run_llm.py compiles it, built once per session
    for each conversion of the attention and of the cache write (test_tensorrt_network.py evaluates the
    same modules)."""
    import_torch_tensorrt()
    import sdpa_converter
    from compilers.in_place_step import InPlaceCacheStep

    from compilers import kv_cache_update

    key = (family, cache, batch_size, max_seq_len, sdpa_converter.LAYERS, kv_cache_update.CACHE_WRITE)
    if key not in _COMPILED:
        gm = lowered_graph(tiny_model(family), batch_size, max_seq_len, cache)
        _COMPILED[key] = gm, compile_as_run_llm_does(gm, family, cache, max_seq_len=max_seq_len, unwrap=False)[0]
    gm, compiled = _COMPILED[key]
    return gm, (compiled.model if unwrap and isinstance(compiled, InPlaceCacheStep) else compiled)


def assert_one_engine_nothing_left(compiled, what: str):
    engines, leftovers = engines_and_leftovers(compiled)
    print(f"\n{what}: {len(engines)} TensorRT engine(s), {len(leftovers)} node(s) left to PyTorch")
    assert leftovers == []
    assert len(engines) == 1
    assert len(engines[0].serialized_engine) > 100_000
    return engines[0]


@pytest.mark.parametrize("cache", ["", *CACHES])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_user_call_gives_one_engine_and_nothing_left_to_pytorch(family, cache):
    gm, compiled = user_compiled(family, cache)
    caches = [node.name for node in cache_inputs(gm)]
    layers = tiny_model(family).config.num_hidden_layers
    assert len(caches) == (2 * layers if cache else 0)
    # every canonical attention node is in the engine: none is left to PyTorch (below)
    assert len(gm.graph.find_nodes(op="call_function", target=torch.ops.llm_tools.attention.default)) == layers
    engine = assert_one_engine_nothing_left(compiled, f"{family} {cache or 'no cache'}")
    # Every cache reaches the engine as an input and comes back as an output, after the logits.
    assert set(caches) <= set(engine.input_binding_names)
    assert len(engine.output_binding_names) == 1 + len(caches)
    from compilers import kv_cache_update

    if cache == "static_v3" and kv_cache_update.CACHE_WRITE == kv_cache_update.KV_CACHE_UPDATE:
        assert_caches_written_in_place(engine, caches)  # by TensorRT's KV-cache update layers


def test_an_fp16_static_v3_engine_writes_its_caches_in_place():
    """--precision FP16: the KV-cache update layers take the FP16 caches as they are (a cast between
    the layer and the engine output would break the aliasing)."""
    import_torch_tensorrt()
    from compilers import kv_cache_update

    if kv_cache_update.CACHE_WRITE != kv_cache_update.KV_CACHE_UPDATE:
        pytest.skip("this TensorRT has no KV-cache update layer")
    gm = lowered_graph(tiny_model("tiny-llama", precision="FP16"), 1, MAX_SEQ_LEN, "static_v3")
    compiled, _ = compile_as_run_llm_does(gm, "tiny-llama", "static_v3", "FP16")
    engine = assert_one_engine_nothing_left(compiled, "tiny-llama static_v3 FP16")
    assert_caches_written_in_place(engine, [node.name for node in cache_inputs(gm)])


def test_the_setup_names_the_attention_and_cache_write_of_a_tensorrt_run():
    """The paths this TensorRT takes (feature detection), named in the setup line and the JSON."""
    import_torch_tensorrt()
    import sdpa_converter
    from compilers import kv_cache_update
    from options import Options, RunOptions
    from report.table import RunSetup

    def setup(cache: str, backend: str = "sdpa") -> RunSetup:
        return RunSetup.of(Options(ModelOptions("tiny-llama"), CompileOptions("tensorrt", cache), RunOptions(),
                                   backend=backend))

    v3 = setup("static_v3")
    assert (v3.attention, v3.cache_write) == (sdpa_converter.LAYERS, kv_cache_update.CACHE_WRITE)
    assert setup("static_v2").cache_write == "-" and setup("static_v3", "plugin").cache_write == "-"


def assert_caches_written_in_place(engine, caches: list[str]) -> None:
    """Each cache output is a KV-cache update layer's, aliased to its own cache input."""
    import tensorrt as trt

    from trt_helpers import network_of_engine

    network = network_of_engine(engine)
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    print(f"  {kinds.count(trt.LayerType.KV_CACHE_UPDATE)} KV-cache update layer(s), "
          f"{kinds.count(trt.LayerType.SCATTER)} scatter layer(s), {len(engine.aliased_io)} aliased output(s)")
    assert kinds.count(trt.LayerType.KV_CACHE_UPDATE) == len(caches)
    assert trt.LayerType.SCATTER not in kinds
    assert sorted(alias for alias, _ in engine.aliased_io.values()) == sorted(caches)
    assert set(engine.aliased_io) == set(engine.output_binding_names[1:])


@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_vlm_language_models_give_one_engine(family):
    from export import export_llm
    from utils import lower
    from vlm_fixtures import tiny_vlm

    vlm = tiny_vlm(family)
    gm = lower(export_llm(vlm.language_model(), 1, MAX_SEQ_LEN, embeds=True, position_rows=vlm.position_rows),
               "static_v2", MAX_SEQ_LEN)
    assert_one_engine_nothing_left(compile_as_run_llm_does(gm, family, "static_v2")[0], f"{family} language model")


def test_the_plugin_backend_gives_one_engine(monkeypatch):
    """TensorRT-RTX has no plugin layers: the stand-in creator (as in test_plugin.py) and a stand-in
    plugin layer, made of the network's own layers with the plugin's two output shapes, take their place."""
    import_torch_tensorrt()
    import numpy as np
    import tensorrt as trt

    from plugin import converter as plugin_converter
    from plugin.compile import compile_plugin_model
    from plugin.model import PluginCausalLM, allocate_plugin_caches

    model = tiny_model("tiny-qwen3")
    config = model.config
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    created = []

    class Creator:
        def create_plugin(self, name, fields):
            created.append(name)
            return (name, fields)

    class Layer:
        def __init__(self, outputs):
            self.outputs, self.name = outputs, None

        def get_output(self, index):
            return self.outputs[index]

    def add_plugin_v2(network, inputs, plugin):
        qkv = network.add_shuffle(inputs[0])
        qkv.reshape_dims = (0, 0, hq + 2 * hkv, d)  # [B, L, heads, D]

        def heads(first, count):
            index = network.add_constant((count,), trt.Weights(np.arange(first, first + count, dtype=np.int32)))
            return network.add_gather(qkv.get_output(0), index.get_output(0), 2).get_output(0)

        delta = network.add_shuffle(heads(hq, 2 * hkv))
        delta.reshape_dims = (0, 0, 2, hkv, d)
        delta.second_transpose = (0, 2, 3, 1, 4)  # [B, 2, Hkv, L, D]
        return Layer([heads(0, hq), delta.get_output(0)])

    monkeypatch.setattr(plugin_converter, "plugin_creator", lambda: Creator())
    monkeypatch.setattr(trt.INetworkDefinition, "add_plugin_v2", add_plugin_v2, raising=False)
    caches = allocate_plugin_caches(model, 1, MAX_SEQ_LEN, torch.float32, "cpu")
    with engines_built_not_loaded():
        compiled = compile_plugin_model(PluginCausalLM(model), CompileOptions("tensorrt"), caches, MAX_SEQ_LEN)
    assert_one_engine_nothing_left(compiled, "plugin backend, tiny-qwen3")
    assert len(created) == config.num_hidden_layers


def test_a_node_left_to_pytorch_is_counted(monkeypatch):
    """The count can fail: with the canonical attention left to PyTorch, its nodes split the engine."""
    torch_tensorrt = import_torch_tensorrt()

    attention = torch.ops.llm_tools.attention.default
    compile_ = torch_tensorrt.dynamo.compile
    monkeypatch.setattr(torch_tensorrt.dynamo, "compile",
                        lambda *args, **kwargs: compile_(*args, **kwargs, torch_executed_ops={attention}))
    compiled, _ = compile_as_run_llm_does(lowered_graph(tiny_model("tiny-llama"), 1, MAX_SEQ_LEN, "static_v2"),
                                          "tiny-llama", "static_v2")
    engines, leftovers = engines_and_leftovers(compiled)
    assert len([node for node in leftovers if "llm_tools.attention" in node]) == 2  # one per layer
    assert len(engines) > 1


def counting_builds(monkeypatch) -> list:
    """Each TensorRT build Torch-TensorRT starts, appended to the returned list."""
    from torch_tensorrt.dynamo.conversion import _TRTInterpreter

    builds = []
    run = _TRTInterpreter.TRTInterpreter.run
    monkeypatch.setattr(_TRTInterpreter.TRTInterpreter, "run",
                        lambda self, *args, **kwargs: builds.append(self) or run(self, *args, **kwargs))
    return builds


def test_a_second_build_is_an_engine_cache_hit_and_other_settings_miss(tmp_path, monkeypatch):
    """The same model and settings again: no engine is built, the cached one is refitted with the
    run's weights. Another precision or another --cache builds a new engine.

    Without CUDA, TensorRT-RTX cannot build a refittable network (its Myelin compiler needs the GPU), so
    here the builder is asked for a plain engine; hashing, storing and looking up are Torch-TensorRT's."""
    torch_tensorrt = import_torch_tensorrt()
    import tensorrt as trt

    assert torch_tensorrt.ENABLED_FEATURES.refit
    build = trt.Builder.build_serialized_network

    def build_here(self, network, config):
        assert config.get_flag(trt.BuilderFlag.REFIT)  # what a GPU build is asked for
        config.clear_flag(trt.BuilderFlag.REFIT)
        return build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", build_here)
    builds = counting_builds(monkeypatch)

    def compile_counting(cache: str, precision: str = "FP32"):
        del builds[:]
        gm = lowered_graph(tiny_model("tiny-llama", precision=precision), 1, MAX_SEQ_LEN, cache)
        compiled, refits = compile_as_run_llm_does(gm, "tiny-llama", cache, precision, str(tmp_path))
        engine, = engines_and_leftovers(compiled)[0]
        return len(builds), refits, engine

    built, refits, first = compile_counting("static_v2")
    assert (built, refits) == (1, []) and any(tmp_path.iterdir())
    built, refits, second = compile_counting("static_v2")
    assert built == 0 and len(refits) == 1  # a hit: refitted with this run's weights, not built
    assert second.serialized_engine == first.serialized_engine
    assert second.input_binding_names == first.input_binding_names
    assert compile_counting("static_v2", "FP16")[0] == 1
    assert compile_counting("static_v3")[0] == 1
    assert compile_counting("static_v3")[0] == 0


def test_without_an_engine_cache_every_run_builds(monkeypatch):
    """--no_engine_cache: no engine cache is made, and a second run builds again."""
    import_torch_tensorrt()
    from torch_tensorrt.dynamo import _engine_cache

    builds, caches_made = counting_builds(monkeypatch), []
    monkeypatch.setattr(_engine_cache.DiskEngineCache, "__init__", lambda self, *args: caches_made.append(args))
    for _ in range(2):
        compile_as_run_llm_does(lowered_graph(tiny_model("tiny-llama"), 1, MAX_SEQ_LEN, "static_v2"),
                                "tiny-llama", "static_v2")
    assert len(builds) == 2 and caches_made == []


def test_a_model_of_the_same_layers_and_another_width_misses(tmp_path, monkeypatch):
    """Torch-TensorRT's own key is the op sequence: it cannot tell tiny-llama from tiny-llama with a wider
    MLP (the cache input shapes are the same too). The project's key can, and ignores weight values."""
    torch_tensorrt = import_torch_tensorrt()
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo._engine_cache import DiskEngineCache

    from compilers.engine_cache import disk_engine_cache
    from load.models import load_config, load_model

    options = ModelOptions("tiny-llama")
    config = load_config(options)
    config.intermediate_size *= 2
    # Freshly loaded, all three: the session's shared tiny-llama may carry the plugin backend's
    # attention wrappers (plugin/model.py), whose weight names differ.
    base, wider, reseeded = (load_model(options, c) for c in (load_config(options), config, load_config(options)))
    with torch.no_grad():
        for weight in reseeded.parameters():
            weight.add_(0.5)  # the same structure, other weights: a refit, not a miss
    graphs = [lowered_graph(model, 1, MAX_SEQ_LEN, "static_v2")
              for model in (base, wider, reseeded)]
    specs = [torch_tensorrt.Input(shape=(1, 4), dtype=torch.int64)]
    settings = CompilationSettings()
    theirs = [DiskEngineCache.get_hash(gm, specs, settings) for gm in graphs]
    ours = [disk_engine_cache(str(tmp_path)).get_hash(gm, specs, settings) for gm in graphs]
    assert theirs[0] == theirs[1] == theirs[2]
    assert ours[0] != ours[1]
    assert ours[0] == ours[2]
    import sdpa_converter  # the other conversion of the attention is another engine

    monkeypatch.setattr(sdpa_converter, "LAYERS", "matmul_softmax" if sdpa_converter.LAYERS == "attention_layer"
                        else "attention_layer")
    assert disk_engine_cache(str(tmp_path)).get_hash(graphs[0], specs, settings) != ours[0]


def engine_profiles(interpreter) -> list[dict]:
    """{input name: (min, opt, max)} of each optimization profile of a built network: shapes of the
    dynamic tensor inputs, values of the shape-tensor inputs."""
    network, profiles = interpreter.ctx.net, []
    for profile in interpreter.optimization_profiles:
        shapes = {}
        for tensor in (network.get_input(i) for i in range(network.num_inputs)):
            if tensor.is_shape_tensor:
                shapes[tensor.name] = tuple(tuple(value) for value in profile.get_shape_input(tensor.name))
            elif -1 in tuple(tensor.shape):
                shapes[tensor.name] = tuple(tuple(shape) for shape in profile.get_shape(tensor.name))
        profiles.append(shapes)
    return profiles


@pytest.mark.parametrize("cache", CACHES)
def test_the_engine_has_a_decode_profile_and_a_prefill_profile(cache, monkeypatch):
    """Profile 0 is built for one new token, profile 1 for prompts of 1 to max_seq_len tokens (tuned at the
    longest); static_v1/v2's end_idx never goes below 1 (an empty cache slice no step asks for)."""
    import_torch_tensorrt()
    builds = counting_builds(monkeypatch)
    compile_as_run_llm_does(lowered_graph(tiny_model("tiny-llama"), 1, MAX_SEQ_LEN, cache), "tiny-llama", cache)
    decode, prefill = engine_profiles(builds[0])
    sequence_inputs = ["input_ids", "position_ids"] + (["cache_position"] if cache == "static_v3" else [])
    for name in sequence_inputs:
        one, longest = ((1,), (MAX_SEQ_LEN,)) if name == "cache_position" else ((1, 1), (1, MAX_SEQ_LEN))
        assert decode[name] == (one, one, one)
        assert prefill[name] == (one, longest, longest)
    if cache != "static_v3":
        for profile in (decode, prefill):
            end_min, _, end_max = profile["end_idx"]
            assert (end_min, end_max) == ((1,), (MAX_SEQ_LEN,))


def test_without_the_position_bounds_end_idx_could_be_zero(monkeypatch):
    """The profile check can fail: without compilers.tensorrt.bound_positions, end_idx's profile starts at 0."""
    import_torch_tensorrt()
    from compilers import tensorrt

    monkeypatch.setattr(tensorrt, "bound_positions", lambda gm, placeholders, max_seq_len: None)
    builds = counting_builds(monkeypatch)
    compile_as_run_llm_does(lowered_graph(tiny_model("tiny-llama"), 1, MAX_SEQ_LEN, "static_v2"),
                            "tiny-llama", "static_v2")
    assert engine_profiles(builds[0])[0]["end_idx"][0] == (0,)
