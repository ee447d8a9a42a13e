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

from compilers import decode_attention, inductor
from compilers.decode_tuning import Attention, DecodeTuning, choose_attention
from conftest import tuned_step_code
from register_sdpa import attention_reference


def _interpreted(calls: dict) -> dict:
    """name -> (decode_attention(*args), launches of the kernel combining split keys) for each name -> args,
    the kernels run by Triton's interpreter on the CPU."""
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
    # split_keys: a row's keys shared among programs, one block each, then combined
    "split: decode at the end of a cache of 5 blocks": dict(heads=(14, 2), positions=[5 * FIRST_BLOCK - 3],
                                                            kv_len=5 * FIRST_BLOCK, split=True),
    "split: decode in the second of 5 blocks (3 splits see no key)": dict(
        heads=(4, 2), positions=[FIRST_BLOCK + 10], kv_len=5 * FIRST_BLOCK, split=True),
    "split: three queries, a window across a block edge": dict(
        heads=(6, 2), window=40, positions=[2 * FIRST_BLOCK + 5, 2 * FIRST_BLOCK + 6, 2 * FIRST_BLOCK + 7],
        kv_len=3 * FIRST_BLOCK, split=True),
}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
NAN_PAST_140 = "NaN in the cache past position 140"
UNMASKED = "a query at 9 given the cache's last position"
SPLIT_NAN = "split: NaN in the cache past the second block's 10th key"
SPLIT_UNMASKED = "split: a query in the second block given the cache's last position"
MANY_BLOCKS = "split: 3 blocks more than MAX_SPLITS"


def _calls() -> dict:
    calls = {}
    for case_id, case in CASES.items():
        for dtype_id, dtype in DTYPES.items():
            q, k, v = _inputs(*case["heads"], len(case["positions"]), case["kv_len"], dtype)
            calls[case_id, dtype_id] = (q, k, v, 0.3, case.get("window"), torch.tensor(case["positions"]),
                                        case.get("split", False))
    for name, kv_len, position, split in ((NAN_PAST_140, 300, 140, False),
                                          (SPLIT_NAN, 5 * FIRST_BLOCK, FIRST_BLOCK + 10, True)):
        q, k, v = _inputs(4, 2, 1, kv_len, torch.float32)
        k, v = k.clone(), v.clone()
        k[:, :, position + 1:], v[:, :, position + 1:] = float("nan"), float("nan")
        calls[name] = (q, k, v, 0.3, None, torch.tensor([position]), split)
    calls[UNMASKED] = (*_inputs(14, 2, 1, 40, torch.float32), 0.3, None, torch.tensor([39]))
    calls[SPLIT_UNMASKED] = (*_inputs(4, 2, 1, 5 * FIRST_BLOCK, torch.float32), 0.3, None,
                             torch.tensor([5 * FIRST_BLOCK - 1]), True)
    many = (decode_attention.MAX_SPLITS + 3) * FIRST_BLOCK
    calls[MANY_BLOCKS] = (*_inputs(2, 1, 1, many, torch.float32), 0.3, None, torch.tensor([many - 2]), True)
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
    out, combines = kernel_outputs[case_id, dtype_id]
    assert out.dtype == dtype and out.shape == q.shape and out.transpose(1, 2).is_contiguous()
    assert combines == case.get("split", False)  # the split cases' keys span several blocks: they are combined
    expected = attention_reference(q.float(), k.float(), v.float(), 0.3, True, case.get("window"), positions)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("name, kv_len, position", [(NAN_PAST_140, 300, 140),
                                                     (SPLIT_NAN, 5 * FIRST_BLOCK, FIRST_BLOCK + 10)])
def test_keys_past_the_position_are_not_read(kernel_outputs, name, kv_len, position):
    q, k, v = _inputs(4, 2, 1, kv_len, torch.float32)  # the same cache without the NaN
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([position]))
    torch.testing.assert_close(kernel_outputs[name][0], expected, atol=1e-5, rtol=1e-5)


def test_more_blocks_than_splits_are_shared_out(kernel_outputs):
    many = (decode_attention.MAX_SPLITS + 3) * FIRST_BLOCK
    splits, keys_per_split = decode_attention.split_keys_for(many, HEAD_DIM)
    assert splits <= decode_attention.MAX_SPLITS and (splits - 1) * keys_per_split < many <= splits * keys_per_split
    q, k, v = _inputs(2, 1, 1, many, torch.float32)
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([many - 2]))
    torch.testing.assert_close(kernel_outputs[MANY_BLOCKS][0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, heads, kv_len, position", [(UNMASKED, (14, 2), 40, 9),
                                                           (SPLIT_UNMASKED, (4, 2), 5 * FIRST_BLOCK, FIRST_BLOCK + 10)])
