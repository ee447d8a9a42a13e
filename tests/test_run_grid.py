"""benchmarks/run_grid.py: one run_llm.py process per configuration, a table with each row's command, --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, script_module

GRID = ["--models", "tiny-llama", "--shapes", "8/4", "--iterations", "1", "--precision", "FP32", "--no-cudagraph",
        "--baselines", "hf_dynamic"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One grid run for real: tiny-llama on the CPU, its baseline and the compiled model."""
    out = tmp_path_factory.mktemp("grid")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_grid.py"), "--out", str(out), *GRID],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_each_backend_is_a_row_with_the_command_that_made_it(grid):
    rows = [line for line in (grid / "results.md").read_text().splitlines() if line.startswith("| tiny-llama")]
    assert len(rows) == 2 and "HF generate" in rows[0] and "Inductor, static_v3" in rows[1]
    saved = json.loads((grid / "tiny-llama_b1_8_4.json").read_text())
    command = saved["command"].split(" --output_json ")[0]
    assert command.startswith("python run_llm.py --model tiny-llama --random_weights --precision FP32")
    assert all(f"`{command}`" in row for row in rows)
    assert (grid / "tiny-llama_b1_8_4.log").read_text().strip()  # the run's own output, kept


@pytest.mark.slow
def test_resume_runs_only_what_another_command_measured(grid, monkeypatch, capsys):
    run_grid = script_module("benchmarks", "run_grid.py")
    runs = []
    monkeypatch.setattr(run_grid, "run_configuration", lambda command, *_: runs.append(command) or "failed: not run")
    run_grid.main(run_grid.parse_args(["--out", str(grid), *GRID, "--resume"]))
    assert runs == [] and "kept:" in capsys.readouterr().out
    rows = [line for line in (grid / "results.md").read_text().splitlines() if line.startswith("| tiny-llama")]
    assert len(rows) == 2  # from the JSON
    with pytest.raises(SystemExit) as exit_status:  # another baseline: another command, so it runs (and "fails")
        run_grid.main(run_grid.parse_args(["--out", str(grid), *GRID[:-1], "hf_static", "--resume"]))
    assert len(runs) == 1 and "hf_static" in runs[0]
    assert exit_status.value.code == 1 and "1 of 1 configurations failed" in capsys.readouterr().err


def test_resume_reruns_an_unreadable_json(tmp_path, monkeypatch, capsys):
    run_grid = script_module("benchmarks", "run_grid.py")
    (tmp_path / "tiny-llama_b1_8_4.json").write_text('{"setup": {"model": "tiny-')  # a run stopped while writing
    runs = []
    monkeypatch.setattr(run_grid, "run_configuration", lambda command, *_: runs.append(command) or "failed: not run")
    with pytest.raises(SystemExit):
        run_grid.main(run_grid.parse_args(["--out", str(tmp_path), *GRID, "--resume"]))
    assert len(runs) == 1
    assert f"re-running: {tmp_path / 'tiny-llama_b1_8_4.json'} is unreadable" in capsys.readouterr().out


def test_a_failed_configuration_fails_the_grid(tmp_path, capsys):
    """Every configuration timed out: exit status 1 and one summary line of how many failed and why."""
    run_grid = script_module("benchmarks", "run_grid.py")
    with pytest.raises(SystemExit) as exit_status:
        run_grid.main(run_grid.parse_args(["--out", str(tmp_path), *GRID, "--timeout", "1"]))
    assert exit_status.value.code == 1
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("run_grid.py: 1 of 1 configurations failed") and "timed out after 1 s" in summary


def test_out_is_the_callers_folder(tmp_path, monkeypatch):
    run_grid = script_module("benchmarks", "run_grid.py")
    monkeypatch.chdir(tmp_path)
    assert run_grid.parse_args(["--out", "results", *GRID]).out == str(tmp_path / "results")


