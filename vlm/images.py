"""The image a VLM run feeds: --image_path, or a sample image made here (no download)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from errors import UsageError


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

