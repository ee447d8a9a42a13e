"""Run a grid of run_llm.py benchmarks on a GPU and write the results as one Markdown table.

    python benchmarks/run_grid.py --out results/ \\
        --models Qwen/Qwen2.5-0.5B-Instruct meta-llama/Llama-3.2-1B-Instruct meta-llama/Llama-3.1-8B-Instruct \\
        --shapes 128/128 2048/128 --batch_sizes 1 8

    python benchmarks/run_grid.py --out results/ --models meta-llama/Llama-3.1-8B-Instruct --iterations 3 \\
        --quantizations none int8_weight_only fp8_weight_only --baselines hf_compiled_step torchao_int8_step

    python benchmarks/run_grid.py --out results/ --models Qwen/Qwen2.5-0.5B-Instruct --iterations 3 \\
        --baselines hf_compiled_step --cold_and_warm

Every configuration runs in its own process (a fresh GPU state, its own compile), with random
weights in FP16 unless told otherwise, and writes its JSON and its output (.log) next to the
table. Each row of results.md carries the command that produced it. With --resume, a grid that was
stopped, or that is run in parts, runs only the configurations whose JSON is missing or came from
another command. With --cold_and_warm each configuration runs twice over caches of its own in
--out (inductor's, the exported graphs', TensorRT's engines): first emptied (cold), then as the
first run left them (warm), so its compile times are a cold and a warm one whatever the machine
had cached before.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli import guarded, new_parser  # noqa: E402
from errors import UsageError  # noqa: E402
from options import BASELINES, CACHES, COMPILER_LABELS, DTYPES  # noqa: E402
from report.table import cell, present_columns  # noqa: E402


def shape(text: str) -> tuple[int, int]:
    """An ISL/OSL pair such as 128/128."""
    parts = text.split("/")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not ISL/OSL, two positive numbers such as 128/128")
    return int(parts[0]), int(parts[1])


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


QUANTIZATIONS = {  # --quantizations: the run_llm.py flags of each
    "none": [],
    "int8_weight_only": ["--quant_format", "int8", "--weight_only"],
    "fp8_weight_only": ["--quant_format", "fp8", "--weight_only"],
    "int8": ["--quant_format", "int8"],
    "int8_smoothquant": ["--quant_format", "int8", "--quant_algo", "smoothquant"],
    "fp8": ["--quant_format", "fp8"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser("run_grid.py", __doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the JSON files and results.md (made if missing)")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--shapes", nargs="+", type=shape, default=[(128, 128)], help="ISL/OSL pairs, e.g. 128/128")
    parser.add_argument("--batch_sizes", nargs="+", type=positive, default=[1])
    parser.add_argument("--iterations", type=positive, default=5)
    parser.add_argument("--precision", default="FP16", choices=list(DTYPES))
    parser.add_argument("--compiler", default="inductor", choices=list(COMPILER_LABELS))
    parser.add_argument("--cache", default="static_v3", choices=["", *CACHES])
    parser.add_argument("--cudagraph", action=argparse.BooleanOptionalAction, default=True,
                        help="pass --cudagraph to run_llm.py")
    parser.add_argument("--baselines", nargs="*", choices=list(BASELINES),
                        default=["hf_dynamic", "hf_static", "hf_compiled_step"],
                        help="PyTorch baselines measured in the same run (none: no baseline)")
    parser.add_argument("--quantizations", nargs="+", choices=list(QUANTIZATIONS), default=["none"],
                        help="each model also quantized so (ModelOpt; none: as it is), one configuration each")
    parser.add_argument("--timeout", type=positive, default=1800, help="seconds per configuration")
    parser.add_argument("--cold_and_warm", action="store_true",
                        help="run each configuration twice over caches of its own: emptied first (cold), then warm")
    parser.add_argument("--resume", action="store_true",
                        help="keep the configurations whose JSON in --out came from the same command; run the rest")
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)  # the caller's folder, though each run starts in the repository
    return args


def check_grid(args: argparse.Namespace) -> None:
    """What would fail every configuration: one line before any run."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file; give a folder (it is made if missing)")
    if args.cudagraph:
        import torch

        if not torch.cuda.is_available():
            raise UsageError("the grid passes --cudagraph, which needs a CUDA GPU, and none is visible; "
                             "add --no-cudagraph to run on this machine")


def command_for(args: argparse.Namespace, model: str, isl: int, osl: int, batch_size: int, json_path: str,
                quantization: str = "none", cache_dir: str | None = None) -> list[str]:
    command = ["python", "run_llm.py", "--model", model, "--random_weights", "--precision", args.precision,
               "--compiler", args.compiler, "--cache", args.cache, "--benchmark", "--isl", str(isl),
               "--num_tokens", str(osl), "--batch_size", str(batch_size), "--iterations", str(args.iterations),
               *QUANTIZATIONS[quantization]]
    if args.cudagraph:
        command.append("--cudagraph")
    if args.baselines:
        command += ["--enable_pytorch_run", "--baselines", *args.baselines]
    if cache_dir:
        command += ["--inductor_cache_dir", os.path.join(cache_dir, "inductor"),
                    "--export_cache_dir", os.path.join(cache_dir, "exports")]
        if args.compiler == "tensorrt":
            command += ["--engine_cache_dir", os.path.join(cache_dir, "engines")]
    return command + ["--output_json", json_path]


