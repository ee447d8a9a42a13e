"""Every entry point answers bad input with one line and exit status 2, writes nothing, and never
reports an empty or wrong run as a match; Ctrl-C and internal errors say what the run was doing."""

from __future__ import annotations

import errno
import json
import os
import random

import pytest
import torch

from entry_points import assert_one_line_error, error_lines, run_entry

LLM = ["--compiler", "eager", "--model", "tiny-llama", "--num_tokens", "2"]
VLM = ["--compiler", "eager", "--model", "tiny-qwen2.5-vl", "--num_tokens", "2"]
E2E = ["--model", "tiny-llama", "--num_tokens", "2"]
GRID = ["--models", "tiny-llama", "--no-cudagraph"]
NO_GPU = not torch.cuda.is_available()


@pytest.fixture
def folders(tmp_path):
    """Model folders and files the cases point at, made once per case under tmp_path/inputs."""
    from transformers import BertConfig, LlamaConfig, T5Config

    from load.presets import builtin_config

    inputs = tmp_path / "inputs"
    for name, config in {"bert": BertConfig(), "t5": T5Config(),
                         "no-weights": LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                                   num_attention_heads=4, vocab_size=512)}.items():
        config.save_pretrained(inputs / name)
    vlm = builtin_config("tiny-qwen2.5-vl")
    vlm.quantization_config = {"quant_method": "modelopt", "quant_algo": "FP8"}
    vlm.save_pretrained(inputs / "fp8-vlm")
    (inputs / "fp8-vlm" / "model.safetensors").write_bytes(b"")  # a checkpoint's files, never read
    (inputs / "notes.png").write_text("not a picture")
    (inputs / "a-file").write_text("")
    return inputs


