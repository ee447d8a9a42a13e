"""What every VLM family provides to run_vlm.py (the `VLMFamily` Protocol), and the parts families share.

A family turns an image and a text into ids (image tokens included), image embeddings and a
Prompt for the generation loops, and hands out its language model (text model + lm_head) for
export, the passes and the compilers. Image embeddings replace the rows of the prompt's
embeddings whose id is the image token; their counts must agree (`merge_image_embeddings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch
from PIL import Image

from errors import UsageError
from generation.loops import Prompt, StopRule
from options import CompileOptions, ModelOptions


@dataclass
class VisionInputs:
    """Everything a VLM run feeds: ids (image tokens included), pixels, and what Hugging Face's generate takes."""

    input_ids: torch.Tensor  # [B, T]
    pixel_values: torch.Tensor
    generate_kwargs: dict


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



class VLMFamily(Protocol):
    """A VLM family as run_vlm.py drives it (vlm/qwen2_5_vl.py and vlm/eagle2.py follow it)."""

    position_rows: ClassVar[int]  # rows of the language model's position_ids: 0 for plain [B, L], 3 for [3, B, L]
    compiles_vision: ClassVar[bool]  # whether compile_vision compiles the vision tower (else it stays in PyTorch)
    reference_label: ClassVar[str]  # what the PyTorch reference run is, for the table
    model: torch.nn.Module
    config: object

    @classmethod
    def load(cls, model: ModelOptions, config) -> "VLMFamily": ...

    def inputs(self, image: Image.Image, text_ids: list[int], batch_size: int, device) -> VisionInputs: ...

    def compile_vision(self, options: CompileOptions, model: ModelOptions, batch_size: int) -> None: ...

    def image_embeddings(self, inputs: VisionInputs) -> torch.Tensor: ...

    def prompt(self, inputs: VisionInputs, image_embeds: torch.Tensor) -> Prompt: ...

    def language_model(self) -> LanguageModel: ...

    def reference_logits(self, inputs: VisionInputs, tokens: torch.Tensor) -> torch.Tensor:
        """[B, n, V]: the model's own logits for each token of `tokens` [B, T + n] after the prompt's T
        (image included), from one forward, for the teacher-forced comparison."""

    def reference(self, inputs: VisionInputs, num_tokens: int, stop: StopRule,
                  on_first_token: Callable[[], None] | None = None) -> torch.Tensor: ...


def merge_image_embeddings(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                           image_embeds: torch.Tensor) -> torch.Tensor:
    """Replace the rows of image tokens with the image embeddings, in order; their counts must agree."""
    mask = input_ids == image_token_id
    if int(mask.sum()) != image_embeds.shape[0]:
        raise UsageError(f"the prompt has {int(mask.sum())} image tokens but the image gives "
                         f"{image_embeds.shape[0]} embeddings; the image and the prompt do not belong together")
    return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(embeds.dtype))

