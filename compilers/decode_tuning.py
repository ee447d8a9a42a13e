"""The inductor decode step's tuning as one value, and the one rule that picks each attention's implementation.

`DecodeTuning` holds every choice compilers/inductor.py makes for a static_v3 decode step; its
defaults are the measured best on the H200 (docs/decode_tuning.md has the figures and how to
re-measure them with benchmarks/profile_step.py, which builds its own value to compare).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


@dataclass(frozen=True)
class DecodeTuning:
    """How --compiler inductor writes a decode step (the defaults: docs/decode_tuning.md says why)."""

    decode_rows: int = 8  # at most this many query rows per sequence make a decode step
    decode_keys: int = 512  # a decode step over at most this many keys counts as short
    small_model_parameters: int = 2_000_000_000  # up to this size a batch-1 static_v3 step is tuned for decode
    decode_attention_kernel: bool = True  # the tuned step's short decode attention as one Triton kernel
    block_size_tuning: bool = True  # the tuned step's kernels' block sizes tuned by coordinate descent
    tune_by_kernel_time: bool = True  # the tuned step's candidate kernels timed by their GPU time
    store_product_inputs: bool = False  # the tuned step's one-row products read a stored input (stored.py)
    long_decode_kernel: bool = True  # decode attention over a long cache as split Triton kernels


class Attention(Enum):
    SDPA = "sdpa"  # the canonical node's reference: PyTorch's sdpa kernels
    SUMS = "sums"  # sums of products, which inductor fuses with the mask and softmax
    KERNEL = "kernel"  # compilers/decode_attention.py, one program per query row
    SPLIT_KERNEL = "split_kernel"  # compilers/decode_attention.py, each row's keys split among programs


def _kernel_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                     query_positions: torch.Tensor | None) -> bool:
    """Whether decode_attention.py's kernels can run this causal attention at known positions on a GPU."""
    from compilers.decode_attention import kernel_supports

    return causal and query_positions is not None and q.is_cuda and kernel_supports(q, k, v)


def choose_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                     query_positions: torch.Tensor | None, tuning: DecodeTuning, tuned_step: bool) -> Attention:
    """The implementation of one canonical attention node under inductor, by this table (first match wins):

    | query rows (shapes)          | keys           | kernel runs it | setting                 | choice       |
    |------------------------------|----------------|----------------|-------------------------|--------------|
    | > decode_rows, or dynamic    | any            | -              | -                       | SDPA         |
    | <= decode_rows, static       | > decode_keys  | yes            | long_decode_kernel      | SPLIT_KERNEL |
    | <= decode_rows, static       | > decode_keys  | -              | -                       | SDPA         |
    | <= decode_rows, static       | <= decode_keys | yes            | tuned step and          | KERNEL       |
    |                              |                |                | decode_attention_kernel |              |
    | <= decode_rows, static       | <= decode_keys | -              | -                       | SUMS         |

    More rows than decode_rows is a prefill; dynamic shapes are a v1/v2 or cache-less graph, static
    ones a static_v3 step. "Kernel runs it": causal, the query positions known (static_v3), on a
    GPU, a head size and dtype decode_attention.py takes. "Tuned step": a small model's batch-1
    static_v3 step (compilers/inductor.py, tuned_for_small_decode).
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    decode = isinstance(q_len, int) and isinstance(kv_len, int) and q_len <= tuning.decode_rows
    if not decode:
        return Attention.SDPA
    if kv_len > tuning.decode_keys:
        if tuning.long_decode_kernel and _kernel_supports(q, k, v, causal, query_positions):
            return Attention.SPLIT_KERNEL
        return Attention.SDPA
    if tuned_step and tuning.decode_attention_kernel and _kernel_supports(q, k, v, causal, query_positions):
        return Attention.KERNEL
    return Attention.SUMS
