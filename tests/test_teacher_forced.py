"""generation/teacher_forced.py: the compiled model and Hugging Face's, fed the same tokens."""

from __future__ import annotations

import pytest
import torch

from conftest import eager_cached, lowered_graph, plant_self_only_mask, prompt_ids, tiny_model
from generation.baselines import hf_generate
from generation.loops import Prompt, StopRule
from generation.teacher_forced import compare, reference_logits, teacher_forced

PROMPT_LEN, NEW_TOKENS = 6, 12


def reference_tokens(model, batch_size: int = 2) -> torch.Tensor:
    ids = prompt_ids(model, batch_size, PROMPT_LEN, seed=4)
    return hf_generate(model, ids, NEW_TOKENS, StopRule([], 0, stop_on_eos=False))


def forced(model, cache: str, planted: bool = False, batch_size: int = 2):
    """teacher_forced for the lowered graph run eagerly; `planted`: a wrong mask, every attention a window of
    one key (each query sees only itself)."""
    tokens = reference_tokens(model, batch_size)
    gm = lowered_graph(model, batch_size, tokens.shape[1], cache)
    if planted:
        plant_self_only_mask(gm)
    step = eager_cached(gm, batch_size, tokens.shape[1], model.dtype, tokens.device) if cache else gm
    expected = reference_logits(model, tokens, PROMPT_LEN)
    return teacher_forced(step, Prompt.text(tokens[:, :PROMPT_LEN]), tokens, expected, bool(cache), [])


@pytest.mark.parametrize("cache", ["", "static_v2", "static_v3"])
def test_a_correct_model_agrees_at_every_step(cache):
    result = forced(tiny_model("tiny-llama"), cache)
    assert result.steps == 2 * NEW_TOKENS
    assert result.top1_agreement == 1.0
    assert result.max_abs_logit_diff < 1e-4


@pytest.mark.parametrize("cache", ["", "static_v3"])
def test_a_wrong_mask_is_flagged(cache):
    """The comparison can fail: the same graph with each query seeing only its own key."""
    correct, planted = forced(tiny_model("tiny-llama"), cache), forced(tiny_model("tiny-llama"), cache, planted=True)
    assert planted.max_abs_logit_diff > 1000 * max(correct.max_abs_logit_diff, 1e-6)
    assert planted.top1_agreement < 0.5


def test_steps_after_a_rows_eos_are_not_counted():
    """Computed by hand: row 0 ends at its second new token (EOS 7), so its third step is padding."""
    tokens = torch.tensor([[1, 2, 5, 7, 0], [1, 2, 5, 6, 4]])  # prompt of 2, three new tokens
    expected = torch.zeros(2, 3, 10)
    expected[:, :, 3] = 1.0  # the reference's top token is 3 at every step
    actual = [expected[:, i].clone() for i in range(3)]
    actual[2][0, 9] = 5.0  # row 0's padding step disagrees: not counted
    actual[1][1, 8] = 2.0  # row 1's second step disagrees: counted
    result = compare(actual, expected, tokens, 2, [7])
    assert result.steps == 5
    assert result.top1_agreement == pytest.approx(4 / 5)
    assert result.max_abs_logit_diff == pytest.approx(2.0)


@pytest.mark.gpu
def test_fp16_on_the_gpu_passes_a_correct_model_and_flags_a_wrong_one():
    """FP16 on the GPU: the correct graph agrees on the top token at every step; the wrong mask moves the
    logits far more than FP16 rounding does."""
    model = tiny_model("tiny-llama", "cuda", "FP16")
    correct, planted = forced(model, "static_v3"), forced(model, "static_v3", planted=True)
    print(f"\nFP16 correct: {correct}\nFP16 planted: {planted}")
    assert correct.top1_agreement == 1.0
    assert planted.max_abs_logit_diff > 20 * correct.max_abs_logit_diff
    assert planted.top1_agreement < 0.5
