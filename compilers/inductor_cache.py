"""--inductor_cache_dir: inductor's on-disk caches in a folder that outlives the machine's /tmp, and
whether this run found them warm.

Inductor keeps its compiled graphs (the FX graph cache), autotuning results and Triton kernels under
TORCHINDUCTOR_CACHE_DIR, by default a folder in /tmp. Pointing it at the project's cache folder lets a
second run of the same model and settings load what the first compiled instead of compiling again;
the TensorRT engine cache (compilers/engine_cache.py) lives beside it.
"""

from __future__ import annotations

import os

from compilers.engine_cache import PROJECT_CACHE_DIR

CACHE_DIR_ENV = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT_INDUCTOR_CACHE_DIR = os.environ.get(CACHE_DIR_ENV) or os.path.join(PROJECT_CACHE_DIR, "inductor")


def use_inductor_cache(directory: str) -> None:
    """Inductor reads the variable whenever it looks for its cache, so setting it before the first compile
    is enough."""
    os.environ[CACHE_DIR_ENV] = directory


def inductor_cache_state() -> str:
    """How this process's inductor compiles went: 'warm' (every graph came from the cache), 'cold' (none
    did), 'partly warm', or 'none' (nothing was compiled by inductor)."""
    from torch._dynamo.utils import counters

    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    if not hits and not misses:
        return "none"
    return "warm" if not misses else "cold" if not hits else "partly warm"
