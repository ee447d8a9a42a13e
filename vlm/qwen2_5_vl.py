"""Qwen2.5-VL for run_vlm.py: the vision tower in PyTorch, the language model through the LLM stages.

The image is preprocessed by the model's own image processor (Hugging Face's Qwen2VLImageProcessor:
resize into the pixel budget, CLIP normalisation, patches in merge-window order). The language
model takes multimodal RoPE positions [3, B, L], computed as the model computes them:
`get_rope_index` for the prompt, then the cache position plus the model's rope delta for every
generated token. Reference: Hugging Face's generate with the same image.
"""

from __future__ import annotations

import torch
from PIL import Image

from generation.baselines import hf_generate
from generation.loops import Prompt, StopRule
from load.models import load_model
from load.presets import is_tiny_preset
from options import CompileOptions, ModelOptions
from vlm.family import LanguageModel, VisionInputs, merge_image_embeddings

# The pixel budget of the built-in processor (presets, --random_weights): a 448 x 448 image, 256 image tokens.
BUILTIN_MIN_PIXELS, BUILTIN_MAX_PIXELS = 56 * 56, 448 * 448


def image_processor(model: ModelOptions, vision_config):
    """The checkpoint's own image processor; for presets and --random_weights, Qwen2-VL's with the vision tower's
    patch sizes and the built-in pixel budget."""
    from transformers import AutoImageProcessor, Qwen2VLImageProcessor

    if not (is_tiny_preset(model.name) or model.random_weights):
        return AutoImageProcessor.from_pretrained(model.name)
    return Qwen2VLImageProcessor(patch_size=vision_config.patch_size, merge_size=vision_config.spatial_merge_size,
                                 temporal_patch_size=vision_config.temporal_patch_size,
                                 size={"shortest_edge": BUILTIN_MIN_PIXELS, "longest_edge": BUILTIN_MAX_PIXELS})


class Qwen2_5_VL:
    """Qwen2.5-VL: vision tower in PyTorch; language model through the LLM stages."""

    position_rows = 3  # multimodal RoPE: temporal, height, width
    compiles_vision = False
    reference_label = "HF generate, dynamic cache"

    def __init__(self, model, processor):
        self.model, self.config, self.processor = model, model.config, processor

    @classmethod
    def load(cls, model: ModelOptions, config) -> "Qwen2_5_VL":
        from transformers import AutoModelForImageTextToText

        return cls(load_model(model, config, AutoModelForImageTextToText), image_processor(model, config.vision_config))

    def compile_vision(self, options: CompileOptions, model: ModelOptions, batch_size: int) -> None:
        """The vision tower stays in PyTorch: its window attention indexing is data dependent."""

    def reference(self, inputs: VisionInputs, num_tokens: int, stop: StopRule, on_first_token=None) -> torch.Tensor:
        return hf_generate(self.model, inputs.input_ids, num_tokens, stop, on_first_token, **inputs.generate_kwargs)

    def reference_logits(self, inputs: VisionInputs, tokens: torch.Tensor) -> torch.Tensor:
        ids, prompt_len = tokens[:, :-1], inputs.input_ids.shape[1]
        kwargs = dict(inputs.generate_kwargs)
        # Generated tokens are text, whatever their ids: the prompt's image-token types, then zeros.
        prompt_types = kwargs["mm_token_type_ids"]
        generated = prompt_types.new_zeros(ids.shape[0], ids.shape[1] - prompt_len)
        kwargs["mm_token_type_ids"] = torch.cat([prompt_types, generated], dim=1)
        with torch.no_grad():
            return self.model(input_ids=ids, logits_to_keep=tokens.shape[1] - prompt_len, **kwargs).logits

    def language_model(self) -> LanguageModel:
        return LanguageModel(self.model.model.language_model, self.model.lm_head, self.config.get_text_config())

    def inputs(self, image: Image.Image, text_ids: list[int], batch_size: int, device) -> VisionInputs:
        processed = self.processor(images=image, return_tensors="pt")
        pixels, grid = processed["pixel_values"], processed["image_grid_thw"]  # [patches, C * T * P * P], [1, 3]
        image_tokens = int(grid.prod()) // self.config.vision_config.spatial_merge_size ** 2
        ids = ([self.config.vision_start_token_id] + [self.config.image_token_id] * image_tokens
               + [self.config.vision_end_token_id] + text_ids)
        input_ids = torch.tensor([ids] * batch_size, device=device)
        pixel_values = pixels.repeat(batch_size, 1).to(device, self.model.dtype)
        grids = grid.repeat(batch_size, 1).to(device)
        kwargs = {"pixel_values": pixel_values, "image_grid_thw": grids,
                  "mm_token_type_ids": (input_ids == self.config.image_token_id).int()}
        return VisionInputs(input_ids, pixel_values, kwargs)

    def image_embeddings(self, inputs: VisionInputs) -> torch.Tensor:
        """[image tokens of the whole batch, H] from the vision tower (the timed 'vision encoder' stage)."""
        features = self.model.model.get_image_features(inputs.pixel_values, inputs.generate_kwargs["image_grid_thw"])
        return torch.cat(features.pooler_output, dim=0)

    def prompt(self, inputs: VisionInputs, image_embeds: torch.Tensor) -> Prompt:
        ids = inputs.input_ids
        embed_tokens = self.model.get_input_embeddings()
        embeds = merge_image_embeddings(embed_tokens(ids), ids, self.config.image_token_id, image_embeds)
        rope_positions, rope_deltas = self.model.model.get_rope_index(
            ids, inputs.generate_kwargs["mm_token_type_ids"], inputs.generate_kwargs["image_grid_thw"])
        return Prompt(ids, embeds, embed_tokens, MultimodalPositions(rope_positions, rope_deltas))


class MultimodalPositions:
    """Positions [3, B, end - start]: the prompt's from get_rope_index, then cache position + rope delta."""

    def __init__(self, prompt_positions: torch.Tensor, rope_deltas: torch.Tensor):
        self.prompt_positions, self.rope_deltas = prompt_positions, rope_deltas  # [3, B, T], [B, 1]

    def __call__(self, start: int, end: int) -> torch.Tensor:
        prompt_len = self.prompt_positions.shape[2]
        parts = [self.prompt_positions[:, :, start:min(end, prompt_len)]]
        if end > prompt_len:
            generated = torch.arange(max(start, prompt_len), end, device=self.rope_deltas.device)
            parts.append((generated + self.rope_deltas).unsqueeze(0).expand(3, -1, -1))
        return torch.cat(parts, dim=2)

