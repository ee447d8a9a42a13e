"""errors.stage: a slow stage says when it starts, that it is still running, and how long it took."""

from __future__ import annotations

import logging
import time

import pytest

import errors
from entry_points import run_entry


def test_a_stage_logs_its_start_heartbeats_and_time(monkeypatch, caplog):
    monkeypatch.setattr(errors, "HEARTBEAT_S", 0.05)
    caplog.set_level(logging.INFO, logger="llm_tools")
    with errors.stage("compiling"):
        time.sleep(0.3)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "compiling ..."
    assert sum("compiling: still running" in m for m in messages) >= 2
    assert messages[-1].startswith("compiling: done in 0.")


def test_an_error_in_a_stage_carries_its_name_and_stops_the_heartbeat(monkeypatch, caplog):
    monkeypatch.setattr(errors, "HEARTBEAT_S", 0.05)
    caplog.set_level(logging.INFO, logger="llm_tools")
    with pytest.raises(RuntimeError) as raised:
        with errors.stage("exporting"):
            raise RuntimeError("boom")
    assert errors.activity_of(raised.value) == "exporting"
    count = len(caplog.records)
    time.sleep(0.2)
    assert len(caplog.records) == count  # no heartbeat after the stage ended
    assert not any("done in" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("quiet", [False, True])
def test_a_run_prints_progress_unless_quiet(capsys, quiet):
    status, _, stderr = run_entry(capsys, "run_llm.py", ["--model", "tiny-llama", "--compiler", "eager",
                                                         "--num_tokens", "2", *(["--quiet"] if quiet else [])])
    assert status == 0, stderr
    progress = [line for line in stderr.splitlines() if line.startswith("INFO: ")]
    if quiet:
        assert progress == []
    else:
        assert "INFO: exporting and compiling the model (Eager) ..." in progress
        assert any(line.startswith("INFO: exporting and compiling the model (Eager): done in ") for line in progress)


@pytest.mark.slow
def test_a_cpu_run_whose_baseline_compiles_does_not_note_a_missing_cuda_runtime():
    """hf_compiled_step's torch.compile builds C++ on the CPU; torch's note that no CUDA runtime is found (a CPU run
    needs none) is not shown, though the run's own compiler is eager."""
    from test_cli import run_llm

    result = run_llm("--model", "tiny-llama", "--compiler", "eager", "--cache", "static_v3", "--num_tokens", "4",
                     "--enable_pytorch_run", "--baselines", "hf_compiled_step", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "No CUDA runtime is found" not in result.stderr