# (script, arguments, a fragment of the one line); {in} is the inputs folder, {out} an empty folder.
CASES = [
    ("run_llm.py", [*LLM, "--model", "tiny-eagle2"], "use run_vlm.py"),
    ("run_llm.py", [*LLM, "--model", "tiny-qwen2.5-vl"], "use run_vlm.py"),
    ("run_llm.py", [*LLM, "--model", "tiny-lama"], "did you mean tiny-llama?"),
    ("run_llm.py", [*LLM, "--model", "tiny-qwen"], "there is no preset 'tiny-qwen'"),
    ("run_llm.py", [*LLM, "--model", "{in}/no-weights"], "add --random_weights"),
    ("run_llm.py", [*LLM, "--model", "{in}/bert", "--random_weights"], "not model_type 'bert'"),
    ("run_llm.py", [*LLM, "--model", "{in}/t5", "--random_weights"], "not model_type 't5'"),
    ("run_llm.py", [*LLM, "--model", "{in}/t5"], "no weights"),
    ("run_llm.py", [*LLM, "--model", "{in}/missing-folder", "--random_weights"], "neither a folder here nor a Hub id"),
    ("run_llm.py", [*LLM, "--model", "{in}/missing-folder"], "neither a folder here nor a Hub id"),
    ("run_llm.py", [*LLM, "--model", "someone/unknown", "--random_weights"], "no built-in config"),
    ("run_llm.py", [*LLM, "--model", "someone/unknown"], "HF_HUB_OFFLINE is set"),
    ("run_llm.py", [*LLM, "--model", "Qwen/Qwen2.5-0.5B-Instruct"], "add --random_weights"),
    ("run_llm.py", [*LLM, "--device", "bogus"], "--device bogus is not a device"),
    ("run_llm.py", [*LLM, "--device", "CPU"], "lower case"),
    ("run_llm.py", [*LLM, "--device", "meta"], "not meta"),
    ("run_llm.py", [*LLM, "--device", "mps"], "not mps"),
    ("run_llm.py", [*LLM, "--output_json", "{out}"], "is a folder"),
    ("run_llm.py", [*LLM, "--output_json", "{out}/missing/r.json"], "does not exist"),
    ("run_llm.py", [*LLM, "--benchmark", "--output_json", "{out}", "--iterations", "1"], "is a folder"),
    ("run_llm.py", [*LLM, "--benchmark", "--isl", "200000000"], "256 positions"),
    ("run_llm.py", [*LLM, "--num_tokens", "100000"], "256 positions"),
    ("run_llm.py", [*LLM, "--num_tokens", "0"], "--num_tokens must be at least 1"),
    ("run_llm.py", [*LLM, "--num_tokens", "-5"], "--num_tokens must be at least 1"),
    ("run_llm.py", [*LLM, "--num_tokens", "many"], "invalid int value"),
    ("run_llm.py", [*LLM, "--batch_size", "0"], "--batch_size must be at least 1"),
    ("run_llm.py", [*LLM, "--benchmark", "--iterations", "0"], "--iterations must be at least 1"),
    ("run_llm.py", [*LLM, "--benchmark", "--isl", "0"], "--isl must be at least 1"),
    ("run_llm.py", [*LLM, "--min_block_size", "0"], "--min_block_size must be at least 1"),
    ("run_llm.py", [*LLM, "--precision", "FP8"], "invalid choice: 'FP8'"),
    ("run_llm.py", [*LLM, "--cache", "static_v9"], "invalid choice: 'static_v9'"),
    ("run_llm.py", [*LLM, "--compiler", "eagr"], "invalid choice: 'eagr'"),
    ("run_llm.py", [*LLM, "--baselines", "hf_fast"], "invalid choice: 'hf_fast'"),
    ("run_llm.py", [*LLM, "--backend", "flash"], "invalid choice: 'flash'"),
    ("run_llm.py", [*LLM, "--no_such_flag"], "unrecognized arguments"),
    ("run_llm.py", [*LLM, "--cudagraph"], "--cudagraph needs a CUDA device"),
    ("run_llm.py", [*LLM, "--cudagraph", "--no_cudagraph"], "not allowed with argument --cudagraph"),
    ("run_llm.py", [*LLM, "--compiler", "inductor", "--inductor_cache_dir", "{in}/a-file"], "is a file; give a folder"),
    ("run_llm.py", [*LLM, "--backend", "plugin", "--model", "tiny-gpt2"], "not gpt2"),
    ("run_llm.py", [*LLM, "--backend", "plugin", "--plugin_path", "{in}/none.so"], "does not exist"),
    ("run_llm.py", [*LLM, "--quant_format", "int8", "--quant_algo", "smoothquant", "--weight_only"],
     "drop one of them"),
    ("run_llm.py", [*LLM, "--quant_format", "fp8", "--quant_algo", "smoothquant"], "is for --quant_format int8"),
    ("run_llm.py", [*LLM, "--quant_format", "int8", "--backend", "plugin"], "not available with --backend plugin"),
    ("run_llm.py", [*LLM, "--quant_format", "nvfp4"], "compute capability 10.0"),
    ("run_llm.py", [*LLM, "--quant_format", "int4"], "invalid choice: 'int4'"),
    ("run_llm.py", [*LLM, "--weight_only"], "--weight_only needs --quant_format"),
    ("run_llm.py", [*LLM, "--quant_algo", "smoothquant", "--calib_data", "text"], "need --quant_format"),
    ("run_vlm.py", [*VLM, "--quant_format", "int8", "--quant_algo", "smoothquant", "--weight_only"],
     "drop one of them"),
    ("run_vlm.py", [*VLM, "--model", "{in}/fp8-vlm"], "does not load pre-quantized checkpoints yet"),
    ("run_vlm.py", [*VLM, "--model", "tiny-llama"], "use run_llm.py"),
    ("run_vlm.py", [*VLM, "--model", "tiny-eagle3"], "did you mean tiny-eagle2?"),
    ("run_vlm.py", [*VLM, "--model", "{in}/bert", "--random_weights"], "use run_llm.py"),
    ("run_vlm.py", [*VLM, "--image_path", "{in}/none.jpg"], "does not exist"),
    ("run_vlm.py", [*VLM, "--image_path", "{in}/notes.png"], "is not a readable image"),
    ("run_vlm.py", [*VLM, "--precision", "BF16"], "FP16 or FP32"),
    ("run_vlm.py", [*VLM, "--enable_pytorch_run", "--baselines", "hf_static"], "leave out --baselines"),
    ("run_vlm.py", [*VLM, "--device", "bogus"], "is not a device"),
    ("run_vlm.py", [*VLM, "--num_tokens", "0"], "--num_tokens must be at least 1"),
    ("run_vlm.py", [*VLM, "--output_json", "{out}"], "is a folder"),
    ("run_vlm.py", [*VLM, "--benchmark", "--isl", "200000000"], "positions"),
    ("run_vlm.py", [*VLM, "--cudagraph"], "--cudagraph needs a CUDA device"),
    ("run_vlm.py", [*VLM, "--backend", "plugin"], "unrecognized arguments"),
    ("attention_plugin_example.py", ["--compiler", "tensorrt"], "--compiler tensorrt needs"),
    ("attention_plugin_example.py", ["--compiler", "plugin"], "invalid choice"),
    ("attention_plugin_example.py", ["--heads", "4"], "unrecognized arguments"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--compiler", "tensorrt"], "--compiler tensorrt needs"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--num_tokens", "0"], "--num_tokens must be at least 1"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--num_tokens", "-5"], "--num_tokens must be at least 1"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--num_tokens", "100000"], "256 positions"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--model", "tiny-gpt2"], "--compiler eager"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--model", "tiny-lama"], "did you mean tiny-llama?"),
    ("end_to_end_llm_generation_example.py", [*E2E, "--precision", "FP8"], "invalid choice"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--batch_sizes", "0"], "not a positive whole number"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--compiler", "eagr"], "invalid choice: 'eagr'"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--shapes", "128x128"], "is not ISL/OSL"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--shapes", "16/4/2"], "is not ISL/OSL"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--shapes", "0/4"], "is not ISL/OSL"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--timeout", "0"], "not a positive whole number"),
    ("run_grid.py", [*GRID, "--out", "{out}", "--baselines", "hf_fast"], "invalid choice"),
    ("run_grid.py", [*GRID, "--out", "{in}/a-file"], "is a file"),
    ("run_grid.py", ["--out", "{out}"], "required"),
    ("run_grid.py", ["--models", "tiny-llama", "--out", "{out}"], "add --no-cudagraph"),
    ("profile_step.py", [*LLM], "needs a CUDA device"),
    ("profile_step.py", [*LLM, "--compiler", "tensorrt"], "profiles the sdpa backend"),
    ("profile_step.py", [*LLM, "--backend", "plugin"], "profiles the sdpa backend"),
    ("profile_step.py", [*LLM, "--device", "bogus"], "is not a device"),
    ("profile_step.py", [*LLM, "--cache", "static_v9"], "invalid choice"),
]
GPU_ONLY_MESSAGES = ("needs a CUDA device", "--compiler tensorrt needs", "add --no-cudagraph", "--cudagraph needs")


