"""Vision-language models for run_vlm.py: images in, a language model that the LLM stages can take.

Each family turns an image and a text into ids (image tokens included), image embeddings and a
Prompt for the generation loops, and hands out its language model (text model + lm_head) for
export, the passes and the compilers. Image embeddings replace the rows of the prompt's
embeddings whose id is the image token; their counts must agree.

- Qwen2.5-VL: the vision tower runs in PyTorch. The language model takes multimodal RoPE positions
  [3, B, L], computed as the model computes them: `get_rope_index` for the prompt, then the cache
  position plus the model's rope delta for every generated token. Reference: Hugging Face's generate.
- Eagle2: the SigLIP vision tower is exported and compiled with static shapes by --compiler; pixel
  shuffle and mlp1 stay in PyTorch; the language model is a Qwen2 with plain positions. Reference:
  the model's own forward, on the whole sequence at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from generate import Prompt, StopRule, generate_no_cache, hf_generate
from utils import DTYPES, UsageError, load_model

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

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

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

    position_rows = 3  # multimodal RoPE: temporal, height, width
    compiles_vision = False
    reference_label = "HF generate, dynamic cache"

    def __init__(self, model):
        self.model, self.config = model, model.config

    @classmethod
    def load(cls, args, config) -> "Qwen2_5_VL":
        from transformers import AutoModelForImageTextToText

        return cls(load_model(args, config, AutoModelForImageTextToText))

    def compile_vision(self, args) -> None:
        """The vision tower stays in PyTorch: its window attention indexing is data dependent."""

    def reference(self, inputs: "VisionInputs", num_tokens: int, stop: StopRule, on_first_token=None) -> torch.Tensor:
        return hf_generate(self.model, inputs.input_ids, num_tokens, stop, on_first_token, **inputs.generate_kwargs)

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


# ---------------------------------------------------------------------------------------- Eagle2


def eagle_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """[1, 3, size, size]: one tile, the whole image resized, normalised with mean and std 0.5."""
    pixels = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1).copy()).unsqueeze(0)


class _VisionHidden(torch.nn.Module):
    """SigLIP's last hidden state only, as a module export can take."""

    def __init__(self, vision_model: torch.nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values):
        return self.vision_model(pixel_values=pixel_values).last_hidden_state


class Eagle2:
    """Eagle2: SigLIP exported and compiled with static shapes; pixel shuffle and mlp1 in PyTorch."""

    position_rows = 0  # plain positions [B, L]
    compiles_vision = True
    reference_label = "model forward on the whole sequence per token"

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.vision = _VisionHidden(model.vision_model)

    @classmethod
    def load(cls, args, config) -> "Eagle2":
        from eagle2 import MODEL_TYPE, Eagle2ForConditionalGeneration

        if config.model_type == MODEL_TYPE:  # the built-in structure: tiny preset or --random_weights
            return cls(load_model(args, config, Eagle2ForConditionalGeneration))
        return cls(load_remote_eagle2(args, config))

    def compile_vision(self, args) -> None:
        """Export the vision tower for this run's pixel shape and compile it with --compiler."""
        size = self.config.vision_config.image_size
        example = torch.zeros(args.batch_size, 3, size, size, dtype=self.model.dtype, device=args.device)
        program = torch.export.export(self.vision, (example,))
        if args.compiler == "eager":
            self.vision = program.module()
        elif args.compiler == "inductor":
            self.vision = torch.compile(program.module(), dynamic=False)
        else:
            import torch_tensorrt

            self.vision = torch_tensorrt.dynamo.compile(program, arg_inputs=[example],
                                                        min_block_size=args.min_block_size)

    def language_model(self) -> LanguageModel:
        lm = self.model.language_model
        return LanguageModel(lm.model, lm.lm_head, self.config.get_text_config())

    def inputs(self, image: Image.Image, text_ids: list[int], batch_size: int, device) -> VisionInputs:
        config = self.config
        pixels = eagle_pixels(image, config.vision_config.image_size).repeat(batch_size, 1, 1, 1)
        tokens = int(config.vision_config.image_size // config.vision_config.patch_size * config.downsample_ratio) ** 2
        ids = [config.image_start_id] + [config.image_token_index] * tokens + [config.image_end_id] + text_ids
        input_ids = torch.tensor([ids] * batch_size, device=device)
        pixel_values = pixels.to(device, self.model.dtype)
        return VisionInputs(input_ids, pixel_values, {"pixel_values": pixel_values})

    def image_embeddings(self, inputs: VisionInputs) -> torch.Tensor:
        from eagle2 import features_from_vision

        return features_from_vision(self.model, self.vision(inputs.pixel_values))

    def prompt(self, inputs: VisionInputs, image_embeds: torch.Tensor) -> Prompt:
        ids = inputs.input_ids
        embed_tokens = self.model.get_input_embeddings()
        embeds = merge_image_embeddings(embed_tokens(ids), ids, self.config.image_token_index, image_embeds)
        text = Prompt.text(ids)
        return Prompt(ids, embeds, embed_tokens, text.position_ids)

    def reference(self, inputs: VisionInputs, num_tokens: int, stop: StopRule, on_first_token=None) -> torch.Tensor:
        """The model's own forward on the whole sequence (image included) at every step."""
        flags = torch.ones(inputs.pixel_values.shape[0], 1, dtype=torch.long, device=inputs.pixel_values.device)

        def forward(ids, position_ids):
            return (self.model(pixel_values=inputs.pixel_values, input_ids=ids, image_flags=flags).logits[:, -1:],)

        with torch.no_grad():
            return generate_no_cache(forward, Prompt.text(inputs.input_ids), num_tokens, stop, on_first_token)


def load_remote_eagle2(args, config):
    """A real Eagle2 checkpoint (remote code). Its config asks for flash attention 2; without the flash-attn
    package, attention is mapped to sdpa, and the run says so."""
    import importlib.util
    import logging

    from transformers import AutoModel

    if importlib.util.find_spec("flash_attn") is None:
        logging.getLogger("llm_tools").warning("flash-attn is not installed: Eagle2's attention runs as sdpa")
        for sub in (config, getattr(config, "vision_config", None), getattr(config, "text_config", None)):
            if sub is not None:
                sub._attn_implementation = "sdpa"
    model = AutoModel.from_pretrained(args.model, config=config, dtype=DTYPES[args.precision], trust_remote_code=True)
    return model.to(args.device).eval()


FAMILIES = {"qwen2_5_vl": Qwen2_5_VL, "eagle2_structure": Eagle2, "eagle_2_5_vl": Eagle2}
