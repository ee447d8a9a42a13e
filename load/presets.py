"""Built-in model shapes, so that models can be built with random weights and no download.

`MODEL_CONFIGS` holds the public shapes of every model in the spec's tables, keyed by the
Hugging Face id; `TINY_PRESETS` holds small random models for tests and demos.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


def _llama3_rope(theta: float, factor: float, original: int = 8192) -> dict:
    return {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original,
    }


def _llama(hidden, inter, layers, heads, kv, vocab, tied, rope, positions, bos, eos, head_dim=None) -> dict:
    cfg = dict(
        model_type="llama", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
        rope_parameters=rope, max_position_embeddings=positions, bos_token_id=bos, eos_token_id=eos,
        rms_norm_eps=1e-5,
    )
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    return cfg


def _qwen(model_type, hidden, inter, layers, heads, kv, vocab, tied, positions, head_dim=None) -> dict:
    cfg = dict(
        model_type=model_type, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=positions,
        bos_token_id=151643, eos_token_id=151645, rms_norm_eps=1e-6,
    )
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    return cfg


def _gpt2(hidden, layers, heads) -> dict:
    return dict(model_type="gpt2", n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=50257,
                n_positions=1024, bos_token_id=50256, eos_token_id=50256)


def _gemma3(hidden, inter, layers, heads, kv, head_dim, vocab, window, positions, scalar) -> dict:
    # Five sliding-window layers to each global one, as in the released checkpoints.
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    return dict(
        model_type="gemma3_text", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=vocab,
        sliding_window=window, layer_types=layer_types, max_position_embeddings=positions,
        query_pre_attn_scalar=scalar, tie_word_embeddings=True, bos_token_id=2, eos_token_id=[1, 106],
        pad_token_id=0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        },
    )


# Public shapes (hidden / intermediate / layers / heads / KV heads / vocab ...), keyed by Hugging Face id.
MODEL_CONFIGS: dict[str, dict] = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "meta-llama/Llama-2-7b-chat-hf": _llama(4096, 11008, 32, 32, 32, 32000, False,
                                            {"rope_type": "default", "rope_theta": 1e4}, 4096, 1, 2),
    "meta-llama/Llama-3.1-8B-Instruct": _llama(4096, 14336, 32, 32, 8, 128256, False, _llama3_rope(5e5, 8.0),
                                               131072, 128000, [128001, 128008, 128009]),
    "meta-llama/Llama-3.2-1B-Instruct": _llama(2048, 8192, 16, 32, 8, 128256, True, _llama3_rope(5e5, 32.0),
                                               131072, 128000, [128001, 128008, 128009]),
    "meta-llama/Llama-3.2-3B-Instruct": _llama(3072, 8192, 28, 24, 8, 128256, True, _llama3_rope(5e5, 32.0),
                                               131072, 128000, [128001, 128008, 128009]),
    "Qwen/Qwen2.5-0.5B-Instruct": _qwen("qwen2", 896, 4864, 24, 14, 2, 151936, True, 32768),
    "Qwen/Qwen2.5-1.5B-Instruct": _qwen("qwen2", 1536, 8960, 28, 12, 2, 151936, True, 32768),
    "Qwen/Qwen2.5-3B-Instruct": _qwen("qwen2", 2048, 11008, 36, 16, 2, 151936, True, 32768),
    "Qwen/Qwen2.5-7B-Instruct": _qwen("qwen2", 3584, 18944, 28, 28, 4, 152064, False, 32768),
    "Qwen/Qwen3-0.6B": _qwen("qwen3", 1024, 3072, 28, 16, 8, 151936, True, 40960, head_dim=128),
    "Qwen/Qwen3-1.7B": _qwen("qwen3", 2048, 6144, 28, 16, 8, 151936, True, 40960, head_dim=128),
    "Qwen/Qwen3-4B": _qwen("qwen3", 2560, 9728, 36, 32, 8, 151936, True, 40960, head_dim=128),
    "Qwen/Qwen3-8B": _qwen("qwen3", 4096, 12288, 36, 32, 8, 151936, False, 40960, head_dim=128),
    "google/gemma-3-1b-it": _gemma3(1152, 6912, 26, 4, 1, 256, 262144, 512, 32768, 256),
}

# Small random models: two or more layers, GQA where the family has it, a vocabulary that covers
# the byte tokenizer. tiny-gemma3's window (8) is shorter than the sequences its tests use.
TINY_PRESETS: dict[str, dict] = {
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=256,
                      bos_token_id=256, eos_token_id=257),
    "tiny-llama": _llama(64, 128, 2, 4, 2, 512, False, _llama3_rope(5e5, 8.0, 64), 256, 256, 257),
    "tiny-qwen2": {**_qwen("qwen2", 64, 128, 2, 4, 2, 512, True, 256), "bos_token_id": 256, "eos_token_id": 257},
    "tiny-qwen3": {**_qwen("qwen3", 64, 128, 2, 4, 2, 512, True, 256, head_dim=32),
                   "bos_token_id": 256, "eos_token_id": 257},
    "tiny-gemma3": {**_gemma3(64, 128, 3, 4, 2, 16, 512, 8, 256, 16),
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                    "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258},
}


def _qwen2_5_vl(text: dict, vision: dict) -> dict:
    return dict(model_type="qwen2_5_vl", text_config=text, vision_config=vision, image_token_id=151655,
                video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
                tie_word_embeddings=text.get("tie_word_embeddings", True))


MODEL_CONFIGS["Qwen/Qwen2.5-VL-3B-Instruct"] = _qwen2_5_vl(
    dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, tie_word_embeddings=True,
         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
         bos_token_id=151643, eos_token_id=151645),
    dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
         temporal_patch_size=2, out_hidden_size=2048, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]))

# Vision-language presets: the byte range plus the special tokens the image needs.
TINY_PRESETS["tiny-qwen2.5-vl"] = {
    **_qwen2_5_vl(
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=256,
             eos_token_id=257, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
             initializer_range=0.3),
        dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
             temporal_patch_size=2, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1])),
    "image_token_id": 300, "video_token_id": 301, "vision_start_token_id": 302, "vision_end_token_id": 303,
    "initializer_range": 0.3,  # larger random weights than the default: generations that vary from token to token
}


def _eagle2(vision: dict, text: dict, **ids) -> dict:
    return dict(model_type="eagle2_structure", vision_config=vision, text_config=text, downsample_ratio=0.5, **ids)


MODEL_CONFIGS["nvidia/Eagle2-2B"] = _eagle2(
    dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=448,
         patch_size=14, hidden_act="gelu_pytorch_tanh"),
    {**_qwen("qwen2", 1536, 8960, 28, 12, 2, 151936, True, 32768), "bos_token_id": 151643, "eos_token_id": 151645})
TINY_PRESETS["tiny-eagle2"] = _eagle2(
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
         patch_size=14, hidden_act="gelu_pytorch_tanh"),
    {**_qwen("qwen2", 64, 128, 2, 4, 2, 512, True, 256), "bos_token_id": 256, "eos_token_id": 257,
     "initializer_range": 0.3},
    image_token_index=300, image_start_id=301, image_end_id=302)


# The config model_types each entry script runs (run_vlm.py's families are vlm/families.py's FAMILIES).
LLM_FAMILIES = {"gpt2": "GPT-2", "llama": "Llama", "qwen2": "Qwen 2.5", "qwen3": "Qwen 3", "gemma3_text": "Gemma 3"}
VLM_FAMILIES = {"qwen2_5_vl": "Qwen2.5-VL", "eagle2_structure": "Eagle2", "eagle_2_5_vl": "Eagle2"}


def head_dim(config) -> int:
    """The attention head size of a text config (explicit, or hidden size over heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def is_tiny_preset(name: str) -> bool:
    return name in TINY_PRESETS


def builtin_config(name: str) -> PretrainedConfig | None:
    """The config of a tiny preset or a known Hub id, built offline; None when the name is not known."""
    spec = TINY_PRESETS.get(name) or MODEL_CONFIGS.get(name)
    if spec is None:
        return None
    spec = dict(spec)
    model_type = spec.pop("model_type")
    if model_type == "eagle2_structure":  # not a transformers class: see load/eagle2_structure.py
        from load.eagle2_structure import Eagle2Config

        return Eagle2Config(**spec)
    return AutoConfig.for_model(model_type, **spec)
