"""decode_attention.py's Triton kernel against the canonical node's reference: on the CPU through Triton's
interpreter, and on a GPU inside the tuned inductor step against Hugging Face's generate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch

import compile_inductor
import decode_attention
from conftest import prompt_ids, tiny_model, tuned_inductor_cached
from generate import Prompt, StopRule, generate_static_cache, hf_generate
from register_sdpa import attention_reference


def _interpreted(calls: dict) -> dict:
    """decode_attention(*args) for each name -> args, its kernel run by Triton's interpreter on the CPU."""
    with tempfile.TemporaryDirectory() as folder:
        calls_path, outputs_path = os.path.join(folder, "calls.pt"), os.path.join(folder, "outputs.pt")
        torch.save(calls, calls_path)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interpret_decode_attention.py")
        result = subprocess.run([sys.executable, script, calls_path, outputs_path], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        return torch.load(outputs_path)


HEAD_DIM = 16
FIRST_BLOCK = decode_attention.keys_per_block(HEAD_DIM)  # keys the kernel reads per block at this head size


def _inputs(q_heads, kv_heads, q_len, kv_len, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, q_len, q_heads, HEAD_DIM, generator=generator).to(dtype).transpose(1, 2)  # as the graph has it
    k, v = (torch.randn(2, kv_heads, kv_len, HEAD_DIM, generator=generator).to(dtype) for _ in range(2))
    return q, k, v


CASES = {
    "decode at position 9 of a 40-slot cache, GQA 7:1": dict(heads=(14, 2), positions=[9], kv_len=40),
    "decode past the first block of keys": dict(heads=(4, 2), positions=[FIRST_BLOCK + 44], kv_len=FIRST_BLOCK + 64),
    "three queries mid-cache": dict(heads=(4, 4), positions=[130, 131, 132], kv_len=200),
    "a window of 5": dict(heads=(6, 2), positions=[30], kv_len=40, window=5),
    "a window that leaves the first block empty": dict(heads=(6, 2), window=16, kv_len=FIRST_BLOCK + 64,
                                                       positions=[FIRST_BLOCK + 40, FIRST_BLOCK + 41]),
}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
NAN_PAST_140 = "NaN in the cache past position 140"
UNMASKED = "a query at 9 given the cache's last position"


def _calls() -> dict:
    calls = {}
    for case_id, case in CASES.items():
        for dtype_id, dtype in DTYPES.items():
            q, k, v = _inputs(*case["heads"], len(case["positions"]), case["kv_len"], dtype)
            calls[case_id, dtype_id] = (q, k, v, 0.3, case.get("window"), torch.tensor(case["positions"]))
    q, k, v = _inputs(4, 2, 1, 300, torch.float32)
    k, v = k.clone(), v.clone()
    k[:, :, 141:], v[:, :, 141:] = float("nan"), float("nan")
    calls[NAN_PAST_140] = (q, k, v, 0.3, None, torch.tensor([140]))
    calls[UNMASKED] = (*_inputs(14, 2, 1, 40, torch.float32), 0.3, None, torch.tensor([39]))
    return calls


@pytest.fixture(scope="module")
def kernel_outputs() -> dict:
    return _interpreted(_calls())  # one interpreter process for every call below


@pytest.mark.parametrize("dtype_id", DTYPES)
@pytest.mark.parametrize("case_id", CASES)
def test_the_kernel_equals_the_reference(kernel_outputs, case_id, dtype_id):
    case, dtype = CASES[case_id], DTYPES[dtype_id]
    q, k, v = _inputs(*case["heads"], len(case["positions"]), case["kv_len"], dtype)
    positions = torch.tensor(case["positions"])
    out = kernel_outputs[case_id, dtype_id]
    assert out.dtype == dtype and out.shape == q.shape and out.transpose(1, 2).is_contiguous()
    expected = attention_reference(q.float(), k.float(), v.float(), 0.3, True, case.get("window"), positions)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_keys_past_the_position_are_not_read(kernel_outputs):
    q, k, v = _inputs(4, 2, 1, 300, torch.float32)  # the same cache without the NaN
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([140]))
    torch.testing.assert_close(kernel_outputs[NAN_PAST_140], expected, atol=1e-5, rtol=1e-5)


