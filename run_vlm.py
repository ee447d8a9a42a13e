"""Compile the language model of a Hugging Face VLM and compare it with PyTorch, or benchmark it.

    python run_vlm.py --model Qwen/Qwen2.5-VL-3B-Instruct --precision FP16 --num_tokens 64 --cache static_v1 \\
        --enable_pytorch_run
    python run_vlm.py --model tiny-qwen2.5-vl --compiler eager --cache static_v2 --precision FP32 \\
        --num_tokens 16 --enable_pytorch_run        # CPU only, no download

The image goes through the model's vision tower (compiled for Eagle2, in PyTorch for Qwen2.5-VL);
its embeddings replace the image tokens' rows of the prompt embeddings, and the language model goes
through the same stages as in run_llm.py (export, register_sdpa, the --cache pass, --compiler).
With no --image_path a sample image is made here.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from cli import add_common_arguments, new_parser, options_from_args, run_main
from errors import UsageError, doing, stage
from export import export_llm
from generation.loops import StopRule, generate_no_cache, generate_static_cache
from generation.teacher_forced import forced_footnote, teacher_forced
from load.models import check_positions, load_config
from load.tokenizer import eos_token_ids, load_tokenizer, pad_token_id
from options import Options
from quantize.checkpoint import checkpoint_quantization
from report.table import compiled_row_name, report_benchmark, report_generation
from report.timing import (
    copy_bandwidth_tb_s,
    decode_bytes_per_step,
    device_sync,
    run_benchmark,
    summarize,
    token_agreement,
)
from utils import cached_model, compile_lowered, lower
from vlm.families import FAMILIES
from vlm.images import load_image


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("run_vlm.py", __doc__.split("\n\n")[0])
    add_common_arguments(parser, default_model="nvidia/Eagle2-2B", default_prompt="Describe this image.")
    parser.add_argument("--image_path", default=None, help="input image; a sample image is made when left out")
    return parser


def vlm_options(args: argparse.Namespace) -> Options:
    """run_vlm.py's checks on top of the common ones: each model's own PyTorch run, FP16 or FP32."""
    if args.baselines not in (None, ["hf_dynamic"]):
        raise UsageError("run_vlm.py compares with each model's own PyTorch run only; leave out --baselines")
    if args.precision not in ("FP16", "FP32"):
        raise UsageError(f"run_vlm.py runs its models in FP16 or FP32, not {args.precision}; use --precision FP16")
    return options_from_args(args, default_baselines=("hf_dynamic",))


def text_ids(options: Options, tokenizer, vocab_size: int) -> list[int]:
    """The text after the image: --prompt, or --isl random tokens in benchmark mode."""
    if options.run.benchmark:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, min(vocab_size, 256), (options.run.isl,), generator=generator).tolist()
    return list(tokenizer.encode(options.run.prompt))


def main(options: Options) -> None:
    model_options, compile_options, run = options.model, options.compile, options.run
    with doing("loading the model's config"):
        config = load_config(model_options)
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None:
        raise UsageError(f"run_vlm.py supports Qwen2.5-VL and Eagle2, not {model_options.name} "
                         f"({getattr(config, 'model_type', '?')}); use run_llm.py for text-only models")
    if not model_options.random_weights and checkpoint_quantization(config):
        raise UsageError("run_vlm.py does not load pre-quantized checkpoints yet; run the unquantized model with "
                         "--quant_format, or a pre-quantized LLM with run_llm.py")
    image = load_image(options.image_path)
    text_config = config.get_text_config()
    if run.benchmark:  # before --isl random tokens are drawn
        check_positions(text_config, run.isl + run.num_tokens, "--isl + --num_tokens")
    with stage("loading the tokenizer and the model"):
        tokenizer = load_tokenizer(model_options, text_config)
        vlm = family.load(model_options, config)
    with doing("preprocessing the image"):
        inputs = vlm.inputs(image, text_ids(options, tokenizer, text_config.vocab_size), run.batch_size,
                            model_options.device)
    prompt_len = inputs.input_ids.shape[1]
    max_seq_len = prompt_len + run.num_tokens
    check_positions(text_config, max_seq_len, "image and text tokens + --num_tokens")
    eos, pad = eos_token_ids(tokenizer, text_config), pad_token_id(tokenizer, text_config)
    label = compile_options.label

    language_model = vlm.language_model()
    if options.quant.format:
        from quantize.modelopt_quantize import quantize_model

        with stage("quantizing the language model with ModelOpt"):
            language_model = quantize_model(language_model, options.quant, max_seq_len, tokenizer,
                                            lambda lm, ids: lm.text_model(input_ids=ids, use_cache=False))

    start = time.perf_counter()
    with stage(f"exporting and compiling the model ({label})"):
        vlm.compile_vision(compile_options, model_options, run.batch_size)
        lowered = lower(export_llm(language_model, run.batch_size, max_seq_len, embeds=True,
                                   position_rows=vlm.position_rows, cache_dir=compile_options.export_cache_dir),
                            compile_options.cache, max_seq_len)
        compiled = compile_lowered(lowered, compile_options, model_options, max_seq_len)
        cached = (cached_model(compiled, lowered, compile_options, model_options, run.batch_size, max_seq_len)
                  if compile_options.cache else None)
    build_seconds = time.perf_counter() - start

    def stop_rule() -> StopRule:
        return StopRule(eos, pad, stop_on_eos=not run.benchmark)

    vision_ms: list[float] = []
    sync = device_sync(model_options.device)

    def run_compiled(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            began = time.perf_counter()
            image_embeds = vlm.image_embeddings(inputs)
            sync()
            vision_ms.append((time.perf_counter() - began) * 1e3)
            prompt = vlm.prompt(inputs, image_embeds)
            if not compile_options.cache:
                return generate_no_cache(compiled, prompt, run.num_tokens, stop_rule(), on_first_token)
            return generate_static_cache(cached, prompt, run.num_tokens, stop_rule(), on_first_token)

    def run_pytorch(on_first_token=None) -> torch.Tensor:
        return vlm.reference(inputs, run.num_tokens, stop_rule(), on_first_token)

    def compare_forced(reference: torch.Tensor):
        """The compiled language model and the PyTorch model, fed the reference's tokens after the same
        image and prompt (generation/teacher_forced.py)."""
        with stage("comparing the compiled model with PyTorch, teacher-forced"), torch.no_grad():
            prompt = vlm.prompt(inputs, vlm.image_embeddings(inputs))
            step, stepwise = (cached, True) if compile_options.cache else (compiled, False)
            return teacher_forced(step, prompt, reference, vlm.reference_logits(inputs, reference), stepwise,
                                  [] if run.benchmark else eos)

    if not run.benchmark:
        with stage("generating"):
            reference = run_pytorch() if run.enable_pytorch_run else None
            tokens = run_compiled()
        forced = compare_forced(reference) if reference is not None else None
        report_generation(options, label, partial(tokenizer.decode, skip_special_tokens=True), prompt_len,
                          tokens, reference, shown_from=prompt_len, forced=forced)
        return

    decode_bytes = decode_bytes_per_step(language_model, run.batch_size, prompt_len, run.num_tokens)
    measure = partial(run_benchmark, device=model_options.device, iterations=run.iterations,
                      batch_size=run.batch_size, new_tokens=run.num_tokens, decode_bytes=decode_bytes)
    measured = {}
    reference_row = f"PyTorch ({vlm.reference_label})"
    if run.enable_pytorch_run:
        with stage("benchmarking the PyTorch reference"):
            measured[reference_row] = measure(run_pytorch)
    row = compiled_row_name(options, label)
    with stage(f"benchmarking {row}"):
        measured[row] = measure(run_compiled, build_s=build_seconds)
    measured[row].figures["vision_encoder_ms"] = summarize(vision_ms[-run.iterations:])
    vision = label if vlm.compiles_vision else "PyTorch"
    footnotes = [f"vision ms: the vision encoder ({vision}) alone; TTFT includes it"]
    if run.enable_pytorch_run:
        reference = measured[reference_row].tokens
        forced = compare_forced(reference)
        measured[row].figures.update(token_agreement=token_agreement(reference, measured[row].tokens, prompt_len),
                                     **forced.figures())
        footnotes += ["tokens = ref: share of new tokens equal to the PyTorch row's",
                      forced_footnote("the PyTorch row's")]
    notes = {"copy_bandwidth_tb_s": copy_bandwidth_tb_s(model_options.device), "prompt_tokens": prompt_len}
    report_benchmark(options, {name: m.figures for name, m in measured.items()}, notes, footnotes, build_seconds)


if __name__ == "__main__":
    run_main(main, build_parser(), vlm_options)
