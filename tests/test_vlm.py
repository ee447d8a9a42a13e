"""run_vlm.py: the lowered language model with the image merged in, against each family's PyTorch reference
(Qwen2.5-VL: Hugging Face's generate with the same image; Eagle2: the model's own forward loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, eager_cached, plant_self_only_mask
from errors import UsageError
from export import export_llm
from generation.baselines import hf_generate
from generation.loops import Prompt, StopRule, generate_no_cache, generate_static_cache
from generation.teacher_forced import teacher_forced
from utils import lower
from vlm.family import merge_image_embeddings
from vlm.images import sample_image
from vlm.qwen2_5_vl import MultimodalPositions
from vlm_fixtures import tiny_vlm

NEW_TOKENS = 12


def _inputs(vlm, batch_size=1, text=b"Describe this image."):
    return vlm.inputs(sample_image(56), list(text), batch_size, "cpu")  # a 56 px image: 4 image tokens


def _generate(vlm, inputs, cache, prompt=None):
    ids = inputs.input_ids
    max_seq_len = ids.shape[1] + NEW_TOKENS
    gm = lower(export_llm(vlm.language_model(), ids.shape[0], max_seq_len, embeds=True,
                          position_rows=vlm.position_rows), cache, max_seq_len)
    with torch.no_grad():
        prompt = prompt or vlm.prompt(inputs, vlm.image_embeddings(inputs))
        if not cache:
            return generate_no_cache(gm, prompt, NEW_TOKENS, StopRule([257], 258))
        cached = eager_cached(gm, ids.shape[0], max_seq_len, torch.float32)
        return generate_static_cache(cached, prompt, NEW_TOKENS, StopRule([257], 258))


def _reference(vlm, inputs):
    return vlm.reference(inputs, NEW_TOKENS, StopRule([257], 258))


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("cache", ["", "static_v1", "static_v2", "static_v3"])
@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_tokens_match_the_reference(family, cache, batch_size):
    vlm = tiny_vlm(family)
    inputs = _inputs(vlm, batch_size)
    expected = _reference(vlm, inputs)
    assert len(set(expected[0, -NEW_TOKENS:].tolist())) > 3  # the tiny model does not repeat one token
    assert torch.equal(_generate(vlm, inputs, cache), expected)


def _forced(vlm, inputs, cache: str, planted: bool = False):
    """teacher_forced for the lowered language model run eagerly, fed the reference's tokens after the image;
    `planted`: a wrong mask, every attention a window of one key (each query sees only itself)."""
    tokens = vlm.reference(inputs, NEW_TOKENS, StopRule([], 0, stop_on_eos=False))
    ids = inputs.input_ids
    gm = lower(export_llm(vlm.language_model(), ids.shape[0], tokens.shape[1], embeds=True,
                          position_rows=vlm.position_rows), cache, tokens.shape[1])
    if planted:
        plant_self_only_mask(gm)
    step = eager_cached(gm, ids.shape[0], tokens.shape[1], torch.float32) if cache else gm
    with torch.no_grad():
        prompt = vlm.prompt(inputs, vlm.image_embeddings(inputs))
    return teacher_forced(step, prompt, tokens, vlm.reference_logits(inputs, tokens), bool(cache), [])


@pytest.mark.parametrize("cache", ["", "static_v3"])
@pytest.mark.parametrize("family", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_teacher_forced_agrees_with_the_model_and_flags_a_wrong_mask(family, cache):
    """The model's own forward over the whole sequence (image included) is the reference's logits."""
    vlm = tiny_vlm(family)
    inputs = _inputs(vlm, batch_size=2)
    correct, planted = _forced(vlm, inputs, cache), _forced(vlm, inputs, cache, planted=True)
    print(f"\n{family} {cache or 'no cache'}: correct {correct}, planted {planted}")
    assert correct.steps == 2 * NEW_TOKENS
    assert correct.top1_agreement == 1.0 and correct.max_abs_logit_diff < 1e-4
    assert planted.max_abs_logit_diff > 100 * correct.max_abs_logit_diff
    assert planted.top1_agreement < 0.5


def test_qwen_reference_is_hugging_face_generate():
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    inputs = _inputs(vlm)
    expected = hf_generate(vlm.model, inputs.input_ids, NEW_TOKENS, StopRule([257], 258), **inputs.generate_kwargs)
    assert torch.equal(_reference(vlm, inputs), expected)


def test_eagle2_without_the_image_is_caught():
    """The comparison can fail: a prompt whose image rows keep the image token's embedding gives other tokens."""
    vlm = tiny_vlm("tiny-eagle2")
    inputs = _inputs(vlm)
    prompt = vlm.prompt(inputs, vlm.image_embeddings(inputs))
    blind = Prompt(prompt.input_ids, prompt.embed(inputs.input_ids), prompt.embed, prompt.position_ids)
    assert not torch.equal(_generate(vlm, inputs, "static_v2", blind), _reference(vlm, inputs))


def test_eagle2_pixel_shuffle_channel_order():
    """Token (i, j) holds patches (2i, 2j), (2i, 2j + 1), (2i + 1, 2j), (2i + 1, 2j + 1), in that order."""
    vlm = tiny_vlm("tiny-eagle2")
    x = torch.randn(2, 4, 6, 3)
    out = vlm.model.pixel_shuffle(x, 0.5)
    assert out.shape == (2, 2, 3, 12)
    for i in range(2):
        for j in range(3):
            expected = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j],
                                  x[:, 2 * i + 1, 2 * j + 1]], dim=-1)
            assert torch.equal(out[:, i, j], expected)


