"""Compile a Hugging Face LLM and compare it with PyTorch, or benchmark it.

    python run_llm.py --model meta-llama/Llama-3.2-1B-Instruct --backend sdpa \\
        --prompt "What is parallel programming?" --precision FP16 --num_tokens 30 --enable_pytorch_run
    python run_llm.py --model meta-llama/Llama-3.2-1B-Instruct --cache static_v2 --precision FP16 \\
        --benchmark --iterations 5 --isl 128 --num_tokens 20 --enable_pytorch_run
    python run_llm.py --model tiny-llama --compiler eager --cache static_v2 --precision FP32 \\
        --num_tokens 24 --enable_pytorch_run          # CPU only, no download

Stages: load the model, export it, lower it (register_sdpa, then the --cache pass), compile the
lowered graph with --compiler, generate greedily, and report against Hugging Face's own generate.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

import plugin_utils
from plugin_model import PluginCausalLM, allocate_plugin_caches, compile_plugin_model, generate_plugin
from benchmark import (copy_bandwidth_tb_s, decode_bytes_per_step, format_table, run_benchmark, token_agreement,
                       write_json)
from generate import (HFCompiledStep, Prompt, StopRule, generate_no_cache, generate_static_cache, hf_forward_no_cache,
                      hf_generate)
from utils import (BASELINES, COMPILER_LABELS, DTYPES, OneLineParser, RunSetup, add_common_arguments, cached_model,
                   check_positions, compile_lowered, logger, eos_token_ids, export_llm, load_config, load_model,
                   load_tokenizer, lower, pad_token_id, print_generation, print_match, run_main,
                   validate_common_arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run_llm.py", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, default_model="meta-llama/Llama-3.2-1B-Instruct",
                         default_prompt="What is parallel programming?")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", default="sdpa", choices=["sdpa", "plugin"],
                         help="sdpa: canonical attention with --cache passes; plugin: Edge-LLM AttentionPlugin")
    backend.add_argument("--plugin_path", default=None,
                         help=f"plugin library; defaults to ${plugin_utils.PLUGIN_PATH_ENV}, "
                              f"then {plugin_utils.DEFAULT_PLUGIN_PATH}")
    return parser


def input_ids_for(args: argparse.Namespace, tokenizer, config) -> torch.Tensor:
    """[B, T]: random tokens of length --isl in benchmark mode, else the prompt once per row."""
    if args.benchmark:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (args.batch_size, args.isl), generator=generator)
    else:
        ids = torch.tensor(tokenizer.encode(args.prompt)).unsqueeze(0).expand(args.batch_size, -1)
    return ids.to(args.device)


def main(args: argparse.Namespace) -> None:
    validate_common_arguments(args)
    config = load_config(args)
    if args.backend == "plugin":
        plugin_utils.check_plugin_backend(args, config)
        if args.cache:
            logger.warning("--cache %s is ignored with --backend plugin: the plugin has its own KV cache", args.cache)
    tokenizer = load_tokenizer(args, config)
    input_ids = input_ids_for(args, tokenizer, config)
    max_seq_len = input_ids.shape[1] + args.num_tokens
    check_positions(config, max_seq_len, "input length + --num_tokens")

    model = load_model(args, config)
    eos, pad = eos_token_ids(tokenizer, config), pad_token_id(tokenizer, config)
    label = COMPILER_LABELS[args.compiler] + ("-Plugin" if args.backend == "plugin" else "")

    start = time.perf_counter()
    if args.backend == "plugin":
        plugin_caches = allocate_plugin_caches(model, args.batch_size, max_seq_len, DTYPES[args.precision], args.device)
        compiled = compile_plugin_model(PluginCausalLM(model), args, plugin_caches, max_seq_len)
    else:
        lowered = lower(export_llm(model, args.batch_size, max_seq_len), args.cache, max_seq_len)
        compiled = compile_lowered(lowered, args, max_seq_len)
        cached = cached_model(compiled, lowered, args, max_seq_len) if args.cache else None
    build_seconds = time.perf_counter() - start

    def stop_rule() -> StopRule:
        return StopRule(eos, pad, stop_on_eos=not args.benchmark)

    def run_compiled(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            if args.backend == "plugin":
                for cache in plugin_caches:
                    cache.zero_()
                return generate_plugin(compiled, model, input_ids, args.num_tokens, stop_rule(), plugin_caches,
                                       on_first_token)
            if not args.cache:
                return generate_no_cache(compiled, Prompt.text(input_ids), args.num_tokens, stop_rule(), on_first_token)
            return generate_static_cache(cached, Prompt.text(input_ids), args.num_tokens, stop_rule(), on_first_token)

    def pytorch_run(baseline: str):
        compiled_step = HFCompiledStep(model, max_seq_len) if baseline == "hf_compiled_step" else None

        def run(on_first_token=None) -> torch.Tensor:
            if baseline in ("hf_dynamic", "hf_static"):
                return hf_generate(model, input_ids, args.num_tokens, stop_rule(), on_first_token,
                                   static_cache=baseline == "hf_static")
            with torch.no_grad():
                if compiled_step is not None:
                    return generate_static_cache(compiled_step, Prompt.text(input_ids), args.num_tokens, stop_rule(),
                                                 on_first_token)
                return generate_no_cache(hf_forward_no_cache(model), Prompt.text(input_ids), args.num_tokens,
                                         stop_rule(), on_first_token)
        return run

    if not args.benchmark:
        reference = None
        if args.enable_pytorch_run:
            reference = pytorch_run(args.baselines[0])()
            print_generation("PyTorch", tokenizer.decode(reference[0].tolist(), skip_special_tokens=True))
        tokens = run_compiled()
        print_generation(label, tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True))
        if reference is not None:
            print_match(label, reference, tokens)
        return

    decode_bytes = decode_bytes_per_step(model, args.batch_size, args.isl, args.num_tokens)
    measure = partial(run_benchmark, device=args.device, iterations=args.iterations, batch_size=args.batch_size,
                      new_tokens=args.num_tokens, decode_bytes=decode_bytes)
    measured = {}
    if args.enable_pytorch_run:
        for baseline in args.baselines:
            measured[f"PyTorch ({BASELINES[baseline]})"] = measure(pytorch_run(baseline))
    compiled_row = label if args.backend == "plugin" else f"{label}, {args.cache or 'no cache'}"
    compiled_row += ", CUDA graphs" if args.cudagraph else ""
    measured[compiled_row] = measure(run_compiled, build_s=build_seconds)
    reference = next(iter(measured.values())).tokens if args.enable_pytorch_run else None
    if reference is not None:
        for other in list(measured.values())[1:]:
            other.figures["token_agreement"] = token_agreement(reference, other.tokens, args.isl)

    setup = RunSetup.from_args(args)
    notes = {"copy_bandwidth_tb_s": copy_bandwidth_tb_s(args.device), "decode_bytes_per_step_gb": decode_bytes / 1e9}
    results = {name: row.figures for name, row in measured.items()}
    print(format_table(setup, results, notes))
    if reference is not None:
        print(f"tokens = ref: share of new tokens equal to the first row's ({args.baselines[0]})")
    if args.output_json:
        write_json(args.output_json, setup, results, {**notes, "build_seconds": build_seconds})


if __name__ == "__main__":
    run_main(main, build_parser())
