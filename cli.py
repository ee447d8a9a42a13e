"""The command line of run_llm.py and run_vlm.py: flags, their checks, the typed options, the one-line errors.

`add_common_arguments` declares the flags both scripts share (the spec's spellings and defaults);
`options_from_args` checks them and returns frozen `options.Options`, before any model loads;
`run_main` runs an entry point under the one rule of every script here: bad input is one line on
stderr with exit status 2; Ctrl-C one line with 130; an unexpected error a first line saying what the
run was doing, then its traceback (a bug report), exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from typing import Callable, Sequence

import torch

from compilers.engine_cache import DEFAULT_ENGINE_CACHE_DIR, PROJECT_CACHE_DIR
from compilers.inductor_cache import DEFAULT_INDUCTOR_CACHE_DIR, use_inductor_cache
from errors import UsageError, activity_of, logger
from generation.baselines import INSTALL_TORCHAO
from load.presets import TINY_PRESETS
from options import (BASELINES, CACHES, CALIBRATION_DATA, COMPILER_LABELS, DTYPES, QUANT_ALGOS, QUANT_FORMATS,
                     CompileOptions, ModelOptions, Options, QuantOptions, RunOptions)
from quantize import INSTALL_MODELOPT

# Where torchao is installed, transformers imports it, and torch warns that torchao registers its enums in a way
# torch now deprecates: a notice for torchao's authors that would start every run.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# Inductor suggests TF32 for every float32 matrix product it compiles. The rotary embeddings' angles are one: at
# TF32's 10-bit mantissa they would be wrong at long positions, and --precision FP32 asks for exact products.
warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication",
                        category=UserWarning)

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
    comp.add_argument("--quiet", action="store_true", help="no progress lines on stderr (warnings and errors only)")
    graphs = comp.add_mutually_exclusive_group()
    graphs.add_argument("--cudagraph", action="store_true",
                        help="run the compiled model through CUDA graphs. On by default on a GPU for the static-cache "
                             "steps of eager and inductor: static_v3 always, static_v1/v2 when benchmarking (a graph "
                             "per position, replayed at every iteration)")
    graphs.add_argument("--no_cudagraph", action="store_true", help="no CUDA graphs, not even by default")
    comp.add_argument("--engine_cache_dir", default=DEFAULT_ENGINE_CACHE_DIR, metavar="DIR",
                      help="TensorRT: keep built engines here and reuse them in later runs with the same model "
                           "shapes and settings (default: %(default)s)")
    comp.add_argument("--no_engine_cache", action="store_true",
                      help="TensorRT: build the engine every run, not refittable, and cache nothing")
    comp.add_argument("--inductor_cache_dir", default=DEFAULT_INDUCTOR_CACHE_DIR, metavar="DIR",
                      help="inductor (and the baselines' torch.compile): keep compiled graphs, autotuning results "
                           "and kernels here for later runs (default: $TORCHINDUCTOR_CACHE_DIR, else %(default)s)")
    comp.add_argument("--export_cache_dir", default=os.path.join(PROJECT_CACHE_DIR, "exports"), metavar="DIR",
                      help="keep each exported graph here (without weights) and reuse it in later runs of a model "
                           "of the same structure and versions (default: %(default)s)")
    comp.add_argument("--no_export_cache", action="store_true", help="export the model every run and cache nothing")

    quant = parser.add_argument_group("quantization (NVIDIA ModelOpt)")
    quant.add_argument("--quant_format", default=None, choices=list(QUANT_FORMATS),
                       help="quantize the linear layers with ModelOpt; the PyTorch run stays unquantized, the "
                            "reference for the accuracy figures")
    quant.add_argument("--quant_algo", default="max", choices=list(QUANT_ALGOS),
                       help="calibration algorithm; smoothquant is for int8 weights and activations")
    quant.add_argument("--weight_only", action="store_true",
                       help="quantize the weights only; activations stay in --precision")
    quant.add_argument("--calib_data", default="random", choices=list(CALIBRATION_DATA),
                       help="what calibration runs on: random tokens, or a short text built into the toolkit")

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
    if args.output_json:
        check_output_path(args.output_json)
    device = device_of(args.device)
    on_gpu = device.startswith("cuda")
    if args.compiler == "tensorrt":
        check_tensorrt_runs_here(device)
        if not args.no_engine_cache:
            check_cache_dir(args.engine_cache_dir, "--engine_cache_dir", "or --no_engine_cache")
    if args.cudagraph and not on_gpu:
        raise UsageError("--cudagraph needs a CUDA device; drop it or use --device cuda")
    if not args.no_export_cache:
        check_cache_dir(args.export_cache_dir, "--export_cache_dir", "or --no_export_cache")
    if args.cudagraph and args.compiler == "eager" and not args.cache:
        logger.warning("--cudagraph with --compiler eager captures static-cache steps only; this run is not captured")
    baselines = args.baselines
    if baselines is None:
        gpu_benchmark = args.benchmark and on_gpu
        baselines = default_baselines or (("hf_dynamic", "hf_static", "hf_compiled_step") if gpu_benchmark
                                          else ("hf_dynamic",))
    if "torchao_int8_step" in baselines and importlib.util.find_spec("torchao") is None:
        raise UsageError(f"the torchao_int8_step baseline needs torchao, which is not installed ({INSTALL_TORCHAO}); "
                         "or leave it out of --baselines")
    compiled_baselines = {"hf_static", "hf_compiled_step", "torchao_int8_step"}
    inductor_compiles = args.compiler == "inductor" or bool(compiled_baselines & set(baselines))
    if inductor_compiles:  # set for the whole process here: the baselines' torch.compile uses it too
        check_cache_dir(args.inductor_cache_dir, "--inductor_cache_dir")
        use_inductor_cache(args.inductor_cache_dir)
        if not on_gpu:  # inductor's C++ build notes on every CPU run that there is no CUDA runtime
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model = ModelOptions(args.model, args.precision, device, args.random_weights, args.tokenizer)
    compile_options = CompileOptions(args.compiler, args.cache, cuda_graphs_of(args, on_gpu), args.min_block_size,
                                     engine_cache_dir=None if args.no_engine_cache else args.engine_cache_dir,
                                     export_cache_dir=None if args.no_export_cache else args.export_cache_dir)
    run = RunOptions(args.prompt, args.num_tokens, args.batch_size, args.benchmark, args.iterations, args.isl,
                     args.enable_pytorch_run, tuple(baselines), args.output_json)
    return Options(model, compile_options, run, backend=getattr(args, "backend", "sdpa"),
                   plugin_path=getattr(args, "plugin_path", None), image_path=getattr(args, "image_path", None),
                   quant=quant_options_of(args, device))


def quant_options_of(args: argparse.Namespace, device: str) -> QuantOptions:
    """The quantization flags, checked before any weight loads."""
    quant = QuantOptions(args.quant_format, args.quant_algo, args.weight_only, args.calib_data)
    if quant.format is None:
        given = [flag for flag, value in (("--quant_algo", quant.algo != "max"), ("--weight_only", quant.weight_only),
                                          ("--calib_data", quant.calib_data != "random")) if value]
        if given:
            raise UsageError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --quant_format; "
                              "add --quant_format int8 or fp8")
        return quant
    if quant.algo == "smoothquant" and quant.weight_only:
        raise UsageError("--quant_algo smoothquant quantizes activations, and --weight_only does not; "
                         "drop one of them")
    if quant.algo == "smoothquant" and quant.format != "int8":
        raise UsageError(f"--quant_algo smoothquant is for --quant_format int8, not {quant.format}; "
                         "use --quant_algo max")
    if getattr(args, "backend", "sdpa") == "plugin":
        raise UsageError("--quant_format is not available with --backend plugin (its attention layers take "
                         "unquantized projections); use --backend sdpa")
    if quant.format == "nvfp4":
        check_nvfp4_runs_here(device)
    if importlib.util.find_spec("modelopt") is None:
        raise UsageError(f"--quant_format needs NVIDIA ModelOpt, which is not installed; {INSTALL_MODELOPT}")
    return quant


def check_nvfp4_runs_here(device: str) -> None:
    """NVFP4's matrix products, with or without NVFP4 activations, need compute capability 10.0 (Blackwell) or
    newer."""
    if not device.startswith("cuda"):
        raise UsageError("--quant_format nvfp4 needs an NVIDIA GPU of compute capability 10.0 or newer (Blackwell), "
                         "and none is visible here; use --quant_format fp8 or int8")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 10:
        raise UsageError(f"--quant_format nvfp4 needs compute capability 10.0 or newer (Blackwell); this GPU is "
                         f"{major}.{minor}; use --quant_format fp8 or int8")


def cuda_graphs_of(args: argparse.Namespace, on_gpu: bool) -> bool:
    """--cudagraph, --no_cudagraph, or the default: on a GPU, eager and inductor static-cache steps of the sdpa
    backend are captured where a graph is replayed: a static_v3 step always (one decode graph for every
    position), a static_v1/v2 step when benchmarking (a graph per position, replayed at every iteration;
    a single generation would only pay for the captures). TensorRT's own CUDA-graph mode stays opt-in."""
    if args.cudagraph or args.no_cudagraph:
        return args.cudagraph
    by_default = on_gpu and args.compiler != "tensorrt" and getattr(args, "backend", "sdpa") == "sdpa"
    return by_default and (args.cache == "static_v3" or (bool(args.cache) and args.benchmark))


