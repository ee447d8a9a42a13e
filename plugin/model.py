"""Plugin backend model: Hugging Face attention swapped for the AttentionPlugin op, its caches, its loop.

`PluginCausalLM` wraps a Llama, Qwen2 or Qwen3 model: each layer's attention packs q, k, v (after
Qwen3's q_norm / k_norm) into the plugin's qkv input and calls `llm_tools::edgellm_attention`.
The swapped modules call the original attention whenever they are used outside PluginCausalLM, so
the same model still serves Hugging Face's own generate as the reference.

The caller owns the caches, one [B, 2, Hkv, capacity, D] per layer, and writes each call's delta
K/V into them at the positions of the call's tokens (`write_deltas`).
"""

from __future__ import annotations

from typing import Callable

import torch

from generation.loops import Prompt, StopRule, generate_static_cache
from load.presets import head_dim
from plugin.attention import rope_table  # also defines torch.ops.llm_tools.edgellm_attention


class _PluginInputs:
    """What the swapped attention modules read during one PluginCausalLM call."""

    def __init__(self):
        self.active = False
        self.caches, self.deltas = [], []
        self.context_lengths = self.rope_table = self.start_idx = None


class PluginAttention(torch.nn.Module):
    def __init__(self, original: torch.nn.Module, layer_index: int, inputs: _PluginInputs, config):
        super().__init__()
        self.original = original
        self.layer_index = layer_index
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_size = original.head_dim
        object.__setattr__(self, "inputs", inputs)  # shared state, not a submodule

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if not self.inputs.active:
            return self.original(hidden_states, *args, **kwargs)
        attn, inputs = self.original, self.inputs
        batch, seq_len, _ = hidden_states.shape
        q = attn.q_proj(hidden_states).view(batch, seq_len, self.num_q_heads, self.head_size)
        k = attn.k_proj(hidden_states).view(batch, seq_len, self.num_kv_heads, self.head_size)
        v = attn.v_proj(hidden_states).view(batch, seq_len, self.num_kv_heads, self.head_size)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3: per-head RMSNorm before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        qkv = torch.cat([q, k, v], dim=2).reshape(batch, seq_len, -1)  # [B, S, (Hq + 2 Hkv) * D]
        out, delta = torch.ops.llm_tools.edgellm_attention(
            qkv, inputs.caches[self.layer_index], inputs.context_lengths, inputs.rope_table, inputs.start_idx,
            self.num_q_heads, self.num_kv_heads, self.head_size)
        inputs.deltas[self.layer_index] = delta
        return attn.o_proj(out.reshape(batch, seq_len, -1)), None


class PluginCausalLM(torch.nn.Module):
    """forward(input_ids, context_lengths, rope_table, kv_cache_start_idx, *kv_caches) -> (logits, *delta_kv)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = _PluginInputs()
        layers = model.model.layers
        for i, layer in enumerate(layers):
            original = layer.self_attn.original if isinstance(layer.self_attn, PluginAttention) else layer.self_attn
            layer.self_attn = PluginAttention(original, i, self.inputs, model.config)
        self.num_layers = len(layers)

    def forward(self, input_ids, context_lengths, rope, kv_cache_start_idx, *kv_caches):
        inputs = self.inputs
        inputs.caches, inputs.deltas = list(kv_caches), [None] * self.num_layers
        inputs.context_lengths, inputs.rope_table, inputs.start_idx = context_lengths, rope, kv_cache_start_idx
        inputs.active = True
        try:
            logits = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits
            deltas = inputs.deltas
        finally:  # keep no tensor of the call: under export they are fake, and copying the model would fail
            inputs.active = False
            inputs.caches, inputs.deltas = [], []
            inputs.context_lengths = inputs.rope_table = inputs.start_idx = None
        return (logits, *deltas)


def allocate_plugin_caches(model, batch_size: int, capacity: int, dtype, device) -> list[torch.Tensor]:
    config = model.config
    shape = (batch_size, 2, config.num_key_value_heads, capacity, head_dim(config))
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]


def write_deltas(caches: list[torch.Tensor], deltas, start: int) -> None:
    """Write each layer's delta K/V [B, 2, Hkv, S, D] into its cache at positions start..start + S."""
    for cache, delta in zip(caches, deltas):
        cache[:, :, :, start:start + delta.shape[3]] = delta


class PluginCachedModel:
    """A (compiled) PluginCausalLM with its caches, called as generate_static_cache calls a CachedModel."""

    def __init__(self, step: Callable, model, caches: list[torch.Tensor]):
        self.step, self.caches = step, caches
        self.rope = rope_table(model.model.rotary_emb, caches[0].shape[3], caches[0].device)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits of input_ids [B, L] at cache slots start..start + L; their K/V go into the caches.

        Prefill is a chunk that starts at 0 (the same positions as the plugin's empty-start prefill mode),
        so that every call passes a start index of the same shape [B], as an engine wants.
        """
        batch_size, length = input_ids.shape
        lengths = torch.full((batch_size,), start + length, dtype=torch.int32, device=input_ids.device)
        start_idx = torch.full((batch_size,), start, dtype=torch.int32, device=input_ids.device)
        logits, *deltas = self.step(input_ids, lengths, self.rope, start_idx, *self.caches)
        write_deltas(self.caches, deltas, start)
        return logits


def generate_plugin(step: Callable, model, input_ids: torch.Tensor, num_tokens: int, stop: StopRule,
                    caches: list[torch.Tensor], on_first_token: Callable[[], None] | None = None) -> torch.Tensor:
    """Prefill, then decode one token a step, through a (compiled) PluginCausalLM: [B, T] -> [B, T + generated]."""
    return generate_static_cache(PluginCachedModel(step, model, caches), Prompt.text(input_ids), num_tokens, stop,
                                 on_first_token)