def _expand(arguments: list[str], inputs, out) -> list[str]:
    return [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in arguments]


def test_there_are_at_least_60_cases_over_all_six_entry_points():
    assert len(CASES) >= 60
    assert {script for script, _, _ in CASES} == {"run_llm.py", "run_vlm.py", "attention_plugin_example.py",
                                                  "end_to_end_llm_generation_example.py", "run_grid.py",
                                                  "profile_step.py"}


@pytest.mark.parametrize("script, arguments, expected", CASES, ids=[f"{s}:{' '.join(a[-2:])}" for s, a, _ in CASES])
def test_bad_input_is_one_line(script, arguments, expected, folders, tmp_path, capsys, monkeypatch):
    if any(message in expected for message in GPU_ONLY_MESSAGES) and not NO_GPU:
        pytest.skip("the case is a machine without a GPU")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    out.mkdir()
    status, stdout, stderr = run_entry(capsys, script, _expand(arguments, folders, out))
    assert_one_line_error(script, status, stdout, stderr, expected)
    assert list(out.iterdir()) == []  # nothing written


def test_a_planted_traceback_fails_the_rule(capsys, monkeypatch):
    """A bug where bad input used to be caught shows as a traceback, and the rule above catches it."""
    def broken(config, script="run_llm.py"):
        raise AttributeError("'LlamaConfig' object has no attribute 'vision_config'")

    monkeypatch.setattr("load.models.check_llm_family", broken)
    status, stdout, stderr = run_entry(capsys, "run_llm.py", [*LLM, "--model", "tiny-eagle2"])
    with pytest.raises(AssertionError):
        assert_one_line_error("run_llm.py", status, stdout, stderr, "use run_vlm.py")
    # ... as an internal error: a first line that says where, then the traceback, exit status 1
    assert status == 1 and "Traceback" in stderr
    assert error_lines(stderr)[0] == ("run_llm.py: internal error while loading the model's config, a bug: "
                                      "please report it with this traceback")


