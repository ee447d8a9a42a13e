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
from dataclasses import replace
from functools import partial
from typing import Callable

import torch

import plugin_utils
from cli import add_common_arguments, check_nvfp4_runs_here, new_parser, run_main
from errors import doing, logger, stage
from export import export_llm
from generation.baselines import HFCompiledStep, hf_forward_no_cache, hf_generate, torchao_int8_weight_only
from generation.loops import Prompt, StopRule, generate_no_cache, generate_static_cache
from generation.teacher_forced import forced_footnote, reference_logits, teacher_forced
from load.models import check_llm_family, check_positions, load_config, load_model
from load.tokenizer import eos_token_ids, load_tokenizer, pad_token_id
from options import BASELINES, Options
from plugin.compile import compile_plugin_model
from plugin.model import PluginCachedModel, PluginCausalLM, allocate_plugin_caches, generate_plugin
from quantize.checkpoint import check_requested, checkpoint_quantization, load_prequantized
from report.table import compiled_row_name, report_benchmark, report_generation
from report.timing import copy_bandwidth_tb_s, decode_bytes_per_step, run_benchmark, token_agreement
from utils import cached_model, compile_lowered, lower


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("run_llm.py", __doc__.split("\n\n")[0])
    add_common_arguments(parser, default_model="meta-llama/Llama-3.2-1B-Instruct",
                         default_prompt="What is parallel programming?")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", default="sdpa", choices=["sdpa", "plugin"],
                         help="sdpa: canonical attention with --cache passes; plugin: Edge-LLM AttentionPlugin")
    backend.add_argument("--plugin_path", default=None,
                         help=f"plugin library; defaults to ${plugin_utils.PLUGIN_PATH_ENV}, "
                              f"then {plugin_utils.DEFAULT_PLUGIN_PATH}")
    return parser


def input_ids_for(options: Options, tokenizer, config) -> torch.Tensor:
    """[B, T]: random tokens of length --isl in benchmark mode, else the prompt once per row; the length
    is checked against the model's positions before anything is allocated."""
    run = options.run
    prompt = None if run.benchmark else tokenizer.encode(run.prompt)
    length = run.isl if run.benchmark else len(prompt)
    check_positions(config, length + run.num_tokens, "input length + --num_tokens")
    if run.benchmark:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (run.batch_size, run.isl), generator=generator)
    else:
        ids = torch.tensor(prompt).unsqueeze(0).expand(run.batch_size, -1)
    return ids.to(options.model.device)


def build(model, options: Options, max_seq_len: int) -> tuple[Callable, object, list | None]:
    """Export, lower and compile (sdpa backend), or swap in the plugin and compile: (compiled, the
    static-cache model or None, the plugin's caches or None)."""
    compile_options, model_options, batch_size = options.compile, options.model, options.run.batch_size
    if options.backend == "plugin":
        caches = allocate_plugin_caches(model, batch_size, max_seq_len, model_options.dtype, model_options.device)
        return compile_plugin_model(PluginCausalLM(model), compile_options, caches, max_seq_len), None, caches
    lowered = lower(export_llm(model, batch_size, max_seq_len, cache_dir=compile_options.export_cache_dir),
                    compile_options.cache, max_seq_len)
    compiled = compile_lowered(lowered, compile_options, model_options, max_seq_len)
    cached = (cached_model(compiled, lowered, compile_options, model_options, batch_size, max_seq_len)
              if compile_options.cache else None)
    return compiled, cached, None


def with_saved_quantization(options: Options, config) -> tuple[Options, bool]:
    """(the options, whether the checkpoint is pre-quantized): a pre-quantized checkpoint's own quantization
    replaces the flags', checked against them and against this GPU before any weight loads."""
    saved = None if options.model.random_weights else checkpoint_quantization(config)
    if not saved:
        return options, False
    check_requested(options.quant, saved)
    if saved.format == "nvfp4":
        check_nvfp4_runs_here(options.model.device)
    return replace(options, quant=saved), True


