"""run_llm.py as a user runs it: bad input gets one line and exit status 2; good runs print the spec's blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SESSION_CACHE_HOME, script_module


def run_llm(*flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_llm.py"), *flags], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing half-written
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


BAD_INPUTS = {
    "unknown-model": (["--model", "no-such-org/no-such-model", "--compiler", "eager"],
                      {"HF_HUB_OFFLINE": "1"}, ["'no-such-org/no-such-model' is not in the local", "tiny-*"]),
    "unknown-random-weights-id": (["--model", "no-such-org/no-such-model", "--random_weights", "--compiler", "eager"],
                                  {}, ["--random_weights has no built-in config", "README's tables"]),
    "precision-fp8": (["--model", "tiny-llama", "--precision", "FP8"], {}, ["--precision", "'FP8'", "FP16"]),
    "cache-v9": (["--model", "tiny-llama", "--cache", "static_v9"], {}, ["--cache", "'static_v9'", "static_v2"]),
    "too-many-positions": (["--model", "tiny-llama", "--compiler", "eager", "--benchmark", "--isl", "250",
                            "--num_tokens", "10"], {}, ["260 tokens", "256 positions", "--isl"]),
    "batch-size-zero": (["--model", "tiny-llama", "--compiler", "eager", "--batch_size", "0"], {},
                        ["--batch_size must be at least 1"]),
    "num-tokens-zero": (["--model", "tiny-llama", "--compiler", "eager", "--num_tokens", "0"], {},
                        ["--num_tokens must be at least 1"]),
    "plugin-missing": (["--model", "tiny-llama", "--compiler", "eager", "--backend", "plugin",
                        "--plugin_path", "/nonexistent/libNvInfer_edgellm_plugin.so"], {},
                       ["/nonexistent/libNvInfer_edgellm_plugin.so does not exist", "leave --plugin_path out"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case):
    flags, env, fragments = BAD_INPUTS[case]
    assert_usage_error(run_llm(*flags, env=env), *fragments)


def test_tensorrt_without_a_gpu(monkeypatch):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_usage_error(run_llm("--model", "tiny-llama", "--compiler", "tensorrt"),
                       "--compiler tensorrt needs", "--compiler inductor")


def test_tensorrt_without_torch_tensorrt(tmp_path):
    """torch_tensorrt hidden from the import system, as on a machine where it is not installed."""
    # A None entry in sys.modules is Python's own way to make a module unimportable.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch_tensorrt'] = None\n")
    result = run_llm("--model", "tiny-llama", "--compiler", "tensorrt", env={"PYTHONPATH": str(tmp_path)})
    assert_usage_error(result, "torch_tensorrt, which is not installed", "--compiler eager")


def test_generation_prints_the_spec_blocks():
    result = run_llm("--model", "tiny-qwen3", "--compiler", "eager", "--cache", "static_v1", "--precision", "FP32",
                     "--num_tokens", "12", "--enable_pytorch_run", "--prompt", "Hello")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "========= PyTorch ========="
    assert lines[1].startswith("PyTorch model generated text: Hello")
    assert "========= Eager =========" in lines
    assert lines[-1] == "PyTorch and Eager outputs match: True"
    assert lines[-2].startswith("Teacher-forced, Eager fed PyTorch's tokens: top-1 agreement 1.000 over 12 steps")
    assert "built-in byte-level tokenizer" in result.stderr


@pytest.mark.slow
def test_benchmark_writes_json(tmp_path):
    out = tmp_path / "r.json"
    result = run_llm("--model", "tiny-llama", "--compiler", "eager", "--cache", "static_v3", "--benchmark",
                     "--isl", "16", "--num_tokens", "6", "--iterations", "3", "--enable_pytorch_run",
                     "--baselines", "hf_dynamic", "no_cache", "--output_json", str(out))
    assert result.returncode == 0, result.stderr
    dynamic = "PyTorch (HF generate, dynamic cache)"
    no_cache = "PyTorch (HF forward on the whole sequence per token, no cache)"
    compiled = "Eager, static_v3"
    for row in (dynamic, no_cache, compiled):
        assert f"| {row} |" in result.stdout
    report = json.loads(out.read_text())
    assert report["setup"]["isl"] == 16 and report["setup"]["osl"] == 6
    assert report["copy_bandwidth_tb_s"] is None and report["timings"] == "CPU, indicative only"
    for backend in (dynamic, no_cache, compiled):
        figures = report["results"][backend]
        assert figures["e2e_latency_ms"]["median"] > figures["ttft_ms"]["median"] > 0
        assert figures["compile_s"] >= 0 and figures["decode_bandwidth_tb_s"] is None  # a GPU's figure
    assert report["results"][compiled]["forced_top1"] == 1.0
    assert report["results"][compiled]["forced_max_logit_diff"] < 1e-4
    assert report["setup"]["attention"] == "sdpa"
    assert report["setup"]["cache_write"] == "-"  # a TensorRT static_v3 engine's only
    assert report["setup"]["cuda_graphs"] is False  # on a CPU
    assert report["results"][compiled]["compile_s"] >= report["build_seconds"] > 0
    # FP16 on the CPU, tiny model: the three runs pick the same tokens
    assert report["results"][compiled]["token_agreement"] == 1.0
    assert report["results"][no_cache]["token_agreement"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-llama"])
def test_inductor_fixed_shape_cache_matches_pytorch(model):
    """The benchmarked configuration (inductor, static_v3) against Hugging Face's generate, FP32 on the CPU."""
    result = run_llm("--model", model, "--compiler", "inductor", "--cache", "static_v3", "--precision", "FP32",
                     "--num_tokens", "24", "--enable_pytorch_run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "PyTorch and Inductor outputs match: True"


@pytest.mark.gpu
@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_cuda_graph_steps_match_pytorch(compiler):
    """--cudagraph with static_v3: each step replayed from a captured CUDA graph, FP32 on the GPU."""
    result = run_llm("--model", "tiny-qwen2", "--compiler", compiler, "--cache", "static_v3", "--precision", "FP32",
                     "--num_tokens", "24", "--enable_pytorch_run", "--device", "cuda", "--cudagraph")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"PyTorch and {compiler.capitalize()} outputs match: True"


@pytest.mark.gpu
@pytest.mark.parametrize("flag", [None, "--no_cudagraph"])
def test_a_v2_benchmark_on_a_gpu_is_captured_by_default(flag, tmp_path):
    """The spec's benchmark flags with static_v2 on a GPU run through CUDA graphs unless told not to, and the
    captured steps agree with PyTorch teacher-forced (FP32)."""
    out = tmp_path / "r.json"
    result = run_llm("--model", "tiny-llama", "--compiler", "inductor", "--cache", "static_v2", "--precision", "FP32",
                     "--benchmark", "--isl", "16", "--num_tokens", "8", "--iterations", "2", "--enable_pytorch_run",
                     "--baselines", "hf_dynamic", "--device", "cuda", "--output_json", str(out), *([flag] if flag else []))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["setup"]["cuda_graphs"] is (flag is None)
    compiled = "Inductor, static_v2" + (", CUDA graphs" if flag is None else "")
    assert report["results"][compiled]["forced_top1"] == 1.0


def test_cuda_graphs_by_default_where_a_graph_is_replayed():
    """On a GPU, eager and inductor static-cache steps: v3 always, v1/v2 when benchmarking; the flags decide."""
    from argparse import Namespace

    from cli import cuda_graphs_of

    def default(compiler="inductor", cache="static_v2", benchmark=True, backend="sdpa", on_gpu=True, **flags):
        args = Namespace(compiler=compiler, cache=cache, benchmark=benchmark, backend=backend,
                         cudagraph=flags.get("cudagraph", False), no_cudagraph=flags.get("no_cudagraph", False))
        return cuda_graphs_of(args, on_gpu)

    assert default() and default(cache="static_v1") and default(compiler="eager")
    assert default(cache="static_v3", benchmark=False)
    assert not default(benchmark=False)  # one generation sees each position once: nothing to replay
    assert not default(cache="") and not default(compiler="tensorrt") and not default(backend="plugin")
    assert not default(on_gpu=False) and not default(no_cudagraph=True)
    assert default(cache="", cudagraph=True) and default(compiler="tensorrt", cudagraph=True)


def profile_step(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_profile_step_needs_a_gpu():
    assert_usage_error(profile_step("--model", "tiny-llama", "--compiler", "eager", "--device", "cpu"),
                       "needs a CUDA device")


def test_profile_step_says_which_run_llm_flags_it_does_not_use():
    result = profile_step("--model", "tiny-llama", "--compiler", "eager", "--device", "cpu", "--output_json", "p.json",
                          "--cache", "static_v1", "--isl", "8", "--iterations", "2")
    assert "WARNING: --output_json is not used by profile_step.py (the profile is printed); ignored" in result.stderr
    assert "WARNING: --cache is not used by profile_step.py (the step is static_v3's); ignored" in result.stderr
    assert "--prompt" not in result.stderr  # a flag left at its default is not mentioned
    assert "--isl" not in result.stderr and "--iterations" not in result.stderr  # a profile always benchmarks


def test_profile_step_sets_inductor_options():
    import torch._inductor.config as config

    profile = script_module("benchmarks", "profile_step.py")
    # config.patch restores the options; pytest's monkeypatch would delete them from inductor's config on undo
    # (they are not in the module's __dict__), which hides them from every later compile in this process
    with config.patch({"combo_kernels": False, "triton.unique_kernel_names": False}):
        profile.set_inductor_options(["combo_kernels=True", "triton.unique_kernel_names=True"])
        assert config.combo_kernels is True and config.triton.unique_kernel_names is True
    for bad, message in [("no_such_option=1", "has no option 'no_such_option'"),
                         ("combo_kernels=yes", "as a Python literal")]:
        with pytest.raises(profile.UsageError, match=message):
            profile.set_inductor_options([bad])


def test_profile_step_reads_the_compiles_parts_from_torchdynamos_timers(monkeypatch):
    import torch

    profile = script_module("benchmarks", "profile_step.py")
    torch.compile(lambda x: x * 2, backend="eager")(torch.ones(3))  # this torch still has the timers read
    assert "inductor -" not in profile.compile_parts() and "tracing -" not in profile.compile_parts()
    monkeypatch.setattr(torch._dynamo.utils, "compile_times",
                        lambda repr, aggregate: (["_compile.compile_inner", "bytecode_tracing"], ["12.5", "3.31"]))
    assert profile.compile_parts() == "TorchDynamo and inductor 12.5 s (tracing 3.3 s), block-size tuning -"


@pytest.mark.gpu
def test_profile_step_counts_the_kernels_of_every_layer():
    result = profile_step("--model", "tiny-llama", "--compiler", "eager", "--precision", "FP32", "--isl", "8",
                          "--num_tokens", "8", "--device", "cuda")
    assert result.returncode == 0, result.stderr
    counted = next(line for line in result.stdout.splitlines() if line.startswith("kernels per step:"))
    kernels = int(counted.split(":")[1].split(",")[0])
    layers = 2  # tiny-llama: each layer runs at least its projections and its attention
    assert kernels >= 3 * layers, result.stdout
    loop = next(line for line in result.stdout.splitlines() if line.startswith("outside the step"))
    assert float(loop.split(":")[1].split()[0]) >= 1, result.stdout  # at least the argmax of each step
    assert "| us per step | share | calls | kernel |" in result.stdout


@pytest.mark.parametrize("capability, refused", [((9, 0), True), ((8, 6), False), ((12, 0), False)])
def test_tensorrt_rtx_on_a_gpu_it_cannot_run_on(monkeypatch, capability, refused):
    """With only torch-tensorrt-rtx installed, a compute capability 9.0 GPU is refused before any loading."""
    import cli

    monkeypatch.setattr(cli, "_installed", lambda name: name == "torch-tensorrt-rtx")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    args = script_module("run_llm.py").build_parser().parse_args(["--device", "cuda", "--compiler", "tensorrt"])
    if not refused:
        assert cli.options_from_args(args).compile.compiler == "tensorrt"
        return
    with pytest.raises(cli.UsageError, match=r"torch-tensorrt-rtx .* \(compute capability 9\.0\); install "
                                             r"torch-tensorrt instead, or use --compiler inductor"):
        cli.options_from_args(args)


def _tensorrt_options(monkeypatch, flags):
    """options_from_args for `--device cuda --compiler tensorrt FLAGS`, on a GPU TensorRT can run on."""
    import cli

    monkeypatch.setattr(cli, "_installed", lambda name: name == "torch-tensorrt")
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    args = script_module("run_llm.py").build_parser().parse_args(["--device", "cuda", "--compiler", "tensorrt",
                                                                  *flags])
    return cli.options_from_args(args)


def test_the_engine_cache_is_on_by_default_and_can_be_moved_or_turned_off(monkeypatch, tmp_path):
    from compilers.engine_cache import DEFAULT_ENGINE_CACHE_DIR

    assert _tensorrt_options(monkeypatch, []).compile.engine_cache_dir == DEFAULT_ENGINE_CACHE_DIR
    folder = str(tmp_path / "engines")
    assert _tensorrt_options(monkeypatch, ["--engine_cache_dir", folder]).compile.engine_cache_dir == folder
    assert not os.path.exists(folder)  # made by Torch-TensorRT when it stores the first engine
    assert _tensorrt_options(monkeypatch, ["--no_engine_cache"]).compile.engine_cache_dir is None


@pytest.mark.parametrize("kind", ["a file", "not writable"])
def test_an_engine_cache_dir_that_cannot_hold_engines_is_refused(monkeypatch, tmp_path, kind):
    import cli

    path = tmp_path / "engines"
    if kind == "a file":
        path.write_text("")
        expected = r"--engine_cache_dir .* is a file; give a folder, or --no_engine_cache"
    else:
        monkeypatch.setattr(cli.os, "access", lambda folder, mode: False)
        expected = r"--engine_cache_dir .*: .* is not writable; choose another folder or --no_engine_cache"
    with pytest.raises(cli.UsageError, match=expected):
        _tensorrt_options(monkeypatch, ["--engine_cache_dir", str(path)])


@pytest.mark.slow
def test_a_second_inductor_run_loads_its_compiled_graphs_from_the_cache_folder(tmp_path):
    """--inductor_cache_dir: the first run compiles (cold), the same command again finds every graph there
    (warm). The JSON says which."""
    def state(folder: str) -> str:
        out = tmp_path / "r.json"
        result = run_llm("--model", "tiny-gpt2", "--compiler", "inductor", "--precision", "FP32", "--num_tokens", "3",
                         "--inductor_cache_dir", str(tmp_path / folder), "--output_json", str(out))
        assert result.returncode == 0, result.stderr
        return json.loads(out.read_text())["inductor_cache"]

    assert state("a") == "cold"
    assert os.listdir(tmp_path / "a")
    assert state("a") == "warm"


def test_a_second_run_reads_its_exported_graph_from_the_cache_folder(tmp_path):
    """--export_cache_dir: the first run exports (cold), the same command again reads the graph (warm), with
    the same tokens; --no_export_cache uses none. The JSON says which."""
    def run(*flags: str) -> dict:
        out = tmp_path / "r.json"
        result = run_llm("--model", "tiny-llama", "--compiler", "eager", "--cache", "static_v3", "--precision", "FP32",
                         "--num_tokens", "6", "--random_weights", "--output_json", str(out), *flags)
        assert result.returncode == 0, result.stderr
        return json.loads(out.read_text())

    folder = ["--export_cache_dir", str(tmp_path / "exports")]
    cold, warm = run(*folder), run(*folder)
    assert (cold["export_cache"], warm["export_cache"]) == ("cold", "warm")
    assert warm["results"]["new_tokens"] == cold["results"]["new_tokens"]
    assert run("--no_export_cache")["export_cache"] == "none"


def test_runs_under_test_keep_to_the_test_sessions_cache_folder():
    """The cache flags' defaults, in this process and in a run it starts, lie in the test session's folder, not in
    the user's ~/.cache."""
    parser = script_module("run_llm.py").build_parser()
    for flag in ("export_cache_dir", "inductor_cache_dir", "engine_cache_dir"):
        assert parser.get_default(flag).startswith(SESSION_CACHE_HOME), flag
    exports = os.path.join(SESSION_CACHE_HOME, "torch_tensorrt_llm", "exports")
    before = set(os.listdir(exports)) if os.path.isdir(exports) else set()
    result = run_llm("--model", "tiny-qwen2", "--compiler", "eager", "--cache", "static_v3", "--precision", "FP32",
                     "--num_tokens", "2", "--random_weights")
    assert result.returncode == 0, result.stderr
    assert before < set(os.listdir(exports)) or f"came from the cache ({exports}" in result.stderr  # written or read


def test_export_cache_flags_with_the_plugin_backend_are_reported_unused(caplog):
    import logging

    import cli

    parser = script_module("run_llm.py").build_parser()
    args = parser.parse_args(["--backend", "plugin", "--no_export_cache"])
    with caplog.at_level(logging.WARNING, logger="llm_tools"):
        cli.warn_unused(parser, args)
    assert "--no_export_cache is not used with --backend plugin; ignored" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_tools"):
        cli.warn_unused(parser, parser.parse_args(["--no_export_cache"]))
    assert not caplog.messages


@pytest.mark.parametrize("imported", ["cli", "torch"])
def test_inductors_tf32_suggestion_is_kept_from_the_user(imported):
    # the notice as inductor words it (torch/_inductor/compile_fx.py); without cli, as the reference, it shows
    notice = ("TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled. "
              "Consider setting `torch.set_float32_matmul_precision('high')` for better performance.")
    shown = subprocess.run([sys.executable, "-c", f"import {imported}, warnings; warnings.warn({notice!r})"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120).stderr
    assert ("TensorFloat32" in shown) == (imported == "torch"), shown