def test_a_query_that_sees_the_whole_cache_is_caught(kernel_outputs, name, heads, kv_len, position):
    """The comparison can fail: the kernel given the cache's last position for an earlier query sees keys too many."""
    q, k, v = _inputs(*heads, 1, kv_len, torch.float32)
    expected = attention_reference(q, k, v, 0.3, True, None, torch.tensor([position]))
    assert not torch.allclose(kernel_outputs[name][0], expected, atol=1e-3)


def _for_hopper(kernel, signature: dict, constexprs: dict, num_warps: int):
    """A kernel through Triton's whole compiler (TTIR to a cubin, ptxas included) for compute capability 9.0."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: signature.get(name, "i32") for name in kernel.arg_names}
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps})


def _compiled_for_hopper(dtype: str, windowed: bool, scale_type: str, head_dim: int, split: bool = False,
                         kernel=None):
    """The attention kernel (or `kernel`, one with its arguments), or with split the split-keys one."""
    signature = {name: f"*{dtype}" for name in ("q", "k", "v", "out")}
    signature.update({name: "*fp32" for name in ("partial_max", "partial_sum", "partial_out")})
    signature.update(positions="*i64", scale=scale_type, HEAD_DIM="constexpr", KEYS="constexpr", WINDOWED="constexpr")
    constexprs = {"HEAD_DIM": head_dim, "KEYS": decode_attention.keys_per_block(head_dim), "WINDOWED": windowed}
    if kernel is None:
        kernel = decode_attention._split_attention_kernel if split else decode_attention._decode_attention_kernel
    return _for_hopper(kernel, signature, constexprs, decode_attention.WARPS)


@pytest.mark.parametrize("dtype, windowed", [("fp16", False), ("fp16", True), ("fp32", False)])
@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])  # a compiled step passes a Python float as fp64
@pytest.mark.parametrize("split", [False, True])
def test_the_kernel_compiles_for_hopper(dtype, windowed, scale_type, split):
    """No GPU needed to compile."""
    assert len(_compiled_for_hopper(dtype, windowed, scale_type, 64, split).asm["cubin"]) > 10_000


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_the_combining_kernel_compiles_for_hopper(dtype):
    signature = {name: "*fp32" for name in ("partial_max", "partial_sum", "partial_out")}
    signature.update(out=f"*{dtype}", HEAD_DIM="constexpr", SPLITS="constexpr")
    compiled = _for_hopper(decode_attention._combine_splits_kernel, signature, {"HEAD_DIM": 64, "SPLITS": 64}, 4)
    assert len(compiled.asm["cubin"]) > 1_000


@pytest.mark.parametrize("head_dim", [64, 128, 256])  # Qwen2.5 and Llama 3.2; Qwen3; Gemma 3
@pytest.mark.parametrize("split", [False, True])
def test_a_block_stays_in_registers_at_every_head_size(head_dim, split):
    """ptxas's report on the kernel's PTX: no register spills (a fixed 256 keys per block spilled at 128, 256)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(_compiled_for_hopper("fp16", True, "fp64", head_dim, split).asm["ptx"])
        report = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", ptx, "-o", os.devnull],
                                capture_output=True, text=True, check=True)
    assert "0 bytes spill stores" in report.stdout + report.stderr, report.stderr