@pytest.mark.parametrize("quantization, expected", [
    ("none", (None, "max", False)), ("int8_weight_only", ("int8", "max", True)),
    ("fp8_weight_only", ("fp8", "max", True)), ("int8", ("int8", "max", False)),
    ("int8_smoothquant", ("int8", "smoothquant", False)), ("fp8", ("fp8", "max", False))])
def test_each_quantization_is_run_llm_flags_that_ask_for_it(quantization, expected):
    """A grid's quantization becomes run_llm.py flags that its own parser reads as that quantization."""
    import cli

    run_grid = script_module("benchmarks", "run_grid.py")
    args = run_grid.parse_args(["--out", "results", *GRID, "--quantizations", quantization])
    command = run_grid.command_for(args, "tiny-llama", 8, 4, 1, "out.json", quantization)
    parsed = script_module("run_llm.py").build_parser().parse_args(command[2:])
    quant = cli.quant_options_of(parsed, "cpu")
    assert (quant.format, quant.algo, quant.weight_only) == expected


def test_each_quantization_is_its_own_configuration(tmp_path, monkeypatch):
    """One JSON and one command per model and quantization; the unquantized one keeps its plain file name."""
    run_grid = script_module("benchmarks", "run_grid.py")
    runs = []
    monkeypatch.setattr(run_grid, "run_configuration", lambda command, path, _: runs.append((command, path))
                        or "failed: not run")
    with pytest.raises(SystemExit):
        run_grid.main(run_grid.parse_args(["--out", str(tmp_path), *GRID,
                                           "--quantizations", "none", "int8_weight_only"]))
    assert [os.path.basename(path) for _, path in runs] == ["tiny-llama_b1_8_4.json",
                                                             "tiny-llama_b1_8_4_int8_weight_only.json"]
    assert "--quant_format" not in runs[0][0]
    assert " --quant_format int8 --weight_only " in " ".join(runs[1][0])


@pytest.mark.slow
def test_cold_and_warm_runs_each_configuration_over_its_own_caches(tmp_path):
    """--cold_and_warm: the first run finds nothing cached (inductor's graphs, the exported graph), the second
    finds everything the first left; the JSON of each says so."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_grid.py"), "--out", str(tmp_path),
                           *GRID, "--cold_and_warm"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr
    for compiled in ("cold", "warm"):
        saved = json.loads((tmp_path / f"tiny-llama_b1_8_4_{compiled}.json").read_text())
        assert (saved["inductor_cache"], saved["export_cache"]) == (compiled, compiled)
        assert f"--inductor_cache_dir {tmp_path / 'caches' / 'tiny-llama_b1_8_4' / 'inductor'}" in saved["command"]
    rows = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| tiny-llama")]
    assert [row.split(" | ")[2] for row in rows] == ["8/4 (cold)"] * 2 + ["8/4 (warm)"] * 2


def test_a_cold_run_starts_from_empty_caches(tmp_path, monkeypatch):
    """Whatever an earlier grid left in the configuration's caches is removed before its cold run, and kept for
    its warm run."""
    run_grid = script_module("benchmarks", "run_grid.py")
    left = tmp_path / "caches" / "tiny-llama_b1_8_4" / "inductor" / "left_by_an_earlier_grid"
    left.parent.mkdir(parents=True)
    left.write_text("")
    seen = []

    def run(command, path, _):
        seen.append((os.path.basename(path), left.exists()))
        left.parent.mkdir(parents=True, exist_ok=True)
        left.write_text("")  # what this run caches
        return "failed: not run"

    monkeypatch.setattr(run_grid, "run_configuration", run)
    with pytest.raises(SystemExit):
        run_grid.main(run_grid.parse_args(["--out", str(tmp_path), *GRID, "--cold_and_warm"]))
    assert seen == [("tiny-llama_b1_8_4_cold.json", False), ("tiny-llama_b1_8_4_warm.json", True)]
