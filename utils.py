"""Shared stages of run_llm.py and run_vlm.py: load, export, lower, compile and report.

The generation loops live in generate.py and the timing in benchmark.py; this file holds what
both scripts do before and after them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import torch
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from presets import MODEL_CONFIGS, TINY_PRESETS, ByteTokenizer, builtin_config, is_tiny_preset
from fuse_projections import fuse_projections
from generate import CachedModel
from register_sdpa import register_sdpa
from shared_weight_products import fold_batch_into_rows
from static_cache_v1 import insert_static_cache_v1
from static_cache_v2 import insert_static_cache_v2
from static_cache_v3 import InPlaceCacheStep, insert_static_cache_v3, takes_cache_position

logger = logging.getLogger("llm_tools")

DTYPES = {"FP16": torch.float16, "BF16": torch.bfloat16, "FP32": torch.float32}
CACHE_PASSES = {"static_v1": insert_static_cache_v1, "static_v2": insert_static_cache_v2,
                "static_v3": insert_static_cache_v3}
COMPILER_LABELS = {"tensorrt": "TensorRT", "inductor": "Inductor", "eager": "Eager"}
BASELINES = {"hf_dynamic": "HF generate, dynamic cache",
             "hf_static": "HF generate, static cache compiled by HF",
             "hf_compiled_step": "HF forward + StaticCache, decode step torch.compiled",
             "no_cache": "HF forward on the whole sequence per token, no cache"}


RTX_CAPABILITIES = {(8, 0), (8, 6), (8, 9)}  # and 12.0 onwards


class UsageError(Exception):
    """Bad input: reported as one line with exit status 2, before any slow work where possible."""


# ----------------------------------------------------------------------------------------- CLI


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (what is wrong, where to look) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    gen.add_argument("--cache", default="", choices=["", *CACHE_PASSES],
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


def validate_common_arguments(args: argparse.Namespace) -> None:
    """Reject bad combinations before any model is loaded."""
    for flag in ("num_tokens", "batch_size", "iterations", "isl", "min_block_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asks for a GPU, but no CUDA GPU is visible; use --device cpu")
    if args.compiler == "tensorrt":
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise UsageError("--compiler tensorrt needs torch_tensorrt, which is not installed "
                             "(pip install torch-tensorrt); or use --compiler inductor or --compiler eager")
        if not args.device.startswith("cuda"):
            raise UsageError("--compiler tensorrt needs an NVIDIA GPU, and none is visible here; "
                             "use --compiler inductor or --compiler eager")
        check_tensorrt_runs_here(args.device)
    if args.cudagraph and not args.device.startswith("cuda"):
        raise UsageError("--cudagraph needs a CUDA device; drop it or use --device cuda")
    if args.cudagraph and args.compiler == "eager" and args.cache != "static_v3":
        logger.warning("--cudagraph with --compiler eager captures static_v3 steps only; this run is not captured")
    if args.baselines is None:
        gpu_benchmark = args.benchmark and args.device.startswith("cuda")
        args.baselines = ["hf_dynamic", "hf_static", "hf_compiled_step"] if gpu_benchmark else ["hf_dynamic"]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def check_tensorrt_runs_here(device: str) -> None:
    """TensorRT-RTX engines run on compute capability 8.0, 8.6, 8.9 and 12.0 or newer only (not on 9.0)."""
    if not _installed("torch-tensorrt-rtx") or _installed("torch-tensorrt"):
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) not in RTX_CAPABILITIES and major < 12:
        raise UsageError(f"--compiler tensorrt: the installed torch-tensorrt-rtx (TensorRT-RTX) cannot run engines on "
                         f"this GPU (compute capability {major}.{minor}); install torch-tensorrt instead, "
                         "or use --compiler inductor or --compiler eager")


def run_main(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse, run, and turn a UsageError into one line on stderr with exit status 2."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        main(args)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------- load


def load_config(args: argparse.Namespace):
    """The model's config, built in for presets and --random_weights, read from disk or the Hub otherwise."""
    from transformers import AutoConfig

    if is_tiny_preset(args.model):
        return builtin_config(args.model)
    if args.random_weights and args.model in MODEL_CONFIGS:
        return builtin_config(args.model)
    try:
        return AutoConfig.from_pretrained(args.model, trust_remote_code=True,
                                          local_files_only=args.random_weights)
    except (OSError, ValueError) as err:
        known = ", ".join(list(TINY_PRESETS) + list(MODEL_CONFIGS))
        hint = (f"--random_weights knows these ids: {known}" if args.random_weights
                else f"check the name and the network, or use a tiny-* preset or --random_weights with one of: {known}")
        raise UsageError(f"cannot load model '{args.model}' ({str(err).splitlines()[0]}); {hint}") from None


