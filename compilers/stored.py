"""`llm_tools::stored(x)`: x written to GPU memory once, for a consumer that would otherwise recompute it.

Inductor inlines a pointwise producer into the kernel that reads it. For a one-row product written out as
sums (compilers/inductor.py), that kernel is a reduction over the input's length with one program per block
of outputs, and each program recomputes the whole input: for a down projection, SiLU(gate) * up, an
exponential and a division per weight element. (Inductor stores such a producer itself on the CPU, where it
counts exponentials as heavy, but not on a GPU, where a broadcast read does not count as reuse.) Storing the
input first costs one small kernel and a few kilobytes; whether it pays is measured per model with
benchmarks/profile_step.py (docs/decode_tuning.md).

Eager and TensorRT never see the op: compilers/inductor.py inserts it while opening the graph for inductor.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("llm_tools::stored", mutates_args=())
def stored(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@stored.register_fake
def _(x):
    return torch.empty_like(x)


def _register_lowering() -> None:
    from torch._inductor.lowering import clone, register_lowering

    @register_lowering(torch.ops.llm_tools.stored.default)
    def _(x):
        x.realize()  # a buffer of its own, computed once ...
        return clone(x)  # ... read by the consumer: inductor inlines this copy as a load of the buffer


_register_lowering()