def load_models(options: Options, config, prequantized: bool, max_seq_len: int,
                tokenizer) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the PyTorch reference, the model to export and compile): with --quant_format the second is ModelOpt's
    quantized copy of the first; a pre-quantized checkpoint is both."""
    with stage("loading the model"):
        model = load_prequantized(options.model, config) if prequantized else load_model(options.model, config)
    if not options.quant.format or prequantized:
        return model, model
    from quantize.modelopt_quantize import quantize_model

    with stage("quantizing the model with ModelOpt"):
        quantized = quantize_model(model, options.quant, max_seq_len, tokenizer)
    # nothing is compared with the unquantized model without a PyTorch run: its memory is freed
    return (model if options.run.enable_pytorch_run else quantized), quantized


def main(options: Options) -> None:
    model_options, compile_options, run = options.model, options.compile, options.run
    plugin = options.backend == "plugin"
    with doing("loading the model's config"):
        config = load_config(model_options)
        check_llm_family(config)
        options, prequantized = with_saved_quantization(options, config)
    if run.benchmark:  # before the tokenizer loads and --isl random tokens are drawn
        check_positions(config, run.isl + run.num_tokens, "--isl + --num_tokens")
    if plugin:
        plugin_utils.check_plugin_backend(model_options, compile_options.compiler, options.plugin_path, config)
        if compile_options.cache:
            logger.warning("--cache %s is ignored with --backend plugin: the plugin has its own KV cache",
                           compile_options.cache)
    with doing("loading the tokenizer"):
        tokenizer = load_tokenizer(model_options, config)
        input_ids = input_ids_for(options, tokenizer, config)
    max_seq_len = input_ids.shape[1] + run.num_tokens
    model, compiled_model = load_models(options, config, prequantized, max_seq_len, tokenizer)
    eos, pad = eos_token_ids(tokenizer, config), pad_token_id(tokenizer, config)
    label = compile_options.label + ("-Plugin" if plugin else "")

    start = time.perf_counter()
    with stage(f"exporting and compiling the model ({label})"):
        compiled, cached, plugin_caches = build(compiled_model, options, max_seq_len)
    build_seconds = time.perf_counter() - start

    def stop_rule() -> StopRule:
        return StopRule(eos, pad, stop_on_eos=not run.benchmark)

    def run_compiled(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            if plugin:
                for cache in plugin_caches:
                    cache.zero_()
                return generate_plugin(compiled, model, input_ids, run.num_tokens, stop_rule(), plugin_caches,
                                       on_first_token)
            if not compile_options.cache:
                return generate_no_cache(compiled, Prompt.text(input_ids), run.num_tokens, stop_rule(), on_first_token)
            return generate_static_cache(cached, Prompt.text(input_ids), run.num_tokens, stop_rule(), on_first_token)

    def compare_forced(reference: torch.Tensor):
        """The compiled model and the PyTorch model, fed the reference's tokens (generation/teacher_forced.py)."""
        with stage("comparing the compiled model with PyTorch, teacher-forced"):
            if plugin:
                for cache in plugin_caches:
                    cache.zero_()
                step, stepwise = PluginCachedModel(compiled, model, plugin_caches), True
            elif compile_options.cache:
                step, stepwise = cached, True
            else:
                step, stepwise = compiled, False
            prompt_len = input_ids.shape[1]
            expected = reference_logits(model, reference, prompt_len)
            return teacher_forced(step, Prompt.text(reference[:, :prompt_len]), reference, expected, stepwise,
                                  [] if run.benchmark else eos)

    def pytorch_run(baseline: str) -> tuple[Callable, torch.nn.Module]:
        """The baseline's generation, and the model it runs (torchao's int8 copy for torchao_int8_step)."""
        step_model = torchao_int8_weight_only(model) if baseline == "torchao_int8_step" else model
        compiled_step = HFCompiledStep(step_model, max_seq_len) \
            if baseline in ("hf_compiled_step", "torchao_int8_step") else None

        def run_baseline(on_first_token=None) -> torch.Tensor:
            if baseline in ("hf_dynamic", "hf_static"):
                return hf_generate(model, input_ids, run.num_tokens, stop_rule(), on_first_token,
                                   static_cache=baseline == "hf_static")
            with torch.no_grad():
                if compiled_step is not None:
                    return generate_static_cache(compiled_step, Prompt.text(input_ids), run.num_tokens, stop_rule(),
                                                 on_first_token)
                return generate_no_cache(hf_forward_no_cache(model), Prompt.text(input_ids), run.num_tokens,
                                         stop_rule(), on_first_token)
        return run_baseline, step_model

    if not run.benchmark:
        with stage("generating"):
            reference = pytorch_run(run.baselines[0])[0]() if run.enable_pytorch_run else None
            tokens = run_compiled()
        forced = compare_forced(reference) if reference is not None else None
        report_generation(options, label, partial(tokenizer.decode, skip_special_tokens=True),
                          input_ids.shape[1], tokens, reference, forced=forced)
        return

    decode_bytes = decode_bytes_per_step(model, run.batch_size, run.isl, run.num_tokens)
    measure = partial(run_benchmark, device=model_options.device, iterations=run.iterations,
                      batch_size=run.batch_size, new_tokens=run.num_tokens, decode_bytes=decode_bytes)
    measured = {}
    if run.enable_pytorch_run:
        for baseline in run.baselines:
            with stage(f"benchmarking the {baseline} baseline"):
                generate, step_model = pytorch_run(baseline)
                measured[f"PyTorch ({BASELINES[baseline]})"] = measure(generate, decode_bytes=decode_bytes_per_step(
                    step_model, run.batch_size, run.isl, run.num_tokens))
                del generate, step_model  # a quantized baseline's copy of the model is freed before the next row
    compiled_row = compiled_row_name(options, label)
    with stage(f"benchmarking {compiled_row}"):
        measured[compiled_row] = measure(run_compiled, build_s=build_seconds, decode_bytes=decode_bytes_per_step(
            compiled_model, run.batch_size, run.isl, run.num_tokens))  # quantized weights read fewer bytes
    footnotes = []
    if run.enable_pytorch_run:
        reference = next(iter(measured.values())).tokens
        for other in list(measured.values())[1:]:
            other.figures["token_agreement"] = token_agreement(reference, other.tokens, run.isl)
        forced = compare_forced(reference)
        measured[compiled_row].figures.update(forced.figures())
        footnotes.append(f"tokens = ref: share of new tokens equal to the first row's ({run.baselines[0]})")
        footnotes.append(forced_footnote("the first row's"))
    notes = {"copy_bandwidth_tb_s": copy_bandwidth_tb_s(model_options.device),
             "decode_bytes_per_step_gb": decode_bytes / 1e9}
    report_benchmark(options, {name: row.figures for name, row in measured.items()}, notes, footnotes, build_seconds)


if __name__ == "__main__":
    run_main(main, build_parser())
