"""Running the project's entry scripts in the test process, as a user runs them from the shell.

`run_entry` executes a script as `__main__` with the given arguments (the modules it imports stay
loaded, so a run costs no interpreter start) and returns its exit status, stdout and stderr.
`assert_one_line_error` is the rule every entry point keeps for bad input.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys

from conftest import ROOT

SCRIPTS = {
    "run_llm.py": "run_llm.py",
    "run_vlm.py": "run_vlm.py",
    "attention_plugin_example.py": "examples/dynamo/attention_plugin_example.py",
    "end_to_end_llm_generation_example.py": "examples/dynamo/end_to_end_llm_generation_example.py",
    "run_grid.py": "benchmarks/run_grid.py",
    "profile_step.py": "benchmarks/profile_step.py",
}


def run_entry(capsys, script: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python <script> <argv>`, run in this process."""
    path = os.path.join(ROOT, SCRIPTS[script])
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [path, *argv]
    capsys.readouterr()
    logging.root.handlers.clear()  # a handler an earlier run bound to an earlier capture
    try:
        runpy.run_path(path, run_name="__main__")
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):  # sys.exit("message") prints it
            print(done.code, file=sys.stderr)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        logging.root.handlers.clear()
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err: str) -> list[str]:
    """stderr without the run's progress lines and warnings (a flag that was ignored, the byte tokenizer)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING:", "INFO:"))]


def assert_one_line_error(script: str, status: int, out: str, err: str, expected: str) -> None:
    """Bad input: exit status 2, nothing on stdout, one line `<script>: error: ...` naming `expected`."""
    assert "Traceback" not in err, err
    assert status == 2, (status, err)
    assert out == "", out
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    assert expected in lines[0], lines[0]