def load_tokenizer(args: argparse.Namespace, config):
    """The model's tokenizer, or the built-in byte tokenizer where that cannot be had offline."""
    name = args.tokenizer or args.model
    if not (is_tiny_preset(name) or (args.random_weights and args.tokenizer is None and name in MODEL_CONFIGS
                                     and not _hub_cached(name))):
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=True,
                                                 local_files_only=args.random_weights)
        except (OSError, ValueError) as err:
            if args.tokenizer is not None:
                raise UsageError(f"cannot load tokenizer '{name}' ({str(err).splitlines()[0]}); "
                                 "check the name, or leave out --tokenizer") from None
    logger.warning("using the built-in byte-level tokenizer: the tokenizer of %s is not available offline", name)
    return ByteTokenizer(config.bos_token_id, config.eos_token_id, getattr(config, "pad_token_id", None))


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)


def eos_token_ids(tokenizer, config) -> list[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def pad_token_id(tokenizer, config) -> int:
    for candidate in (getattr(config, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None)):
        if candidate is not None:
            return candidate
    eos = eos_token_ids(tokenizer, config)
    return eos[0] if eos else 0


def check_positions(config, total: int, what: str) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and total > limit:
        raise UsageError(f"{what} = {total} tokens is more than the model's {limit} positions; "
                         "lower --isl or --num_tokens (or shorten the prompt)")


def load_model(args: argparse.Namespace, config, auto_class=None):
    """The Hugging Face model in eval mode, with sdpa attention, on args.device in args.precision.

    `auto_class` defaults to AutoModelForCausalLM; run_vlm.py passes its vision-language class.
    """
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    dtype = DTYPES[args.precision]
    config._attn_implementation = "sdpa"
    if is_tiny_preset(args.model) or args.random_weights:
        torch.manual_seed(0)
        with torch.device(args.device):
            model = auto_class.from_config(config, dtype=dtype)
    else:
        model = auto_class.from_pretrained(args.model, config=config, dtype=dtype,
                                           trust_remote_code=True).to(args.device)
    return model.eval()


# -------------------------------------------------------------------------------- export, lower


@contextmanager
def _no_packed_sequences():
    """Generation feeds one contiguous sequence per row, so no packed-sequence mask term is exported.

    Without this, transformers derives a packed-sequence mask from the position_ids input, which
    makes every attention mask depend on input values (and keeps it out of the canonical node).
    """
    from transformers import masking_utils

    with mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None):
        yield


# Shape and dtype checks that export leaves in the graph: the generation loops call it with
# consistent inputs, and TorchDynamo would break the graph at each of them.
_RUNTIME_CHECKS = (torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default)


def plain_graph_module(program: torch.export.ExportedProgram) -> GraphModule:
    """The program as a plain GraphModule: positional inputs, a flat tuple of outputs, no input guards or checks.

    Passes add inputs and outputs to it, which the exported program's pytree signature and its
    shape-guard submodule would refuse.
    """
    unlifted = program.module()
    for node in list(unlifted.graph.nodes):
        if (node.op == "call_module" and node.target == "_guards_fn") or node.target in _RUNTIME_CHECKS:
            unlifted.graph.erase_node(node)
    unlifted.graph.eliminate_dead_code()
    gm = GraphModule(unlifted, unlifted.graph)
    gm.graph._codegen = CodeGen()
    output = gm.graph.find_nodes(op="output")[0]
    flat = output.args[0]
    output.args = (tuple(flat) if isinstance(flat, (list, tuple)) else (flat,),)
    gm.recompile()
    return gm


