"""The Edge-LLM AttentionPlugin op against an independent RoPE + attention reference.

    python examples/dynamo/attention_plugin_example.py                      # PyTorch implementation, CPU
    python examples/dynamo/attention_plugin_example.py --compiler tensorrt  # the plugin itself (FP16, GPU)

`torch.ops.llm_tools.edgellm_attention` (plugin/attention.py) has the plugin's inputs and outputs:
packed qkv, a caller-owned cache [B, 2, Hkv, capacity, D], context lengths, a RoPE table and start
indices. This example runs it in the plugin's four situations, prefill and decode, each with an
empty cache and with past context in the cache, and compares its attention and its delta K/V with
a reference written from the plugin's description alone: RoPE as a complex rotation, attention as
an explicit softmax, one query and one key at a time.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import plugin.attention  # noqa: E402, F401  (defines torch.ops.llm_tools.edgellm_attention)

HQ, HKV, D, CAPACITY, BASE = 8, 2, 64, 32, 10000.0


def reference(qkv, kv_cache, context_lengths, start_idx, positions):
    """Attention [B, S, Hq, D] and delta K/V [B, 2, Hkv, S, D], token by token, from the plugin's description."""
    batch, seq_len, _ = qkv.shape
    heads = qkv.double().view(batch, seq_len, HQ + 2 * HKV, D)
    half = D // 2
    freqs = BASE ** (-torch.arange(half, dtype=torch.float64) * 2 / D)

    def rope(x, position):  # x [D]: pairs (x[i], x[i + D/2]) rotated by position * freqs[i]
        z = torch.complex(x[:half], x[half:]) * torch.polar(torch.ones(half, dtype=torch.float64), position * freqs)
        return torch.cat([z.real, z.imag])

    out = torch.zeros(batch, seq_len, HQ, D, dtype=torch.float64)
    delta = torch.zeros(batch, 2, HKV, seq_len, D, dtype=torch.float64)
    for b in range(batch):
        keys = kv_cache[b, 0].double().clone()  # [Hkv, capacity, D]
        values = kv_cache[b, 1].double().clone()
        for s in range(seq_len):
            p = int(positions[b][s])
            for h in range(HKV):
                keys[h, p] = rope(heads[b, s, HQ + h], p)
                values[h, p] = heads[b, s, HQ + HKV + h]
                delta[b, 0, h, s], delta[b, 1, h, s] = keys[h, p], values[h, p]
        for s in range(seq_len):
            p = int(positions[b][s])
            for h in range(HQ):
                kv = h // (HQ // HKV)
                query = rope(heads[b, s, h], p)
                scores = torch.stack([query @ keys[kv, j] / math.sqrt(D) for j in range(p + 1)])
                out[b, s, h] = torch.softmax(scores, dim=0) @ values[kv, : p + 1]
    return out, delta


def rope_table(positions: int) -> torch.Tensor:
    freqs = BASE ** (-torch.arange(D // 2, dtype=torch.float32) * 2 / D)
    angles = torch.arange(positions, dtype=torch.float32).unsqueeze(1) * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1).unsqueeze(0)  # [1, P, D]


def case(name: str, seq_len: int, past: list[int], prefill: bool, dtype, device):
    """Inputs of one situation; `past[b]` tokens of row b are already in the cache."""
    batch = len(past)
    gen = torch.Generator().manual_seed(len(name))
    qkv = torch.randn(batch, seq_len, (HQ + 2 * HKV) * D, generator=gen)
    cache = torch.zeros(batch, 2, HKV, CAPACITY, D)
    for b, n in enumerate(past):
        cache[b, :, :, :n] = torch.randn(2, HKV, n, D, generator=gen)
    if prefill and not any(past):
        start = torch.zeros(0, dtype=torch.int32)  # the plugin's prefill-from-0 mode
        positions = [list(range(seq_len))] * batch
    else:
        start = torch.tensor(past, dtype=torch.int32)
        positions = [[n + s for s in range(seq_len)] for n in past]
    lengths = torch.tensor([n + seq_len for n in past], dtype=torch.int32)
    inputs = (qkv.to(dtype), cache.to(dtype), lengths, rope_table(CAPACITY), start)
    return [t.to(device) for t in inputs], positions


def run_op(compiler: str, inputs):
    op = torch.ops.llm_tools.edgellm_attention
    if compiler == "eager":
        return op(*inputs, HQ, HKV, D)
    import torch_tensorrt

    import plugin.converter  # noqa: F401  (registers the op's converter)

    class Op(torch.nn.Module):
        def forward(self, *args):
            return op(*args, HQ, HKV, D)

    program = torch.export.export(Op(), tuple(inputs))
    return torch_tensorrt.dynamo.compile(program, arg_inputs=list(inputs), min_block_size=1)(*inputs)


def main(args: argparse.Namespace) -> None:
    dtype, device, tolerance = torch.float32, "cpu", 1e-5
    if args.compiler == "tensorrt":  # the same checks as run_llm.py's, each a one-line error
        from transformers import LlamaConfig

        import plugin_utils
        from cli import check_tensorrt_runs_here, device_of
        from options import ModelOptions

        check_tensorrt_runs_here(device_of(None))
        config = LlamaConfig(head_dim=D, hidden_size=HQ * D, num_attention_heads=HQ)
        plugin_utils.check_plugin_backend(ModelOptions("this example", "FP16", "cuda"), "tensorrt",
                                          args.plugin_path, config, fallback="or run this example with --compiler eager")
        dtype, device, tolerance = torch.float16, "cuda", 2e-2

    situations = [("prefill, empty cache", 5, [0, 0], True), ("prefill, past context", 3, [4, 9], True),
                  ("decode, empty cache", 1, [0, 0], False), ("decode, past context", 1, [6, 11], False)]
    worst = 0.0
    for name, seq_len, past, prefill in situations:
        inputs, positions = case(name, seq_len, past, prefill, dtype, device)
        out, delta = run_op(args.compiler, inputs)
        ref_out, ref_delta = reference(*[t.cpu().float() for t in inputs[:3]], inputs[4].cpu(), positions)
        diff = max((out.cpu().double() - ref_out).abs().max().item(),
                   (delta.cpu().double() - ref_delta).abs().max().item())
        worst = max(worst, diff)
        print(f"{name:24s} S={seq_len} past={past}: max abs difference {diff:.2e}")
    print(f"All four cases agree to {tolerance:g}: {worst <= tolerance}")
    sys.exit(0 if worst <= tolerance else 1)


if __name__ == "__main__":
    from cli import guarded, new_parser

    parser = new_parser("attention_plugin_example.py", __doc__.split("\n\n")[0])
    parser.add_argument("--compiler", default="eager", choices=["eager", "tensorrt"],
                        help="eager: the op's PyTorch implementation; tensorrt: the plugin (needs its library)")
    parser.add_argument("--plugin_path", default=None, help="the plugin library, for --compiler tensorrt")
    arguments = parser.parse_args()
    guarded(parser.prog, lambda: main(arguments))