def device_of(flag: str | None) -> str:
    """--device as a torch device string: cpu, cuda or cuda:N (cuda when left out and a GPU is visible)."""
    if flag is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise UsageError(f"--device {flag} is not a device; use cpu, cuda or cuda:N (lower case)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {flag}: runs take cpu or cuda[:N], not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {flag} asks for a GPU, but no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {flag}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0; use --device cuda:0")
    return str(device)


def check_output_path(path: str) -> None:
    """The results' path must be a file in an existing, writable folder: checked before any work."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--output_json {path} is a folder; give a file path, for example "
                         f"{os.path.join(path, 'results.json')}")
    if not os.path.isdir(folder):
        raise UsageError(f"--output_json {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--output_json {path}: the folder {folder} is not writable; choose another path")


def check_cache_dir(path: str, flag: str, alternative: str = "") -> None:
    """A cache folder must be a folder that exists or can be created, and be writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file; give a folder{', ' + alternative if alternative else ''}")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; choose another folder"
                         + (f" {alternative}" if alternative else ""))


def warn_unused(parser: argparse.ArgumentParser, args: argparse.Namespace,
                never_used: dict[str, str] | None = None) -> None:
    """One warning per flag that was given but does nothing in this run; `never_used`: flags (by dest) the
    script takes from a shared parser and never uses, each with why."""
    def given(dest: str) -> bool:
        return hasattr(args, dest) and getattr(args, dest) != parser.get_default(dest)

    unused = []
    if args.benchmark and given("prompt"):
        unused.append("--prompt is not used with --benchmark (the input is --isl random tokens)")
    if not args.benchmark:
        unused += [f"--{flag} is used only with --benchmark" for flag in ("isl", "iterations") if given(flag)]
    if given("baselines") and not args.enable_pytorch_run:
        unused.append("--baselines is used only with --enable_pytorch_run")
    unused += [f"--{flag} is used only with --compiler tensorrt"
               for flag in ("min_block_size", "engine_cache_dir", "no_engine_cache")
               if given(flag) and args.compiler != "tensorrt"]
    if given("plugin_path") and getattr(args, "backend", "sdpa") != "plugin":
        unused.append("--plugin_path is used only with --backend plugin")
    if getattr(args, "backend", "sdpa") == "plugin":  # the plugin's model is compiled without an export
        unused += [f"--{flag} is not used with --backend plugin" for flag in ("export_cache_dir", "no_export_cache")
                   if given(flag)]
    unused += [f"--{flag} is not used by {parser.prog} ({why})" for flag, why in (never_used or {}).items()
               if given(flag)]
    for line in unused:
        logger.warning("%s; ignored", line)


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
             to_options: Callable[[argparse.Namespace], Options] = options_from_args,
             argv: Sequence[str] | None = None, never_used: dict[str, str] | None = None) -> None:
    """Parse, check and run `main` under the one rule (module docstring); `argv` defaults to sys.argv,
    `never_used` is warn_unused's."""
    args = parser.parse_args(argv)

    def work() -> None:
        warn_unused(parser, args, never_used)
        main(to_options(args))

    guarded(parser.prog, work, quiet=args.quiet, debug=args.debug)


def guarded(prog: str, work: Callable[[], object], quiet: bool = False, debug: bool = False) -> None:
    """Run `work` with the run's logging on stderr (the project's progress lines unless `quiet`; every
    library's debug lines with `debug`) and the one rule for errors (module docstring); exits on any error."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s",
                        force=True)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    try:
        work()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"{prog}: interrupted while {activity_of(err)}; no results were written", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        print(f"{prog}: internal error while {activity_of(err)}, a bug: please report it with this traceback",
              file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
