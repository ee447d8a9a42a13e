"""What a run asks for, as frozen values: built and checked once from the flags (cli.py), read by every stage.

The stages take these, or plain values, never the parsed argparse namespace, so a library caller
(a test, a benchmark script, a notebook) builds them directly: `ModelOptions("tiny-llama", "FP32")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compilers.decode_tuning import DecodeTuning

DTYPES = {"FP16": torch.float16, "BF16": torch.bfloat16, "FP32": torch.float32}
COMPILER_LABELS = {"tensorrt": "TensorRT", "inductor": "Inductor", "eager": "Eager"}
CACHES = ("static_v1", "static_v2", "static_v3")
BASELINES = {"hf_dynamic": "HF generate, dynamic cache",
             "hf_static": "HF generate, static cache compiled by HF",
             "hf_compiled_step": "HF forward + StaticCache, decode step torch.compiled",
             "torchao_int8_step": "HF forward + StaticCache, torchao int8 weight-only, decode step torch.compiled",
             "no_cache": "HF forward on the whole sequence per token, no cache"}


@dataclass(frozen=True)
class ModelOptions:
    """Which model, in which precision, on which device (load stage)."""

    name: str
    precision: str = "FP32"
    device: str = "cpu"
    random_weights: bool = False
    tokenizer: str | None = None  # None: the model's own

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class CompileOptions:
    """How the lowered graph is made and compiled (lower and compile stages)."""

    compiler: str = "eager"
    cache: str = ""  # "" (no cache) or one of CACHES
    cudagraph: bool = False
    min_block_size: int = 1  # TensorRT: smallest block to convert
    tuning: DecodeTuning = field(default_factory=DecodeTuning)  # inductor's decode-step tuning
    engine_cache_dir: str | None = None  # TensorRT: built engines are kept and reused here; None: always build
    export_cache_dir: str | None = None  # exported graphs (without weights) are kept and reused here; None: none

    @property
    def label(self) -> str:
        return COMPILER_LABELS[self.compiler]


QUANT_FORMATS = ("int8", "fp8", "nvfp4")
QUANT_ALGOS = ("max", "smoothquant")
CALIBRATION_DATA = ("random", "text")


@dataclass(frozen=True)
class QuantOptions:
    """--quant_format and its companions (quantize/): None for an unquantized run."""

    format: str | None = None  # one of QUANT_FORMATS
    algo: str = "max"  # one of QUANT_ALGOS
    weight_only: bool = False
    calib_data: str = "random"  # one of CALIBRATION_DATA
    prequantized: bool = False  # the checkpoint was saved quantized (quantize/checkpoint.py): no calibration here

    @property
    def short(self) -> str:
        """For a table row: "int8 weight-only", "fp8 weights and activations"."""
        return f"{self.format} {'weight-only' if self.weight_only else 'weights and activations'}"

    def describe(self) -> str:
        return f"{self.short}, " + ("pre-quantized checkpoint" if self.prequantized else f"{self.algo} calibration")


@dataclass(frozen=True)
class RunOptions:
    """What is generated or timed, and what it is compared with (generate and report stages)."""

    prompt: str = ""
    num_tokens: int = 128
    batch_size: int = 1
    benchmark: bool = False
    iterations: int = 5
    isl: int = 2048
    enable_pytorch_run: bool = False
    baselines: tuple[str, ...] = ("hf_dynamic",)  # the first is the reference for token checks
    output_json: str | None = None


@dataclass(frozen=True)
class Options:
    """One run of run_llm.py or run_vlm.py."""

    model: ModelOptions
    compile: CompileOptions
    run: RunOptions
    backend: str = "sdpa"  # run_llm.py: sdpa or plugin
    plugin_path: str | None = None  # --backend plugin: the library, before the environment and the default
    image_path: str | None = None  # run_vlm.py: None for a sample image
    quant: QuantOptions = field(default_factory=QuantOptions)
