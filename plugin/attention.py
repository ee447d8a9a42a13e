"""The Edge-LLM AttentionPlugin as a torch op: its inputs, its outputs, and what it computes in PyTorch.

    qkv                 [B, S, (Hq + 2 Hkv) * D]   all Q heads, then K, then V (before RoPE)
    kv_cache            [B, 2, Hkv, capacity, D]   owned by the caller; 0 = K after RoPE, 1 = V
    context_lengths     int32 [B]
    rope_table          float32 [1 or B, P, R]     first R/2 columns cos, last R/2 sin (times the
                                                   model's attention scaling)
    kv_cache_start_idx  int32 [B], or [0] (empty)
 -> attention [B, S, Hq, D], delta_kv [B, 2, Hkv, S, D] (the new K after RoPE, and V)

Where the S new tokens sit: an empty start index is prefill from position 0 (s); a start index with
S > 1 is chunked prefill (start[b] + s); S == 1 is decode at context_lengths[b] - 1. RoPE is
rotate-half in float32 over the first R dimensions of each head; attention is causal over keys
0..position with scale 1/sqrt(D), query head h reading K/V head h // (Hq / Hkv).

The plugin writes the new K/V into the caller's cache itself; this op is functional instead and
returns them as delta_kv, which the caller (plugin/model.py) writes at the same positions: the
plugin's `enable_delta_kv_output` mode, in which it also returns them.
"""

from __future__ import annotations

import torch

PLUGIN_NAME, PLUGIN_VERSION = "AttentionPlugin", "1"  # the plugin creator the converter asks TensorRT for


def token_positions(seq_len: int, context_lengths: torch.Tensor, kv_cache_start_idx: torch.Tensor) -> torch.Tensor:
    """int64 [B, S]: the cache position of each new token, by the plugin's three modes."""
    steps = torch.arange(seq_len, device=context_lengths.device)
    if seq_len == 1:
        return (context_lengths.long() - 1).unsqueeze(1)  # decode
    if kv_cache_start_idx.numel() == 0:
        return steps.expand(context_lengths.shape[0], -1)  # prefill from 0
    return kv_cache_start_idx.long().unsqueeze(1) + steps  # chunked prefill


def apply_rope(x: torch.Tensor, rope_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32: x [B, S, H, D] at positions [B, S] with a [1|B, P, R] table."""
    rotary = rope_table.shape[-1]
    table = rope_table.expand(positions.shape[0], -1, -1)
    rows = torch.gather(table, 1, positions.unsqueeze(-1).expand(-1, -1, rotary))  # [B, S, R]
    cos, sin = rows[..., : rotary // 2], rows[..., rotary // 2:]
    cos = torch.cat([cos, cos], dim=-1).unsqueeze(2)  # [B, S, 1, R]
    sin = torch.cat([sin, sin], dim=-1).unsqueeze(2)
    rot, rest = x[..., :rotary].float(), x[..., rotary:]
    half = rotary // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([(rot * cos + rotated * sin).to(x.dtype), rest], dim=-1)


@torch.library.custom_op("llm_tools::edgellm_attention", mutates_args=())
def edgellm_attention(qkv: torch.Tensor, kv_cache: torch.Tensor, context_lengths: torch.Tensor,
                      rope_table: torch.Tensor, kv_cache_start_idx: torch.Tensor, num_q_heads: int,
                      num_kv_heads: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq_len, _ = qkv.shape
    q, k, v = qkv.view(batch, seq_len, num_q_heads + 2 * num_kv_heads, head_size).split(
        [num_q_heads, num_kv_heads, num_kv_heads], dim=2)  # [B, S, H, D]
    positions = token_positions(seq_len, context_lengths, kv_cache_start_idx)  # [B, S]
    q, k = apply_rope(q, rope_table, positions), apply_rope(k, rope_table, positions)
    delta = torch.stack([k, v], dim=1).transpose(2, 3)  # [B, 2, Hkv, S, D]

    # The keys the plugin reads: the cache with this call's K/V written at their positions.
    index = positions.view(batch, 1, 1, seq_len, 1).expand(-1, 2, num_kv_heads, -1, head_size)
    keys_values = kv_cache.scatter(3, index, delta.to(kv_cache.dtype))
    keys, values = keys_values[:, 0], keys_values[:, 1]  # [B, Hkv, capacity, D]
    visible = torch.arange(kv_cache.shape[3], device=qkv.device).view(1, 1, -1) <= positions.unsqueeze(-1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=visible.unsqueeze(1), scale=head_size ** -0.5,
        enable_gqa=num_q_heads != num_kv_heads)  # [B, Hq, S, D]
    return out.transpose(1, 2).contiguous(), delta.contiguous()


@edgellm_attention.register_fake
def _(qkv, kv_cache, context_lengths, rope_table, kv_cache_start_idx, num_q_heads, num_kv_heads, head_size):
    batch, seq_len, _ = qkv.shape
    return (qkv.new_empty(batch, seq_len, num_q_heads, head_size),
            qkv.new_empty(batch, 2, num_kv_heads, seq_len, head_size))


def rope_table(rotary_emb: torch.nn.Module, positions: int, device=None) -> torch.Tensor:
    """float32 [1, positions, R] from a Hugging Face rotary embedding (its inv_freq and attention scaling)."""
    inv_freq = rotary_emb.inv_freq.float().to(device)  # [R / 2]
    angles = torch.arange(positions, device=device, dtype=torch.float32).unsqueeze(1) * inv_freq
    scaling = float(getattr(rotary_emb, "attention_scaling", 1.0))
    return (torch.cat([angles.cos(), angles.sin()], dim=-1) * scaling).unsqueeze(0)