def read_results(json_path: str) -> dict | None:
    """The JSON a configuration wrote, or None where it is missing or unreadable."""
    try:
        with open(json_path) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and isinstance(results.get("results"), dict) else None


def measured_before(json_path: str, shown: str) -> dict | None:
    """The results json_path holds if they came from this very command (what --resume keeps), else None."""
    if not os.path.exists(json_path):
        return None
    results = read_results(json_path)
    if results is None:
        print(f"re-running: {json_path} is unreadable", flush=True)
        return None
    return results if results.get("command", "").split(" --output_json ")[0] == shown else None


def run_configuration(command: list[str], json_path: str, timeout: int) -> str | None:
    """Run one configuration, its output going to a .log next to its JSON as it runs; None, or why it failed."""
    log_path = json_path[:-len(".json")] + ".log"  # kept if the grid is stopped
    try:
        with open(log_path, "w") as log:
            done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    if done.returncode == 0:
        return None
    with open(log_path) as log:
        return "failed: " + (log.read().strip().splitlines() or ["no output"])[-1]


def table(rows: list[tuple[str, str, dict | str, str]]) -> str:
    """results.md: one line per backend of each configuration (or its failure), with the command that ran it."""
    columns = present_columns(figures for _, _, figures, _ in rows if isinstance(figures, dict))
    lines = ["| model | batch | ISL/OSL | backend | " + " | ".join(title for _, title in columns) + " | command |",
             "|---" * (len(columns) + 5) + "|"]
    for configuration, backend, figures, shown in rows:
        if isinstance(figures, dict):
            cells = " | ".join(cell(figures.get(key)) for key, _ in columns)
        else:  # why the configuration failed
            backend, cells = figures, " |" * (len(columns) - 1)
        lines.append(f"| {configuration} | {backend} | {cells} | `{shown}` |")
    return "\n".join(lines)


def runs_of(args: argparse.Namespace, configurations: list[tuple]) -> list[tuple]:
    """Each configuration once ("" for the caches the machine has), or cold then warm with --cold_and_warm."""
    compiles = ("cold", "warm") if args.cold_and_warm else ("",)
    return [(*configuration, compiled) for configuration in configurations for compiled in compiles]


def main(args: argparse.Namespace) -> None:
    check_grid(args)
    os.makedirs(args.out, exist_ok=True)
    rows, failures, total = [], [], 0
    configurations = [(model, isl, osl, batch_size, quantization) for model in args.models
                      for quantization in args.quantizations for isl, osl in args.shapes
                      for batch_size in args.batch_sizes]
    for model, isl, osl, batch_size, quantization, compiled in runs_of(args, configurations):
        total += 1
        name = f"{model.replace('/', '_')}_b{batch_size}_{isl}_{osl}" + ("" if quantization == "none" else
                                                                         f"_{quantization}")
        json_path = os.path.join(args.out, name + (f"_{compiled}" if compiled else "") + ".json")
        cache_dir = os.path.join(args.out, "caches", name) if compiled else None
        command = command_for(args, model, isl, osl, batch_size, json_path, quantization, cache_dir)
        shown = shlex.join(command[:-2])
        configuration = f"{model} | {batch_size} | {isl}/{osl}" + (f" ({compiled})" if compiled else "")
        results = measured_before(json_path, shown) if args.resume else None
        if compiled == "cold" and not os.path.isdir(cache_dir):  # the warm run needs what this one leaves
            results = None
        failure = None
        if results is not None:
            print(f"kept: {json_path}", flush=True)
        else:
            if compiled == "cold":
                shutil.rmtree(cache_dir, ignore_errors=True)
            print(f"running: {shown}", flush=True)
            failure = run_configuration(command, json_path, args.timeout)
            results = read_results(json_path) if failure is None else None
            if failure is None and results is None:
                failure = f"failed: {json_path} was not written or is unreadable"
        if failure is not None:
            print(failure, file=sys.stderr)
            failures.append(f"{configuration}: {failure}")
            rows.append((configuration, "", failure, shown))
            continue
        rows += [(configuration, backend, figures, shown) for backend, figures in results["results"].items()]
    text = table(rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    if failures:
        print(f"run_grid.py: {len(failures)} of {total} configurations failed; the first: {failures[0]} "
              f"(each one's output is in its .log in {args.out})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    arguments = parse_args()
    guarded("run_grid.py", lambda: main(arguments))
