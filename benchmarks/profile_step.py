"""Where a decode step's time goes: the static_v3 step captured as a CUDA graph, timed and profiled.

    python benchmarks/profile_step.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --precision FP16 \\
        --compiler inductor --isl 128 --num_tokens 128

Takes run_llm.py's flags (the cache is static_v3 and --cudagraph is on, whatever is passed), and
`--inductor_config name=value ...` to try inductor options (e.g. combo_kernels=True,
coordinate_descent_tuning=True) before making one of them compile_inductor.py's default, and
`--plain_inductor` to compile without its small-model decode tuning (the comparison for it), and
`--attention_sums` to give that tuned step's decode attention as inductor's sums of products instead
of decode_attention.py's Triton kernel (the comparison for the kernel), and `--inductor_timer` to
tune its kernels with inductor's own timer around their launch rather than by their GPU time
(kernel_timer.py, the comparison for it; compile with an empty inductor cache, e.g.
TORCHINDUCTOR_CACHE_DIR set to a new folder, or the earlier tuning is reused), and
`--long_decode_sdpa` to give decode attention over a long cache as sdpa rather than
decode_attention.py's split kernels (compile_inductor.LONG_DECODE_KERNEL, the comparison for them). Prints
the decode step's time in the generation loop (host included: run_llm.py's TPOT, median over
--iterations), the captured step replayed back to back (the GPU alone: the gap between the two is
host time), the step's kernel count and summed kernel time (the gap to the replay time is the GPU
idling between kernels; with programmatic dependent launch a kernel starts before the one before it
ends, so the sum can exceed the replay time), what the loop itself runs on the GPU at each decode
step besides the step (input copies, positions, the argmax), and the kernels that take most.
"""

from __future__ import annotations

import ast
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compile_inductor  # noqa: E402
import run_llm  # noqa: E402
from benchmark import run_benchmark, time_generation  # noqa: E402
from generate import Prompt, StopRule, generate_static_cache  # noqa: E402
from kernel_timer import gpu_work  # noqa: E402
from utils import (UsageError, cached_model, compile_lowered, export_llm, load_config, load_model, lower,  # noqa: E402
                   run_main, validate_common_arguments)

REPLAYS = 100  # back-to-back replays timed together
PROFILED = 5  # replays under the profiler, averaged


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


def main(args) -> None:
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise UsageError("profiling captures CUDA graphs and needs a CUDA device; pass --device cuda on a GPU")
    if args.num_tokens < 2:
        raise UsageError(f"--num_tokens {args.num_tokens} leaves no decode step to profile; use 2 or more")
    args.cache, args.cudagraph, args.benchmark = "static_v3", True, True
    validate_common_arguments(args)
    set_inductor_options(args.inductor_config)
    if args.plain_inductor:
        compile_inductor.SMALL_MODEL_PARAMETERS = 0  # no model is small enough: inductor's defaults, cuBLAS
    if args.attention_sums:
        compile_inductor.DECODE_ATTENTION_KERNEL = False
    if args.inductor_timer:
        compile_inductor.TUNE_BY_KERNEL_TIME = False
    if args.long_decode_sdpa:
        compile_inductor.LONG_DECODE_KERNEL = False
    if args.compiler == "tensorrt" or args.backend == "plugin":
        raise UsageError("profile_step.py profiles the sdpa backend under --compiler eager or inductor")
    config = load_config(args)
    input_ids = run_llm.input_ids_for(args, None, config)
    max_seq_len = args.isl + args.num_tokens
    model = load_model(args, config)
    lowered = lower(export_llm(model, args.batch_size, max_seq_len), args.cache, max_seq_len)
    cached = cached_model(compile_lowered(lowered, args, max_seq_len), lowered, args, max_seq_len)

    def generate(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            return generate_static_cache(cached, Prompt.text(input_ids), args.num_tokens, StopRule([], 0, False),
                                         on_first_token)

    # the benchmark's own measurement: a warm-up run (compiles and captures), then --iterations timed runs
    figures = run_benchmark(generate, args.device, args.iterations, args.batch_size, args.num_tokens).figures
    # the decode step: one token per sequence over the whole cache (a one-token prefill sees a prefix)
    decode_graph = next(graph for (inputs, _, cache), (graph, *_) in cached.model.graphs.items()
                        if inputs[1] == 1 and cache[2] == max_seq_len)
    replays = time_generation(lambda _: [decode_graph.replay() for _ in range(REPLAYS)], torch.cuda.synchronize)
    replay_us = replays.total_s / REPLAYS * 1e6

    kernels = gpu_work(lambda: [decode_graph.replay() for _ in range(PROFILED)], PROFILED)  # per step
    kernel_us = sum(us for _, us in kernels.values())
    # the loop's own GPU work: what a generation runs once per decode step besides the step's graph
    decode_steps = args.num_tokens - 1
    outside = {name: (calls / decode_steps, us / decode_steps) for name, (calls, us) in gpu_work(generate, 1).items()
               if name not in kernels and calls >= decode_steps}

    flags = [flag for flag, on in (("--plain_inductor", args.plain_inductor), ("--attention_sums", args.attention_sums),
                                   ("--inductor_timer", args.inductor_timer),
                                   ("--long_decode_sdpa", args.long_decode_sdpa)) if on]
    options = " ".join(args.inductor_config + flags)
    print(f"{args.model}, batch {args.batch_size}, cache of {max_seq_len}, {args.precision}, {args.compiler} {options}")
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
    parser.add_argument("--inductor_config", nargs="*", default=[], metavar="NAME=VALUE",
                        help="torch._inductor.config options for this run, e.g. combo_kernels=True")
    parser.add_argument("--plain_inductor", action="store_true",
                        help="compile without compile_inductor.py's small-model decode tuning, to compare with it")
    parser.add_argument("--attention_sums", action="store_true",
                        help="the tuned step's decode attention as inductor's sums, not decode_attention.py's "
                             "kernel, to compare with it")
    parser.add_argument("--inductor_timer", action="store_true",
                        help="time the tuned step's candidate kernels with inductor's timer around their launch, "
                             "not by their GPU time (kernel_timer.py), to compare with it")
    parser.add_argument("--long_decode_sdpa", action="store_true",
                        help="decode attention over a cache longer than compile_inductor.DECODE_KEYS as sdpa, "
                             "not decode_attention.py's split kernels, to compare with them")
    run_main(main, parser)
