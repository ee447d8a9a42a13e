"""Compile the language model of a Hugging Face VLM and compare it with PyTorch, or benchmark it.

    python run_vlm.py --model Qwen/Qwen2.5-VL-3B-Instruct --precision FP16 --num_tokens 64 --cache static_v1 \\
        --enable_pytorch_run
    python run_vlm.py --model tiny-qwen2.5-vl --compiler eager --cache static_v2 --precision FP32 \\
        --num_tokens 16 --enable_pytorch_run        # CPU only, no download

The image goes through the model's vision tower in PyTorch; its embeddings replace the image
tokens' rows of the prompt embeddings, and the language model goes through the same stages as in
run_llm.py (export, register_sdpa, the --cache pass, --compiler). With no --image_path a sample
image is made here.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from benchmark import (copy_bandwidth_tb_s, decode_bytes_per_step, device_sync, format_table, run_benchmark, summarize,
                       token_agreement, write_json)
from generate import StopRule, generate_no_cache, generate_static_cache
from utils import (COMPILER_LABELS, OneLineParser, RunSetup, UsageError, add_common_arguments, cached_model,
                   check_positions, compile_lowered, eos_token_ids, export_llm, load_config, load_tokenizer, lower,
                   pad_token_id, print_generation, print_match, run_main, validate_common_arguments)
from vlm import FAMILIES, load_image


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run_vlm.py", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, default_model="nvidia/Eagle2-2B", default_prompt="Describe this image.")
    parser.add_argument("--image_path", default=None, help="input image; a sample image is made when left out")
    return parser


def text_ids(args: argparse.Namespace, tokenizer, vocab_size: int) -> list[int]:
    """The text after the image: --prompt, or --isl random tokens in benchmark mode."""
    if args.benchmark:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, min(vocab_size, 256), (args.isl,), generator=generator).tolist()
    return list(tokenizer.encode(args.prompt))


def main(args: argparse.Namespace) -> None:
    if args.baselines not in (None, ["hf_dynamic"]):  # before validation, which picks the GPU benchmark's default
        raise UsageError("run_vlm.py compares with each model's own PyTorch run only; leave out --baselines")
    args.baselines = ["hf_dynamic"]
    validate_common_arguments(args)
    if args.precision not in ("FP16", "FP32"):
        raise UsageError(f"run_vlm.py runs its models in FP16 or FP32, not {args.precision}; use --precision FP16")
    config = load_config(args)
    family = FAMILIES.get(getattr(config, "model_type", None))
    if family is None:
        raise UsageError(f"run_vlm.py supports Qwen2.5-VL and Eagle2, not {args.model} "
                         f"({getattr(config, 'model_type', '?')}); use run_llm.py for text-only models")
    image = load_image(args.image_path)
    text_config = config.get_text_config()
    tokenizer = load_tokenizer(args, text_config)

    vlm = family.load(args, config)
    inputs = vlm.inputs(image, text_ids(args, tokenizer, text_config.vocab_size), args.batch_size, args.device)
    prompt_len = inputs.input_ids.shape[1]
    max_seq_len = prompt_len + args.num_tokens
    check_positions(text_config, max_seq_len, "image and text tokens + --num_tokens")
    eos, pad = eos_token_ids(tokenizer, text_config), pad_token_id(tokenizer, text_config)
    label = COMPILER_LABELS[args.compiler]

    start = time.perf_counter()
    vlm.compile_vision(args)
    language_model = vlm.language_model()
    lowered = lower(export_llm(language_model, args.batch_size, max_seq_len, embeds=True,
                               position_rows=vlm.position_rows), args.cache, max_seq_len)
    compiled = compile_lowered(lowered, args, max_seq_len)
    cached = cached_model(compiled, lowered, args, max_seq_len) if args.cache else None
    build_seconds = time.perf_counter() - start

    def stop_rule() -> StopRule:
        return StopRule(eos, pad, stop_on_eos=not args.benchmark)

    vision_ms: list[float] = []
    sync = device_sync(args.device)

    def run_compiled(on_first_token=None) -> torch.Tensor:
        with torch.no_grad():
            began = time.perf_counter()
            image_embeds = vlm.image_embeddings(inputs)
            sync()
            vision_ms.append((time.perf_counter() - began) * 1e3)
            prompt = vlm.prompt(inputs, image_embeds)
            if not args.cache:
                return generate_no_cache(compiled, prompt, args.num_tokens, stop_rule(), on_first_token)
            return generate_static_cache(cached, prompt, args.num_tokens, stop_rule(), on_first_token)

    def run_pytorch(on_first_token=None) -> torch.Tensor:
        return vlm.reference(inputs, args.num_tokens, stop_rule(), on_first_token)

    if not args.benchmark:
        reference = None
        if args.enable_pytorch_run:
            reference = run_pytorch()
            print_generation("PyTorch", tokenizer.decode(reference[0, prompt_len:].tolist(), skip_special_tokens=True))
        tokens = run_compiled()
        print_generation(label, tokenizer.decode(tokens[0, prompt_len:].tolist(), skip_special_tokens=True))
        if reference is not None:
            print_match(label, reference, tokens)
        return

    decode_bytes = decode_bytes_per_step(language_model, args.batch_size, prompt_len, args.num_tokens)
    measure = partial(run_benchmark, device=args.device, iterations=args.iterations, batch_size=args.batch_size,
                      new_tokens=args.num_tokens, decode_bytes=decode_bytes)
    measured = {}
    reference_row = f"PyTorch ({vlm.reference_label})"
    if args.enable_pytorch_run:
        measured[reference_row] = measure(run_pytorch)
    row = f"{label}, {args.cache or 'no cache'}" + (", CUDA graphs" if args.cudagraph else "")
    measured[row] = measure(run_compiled, build_s=build_seconds)
    measured[row].figures["vision_encoder_ms"] = summarize(vision_ms[-args.iterations:])
    if args.enable_pytorch_run:
        measured[row].figures["token_agreement"] = token_agreement(measured[reference_row].tokens,
                                                                   measured[row].tokens, prompt_len)
    setup = RunSetup.from_args(args)
    notes = {"copy_bandwidth_tb_s": copy_bandwidth_tb_s(args.device), "prompt_tokens": prompt_len}
    results = {name: m.figures for name, m in measured.items()}
    print(format_table(setup, results, notes))
    vision = COMPILER_LABELS[args.compiler] if vlm.compiles_vision else "PyTorch"
    print(f"vision ms: the vision encoder ({vision}) alone; TTFT includes it")
    if args.output_json:
        write_json(args.output_json, setup, results, {**notes, "build_seconds": build_seconds})


if __name__ == "__main__":
    run_main(main, build_parser())