def test_decode_positions_equal_the_models_own():
    """The [3, B, L] positions Hugging Face's generate feeds its language model, step by step, against ours."""
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    inputs = _inputs(vlm)
    seen = []

    def record(module, args, kwargs):
        positions = kwargs["position_ids"]
        seen.append(positions[-3:] if positions.shape[0] == 4 else positions)  # 4 rows: text positions first

    hook = vlm.model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _reference(vlm, inputs)
    finally:
        hook.remove()
    prompt = vlm.prompt(inputs, vlm.image_embeddings(inputs))
    prompt_len = inputs.input_ids.shape[1]
    assert len(seen) == NEW_TOKENS
    assert torch.equal(seen[0], prompt.position_ids(0, prompt_len))
    for step, positions in enumerate(seen[1:]):
        ours = prompt.position_ids(prompt_len + step, prompt_len + step + 1)
        assert torch.equal(positions, ours)
        assert positions[0, 0, 0] != prompt_len + step  # the rope delta: decode positions are not the cache slot


def test_positions_without_the_rope_delta_are_caught():
    """The token comparison can fail: decoding at the cache slot (no rope delta) gives other tokens."""
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    inputs = _inputs(vlm)
    prompt = vlm.prompt(inputs, vlm.image_embeddings(inputs))
    wrong = MultimodalPositions(prompt.position_ids.prompt_positions, torch.zeros_like(prompt.position_ids.rope_deltas))
    assert not torch.equal(_generate(vlm, inputs, "static_v2", Prompt(prompt.input_ids, prompt.first_input,
                                                                     prompt.embed, wrong)), _reference(vlm, inputs))


def test_image_token_count_must_match_the_embeddings():
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    inputs = _inputs(vlm)
    image_embeds = vlm.image_embeddings(inputs)
    embeds = vlm.model.get_input_embeddings()(inputs.input_ids)
    with pytest.raises(UsageError, match=r"the prompt has 4 image tokens but the image gives 3 embeddings"):
        merge_image_embeddings(embeds, inputs.input_ids, vlm.config.image_token_id, image_embeds[:3])


def _run_vlm(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_vlm.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("case", ["missing", "not-an-image", "text-model", "baseline", "bf16", "unknown"])
def test_bad_input_is_one_line(case, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    args, expected = {
        "missing": (["--image_path", str(tmp_path / "none.jpg")], "does not exist"),
        "not-an-image": (["--image_path", str(not_image)], "is not a readable image"),
        "text-model": (["--model", "tiny-llama"], "use run_llm.py for text-only models"),
        "baseline": (["--enable_pytorch_run", "--baselines", "hf_static"], "leave out --baselines"),
        "bf16": (["--precision", "BF16"], "FP16 or FP32, not BF16"),
        "unknown": (["--model", "someone/not-a-model", "--random_weights"], "no built-in config"),
    }[case]
    model = [] if "--model" in args else ["--model", "tiny-qwen2.5-vl"]
    result = _run_vlm(*model, "--compiler", "eager", *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_vlm.py: error: ") and expected in lines[0], result.stderr


def test_a_gpu_benchmark_without_baselines_is_not_refused(monkeypatch):
    """On a GPU, benchmark mode's default baselines are run_llm.py's; run_vlm.py keeps its own reference."""
    import run_vlm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = run_vlm.build_parser().parse_args(["--model", "tiny-llama", "--compiler", "eager", "--device", "cuda",
                                              "--benchmark", "--enable_pytorch_run"])
    options = run_vlm.vlm_options(args)  # not refused for the baselines it did not ask for
    assert options.run.baselines == ("hf_dynamic",)
    with pytest.raises(UsageError, match="use run_llm.py for text-only models"):
        run_vlm.main(options)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-qwen2.5-vl", "tiny-eagle2"])
def test_run_vlm_prints_the_spec_blocks(model):
    result = _run_vlm("--model", model, "--compiler", "eager", "--cache", "static_v1", "--precision", "FP32",
                      "--num_tokens", "16", "--enable_pytorch_run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "========= PyTorch =========" and "========= Eager =========" in lines
    assert lines[-1] == "PyTorch and Eager outputs match: True"


def test_run_llm_refuses_every_family_run_vlm_runs():
    """load.presets.VLM_FAMILIES (what run_llm.py sends to run_vlm.py) names exactly vlm/families.py's families."""
    from load.presets import VLM_FAMILIES
    from vlm.families import FAMILIES

    assert set(VLM_FAMILIES) == set(FAMILIES)


def test_run_vlm_prints_the_teacher_forced_comparison_in_both_modes(tmp_path):
    """As a user runs it: the line before the match line after a generation, two columns and the JSON figures
    after a benchmark."""
    common = ["--model", "tiny-eagle2", "--compiler", "eager", "--cache", "static_v2", "--precision", "FP32",
              "--enable_pytorch_run", "--quiet"]
    result = _run_vlm(*common, "--num_tokens", "8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("Teacher-forced, Eager fed PyTorch's tokens: top-1 agreement 1.000 over 8 steps")
    assert lines[-1] == "PyTorch and Eager outputs match: True"
    out = tmp_path / "r.json"
    result = _run_vlm(*common, "--benchmark", "--isl", "8", "--num_tokens", "6", "--iterations", "1",
                      "--output_json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| top-1 forced | max logit diff |" in result.stdout
    figures = json.loads(out.read_text())["results"]["Eager, static_v2"]
    assert figures["forced_top1"] == 1.0 and figures["forced_max_logit_diff"] < 1e-4
