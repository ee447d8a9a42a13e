"""Hugging Face's own runs, the baselines the compiled graph is compared with and timed against.

`hf_generate` is the model's generate (dynamic or static cache); `HFCompiledStep` is the recipe of
Hugging Face's documentation for fast generation (StaticCache, the decode step torch.compiled);
`torchao_int8_weight_only` gives that step int8 weights through torchao, the quantized baseline;
`hf_forward_no_cache` runs the whole sequence through the model at every token.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch

from generation.loops import StopRule

INSTALL_TORCHAO = "pip install -r requirements-quant.txt (torchao 0.18.0)"


def hf_forward_no_cache(model) -> Callable:
    """The model as generate_no_cache calls a lowered graph: (ids, position_ids) -> (logits,), no KV cache."""
    def forward(input_ids: torch.Tensor, position_ids: torch.Tensor):
        return (model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits,)
    return forward


class HFCompiledStep:
    """Hugging Face's forward with its StaticCache, the decode step compiled by torch.compile.

    The recipe of Hugging Face's documentation for fast generation: a static cache and the forward
    compiled with mode "reduce-overhead" (inductor and CUDA graphs; on the CPU, inductor alone). The
    prompt's prefill runs eagerly, every decode step through the compiled forward. Called as
    generate_static_cache calls a CachedModel; made once per run, so that the step compiles once,
    and each generation (start 0) resets the cache in place.
    """

    def __init__(self, model, max_seq_len: int):
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_seq_len)
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        self.decode_step = torch.compile(model, mode=mode, fullgraph=True)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, start: int) -> torch.Tensor:
        if start == 0:
            self.cache.reset()
        forward = self.model if start == 0 else self.decode_step
        return forward(input_ids=input_ids, position_ids=position_ids, past_key_values=self.cache, use_cache=True,
                       logits_to_keep=1).logits


def torchao_int8_weight_only(model):
    """A copy of `model` whose linears torchao stores as int8 weights with per-channel scales (weight-only).

    torchao's own int8 weight-only recipe (`quantize_` with `Int8WeightOnlyConfig`), the one its
    documentation pairs with torch.compile. lm_head stays in the model's precision, as in ModelOpt's
    configurations, so both read the same bytes per step.
    """
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    # torch.compile notes, once per run, that torchao's weight class cannot key its autograd cache: not the user's
    # business, and inductor's own cache still keys the compiled step
    warnings.filterwarnings("ignore", message=".*does not implement _stable_hash_for_caching")
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig(),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"))
    return quantized


class _FirstTokenStreamer:
    """Calls back when generate emits its first new token (its first put() carries the prompt)."""

    def __init__(self, on_first_token: Callable[[], None]):
        self.on_first_token, self.calls = on_first_token, 0

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.on_first_token()

    def end(self):
        pass


def hf_generate(model, input_ids: torch.Tensor, num_tokens: int, stop: StopRule,
                on_first_token: Callable[[], None] | None = None, static_cache: bool = False,
                **model_inputs) -> torch.Tensor:
    """The model's own generate: greedy, with its own KV cache, and nothing else from its generation config.

    A checkpoint's generation_config may ask for sampling or a repetition penalty, and generate fills
    every field left at its default from it, so a clean greedy config replaces it for the call.
    `static_cache` asks for Hugging Face's StaticCache, with which generate compiles the model's
    forward itself on a GPU (torch.compile, mode reduce-overhead): Hugging Face's own fast path.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=num_tokens,
        min_new_tokens=0 if stop.stop_on_eos else num_tokens,
        do_sample=False,
        eos_token_id=stop.eos_token_ids or None,
        pad_token_id=stop.pad_token_id,
        cache_implementation="static" if static_cache else None,
    )
    saved, model.generation_config = model.generation_config, config
    text_config = model.config.get_text_config()  # a VLM keeps use_cache in its text config
    saved_use_cache, text_config.use_cache = getattr(text_config, "use_cache", True), True
    try:
        with torch.no_grad():
            streamer = _FirstTokenStreamer(on_first_token) if on_first_token is not None else None
            return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                                  streamer=streamer, **model_inputs)
    finally:
        model.generation_config = saved
        text_config.use_cache = saved_use_cache