def test_a_query_that_sees_the_whole_cache_is_caught(kernel_outputs):
    """The comparison can fail: the kernel given the cache's last position for a query at 9 sees 30 keys too many."""
    q, k, v = _inputs(14, 2, 1, 40, torch.float32)
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([9]))
    assert not torch.allclose(kernel_outputs[UNMASKED], expected, atol=1e-3)


def _compiled_for_hopper(dtype: str, windowed: bool, scale_type: str, head_dim: int):
    """The kernel through Triton's whole compiler (TTIR to a cubin, ptxas included) for compute capability 9.0."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = decode_attention._decode_attention_kernel
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update({name: f"*{dtype}" for name in ("q", "k", "v", "out")})
    signature.update(positions="*i64", scale=scale_type, HEAD_DIM="constexpr", KEYS="constexpr", WINDOWED="constexpr")
    constexprs = {"HEAD_DIM": head_dim, "KEYS": decode_attention.keys_per_block(head_dim), "WINDOWED": windowed}
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": decode_attention.WARPS})


@pytest.mark.parametrize("dtype, windowed", [("fp16", False), ("fp16", True), ("fp32", False)])
@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])  # a compiled step passes a Python float as fp64
def test_the_kernel_compiles_for_hopper(dtype, windowed, scale_type):
    """No GPU needed to compile."""
    assert len(_compiled_for_hopper(dtype, windowed, scale_type, 64).asm["cubin"]) > 10_000


@pytest.mark.parametrize("head_dim", [64, 128, 256])  # Qwen2.5 and Llama 3.2; Qwen3; Gemma 3
def test_a_block_stays_in_registers_at_every_head_size(head_dim):
    """ptxas's report on the kernel's PTX: no register spills (a fixed 256 keys per block spilled at 128, 256)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(_compiled_for_hopper("fp16", True, "fp64", head_dim).asm["ptx"])
        report = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", ptx, "-o", os.devnull],
                                capture_output=True, text=True, check=True)
    assert "0 bytes spill stores" in report.stdout + report.stderr, report.stderr


def test_off_the_gpu_the_tuned_attention_is_the_sums():
    q, k, v = _inputs(14, 2, 1, 40, torch.float32)
    args = (q, k, v, 0.3, True, None, torch.tensor([9]))
    torch.testing.assert_close(compile_inductor.attention_for_small_decode(*args),
                               compile_inductor.attention_for_inductor(*args), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["tiny-qwen2", "tiny-gemma3"])  # Gemma 3: sliding-window layers
def test_the_tuned_step_with_the_kernel_matches_hugging_face(family, monkeypatch):
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(compile_inductor, "DECODE_ATTENTION_KERNEL", True)
    model, prompt_len, new_tokens = tiny_model(family, "cuda"), 10, 20
    cached = tuned_inductor_cached(model, prompt_len + new_tokens)
    ids = prompt_ids(model, 1, prompt_len)
    stop = StopRule([], 0, stop_on_eos=False)
    with torch.no_grad():
        tokens, codes = run_and_get_code(generate_static_cache, cached, Prompt.text(ids), new_tokens, stop)
    assert torch.equal(tokens, hf_generate(model, ids, new_tokens, stop))
    # the decode step's compiled code launches the kernel once per layer (counted in inductor's output, not with a
    # counter in the traced call: a mutated Python list would be guarded on and recompile the step at every call)
    launches = max(len(re.findall(r"_decode_attention_kernel\w*\.run\(", code)) for code in codes)
    assert launches == model.config.num_hidden_layers
