"""Greedy generation over a compiled graph: without a cache, or with static caches (prefill, then decode).

Every loop is split into prefill and decode so that benchmarks can time them apart. All loops
are greedy; outside benchmark mode each sequence stops at EOS and is padded afterwards, as
Hugging Face's generate does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx import GraphModule

from compilers.cuda_graph_step import CudaGraphStep
from static_cache_common import cache_inputs
from static_cache_v3 import takes_cache_position


@dataclass
class StopRule:
    """EOS handling: with `stop_on_eos` off (benchmarks) every sequence runs the full length."""

    eos_token_ids: list[int]
    pad_token_id: int
    stop_on_eos: bool = True
    finished: torch.Tensor | None = field(default=None, repr=False)

    def apply(self, next_token: torch.Tensor) -> torch.Tensor:
        """Pad sequences that already ended; mark the ones that end now."""
        if not self.stop_on_eos or not self.eos_token_ids:
            return next_token
        if self.finished is None:
            self.finished = torch.zeros_like(next_token, dtype=torch.bool)
        next_token = torch.where(self.finished, torch.full_like(next_token, self.pad_token_id), next_token)
        eos = torch.tensor(self.eos_token_ids, device=next_token.device)
        self.finished = self.finished | torch.isin(next_token, eos)
        return next_token

    def all_done(self) -> bool:
        return self.stop_on_eos and self.finished is not None and bool(self.finished.all())


def positions(start: int, end: int, batch_size: int, device) -> torch.Tensor:
    return torch.arange(start, end, device=device).unsqueeze(0).expand(batch_size, -1)  # [B, end - start]


@dataclass
class Prompt:
    """What the loops feed a graph: the prompt's input, how new tokens become input, and their positions.

    For text the input is token ids and positions count from 0. A VLM's language model takes
    embeddings (the image's merged in) and multimodal positions [3, B, L] (run_vlm.py builds those).
    """

    input_ids: torch.Tensor  # [B, T]: the ids the output starts with
    first_input: torch.Tensor  # [B, T] ids or [B, T, H] embeddings
    embed: Callable[[torch.Tensor], torch.Tensor]  # new tokens [B, n] -> graph input
    position_ids: Callable[[int, int], torch.Tensor]  # (start, end) -> positions of those tokens

    @classmethod
    def text(cls, input_ids: torch.Tensor) -> "Prompt":
        batch_size = input_ids.shape[0]
        return cls(input_ids, input_ids, lambda tokens: tokens,
                   lambda start, end: positions(start, end, batch_size, input_ids.device))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].argmax(dim=-1)  # [B]


# ------------------------------------------------------------------------------------ no cache


def generate_no_cache(model: Callable, prompt: Prompt, num_tokens: int, stop: StopRule,
                      on_first_token: Callable[[], None] | None = None) -> torch.Tensor:
    """Feed the whole sequence at every step: [B, T] -> [B, T + generated]."""
    tokens, sequence = prompt.input_ids, prompt.first_input
    for step in range(num_tokens):
        logits = model(sequence, prompt.position_ids(0, sequence.shape[1]))[0]  # [B, 1, V]
        next_token = stop.apply(greedy(logits))
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        sequence = torch.cat([sequence, prompt.embed(next_token[:, None])], dim=1)
        if step == 0 and on_first_token is not None:
            on_first_token()
        if stop.all_done():
            break
    return tokens


# -------------------------------------------------------------------------------- static cache


def allocate_caches(gm: GraphModule, batch_size: int, max_seq_len: int, dtype: torch.dtype,
                    device) -> list[torch.Tensor]:
    """Zeroed K/V caches, one per cache input of the lowered graph, shaped as that input says; they must
    hold max_seq_len positions (static_v1/v2's hold one more, static_cache_common.TAIL_SLOT)."""
    caches = []
    for node in cache_inputs(gm):
        _, kv_heads, cache_len, head_dim = node.meta["val"].shape
        if cache_len < max_seq_len:
            raise ValueError(f"the graph's caches hold {cache_len} positions, fewer than the {max_seq_len} asked for")
        caches.append(torch.zeros(batch_size, kv_heads, cache_len, head_dim, dtype=dtype, device=device))
    return caches  # each [B, Hkv, cache_len, D]


class CachedModel:
    """A compiled static-cache graph with its caches: call it with the tokens at start..start + L.

    v1/v2 graphs take the positions as ints and return new caches, which replace the old ones;
    v3 graphs (compiled as an InPlaceCacheStep) take them as a tensor and write the caches in place,
    so the cache buffers keep their addresses from step to step, as CUDA graphs need; a v1/v2 step
    compiled as an InPlaceCacheStep too says so with `in_place`. With `cuda_graphs` the step is
    captured and replayed (cuda_graph_step.py): a v3 step once per input shape, a v1/v2 step (which
    must write in place) once per position.

    A prompt's prefill into an empty cache (start 0) hands a v3 graph the caches' first L slots
    only, unless `fixed_cache_shape` (a TensorRT engine's inputs have one shape): its queries then
    fill the keys, attention is the plain causal one (register_sdpa), which runs as one fused
    kernel, and no work goes to the empty slots.

    One CachedModel serves any number of generations: slots past a sequence's last position are never
    read (the cache passes mask or slice them away), so what an earlier generation left there is harmless.
    """

    def __init__(self, model: Callable, lowered: GraphModule, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype, device, cuda_graphs: bool = False, fixed_cache_shape: bool = False,
                 in_place: bool = False):
        self.caches = allocate_caches(lowered, batch_size, max_seq_len, dtype, device)
        self.takes_cache_position = takes_cache_position(lowered)
        self.in_place = in_place or self.takes_cache_position
        if cuda_graphs and not self.in_place:
            raise ValueError("only a step that writes its caches in place can be captured as CUDA graphs")
        self.prefill_on_prefix = self.takes_cache_position and not fixed_cache_shape
        self.model = CudaGraphStep(model, 1 if self.takes_cache_position else 2) if cuda_graphs else model

    def __call__(self, inputs: torch.Tensor, position_ids: torch.Tensor, start: int) -> torch.Tensor:
        """logits of inputs [B, L] (or [B, L, H]) at cache slots start..start + L; the caches take their K/V."""
        end = start + inputs.shape[1]
        if self.takes_cache_position:
            cache_position = torch.arange(start, end, device=inputs.device)
            caches = self.caches
            if start == 0 and self.prefill_on_prefix:
                caches = [cache[:, :, :end] for cache in caches]
            return self.model(inputs, position_ids, *caches, cache_position)[0]
        if self.in_place:
            return self.model(inputs, position_ids, *self.caches, start, end)[0]
        logits, *self.caches = self.model(inputs, position_ids, *self.caches, start, end)
        return logits


def generate_static_cache(model: CachedModel, prompt: Prompt, num_tokens: int, stop: StopRule,
                          on_first_token: Callable[[], None] | None = None) -> torch.Tensor:
    """Prefill the prompt into the caches, then decode one token a step: [B, T] -> [B, T + generated]."""
    prompt_len = prompt.first_input.shape[1]
    next_token = stop.apply(greedy(model(prompt.first_input, prompt.position_ids(0, prompt_len), 0)))
    generated = [next_token]
    if on_first_token is not None:
        on_first_token()
    for position in range(prompt_len, prompt_len + num_tokens - 1):
        if stop.all_done():
            break
        logits = model(prompt.embed(next_token[:, None]), prompt.position_ids(position, position + 1), position)
        next_token = stop.apply(greedy(logits))
        generated.append(next_token)
    return torch.cat([prompt.input_ids, torch.stack(generated, dim=1)], dim=1)
