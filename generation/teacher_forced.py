"""Teacher-forced accuracy: the compiled model and the PyTorch model fed the same (the reference's) tokens.

Free-running generations part at the first near tie and then compare different texts; fed the same
tokens, every step compares the two models' logits for the same context. Reported: the share of steps
whose top-1 token agrees, the largest absolute logit difference, and the relative logit error (the norm
of the difference over the norm of the reference's logits; the figure quantized models are judged by).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from generation.loops import Prompt


@dataclass(frozen=True)
class ForcedComparison:
    top1_agreement: float  # share of (row, step) pairs whose argmax agrees
    max_abs_logit_diff: float
    steps: int  # compared (row, step) pairs
    relative_logit_error: float = 0.0  # ||actual - expected|| / ||expected|| over the compared steps

    def as_dict(self) -> dict:
        return asdict(self)

    def figures(self) -> dict:
        """The benchmark table's columns (report/table.py)."""
        return {"forced_top1": self.top1_agreement, "forced_max_logit_diff": self.max_abs_logit_diff,
                "forced_relative_logit_error": self.relative_logit_error}

    def line(self, label: str) -> str:
        return (f"Teacher-forced, {label} fed PyTorch's tokens: top-1 agreement {self.top1_agreement:.3f} over "
                f"{self.steps} steps, largest logit difference {self.max_abs_logit_diff:.2e}, relative logit error "
                f"{self.relative_logit_error:.2e}")


def forced_footnote(reference: str) -> str:
    return (f"top-1 forced, max logit diff, rel logit err: the compiled model and PyTorch fed {reference} tokens: "
            "share of steps whose top token agrees, largest logit difference, norm of the logits' difference / "
            "norm of PyTorch's logits")


def reference_logits(model, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[B, n, V]: the Hugging Face model's logits for each new token of `tokens` [B, T + n], in one forward."""
    new = tokens.shape[1] - prompt_len
    with torch.no_grad():
        return model(input_ids=tokens[:, :-1], logits_to_keep=new).logits


def forced_logits(step: Callable, prompt: Prompt, tokens: torch.Tensor, cached: bool) -> list[torch.Tensor]:
    """The logits [B, V] the compiled model gives for each new token of `tokens`, fed the tokens before it:
    a static-cache step (CachedModel and alike) is prefilled with the prompt and then fed one token a step;
    a no-cache graph gets the whole prefix each time. `prompt` is what the loops feed for tokens' first
    T (generation/loops.py): token ids, or a VLM's embeddings with the image merged in."""
    prompt_len = prompt.first_input.shape[1]
    logits = []  # copies: a CUDA-graph step returns the same output buffer at every replay
    with torch.no_grad():
        if cached:
            logits.append(step(prompt.first_input, prompt.position_ids(0, prompt_len), 0)[:, -1].clone())
            for position in range(prompt_len, tokens.shape[1] - 1):
                logits.append(step(prompt.embed(tokens[:, position:position + 1]),
                                   prompt.position_ids(position, position + 1), position)[:, -1].clone())
        else:
            for end in range(prompt_len, tokens.shape[1]):
                sequence = torch.cat([prompt.first_input, prompt.embed(tokens[:, prompt_len:end])], dim=1)
                logits.append(step(sequence, prompt.position_ids(0, end))[0][:, -1].clone())
    return logits


def compare(actual: list[torch.Tensor], expected: torch.Tensor, tokens: torch.Tensor, prompt_len: int,
            eos_token_ids: list[int]) -> ForcedComparison:
    """Steps after a row's first EOS in the reference (its padding) are left out."""
    actual = torch.stack([a.float() for a in actual], dim=1).cpu()  # [B, n, V]
    expected = expected.float().cpu()
    new = tokens[:, prompt_len:].cpu()
    ended = torch.isin(new, torch.tensor(eos_token_ids, dtype=new.dtype)) if eos_token_ids else torch.zeros_like(
        new, dtype=torch.bool)
    counted = torch.cumsum(ended.int(), dim=1) - ended.int() == 0  # no EOS before this step
    agree = (actual.argmax(-1) == expected.argmax(-1))[counted]
    difference = (actual - expected)[counted]
    relative = difference.norm() / expected[counted].norm()
    return ForcedComparison(float(agree.float().mean()), float(difference.abs().max()), int(counted.sum()),
                            float(relative))


def teacher_forced(step: Callable, prompt: Prompt, tokens: torch.Tensor, expected: torch.Tensor, cached: bool,
                   eos_token_ids: list[int]) -> ForcedComparison:
    """The compiled `step` fed the reference's `tokens` [B, T + n] (its first T as `prompt`), against the
    PyTorch model's logits for the same tokens, `expected` [B, n, V] (reference_logits, or a VLM family's)."""
    prompt_len = prompt.first_input.shape[1]
    if tokens.shape[1] <= prompt_len:
        return ForcedComparison(0.0, 0.0, 0)
    return compare(forced_logits(step, prompt, tokens, cached), expected, tokens, prompt_len, eos_token_ids)
