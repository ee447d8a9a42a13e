"""The project's error for bad input and its logger: the bottom of the import graph, imported by every stage."""

from __future__ import annotations

import logging

logger = logging.getLogger("llm_tools")


class UsageError(Exception):
    """Bad input: reported as one line with exit status 2, before any slow work where possible."""