def export_llm(model: torch.nn.Module, batch_size: int, max_seq_len: int, embeds: bool = False,
               position_rows: int = 0) -> GraphModule:
    """torch.export of model(input_ids|inputs_embeds, position_ids) -> (logits [B, 1, V],) of the last position.

    The graph is dynamic in the sequence length; the batch size is static (one export per batch size).
    `position_rows` > 0 gives position_ids [rows, B, L] (Qwen2.5-VL's multimodal RoPE takes 3).
    Attention stays one sdpa node: it is popped from the decomposition table.
    """
    device = next(model.parameters()).device
    example_len = min(4, max_seq_len)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    position_ids = torch.arange(example_len, device=device).expand(batch_size, -1)
    if position_rows:
        position_ids = position_ids.expand(position_rows, -1, -1)
    if embeds:
        hidden = model.get_input_embeddings().embedding_dim
        first = torch.zeros(batch_size, example_len, hidden, dtype=model.dtype, device=device)
        kwargs = {"inputs_embeds": first, "position_ids": position_ids}
    else:
        kwargs = {"input_ids": torch.zeros(batch_size, example_len, dtype=torch.long, device=device),
                  "position_ids": position_ids}
    model.config.use_cache = False
    dynamic_shapes = {k: {position_ids.dim() - 1 if k == "position_ids" else 1: seq} for k in kwargs}
    kwargs["logits_to_keep"] = 1  # every loop reads the last position's logits only: skip the rest of lm_head
    dynamic_shapes["logits_to_keep"] = None
    with torch.no_grad(), _no_packed_sequences():
        # Deferred asserts: some kernels' meta functions emit guards (such as min(64*seq, 256*seq) == 64*seq)
        # that hold for every length but that the solver cannot prove.
        program = torch.export.export(model, (), kwargs, dynamic_shapes=dynamic_shapes, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        decompositions = torch.export.default_decompositions()
        decompositions.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
        program = program.run_decompositions(decompositions)
    gm = plain_graph_module(program)
    for node in gm.graph.find_nodes(op="placeholder"):
        if node.name == "logits_to_keep" and not node.users:  # specialised to 1; not an input of the graph
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def lower(gm: GraphModule, cache: str, max_seq_len: int) -> GraphModule:
    """The passes every compiler sees: canonical attention, fused projections, one lm_head product over the
    batch, then the chosen static cache."""
    gm = fold_batch_into_rows(fuse_projections(register_sdpa(gm)))
    if cache:
        gm = CACHE_PASSES[cache](gm, max_seq_len)
    return gm


# -------------------------------------------------------------------------------------- compile


def compile_lowered(gm: GraphModule, args: argparse.Namespace, max_seq_len: int) -> Callable:
    """Compile the lowered graph with the chosen compiler; all three take the same graph.

    A static_v3 graph comes back as an InPlaceCacheStep, which updates the caches in place (see
    generate.CachedModel).
    """
    if args.compiler == "inductor":
        from compile_inductor import compile_with_inductor

        return compile_with_inductor(gm, args)
    in_place = takes_cache_position(gm)
    if args.compiler == "eager":
        return InPlaceCacheStep(gm) if in_place else gm
    from compile_tensorrt import compile_with_tensorrt

    compiled = compile_with_tensorrt(gm, args, max_seq_len)
    return InPlaceCacheStep(compiled) if in_place else compiled


def cached_model(compiled: Callable, lowered: GraphModule, args: argparse.Namespace, max_seq_len: int) -> CachedModel:
    """The compiled static-cache step with its caches, made once and used for every generation of a run.

    Eager and inductor steps are captured as CUDA graphs here with --cudagraph; a TensorRT engine has
    its own CUDA-graph mode (compile_tensorrt.py) and fixed-shape cache inputs.
    """
    tensorrt = args.compiler == "tensorrt"
    return CachedModel(compiled, lowered, args.batch_size, max_seq_len, DTYPES[args.precision], args.device,
                       cuda_graphs=args.cudagraph and not tensorrt, fixed_cache_shape=tensorrt)


# --------------------------------------------------------------------------------------- report


def print_generation(label: str, text: str) -> None:
    print(f"========= {label} =========")
    print(f"{label} model generated text: {text}")
    print("===================================")


def print_match(label: str, reference: torch.Tensor, tokens: torch.Tensor) -> bool:
    match = reference.shape == tokens.shape and bool(torch.equal(reference.cpu(), tokens.cpu()))
    print(f"PyTorch and {label} outputs match: {match}")
    return match


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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunSetup":
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        return cls(args.model, args.precision, args.batch_size, args.isl, args.num_tokens,
                   args.compiler, args.cache or "none", device)
