"""run_llm.py as a user runs it: bad input gets one line and exit status 2; good runs print the spec's blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


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
                      {"HF_HUB_OFFLINE": "1"}, ["cannot load model 'no-such-org/no-such-model'", "tiny-*"]),
    "unknown-random-weights-id": (["--model", "no-such-org/no-such-model", "--random_weights", "--compiler", "eager"],
                                  {}, ["cannot load model", "--random_weights knows"]),
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
                       ["/nonexistent/libNvInfer_edgellm_plugin.so does not exist", "--backend sdpa"]),
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
    assert "built-in byte-level tokenizer" in result.stderr


@pytest.mark.slow
def test_benchmark_writes_json(tmp_path):
    out = tmp_path / "r.json"
    result = run_llm("--model", "tiny-llama", "--compiler", "eager", "--cache", "static_v2", "--benchmark",
                     "--isl", "16", "--num_tokens", "6", "--iterations", "3", "--enable_pytorch_run",
                     "--output_json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| PyTorch |" in result.stdout and "| Eager |" in result.stdout
    report = json.loads(out.read_text())
    assert report["setup"]["isl"] == 16 and report["setup"]["osl"] == 6
    for backend in ("PyTorch", "Eager"):
        figures = report["results"][backend]
        assert figures["e2e_latency_ms"]["median"] > figures["ttft_ms"]["median"] > 0
