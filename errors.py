"""The project's error for bad input, its logger, and what the run is doing: the bottom of the import graph.

`doing(...)` names the stage a run is in, so that an unexpected error or a Ctrl-C can say where it
happened (cli.run_main prints it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

logger = logging.getLogger("llm_tools")


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
