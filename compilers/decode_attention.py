"""Decode attention over a static cache as Triton kernels: the canonical node's math for a few query rows.

One program per query row (batch, query head, row) streams its K/V head's keys up to the row's
position in blocks and keeps a running softmax (the maximum, the sum and the weighted sum of V,
rescaled as the maximum grows), so a layer's attention is one launch and keys past the position are
not read. Math in float32, the result in the input's dtype, as in inductor's sums of products.

Over a long cache one program per row is too few to keep the GPU busy, so with split_keys each
row's keys are split among several programs, one block of keys each, and a second kernel combines
their running softmaxes (rescaled to the largest maximum).

TorchDynamo traces the call of the kernel, so inductor launches it inside the compiled step and a
captured CUDA graph replays it with the rest. Tested against the canonical node's reference on the
CPU with Triton's interpreter (TRITON_INTERPRET=1). Block sizes and their timings: docs/decode_tuning.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The fastest of the block sizes and warp counts timed on the H200 (docs/decode_tuning.md).
KEYS_PER_BLOCK = 256
WARPS = 16
# A block of K or V is keys times head size elements in registers; at 256 x 64, 16 warps hold it without
# spilling (ptxas for sm_90: 128 registers). A fixed 256 keys spilled at head size 128 and 256 (Qwen3, Gemma 3).
BLOCK_ELEMENTS = KEYS_PER_BLOCK * 64
# With split_keys, a row's keys are shared by up to this many programs (one block each up to there). Not timed.
MAX_SPLITS = 64


def keys_per_block(head_dim: int) -> int:
    """Keys per block for a head size: larger heads get fewer keys, so that a block stays in registers."""
    return min(KEYS_PER_BLOCK, BLOCK_ELEMENTS // head_dim)


@triton.jit
def _query_row(q_heads, q_len):
    """(batch, query head, row) of program_id 0's query row."""
    program = tl.program_id(0)
    return program // (q_len * q_heads), (program // q_len) % q_heads, program % q_len


@triton.jit
def _attend(q, k, v, positions, scale, window, q_heads, q_len, groups,
            q_batch_stride, q_head_stride, q_row_stride,
            k_batch_stride, k_head_stride, k_key_stride,
            v_batch_stride, v_head_stride, v_key_stride, keys_per_split,
            HEAD_DIM: tl.constexpr, KEYS: tl.constexpr, WINDOWED: tl.constexpr, SPLIT: tl.constexpr):
    """The running softmax of program_id 0's query row over its keys up to its position (with SPLIT, only
    over program_id 1's keys_per_split keys): (maximum, sum, weighted sum of V)."""
    batch, head, row = _query_row(q_heads, q_len)
    kv_head = head // groups
    dims = tl.arange(0, HEAD_DIM)
    query = tl.load(q + batch * q_batch_stride + head * q_head_stride + row * q_row_stride + dims).to(tl.float32)  # [D]
    # the scale applied once to the query, back to float32: inside a compiled step inductor passes scale as fp64,
    # which would turn the scores and the loop's carried values into fp64
    query = (query * scale).to(tl.float32)
    position = tl.load(positions + row)
    k_head = k + batch * k_batch_stride + kv_head * k_head_stride
    v_head = v + batch * v_batch_stride + kv_head * v_head_stride

    running_max = tl.full([1], float("-inf"), tl.float32)  # [1]: the loop keeps one shape for its carried values
    running_sum = tl.zeros([1], tl.float32)
    weighted = tl.zeros([HEAD_DIM], tl.float32)  # sum over keys of exp(score - running_max) * V, [D]
    if SPLIT:  # this split's keys, those up to the position
        first = tl.program_id(1) * keys_per_split
        stop = tl.minimum(first + keys_per_split, position + 1)
    else:  # keys 0..position (causal)
        first = 0
        stop = position + 1
    for start in range(first, stop, KEYS):
        keys = start + tl.arange(0, KEYS)
        visible = keys <= position
        if WINDOWED:
            visible = visible & (keys > position - window)
        key_block = tl.load(k_head + keys[:, None] * k_key_stride + dims[None, :], mask=visible[:, None],
                            other=0.0)  # [KEYS, D]
        # V's block is loaded before the scores need K's: both reads are in flight at once
        value_block = tl.load(v_head + keys[:, None] * v_key_stride + dims[None, :], mask=visible[:, None],
                              other=0.0)  # [KEYS, D]
        scores = tl.sum(key_block.to(tl.float32) * query[None, :], axis=1)  # [KEYS]
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a block with no visible key yet: no NaN
        probs = tl.exp(scores - shift)
        rescale = tl.exp(running_max - shift)
        weighted = weighted * rescale + tl.sum(probs[:, None] * value_block.to(tl.float32), axis=0)
        running_sum = running_sum * rescale + tl.sum(probs, axis=0)
        running_max = new_max
    return running_max, running_sum, weighted


