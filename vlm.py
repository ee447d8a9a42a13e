"""Vision-language models for run_vlm.py: images in, a language model that the LLM stages can take.

For Qwen2.5-VL the vision tower runs in PyTorch; its image embeddings replace the rows of the
prompt's embeddings whose id is the image token, and the language model (text model + lm_head) is
what export, the passes and the compilers see, fed embeddings and multimodal RoPE positions
[3, B, L]. Positions are computed as the model computes them: `get_rope_index` for the prompt, then
the cache position plus the model's rope delta for every generated token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from generate import Prompt
from utils import UsageError

# Qwen2-VL image normalisation (the CLIP statistics) and its pixel budget per image.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 448 * 448


def load_image(path: str | None) -> Image.Image:
    """The --image_path image in RGB, or a sample made here (a colour gradient with a disc) when there is none."""
    if path is None:
        return sample_image()
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"--image_path {path} does not exist; give an image file, "
                         "or leave it out for a sample") from None
    except (OSError, ValueError) as err:  # unreadable, or not an image PIL knows
        raise UsageError(f"--image_path {path} is not a readable image ({str(err).splitlines()[0]}); "
                         "give a PNG or JPEG file, or leave it out for a sample") from None


def sample_image(size: int = 448) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05
    rgb = np.stack([x, y, np.where(disc, 1.0, 0.3)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


class LanguageModel(torch.nn.Module):
    """The language half of a VLM as export_llm takes it: (inputs_embeds, position_ids) -> last logits."""

    def __init__(self, text_model: torch.nn.Module, lm_head: torch.nn.Module, config):
        super().__init__()
        self.text_model, self.lm_head, self.config = text_model, lm_head, config

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.text_model.get_input_embeddings()

    def forward(self, inputs_embeds, position_ids, logits_to_keep: int = 1):
        hidden = self.text_model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False)
        return self.lm_head(hidden.last_hidden_state[:, -logits_to_keep:])


# ----------------------------------------------------------------------------------- Qwen2.5-VL


def _fit(height: int, width: int, factor: int) -> tuple[int, int]:
    """Height and width rounded to multiples of `factor`, scaled into the pixel budget."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > MAX_PIXELS:
        scale = math.sqrt(height * width / MAX_PIXELS)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < MIN_PIXELS:
        scale = math.sqrt(MIN_PIXELS / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def qwen_pixels(image: Image.Image, vision_config) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values [patches, C * T * P * P] and image_grid_thw [1, 3], as Qwen2-VL's vision tower reads them."""
    patch, merge = vision_config.patch_size, vision_config.spatial_merge_size
    temporal = vision_config.temporal_patch_size
    height, width = _fit(image.height, image.width, patch * merge)
    pixels = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    pixels = ((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)  # [C, H, W]
    frames = np.repeat(pixels[None], temporal, axis=0)  # one image is `temporal` identical frames
    grid_h, grid_w = height // patch, width // patch
    channels = frames.shape[1]
    # [T, C, gh/m, m, P, gw/m, m, P] -> rows in merge-window order, each row a (C, T, P, P) patch
    patches = frames.reshape(temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.transpose(2, 5, 3, 6, 1, 0, 4, 7).reshape(grid_h * grid_w, channels * temporal * patch * patch)
    return torch.from_numpy(np.ascontiguousarray(patches)), torch.tensor([[1, grid_h, grid_w]])


@dataclass
class VisionInputs:
    """Everything a VLM run feeds: ids (image tokens included), pixels, and what Hugging Face's generate takes."""

    input_ids: torch.Tensor  # [B, T]
    pixel_values: torch.Tensor
    generate_kwargs: dict


class Qwen2_5_VL:
    """Qwen2.5-VL: vision tower in PyTorch; language model through the LLM stages."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def language_model(self) -> LanguageModel:
        return LanguageModel(self.model.model.language_model, self.model.lm_head, self.config.get_text_config())

    def inputs(self, image: Image.Image, text_ids: list[int], batch_size: int, device) -> VisionInputs:
        pixels, grid = qwen_pixels(image, self.config.vision_config)
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


def merge_image_embeddings(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                           image_embeds: torch.Tensor) -> torch.Tensor:
    """Replace the rows of image tokens with the image embeddings, in order; their counts must agree."""
    mask = input_ids == image_token_id
    if int(mask.sum()) != image_embeds.shape[0]:
        raise UsageError(f"the prompt has {int(mask.sum())} image tokens but the image gives "
                         f"{image_embeds.shape[0]} embeddings; the image and the prompt do not belong together")
    return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(embeds.dtype))


FAMILIES = {"qwen2_5_vl": Qwen2_5_VL}
