"""What the user reads: the generated texts, the match line, the benchmark table and its JSON.

Both run_llm.py and run_vlm.py end with `report_benchmark` in benchmark mode, and with
`print_generation` and `print_match` otherwise (the spec's output blocks).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch

from compilers.inductor_cache import inductor_cache_state
from errors import UsageError
from export_cache import export_cache_state
from options import Options


@dataclass
class RunSetup:
    """What a benchmark ran: printed beside its figures and written to the JSON."""

    model: str
    precision: str
    batch_size: int
    isl: int
    osl: int
    compiler: str
    cache: str
    device: str
    attention: str  # what the attention runs as: sdpa, plugin, or the TensorRT layers it converts to
    cache_write: str  # how a TensorRT static_v3 engine writes its caches: kv_cache_update or scatter; else "-"
    cuda_graphs: bool  # whether the compiled model ran through CUDA graphs (cli.cuda_graphs_of: on or by default)
    quantization: str  # "none", or the format and calibration (options.QuantOptions.describe)

    @classmethod
    def of(cls, options: Options) -> "RunSetup":
        model, run = options.model, options.run
        device = torch.cuda.get_device_name() if model.on_gpu else "cpu"
        return cls(model.name, model.precision, run.batch_size, run.isl, run.num_tokens,
                   options.compile.compiler, options.compile.cache or "none", device, attention_of(options),
                   cache_write_of(options), options.compile.cudagraph,
                   options.quant.describe() if options.quant.format else "none")


def attention_of(options: Options) -> str:
    if options.backend == "plugin":
        return "plugin"
    if options.compile.compiler == "tensorrt":
        import sdpa_converter

        return sdpa_converter.LAYERS  # attention_layer (TensorRT's own) or matmul_softmax
    return "sdpa"


def cache_write_of(options: Options) -> str:
    if options.compile.compiler == "tensorrt" and options.compile.cache == "static_v3" and options.backend != "plugin":
        from compilers import kv_cache_update

        return kv_cache_update.CACHE_WRITE  # kv_cache_update (in place) or scatter
    return "-"


def compiled_row_name(options: Options, label: str) -> str:
    """The benchmark table's row of the compiled model: compiler, cache (not for the plugin backend, which has
    its own), quantization, CUDA graphs."""
    parts = [label]
    if options.backend != "plugin":
        parts.append(options.compile.cache or "no cache")
        parts += [options.quant.short] if options.quant.format else []
    parts += ["CUDA graphs"] if options.compile.cudagraph else []
    return ", ".join(parts)


def print_generation(label: str, text: str) -> None:
    print(f"========= {label} =========")
    print(f"{label} model generated text: {text}")
    print("===================================")


def print_match(label: str, reference: torch.Tensor, tokens: torch.Tensor, prompt_len: int) -> bool:
    """The spec's match line: the same tokens, and at least one generated (an empty run matches nothing)."""
    match = (reference.shape == tokens.shape and tokens.shape[1] > prompt_len
             and bool(torch.equal(reference.cpu(), tokens.cpu())))
    print(f"PyTorch and {label} outputs match: {match}")
    return match


def report_generation(options: Options, label: str, decode, prompt_len: int, tokens: torch.Tensor,
                      reference: torch.Tensor | None, shown_from: int = 0, forced=None) -> None:
    """The spec's output blocks (PyTorch first, when it ran), the match line, the teacher-forced
    comparison (`forced`, a generation.teacher_forced.ForcedComparison), and the JSON when asked for.

    `decode` turns ids into text; each block shows row 0 from position `shown_from` on.
    """
    texts, new_tokens = {}, {}
    for name, ids in (("PyTorch", reference), (label, tokens)):
        if ids is not None:
            texts[name], new_tokens[name] = decode(ids[0, shown_from:].tolist()), ids[:, prompt_len:].tolist()
            print_generation(name, texts[name])
    if forced is not None:
        print(forced.line(label))
    match = print_match(label, reference, tokens, prompt_len) if reference is not None else None  # the last line
    if options.run.output_json:
        write_json(options.run.output_json, RunSetup.of(options),
                   {"texts": texts, "new_tokens": new_tokens, "match": match,
                    "teacher_forced": forced.as_dict() if forced is not None else None},
                   {"inductor_cache": inductor_cache_state(), "export_cache": export_cache_state()})


COLUMNS = [("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"), ("tpot_ms", "TPOT ms"),
           ("e2e_latency_ms", "E2E ms"), ("e2e_tokens_per_s", "E2E tok/s"), ("decode_bandwidth_tb_s", "decode TB/s"),
           ("peak_memory_gb", "peak GB"), ("compile_s", "compile s"), ("token_agreement", "tokens = ref"),
           ("forced_top1", "top-1 forced"), ("forced_max_logit_diff", "max logit diff"),
           ("forced_relative_logit_error", "rel logit err"),
           ("vision_encoder_ms", "vision ms")]


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        value = value["median"]
    return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.2f}"  # small figures keep their digits


def present_columns(rows) -> list[tuple[str, str]]:
    """The COLUMNS that at least one row measures; a figure that needs a GPU is None on a CPU, shown `-`."""
    rows = list(rows)
    return [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]


def format_table(setup: RunSetup, results: dict[str, dict], notes: dict | None = None) -> str:
    """A Markdown table (medians over the iterations), under a line that says what ran.

    A column that no row measures is left out; a figure that needs a GPU shows `-` on a CPU.
    """
    header = ", ".join(f"{k}={v}" for k, v in asdict(setup).items())
    if notes:
        header += "; " + ", ".join(f"{k}={cell(v)}" if v is None or isinstance(v, float) else f"{k}={v}"
                                   for k, v in notes.items())
    columns = present_columns(results.values())
    lines = [header,
             "| backend | " + " | ".join(title for _, title in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for backend, figures in results.items():
        lines.append(f"| {backend} | " + " | ".join(cell(figures.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def report_benchmark(options: Options, results: dict[str, dict], notes: dict, footnotes: list[str],
                     build_seconds: float) -> None:
    """Print the table (and what its columns mean), and write the JSON when --output_json asks for it."""
    setup = RunSetup.of(options)
    # warm: every inductor graph (every exported graph) came from its disk cache
    notes = {**notes, "inductor_cache": inductor_cache_state(), "export_cache": export_cache_state()}
    if not options.model.on_gpu:
        notes["timings"] = "CPU, indicative only"
    print(format_table(setup, results, notes))
    print("TTFT, TPOT and E2E are medians over the iterations; decode tok/s = batch size / TPOT")
    for line in footnotes:
        print(line)
    if options.run.output_json:
        write_json(options.run.output_json, setup, results, {**notes, "build_seconds": build_seconds})


def write_json(path: str, setup: RunSetup, results: dict, extra: dict | None = None) -> None:
    """The results, with the setup and the command line that produced them, written atomically: to a
    temporary file beside `path`, then renamed over it, so a failed write leaves an older file as it was."""
    payload = {"setup": asdict(setup), "command": shlex.join(["python", *sys.argv]), "results": results,
               **(extra or {})}
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(prefix=".", suffix=".json.partial", dir=folder)
    except OSError as err:
        raise UsageError(f"cannot write --output_json {path} ({err.strerror}); nothing was written") from None
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as err:
        os.unlink(temporary)
        raise UsageError(f"cannot write --output_json {path} ({err.strerror or err}); nothing was written, "
                         "and a file already there is kept") from None
    except BaseException:  # Ctrl-C, or a result json cannot encode: no partial file either
        os.unlink(temporary)
        raise