@triton.jit
def _decode_attention_kernel(q, k, v, positions, out, scale, window, q_heads, q_len, groups,
                             q_batch_stride, q_head_stride, q_row_stride,
                             k_batch_stride, k_head_stride, k_key_stride,
                             v_batch_stride, v_head_stride, v_key_stride,
                             out_batch_stride, out_head_stride, out_row_stride,
                             HEAD_DIM: tl.constexpr, KEYS: tl.constexpr, WINDOWED: tl.constexpr):
    """One program per query row (batch, query head, row), over all its keys."""
    # the output's address from program_id here, not from _attend's results: inductor's analysis of which
    # tensors a kernel writes would take a store through those for a store to any tensor _attend was given,
    # and a compiled step would copy q, k and v (the whole cache) before each call
    batch, head, row = _query_row(q_heads, q_len)
    running_max, running_sum, weighted = _attend(
        q, k, v, positions, scale, window, q_heads, q_len, groups, q_batch_stride, q_head_stride, q_row_stride,
        k_batch_stride, k_head_stride, k_key_stride, v_batch_stride, v_head_stride, v_key_stride, 0,
        HEAD_DIM, KEYS, WINDOWED, False)
    result = weighted / running_sum  # the query's own key is always visible: the sum is positive
    dims = tl.arange(0, HEAD_DIM)
    tl.store(out + batch * out_batch_stride + head * out_head_stride + row * out_row_stride + dims,
             result.to(out.dtype.element_ty))


@triton.jit
def _split_attention_kernel(q, k, v, positions, partial_max, partial_sum, partial_out, scale, window,
                            q_heads, q_len, groups,
                            q_batch_stride, q_head_stride, q_row_stride,
                            k_batch_stride, k_head_stride, k_key_stride,
                            v_batch_stride, v_head_stride, v_key_stride, keys_per_split,
                            HEAD_DIM: tl.constexpr, KEYS: tl.constexpr, WINDOWED: tl.constexpr):
    """One program per query row and split of its keys: the split's share, for _combine_splits_kernel (a split
    past the position leaves maximum -inf and sum 0)."""
    running_max, running_sum, weighted = _attend(
        q, k, v, positions, scale, window, q_heads, q_len, groups, q_batch_stride, q_head_stride, q_row_stride,
        k_batch_stride, k_head_stride, k_key_stride, v_batch_stride, v_head_stride, v_key_stride, keys_per_split,
        HEAD_DIM, KEYS, WINDOWED, True)
    slot = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(partial_max + slot + tl.arange(0, 1), running_max)
    tl.store(partial_sum + slot + tl.arange(0, 1), running_sum)
    tl.store(partial_out + slot * HEAD_DIM + tl.arange(0, HEAD_DIM), weighted)


