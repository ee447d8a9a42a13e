"""The project's error for bad input, its logger, what the run is doing, and the notes of other libraries kept
from the user: the bottom of the import graph.

`doing(...)` names the stage a run is in, so that an unexpected error or a Ctrl-C can say where it
happened (cli.run_main prints it); `stage(...)` does that for a slow stage and also logs progress: a
line when it starts, one every `HEARTBEAT_S` while it runs, and its time when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Iterator

logger = logging.getLogger("llm_tools")
HEARTBEAT_S = 10.0  # no slow stage is silent for longer


class UsageError(Exception):
    """Bad input: reported as one line with exit status 2, before any slow work where possible."""


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the stage a run is in ("exporting the model", ...): an exception leaving it carries the
    innermost stage's name, for the first line of cli.run_main's report."""
    try:
        yield
    except BaseException as err:
        if not hasattr(err, "activity"):
            err.activity = what
        raise


def activity_of(err: BaseException) -> str:
    return getattr(err, "activity", "starting")


@contextlib.contextmanager
def only_errors_from(*names: str) -> Iterator[None]:
    """Inside, the loggers `names` (another library's) pass on errors only; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """A slow stage (loading weights, compiling, a benchmark row): progress lines at INFO, and doing(what)."""
    logger.info("%s ...", what)
    began, finished = time.perf_counter(), threading.Event()

    def heartbeat() -> None:
        while not finished.wait(HEARTBEAT_S):
            logger.info("%s: still running, %.0f s so far", what, time.perf_counter() - began)

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        with doing(what):
            yield
    finally:
        finished.set()
        beating.join()
    logger.info("%s: done in %.1f s", what, time.perf_counter() - began)