class HopperDriver:
    """Triton's active driver as a GPU of compute capability 9.0 would make it, for code generation alone."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def _written(kernel, **kwargs) -> set[str]:
    """The tensors inductor takes `kernel` to write, from its analysis of the kernel's TTIR. A tensor taken to be
    written is copied before a compiled step calls the kernel: for q, k or v, the copy would be the whole cache."""
    from torch._higher_order_ops import triton_kernel_wrap

    accesses = triton_kernel_wrap.identify_accessed_tensors(kernel, kwargs, {})
    return {dependency.name for dependency in accesses.read_writes.writes}


def test_inductor_sees_each_kernel_write_only_its_outputs(monkeypatch):
    import triton

    monkeypatch.setattr(triton.runtime.driver, "_active", HopperDriver())
    q, k, v = _inputs(14, 2, 1, 300, torch.float16)
    out, partial_max, partial_out = torch.empty_like(q), torch.empty(14 * 2), torch.empty(14 * 2, HEAD_DIM)
    strides = dict(zip(("q_batch_stride", "q_head_stride", "q_row_stride"), q.stride()[:3]),
                   **dict(zip(("k_batch_stride", "k_head_stride", "k_key_stride"), k.stride()[:3])),
                   **dict(zip(("v_batch_stride", "v_head_stride", "v_key_stride"), v.stride()[:3])))
    common = dict(q=q, k=k, v=v, positions=torch.tensor([200]), scale=0.3, window=0, q_heads=14, q_len=1, groups=7,
                  HEAD_DIM=HEAD_DIM, KEYS=FIRST_BLOCK, WINDOWED=False, **strides)
    out_strides = dict(zip(("out_batch_stride", "out_head_stride", "out_row_stride"), out.stride()[:3]))
    assert _written(decode_attention._decode_attention_kernel, out=out, **out_strides, **common) == {"out"}
    assert _written(decode_attention._split_attention_kernel, partial_max=partial_max, partial_sum=partial_max.clone(),
                    partial_out=partial_out, keys_per_split=FIRST_BLOCK, **common) == {"partial_max", "partial_sum",
                                                                                       "partial_out"}
    assert _written(decode_attention._combine_splits_kernel, partial_max=partial_max, partial_sum=partial_max.clone(),
                    partial_out=partial_out, out=out, q_heads=14, q_len=1, splits=2, HEAD_DIM=HEAD_DIM, SPLITS=2,
                    **out_strides) == {"out"}


def test_the_kernel_as_inductor_writes_it_out_compiles_for_hopper(tmp_path, monkeypatch):
    """A compiled step carries the kernel's source with the Triton functions it calls: written out so, the source
    stands alone."""
    import importlib

    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code

    source = user_defined_triton_kernel_transitive_closure_source_code(decode_attention._decode_attention_kernel)
    (tmp_path / "written_out.py").write_text("import triton\nimport triton.language as tl\n\n@triton.jit\n" + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel = importlib.import_module("written_out")._decode_attention_kernel
    assert len(_compiled_for_hopper("fp16", True, "fp64", 64, kernel=kernel).asm["cubin"]) > 10_000


def test_off_the_gpu_the_tuned_attention_is_the_sums():
    q, k, v = _inputs(14, 2, 1, 40, torch.float32)
    args = (q, k, v, 0.3, True, None, torch.tensor([9]))
    assert choose_attention(q, k, v, True, args[-1], DecodeTuning(), tuned_step=True) is Attention.SUMS
    torch.testing.assert_close(inductor.attention_for_inductor(DecodeTuning(), tuned_step=True)(*args),
                               inductor.attention_as_sums(*args), atol=0, rtol=0)


def test_off_the_gpu_a_long_decode_is_sdpa():
    tuning = DecodeTuning(long_decode_kernel=True)
    q, k, v = _inputs(14, 2, 1, tuning.decode_keys + 100, torch.float32)
    args = (q, k, v, 0.3, True, None, torch.tensor([tuning.decode_keys + 50]))
    assert choose_attention(q, k, v, True, args[-1], tuning, tuned_step=True) is Attention.SDPA
    torch.testing.assert_close(inductor.attention_for_inductor(tuning)(*args), attention_reference(*args),
                               atol=0, rtol=0)


def _launches(codes: list[str], kernel: str) -> int:
    """How many times a step's compiled code launches a Triton kernel (counted in inductor's output, not with a
    counter in the traced call: a mutated Python list would be guarded on and recompile the step at every call)."""
    return max(len(re.findall(kernel + r"\w*\.run\(", code)) for code in codes)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["tiny-qwen2", "tiny-gemma3"])  # Gemma 3: sliding-window layers
def test_a_step_with_split_keys_matches_hugging_face(family, monkeypatch):
    """A cache of 30 counts as long and 16 keys make a block here, so each row's keys take 2 splits."""
    monkeypatch.setattr(decode_attention, "KEYS_PER_BLOCK", 16)
    model, codes = tuned_step_code(family, DecodeTuning(decode_keys=16, long_decode_kernel=True))
    assert _launches(codes, "_combine_splits_kernel") == model.config.num_hidden_layers


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["tiny-qwen2", "tiny-gemma3"])  # Gemma 3: sliding-window layers
def test_the_tuned_step_with_the_kernel_matches_hugging_face(family):
    model, codes = tuned_step_code(family, DecodeTuning(decode_attention_kernel=True))
    assert _launches(codes, "_decode_attention_kernel") == model.config.num_hidden_layers  # once per layer