def test_ctrl_c_is_one_line_and_writes_nothing(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("export.export_llm", interrupted)
    result = tmp_path / "r.json"
    status, stdout, stderr = run_entry(capsys, "run_llm.py", [*LLM, "--output_json", str(result)])
    assert status == 130 and stdout == "" and "Traceback" not in stderr
    assert error_lines(stderr) == ["run_llm.py: interrupted while exporting and compiling the model (Eager); "
                                   "no results were written"]
    assert not result.exists()


def test_a_full_disk_leaves_the_older_file(capsys, monkeypatch, tmp_path):
    """The JSON write fails halfway (as on a full disk): one line, no partial file, the older file kept."""
    result = tmp_path / "r.json"
    result.write_text('{"older": "results"}')

    def disk_full(payload, f, **kwargs):
        f.write('{"setup": ')
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("report.table.json.dump", disk_full)
    status, stdout, stderr = run_entry(capsys, "run_llm.py", [*LLM, "--benchmark", "--isl", "4", "--iterations", "1",
                                                              "--output_json", str(result)])
    assert status == 2 and "Traceback" not in stderr
    assert error_lines(stderr)[-1].startswith("run_llm.py: error: cannot write --output_json")
    assert "No space left on device" in stderr and "kept" in stderr
    assert result.read_text() == '{"older": "results"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_generation_writes_its_json(capsys, tmp_path):
    result = tmp_path / "r.json"
    status, stdout, stderr = run_entry(capsys, "run_llm.py", ["--compiler", "eager", "--model", "tiny-llama",
                                                              "--cache", "static_v2", "--precision", "FP32",
                                                              "--num_tokens", "6", "--enable_pytorch_run",
                                                              "--output_json", str(result)])
    assert status == 0, stderr
    saved = json.loads(result.read_text())["results"]
    assert saved["match"] is True and "outputs match: True" in stdout
    assert saved["new_tokens"]["PyTorch"] == saved["new_tokens"]["Eager"]
    assert len(saved["new_tokens"]["Eager"][0]) == 6
    assert saved["texts"]["Eager"] in stdout


def test_an_empty_generation_is_not_a_match():
    from report.table import print_match

    prompt = torch.tensor([[256, 72, 105]])
    assert print_match("Eager", prompt, prompt.clone(), prompt_len=3) is False
    longer = torch.cat([prompt, torch.tensor([[7]])], dim=1)
    assert print_match("Eager", longer, longer.clone(), prompt_len=3) is True


# The random draws: valid values first in each list, then invalid ones.
DRAWS = {
    "--model": (["tiny-llama", "tiny-gpt2", "tiny-qwen3", "tiny-gemma3"], ["tiny-lama", "tiny-eagle2", "bogus/x"]),
    "--compiler": (["eager"], ["eagr"]),
    "--cache": (["", "static_v1", "static_v2", "static_v3"], ["static_v9"]),
    "--precision": (["FP32", "BF16"], ["FP8"]),
    "--num_tokens": (["1", "3"], ["0", "-2", "300"]),
    "--batch_size": (["1", "2"], ["0"]),
    "--device": (["cpu"], ["bogus", "meta"]),
    "--backend": (["sdpa", "plugin"], ["flash"]),
}


def _draw(rng: random.Random, out) -> list[str]:
    arguments = []
    for flag, (valid, invalid) in DRAWS.items():
        if flag == "--compiler" or rng.random() < 0.8:
            arguments += [flag, rng.choice(invalid if rng.random() < 0.12 else valid)]
    if rng.random() < 0.3:
        arguments += ["--benchmark", "--iterations", "1", "--isl", rng.choice(["4", "8", "0", "100000"])]
    if rng.random() < 0.6:
        arguments.append("--enable_pytorch_run")
    if rng.random() < 0.3:
        arguments += ["--baselines", rng.choice(["hf_dynamic", "no_cache", "hf_static", "hf_fast"])]
    if rng.random() < 0.2:
        arguments += ["--prompt", rng.choice(["", "Hi", "é" * 40])]
    arguments += ["--output_json", str(out if rng.random() < 0.05 else out / "r.json")]
    return arguments


@pytest.mark.slow
def test_random_flags_never_end_in_a_traceback_or_an_empty_match(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    rng = random.Random(20261202)
    outcomes = {0: 0, 2: 0}
    for draw in range(150):
        out = tmp_path / str(draw)
        out.mkdir()
        arguments = _draw(rng, out)
        status, stdout, stderr = run_entry(capsys, "run_llm.py", arguments)
        assert "Traceback" not in stderr and status in (0, 2), (arguments, stderr)
        outcomes[status] += 1
        if status == 2:
            assert stdout == "" and not (out / "r.json").exists(), arguments
            assert error_lines(stderr)[-1].startswith("run_llm.py: error: "), (arguments, stderr)
            continue
        saved = json.loads((out / "r.json").read_text())["results"]
        if "outputs match: True" in stdout:
            assert saved["match"] is True and all(len(row) > 0 for rows in saved["new_tokens"].values()
                                                  for row in rows), arguments
    assert outcomes[0] >= 20 and outcomes[2] >= 20, outcomes  # both kinds were drawn
