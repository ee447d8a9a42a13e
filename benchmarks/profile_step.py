"""Where a decode step's time goes: the static_v3 step captured as a CUDA graph, timed and profiled.

    python benchmarks/profile_step.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --precision FP16 \\
        --compiler inductor --isl 128 --num_tokens 128

Takes run_llm.py's flags (the cache is static_v3 and --cudagraph is on, whatever is passed; with
--quant_format the step is the quantized model's, quantized as run_llm.py does), and:
  --inductor_config name=value ...  inductor options to try (e.g. combo_kernels=True) before making
                                    one of them compilers/inductor.py's default
  --plain_inductor     no small-model decode tuning: inductor's defaults and cuBLAS
  --attention_sums     the tuned step's short decode attention as inductor's sums, not the kernel
  --inductor_timer     tune with inductor's timer around each launch, not by kernel time (compile
                       with an empty inductor cache, e.g. a new TORCHINDUCTOR_CACHE_DIR)
  --long_decode_sdpa   decode attention over a long cache as sdpa, not the split kernels
  --untuned_blocks     the tuned step's kernels with inductor's block sizes, no coordinate descent
  --store_product_inputs  the tuned step's one-row products read their input stored once, not
                       recomputed in each program (compilers/stored.py)
Each builds a DecodeTuning with that one choice changed from the default (docs/decode_tuning.md says
what each compares). It prints:
  - the compile time, as run_llm.py's table counts it (export, lower, and the first run's compile,
    tuning and CUDA-graph capture), and its parts by TorchDynamo's timers (tracing and inductor's compile;
    the block-size tuning, which runs at the step's first call);
  - the decode step in the generation loop (host included: run_llm.py's TPOT, median of --iterations);
  - the captured step replayed back to back (the GPU alone: the gap to the loop is host time);
  - the step's kernel count and summed kernel time (the gap to the replay is the GPU idling between
    kernels; with programmatic dependent launch kernels overlap, so the sum can exceed the replay);
  - what the loop runs on the GPU at each step besides the step (input copies, positions, argmax);
  - the kernels that take most.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_llm  # noqa: E402
from cli import device_of, options_from_args, run_main  # noqa: E402
from compilers.kernel_timer import gpu_work  # noqa: E402
from errors import UsageError  # noqa: E402
from export import export_llm  # noqa: E402
from generation.loops import Prompt, StopRule, generate_static_cache  # noqa: E402
from load.models import check_llm_family, load_config  # noqa: E402
from load.tokenizer import load_tokenizer  # noqa: E402
from options import Options  # noqa: E402
from report.timing import run_benchmark, time_generation  # noqa: E402
from utils import cached_model, compile_lowered, lower  # noqa: E402

REPLAYS = 100  # back-to-back replays timed together
PROFILED = 5  # replays under the profiler, averaged
COMPILE_TIMERS = {"compile": "_compile.compile_inner", "tracing": "bytecode_tracing",
                  "tuning": "CachingAutotuner.coordinate_descent_tuning"}  # TorchDynamo's names for its timers


def compile_parts() -> str:
    """Where this process's compiles went, from TorchDynamo's own timers (one torch did not record shows -)."""
    names, values = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    recorded = dict(zip(names, values))
    took = {part: f"{float(recorded[name]):.1f} s" if name in recorded else "-"
            for part, name in COMPILE_TIMERS.items()}
    return f"TorchDynamo and inductor {took['compile']} (tracing {took['tracing']}), block-size tuning {took['tuning']}"


def set_inductor_options(options: list[str]) -> None:
    """name=value pairs (value a Python literal) set on torch._inductor.config; dotted names reach sub-configs."""
    import torch._inductor.config as config

    for option in options:
        name, _, text = option.partition("=")
        *parents, leaf = name.split(".")
        owner = config
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is None or not hasattr(owner, leaf):
            raise UsageError(f"--inductor_config {option}: torch._inductor.config has no option {name!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UsageError(f"--inductor_config {option}: write the value as a Python literal, e.g. {name}=True")
        setattr(owner, leaf, value)


# flag -> the DecodeTuning field it changes, and the value it gives it
COMPARISONS = {"plain_inductor": ("small_model_parameters", 0), "attention_sums": ("decode_attention_kernel", False),
               "inductor_timer": ("tune_by_kernel_time", False), "long_decode_sdpa": ("long_decode_kernel", False),
               "untuned_blocks": ("block_size_tuning", False), "store_product_inputs": ("store_product_inputs", True)}


NOT_USED = {"cache": "the step is static_v3's", "no_cudagraph": "the step is captured as a CUDA graph",
            "enable_pytorch_run": "nothing is compared", "baselines": "nothing is compared",
            "output_json": "the profile is printed"}  # run_llm.py's flags; --prompt is --benchmark's to refuse


def profile_options(args: argparse.Namespace) -> Options:
    """run_llm.py's options for a static_v3 benchmark with CUDA graphs, with the comparisons' tuning."""
    if args.compiler == "tensorrt" or args.backend == "plugin":
        raise UsageError("profile_step.py profiles the sdpa backend under --compiler eager or inductor")
    device = device_of(args.device)
    if not device.startswith("cuda"):
        raise UsageError("profiling captures CUDA graphs and needs a CUDA device; pass --device cuda on a GPU")
    if args.num_tokens < 2:
        raise UsageError(f"--num_tokens {args.num_tokens} leaves no decode step to profile; use 2 or more")
    options = options_from_args(argparse.Namespace(**{**vars(args), "device": device, "cache": "static_v3",
                                                      "cudagraph": True, "benchmark": True}))
    tuning = options.compile.tuning
    changed = {field: value for flag, (field, value) in COMPARISONS.items() if getattr(args, flag)}
    compile_options = dataclasses.replace(options.compile, tuning=dataclasses.replace(tuning, **changed))
    return dataclasses.replace(options, compile=compile_options)


def main(args: argparse.Namespace) -> None:
    options = profile_options(args)
    set_inductor_options(args.inductor_config)
    model_options, compile_options, run = options.model, options.compile, options.run
    config = load_config(model_options)
    check_llm_family(config, "profile_step.py")
    options, prequantized = run_llm.with_saved_quantization(options, config)
    input_ids = run_llm.input_ids_for(options, None, config)
    max_seq_len = run.isl + run.num_tokens
    tokenizer = load_tokenizer(model_options, config) if options.quant.calib_data == "text" else None  # calibration's
    model = run_llm.load_models(options, config, prequantized, max_seq_len, tokenizer)[1]  # quantized where asked
    start = time.perf_counter()
    lowered = lower(export_llm(model, run.batch_size, max_seq_len, cache_dir=compile_options.export_cache_dir),
                    compile_options.cache, max_seq_len)
    compiled = compile_lowered(lowered, compile_options, model_options, max_seq_len)
    cached = cached_model(compiled, lowered, compile_options, model_options, run.batch_size, max_seq_len)
    build_s = time.perf_counter() - start

    def generate(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            return generate_static_cache(cached, Prompt.text(input_ids), run.num_tokens, StopRule([], 0, False),
                                         on_first_token)

    # the benchmark's own measurement: a warm-up run (compiles and captures), then --iterations timed runs
    figures = run_benchmark(generate, model_options.device, run.iterations, run.batch_size, run.num_tokens,
                            build_s=build_s).figures
    # the decode step: one token per sequence over the whole cache (a one-token prefill sees a prefix)
    decode_graph = next(graph for (inputs, _, cache, _), (graph, *_) in cached.model.graphs.items()
                        if inputs[1] == 1 and cache[2] == max_seq_len)
    replays = time_generation(lambda _: [decode_graph.replay() for _ in range(REPLAYS)], torch.cuda.synchronize)
    replay_us = replays.total_s / REPLAYS * 1e6

    kernels = gpu_work(lambda: [decode_graph.replay() for _ in range(PROFILED)], PROFILED)  # per step
    kernel_us = sum(us for _, us in kernels.values())
    # the loop's own GPU work: what a generation runs once per decode step besides the step's graph
    decode_steps = run.num_tokens - 1
    outside = {name: (calls / decode_steps, us / decode_steps) for name, (calls, us) in gpu_work(generate, 1).items()
               if name not in kernels and calls >= decode_steps}

    flags = [f"--{flag}" for flag in COMPARISONS if getattr(args, flag)]
    tried = " ".join(args.inductor_config + flags)
    quantized = f", {options.quant.describe()}" if options.quant.format else ""
    print(f"{model_options.name}, batch {run.batch_size}, cache of {max_seq_len}, "
          f"{model_options.precision}{quantized}, {compile_options.compiler} {tried}")
    print(f"compile s (export, lower and the first run's compile and capture, as run_llm.py's table): "
          f"{figures['compile_s']:.1f}")
    print(f"  {compile_parts()}")
    loop_us, prefill_ms = figures["tpot_ms"]["median"] * 1e3, figures["ttft_ms"]["median"]
    print(f"decode step in the generation loop: {loop_us:8.1f} us  (prefill {prefill_ms:.2f} ms)")
    print(f"decode step replayed back to back:  {replay_us:8.1f} us")
    print(f"kernels per step: {sum(calls for calls, _ in kernels.values()):.0f}, their time: {kernel_us:.1f} us")
    print(f"outside the step, per decode step: {sum(calls for calls, _ in outside.values()):.0f} kernels and copies, "
          f"{sum(us for _, us in outside.values()):.1f} us: "
          + ", ".join(f"{name[:40]} {us:.1f} us" for name, (_, us) in sorted(outside.items(), key=lambda i: -i[1][1])))
    print("| us per step | share | calls | kernel |\n|---|---|---|---|")
    for name, (calls, us) in sorted(kernels.items(), key=lambda item: -item[1][1])[:15]:
        print(f"| {us:.1f} | {us / kernel_us:.0%} | {calls:.0f} | `{name[:90]}` |")


if __name__ == "__main__":
    parser = run_llm.build_parser()
    parser.prog = "profile_step.py"
    parser.set_defaults(benchmark=True)  # a profile always times --isl random tokens over --iterations
    parser.add_argument("--inductor_config", nargs="*", default=[], metavar="NAME=VALUE",
                        help="torch._inductor.config options for this run, e.g. combo_kernels=True")
    parser.add_argument("--plain_inductor", action="store_true",
                        help="compile without the small-model decode tuning, to compare with it")
    parser.add_argument("--attention_sums", action="store_true",
                        help="the tuned step's decode attention as inductor's sums, not the Triton kernel")
    parser.add_argument("--inductor_timer", action="store_true",
                        help="tune the step's kernels with inductor's timer around their launch, not by GPU time")
    parser.add_argument("--long_decode_sdpa", action="store_true",
                        help="decode attention over a long cache as sdpa, not the split Triton kernels")
    parser.add_argument("--untuned_blocks", action="store_true",
                        help="the tuned step's kernels with inductor's own block sizes, no coordinate descent")
    parser.add_argument("--store_product_inputs", action="store_true",
                        help="the tuned step's one-row products read their input stored once, not recomputed")
    run_main(main, parser, to_options=lambda args: args, never_used=NOT_USED)
