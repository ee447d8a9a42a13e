"""End-to-end generation with the Edge-LLM AttentionPlugin backend, compared with Hugging Face.

    python examples/dynamo/end_to_end_llm_generation_example.py --model tiny-qwen2 --precision FP32   # CPU
    python examples/dynamo/end_to_end_llm_generation_example.py --model Qwen/Qwen2.5-0.5B-Instruct \\
        --compiler tensorrt --plugin_path ~/TensorRT-Edge-LLM/build/libNvInfer_edgellm_plugin.so

The steps are those of `run_llm.py --backend plugin`, spelled out:
  1. load a Llama, Qwen2 or Qwen3 model;
  2. wrap it in PluginCausalLM, which swaps each attention for the plugin op (q/k/v packed into one
     qkv input, RoPE and the KV cache handled by the op);
  3. compile the wrapper (eager runs the op's PyTorch implementation; tensorrt builds an engine
     whose attention layers are the plugin);
  4. allocate one [B, 2, Hkv, capacity, D] cache per layer: the caller owns them, and writes each
     call's delta K/V into them;
  5. prefill, then decode greedily, and compare the tokens with the model's own generate.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import plugin_utils  # noqa: E402
from cli import check_tensorrt_runs_here, device_of, guarded, new_parser  # noqa: E402
from errors import UsageError  # noqa: E402
from generation.baselines import hf_generate  # noqa: E402
from generation.loops import StopRule  # noqa: E402
from load.models import check_positions, load_config, load_model  # noqa: E402
from load.tokenizer import eos_token_ids, load_tokenizer, pad_token_id  # noqa: E402
from options import DTYPES, CompileOptions, ModelOptions  # noqa: E402
from plugin.compile import compile_plugin_model  # noqa: E402
from plugin.model import PluginCausalLM, allocate_plugin_caches, generate_plugin  # noqa: E402


def main(args: argparse.Namespace) -> None:
    if args.num_tokens < 1:
        raise UsageError(f"--num_tokens must be at least 1, got {args.num_tokens}")
    device = device_of(None)
    if args.compiler == "tensorrt":
        check_tensorrt_runs_here(device)
    options = ModelOptions(args.model, args.precision, device, args.random_weights)

    config = load_config(options)  # 1. load
    plugin_utils.check_plugin_backend(options, args.compiler, args.plugin_path, config,
                                      fallback="or run this example with --compiler eager")
    tokenizer = load_tokenizer(options, config)
    input_ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    capacity = input_ids.shape[1] + args.num_tokens
    check_positions(config, capacity, "prompt + --num_tokens")
    model = load_model(options, config)

    caches = allocate_plugin_caches(model, 1, capacity, options.dtype, device)  # 4. caches
    step = compile_plugin_model(PluginCausalLM(model), CompileOptions(args.compiler), caches, capacity)  # 2., 3.

    eos, pad = eos_token_ids(tokenizer, config), pad_token_id(tokenizer, config)
    with torch.no_grad():  # 5. generate and compare
        tokens = generate_plugin(step, model, input_ids, args.num_tokens, StopRule(eos, pad), caches)
    reference = hf_generate(model, input_ids, args.num_tokens, StopRule(eos, pad))
    print("Plugin backend:", tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True))
    print("Hugging Face:  ", tokenizer.decode(reference[0].tolist(), skip_special_tokens=True))
    print(f"Plugin backend and Hugging Face outputs match: {torch.equal(tokens, reference)}")


if __name__ == "__main__":
    parser = new_parser("end_to_end_llm_generation_example.py", __doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="model id, path or tiny-* preset")
    parser.add_argument("--prompt", default="What is parallel programming?")
    parser.add_argument("--num_tokens", type=int, default=32)
    parser.add_argument("--precision", default="FP16", choices=list(DTYPES))
    parser.add_argument("--compiler", default="eager", choices=["eager", "tensorrt"])
    parser.add_argument("--plugin_path", default=None)
    parser.add_argument("--random_weights", action="store_true")
    arguments = parser.parse_args()
    guarded(parser.prog, lambda: main(arguments))
