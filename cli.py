"""The command line of run_llm.py and run_vlm.py: flags, their checks, the typed options, the one-line errors.

`add_common_arguments` declares the flags both scripts share (the spec's spellings and defaults);
`options_from_args` checks them and returns frozen `options.Options`, before any model loads;
`run_main` turns a UsageError into one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import sys
from typing import Callable

import torch

from errors import UsageError, logger
from load.presets import TINY_PRESETS
from options import BASELINES, CACHES, COMPILER_LABELS, DTYPES, CompileOptions, ModelOptions, Options, RunOptions

RTX_CAPABILITIES = {(8, 0), (8, 6), (8, 9)}  # and 12.0 onwards


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (what is wrong, where to look) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def new_parser(prog: str, description: str) -> OneLineParser:
    return OneLineParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser, default_model: str, default_prompt: str) -> None:
    """Flags that run_llm.py and run_vlm.py share, with the spec's spellings and defaults."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=default_model,
                       help="Hugging Face id or local path, or a tiny-* preset: " + ", ".join(TINY_PRESETS))
    model.add_argument("--tokenizer", default=None, help="tokenizer name or path; defaults to --model")
    model.add_argument("--precision", "--model_precision", dest="precision", default="FP16",
                       choices=list(DTYPES), help="precision of weights and activations")
    model.add_argument("--random_weights", action="store_true",
                       help="build the model from its built-in config with random weights (no download)")
    model.add_argument("--device", default=None, help="torch device; defaults to cuda when available, else cpu")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=default_prompt, help="input prompt (not used with --benchmark)")
    gen.add_argument("--num_tokens", type=int, default=128, help="number of output tokens to generate")
    gen.add_argument("--cache", default="", choices=["", *CACHES],
                     help="KV cache strategy of the sdpa backend; empty for no cache. static_v3 has fixed "
                          "decode shapes (one CUDA graph per step with --cudagraph)")
    gen.add_argument("--enable_pytorch_run", action="store_true",
                     help="also run the Hugging Face model (its own generate) and compare")
    gen.add_argument("--baselines", nargs="+", choices=list(BASELINES), default=None,
                     help="PyTorch runs for --enable_pytorch_run, the first one the reference for token checks: "
                          + "; ".join(f"{k}: {v}" for k, v in BASELINES.items())
                          + ". Default: hf_dynamic, plus hf_static and hf_compiled_step when benchmarking on a GPU")

    comp = parser.add_argument_group("compilation")
    comp.add_argument("--compiler", default="tensorrt", choices=list(COMPILER_LABELS),
                      help="compiler of the lowered graph")
    comp.add_argument("--min_block_size", type=int, default=1, help="TensorRT: smallest block to convert")
    comp.add_argument("--debug", action="store_true", help="verbose compiler logging")
    comp.add_argument("--cudagraph", action="store_true", help="run the compiled model through CUDA graphs")

    bench = parser.add_argument_group("benchmarking")
    bench.add_argument("--benchmark", action="store_true", help="time random inputs, not --prompt")
    bench.add_argument("--iterations", type=int, default=5, help="timed benchmark iterations (after one warm-up)")
    bench.add_argument("--isl", type=int, default=2048, help="input sequence length in benchmark mode")
    bench.add_argument("--batch_size", type=int, default=1, help="batch size")
    bench.add_argument("--output_json", default=None, metavar="PATH", help="also write the benchmark results as JSON")


def options_from_args(args: argparse.Namespace, default_baselines: tuple[str, ...] | None = None) -> Options:
    """The checked, typed options of a run; bad combinations are a UsageError before any model is loaded.

    `default_baselines` replaces the default choice of --baselines (hf_dynamic, plus hf_static and
    hf_compiled_step when benchmarking on a GPU).
    """
    for flag in ("num_tokens", "batch_size", "iterations", "isl", "min_block_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asks for a GPU, but no CUDA GPU is visible; use --device cpu")
    if args.compiler == "tensorrt":
        check_tensorrt_runs_here(device)
    if args.cudagraph and not on_gpu:
        raise UsageError("--cudagraph needs a CUDA device; drop it or use --device cuda")
    if args.cudagraph and args.compiler == "eager" and args.cache != "static_v3":
        logger.warning("--cudagraph with --compiler eager captures static_v3 steps only; this run is not captured")
    baselines = args.baselines
    if baselines is None:
        gpu_benchmark = args.benchmark and on_gpu
        baselines = default_baselines or (("hf_dynamic", "hf_static", "hf_compiled_step") if gpu_benchmark
                                          else ("hf_dynamic",))
    model = ModelOptions(args.model, args.precision, device, args.random_weights, args.tokenizer)
    compile_options = CompileOptions(args.compiler, args.cache, args.cudagraph, args.min_block_size)
    run = RunOptions(args.prompt, args.num_tokens, args.batch_size, args.benchmark, args.iterations, args.isl,
                     args.enable_pytorch_run, tuple(baselines), args.output_json)
    return Options(model, compile_options, run, backend=getattr(args, "backend", "sdpa"),
                   plugin_path=getattr(args, "plugin_path", None), image_path=getattr(args, "image_path", None))


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def check_tensorrt_runs_here(device: str) -> None:
    """--compiler tensorrt needs torch_tensorrt and a GPU it can run engines on.

    TensorRT-RTX engines run on compute capability 8.0, 8.6, 8.9 and 12.0 or newer only (not on 9.0).
    """
    if importlib.util.find_spec("torch_tensorrt") is None:
        raise UsageError("--compiler tensorrt needs torch_tensorrt, which is not installed "
                         "(pip install torch-tensorrt); or use --compiler inductor or --compiler eager")
    if not device.startswith("cuda"):
        raise UsageError("--compiler tensorrt needs an NVIDIA GPU, and none is visible here; "
                         "use --compiler inductor or --compiler eager")
    if not _installed("torch-tensorrt-rtx") or _installed("torch-tensorrt"):
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) not in RTX_CAPABILITIES and major < 12:
        raise UsageError(f"--compiler tensorrt: the installed torch-tensorrt-rtx (TensorRT-RTX) cannot run engines on "
                         f"this GPU (compute capability {major}.{minor}); install torch-tensorrt instead, "
                         "or use --compiler inductor or --compiler eager")


def run_main(main: Callable[[Options], None], parser: argparse.ArgumentParser,
             to_options: Callable[[argparse.Namespace], Options] = options_from_args) -> None:
    """Parse, check, run, and turn a UsageError into one line on stderr with exit status 2."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        main(to_options(args))
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
