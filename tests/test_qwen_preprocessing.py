"""Qwen2.5-VL's pixels and grid, as the family feeds them, against an independent computation of the
model's documented preprocessing: resize to multiples of patch x merge inside the pixel budget,
CLIP normalisation, every image repeated over the temporal patch, patches in merge-window order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.images import sample_image
from vlm.qwen2_5_vl import BUILTIN_MAX_PIXELS, BUILTIN_MIN_PIXELS
from vlm_fixtures import tiny_vlm

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073))
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711))
# PIL's 8-bit bicubic resize and the processor's float resize round differently: a few 8-bit steps
# (one step is 1 / 255 / std = 0.015 after normalisation) at a handful of pixels.
MAX_DIFFERENCE, MEAN_DIFFERENCE = 0.06, 1e-3


def _fit(height: int, width: int, factor: int) -> tuple[int, int]:
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > BUILTIN_MAX_PIXELS:
        scale = math.sqrt(height * width / BUILTIN_MAX_PIXELS)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < BUILTIN_MIN_PIXELS:
        scale = math.sqrt(BUILTIN_MIN_PIXELS / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def reference_pixels(image: Image.Image, patch: int, merge: int, temporal: int):
    """pixel_values [patches, C * T * P * P] and image_grid_thw [1, 3], computed here with numpy."""
    height, width = _fit(image.height, image.width, patch * merge)
    pixels = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    pixels = ((pixels - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)  # [C, H, W]
    frames = np.repeat(pixels[None], temporal, axis=0)
    grid_h, grid_w = height // patch, width // patch
    channels = frames.shape[1]
    patches = frames.reshape(temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.transpose(2, 5, 3, 6, 1, 0, 4, 7).reshape(grid_h * grid_w, -1)
    return torch.from_numpy(np.ascontiguousarray(patches)).float(), torch.tensor([[1, grid_h, grid_w]])


IMAGES = {
    "56 px, no resize": lambda: sample_image(56),
    "448 px, the budget's edge": lambda: sample_image(448),
    "130 x 70, rounded": lambda: sample_image(100).resize((130, 70)),
    "1000 x 600, scaled down": lambda: sample_image(900).resize((1000, 600)),
    "40 px, scaled up": lambda: sample_image(40),
}


def _difference(pixels, grid, image, vision_config, merge=None):
    expected, expected_grid = reference_pixels(image, vision_config.patch_size,
                                               merge or vision_config.spatial_merge_size,
                                               vision_config.temporal_patch_size)
    assert grid.tolist() == expected_grid.tolist()
    assert pixels.shape == expected.shape
    difference = (pixels.float() - expected).abs()
    return difference.max().item(), difference.mean().item()


@pytest.mark.parametrize("name", IMAGES)
def test_pixels_and_grid_equal_the_documented_preprocessing(name):
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    image = IMAGES[name]()
    inputs = vlm.inputs(image, [1, 2], 1, "cpu")
    largest, mean = _difference(inputs.pixel_values, inputs.generate_kwargs["image_grid_thw"], image,
                                vlm.config.vision_config)
    assert largest < MAX_DIFFERENCE and mean < MEAN_DIFFERENCE, (largest, mean)


def test_a_batch_repeats_the_image():
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    one, two = (vlm.inputs(sample_image(56), [1], batch, "cpu") for batch in (1, 2))
    assert torch.equal(two.pixel_values, one.pixel_values.repeat(2, 1))
    assert two.generate_kwargs["image_grid_thw"].tolist() == [[1, 4, 4]] * 2


def test_wrong_patch_order_or_normalisation_is_caught():
    """The comparison would see a processor that orders patches row by row (merge size 1) or
    normalises with another mean and std."""
    vlm = tiny_vlm("tiny-qwen2.5-vl")
    image, config = sample_image(56), vlm.config.vision_config
    inputs = vlm.inputs(image, [1], 1, "cpu")
    grid = inputs.generate_kwargs["image_grid_thw"]
    largest, _ = _difference(inputs.pixel_values, grid, image, config, merge=1)
    assert largest > 1.0
    # Each row is (C, T, P, P): undo CLIP's statistics per channel, normalise with mean = std = 0.5.
    per_channel = config.temporal_patch_size * config.patch_size ** 2
    mean, std = (torch.tensor(v).float().repeat_interleave(per_channel) for v in (CLIP_MEAN, CLIP_STD))
    half_normalised = (inputs.pixel_values * std + mean - 0.5) / 0.5
    largest, _ = _difference(half_normalised, grid, image, config)
    assert largest > 0.1