@triton.jit
def _combine_splits_kernel(partial_max, partial_sum, partial_out, out, q_heads, q_len, splits,
                           out_batch_stride, out_head_stride, out_row_stride,
                           HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    """One query row's result from its splits' running softmaxes, each rescaled to the largest maximum."""
    batch, head, row = _query_row(q_heads, q_len)
    dims = tl.arange(0, HEAD_DIM)
    index = tl.arange(0, SPLITS)  # SPLITS: splits rounded up to a power of two
    present = index < splits
    slots = tl.program_id(0) * splits + index
    maxima = tl.load(partial_max + slots, mask=present, other=float("-inf"))  # [SPLITS]
    sums = tl.load(partial_sum + slots, mask=present, other=0.0)
    weighted = tl.load(partial_out + slots[:, None] * HEAD_DIM + dims[None, :], mask=present[:, None],
                       other=0.0)  # [SPLITS, D]
    factors = tl.exp(maxima - tl.max(maxima, axis=0))  # the split with the query's own key has a finite maximum
    result = tl.sum(weighted * factors[:, None], axis=0) / tl.sum(sums * factors, axis=0)
    tl.store(out + batch * out_batch_stride + head * out_head_stride + row * out_row_stride + dims,
             result.to(out.dtype.element_ty))


def split_keys_for(kv_len: int, head_dim: int) -> tuple[int, int]:
    """(splits, keys per split) when decode_attention splits a row's keys: whole blocks, one per split up to
    MAX_SPLITS splits, then as few more per split as keep them within MAX_SPLITS."""
    keys = keys_per_block(head_dim)
    blocks = triton.cdiv(kv_len, keys)
    blocks_per_split = triton.cdiv(blocks, MAX_SPLITS)
    return triton.cdiv(blocks, blocks_per_split), blocks_per_split * keys


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, sliding_window: int | None,
                     query_positions: torch.Tensor, split_keys: bool = False) -> torch.Tensor:
    """Causal attention of q [B, Hq, L, D] at cache positions query_positions [L] over caches k, v [B, Hkv, S, D].

    Returns [B, Hq, L, D] stored as [B, L, Hq, D] (register_sdpa.as_sdpa_output_layout's layout). D must be a
    power of two; the last dimension of q, k and v must be contiguous. With split_keys, a row's keys
    are shared among programs (split_keys_for) and their results combined by a second kernel (for a
    long cache: one program per row would read all of it alone).
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    keys = keys_per_block(head_dim)
    rows = batch * q_heads * q_len
    splits, keys_per_split = split_keys_for(kv_len, head_dim) if split_keys else (1, kv_len)
    out = torch.empty(batch, q_len, q_heads, head_dim, dtype=q.dtype, device=q.device).transpose(1, 2)
    common = (scale, sliding_window or 0, q_heads, q_len, q_heads // kv_heads,
              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2))
    constexprs = dict(HEAD_DIM=head_dim, KEYS=keys, WINDOWED=sliding_window is not None, num_warps=WARPS)
    if splits == 1:
        _decode_attention_kernel[(rows,)](q, k, v, query_positions, out, *common,
                                          out.stride(0), out.stride(1), out.stride(2), **constexprs)
        return out
    # each split's running maximum, sum and weighted sum of V
    partial_max = torch.empty(rows * splits, dtype=torch.float32, device=q.device)
    partial_sum = torch.empty(rows * splits, dtype=torch.float32, device=q.device)
    partial_out = torch.empty(rows * splits, head_dim, dtype=torch.float32, device=q.device)
    _split_attention_kernel[(rows, splits)](q, k, v, query_positions, partial_max, partial_sum, partial_out,
                                            *common, keys_per_split, **constexprs)
    _combine_splits_kernel[(rows,)](partial_max, partial_sum, partial_out, out, q_heads, q_len, splits,
                                    out.stride(0), out.stride(1), out.stride(2),
                                    HEAD_DIM=head_dim, SPLITS=triton.next_power_of_2(splits))
    return out


def kernel_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether decode_attention takes these inputs (a power-of-two head size, rows contiguous in the last dim)."""
    head_dim = q.shape[-1]
    return (head_dim & (head_dim - 1) == 0 and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1)
