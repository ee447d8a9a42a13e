"""Eagle2 for run_vlm.py: the SigLIP vision tower compiled with static shapes; pixel shuffle and mlp1 in PyTorch.

The language model is a Qwen2 with plain positions; the reference is the model's own forward on
the whole sequence at every step. Offline, load/eagle2_structure.py builds a model with Eagle2's
parts under the same attribute names (tiny-eagle2, --random_weights); a real checkpoint is remote
code on the Hub.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from PIL import Image

from errors import logger
from export_cache import cached_export
from generation.loops import Prompt, StopRule, generate_no_cache
from load.eagle2_structure import MODEL_TYPE, Eagle2ForConditionalGeneration, features_from_vision
from load.models import load_model
from options import CompileOptions, ModelOptions
from vlm.family import LanguageModel, VisionInputs, merge_image_embeddings


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
    def load(cls, model: ModelOptions, config) -> "Eagle2":
        if config.model_type == MODEL_TYPE:  # the built-in structure: tiny preset or --random_weights
            return cls(load_model(model, config, Eagle2ForConditionalGeneration))
        return cls(load_remote_eagle2(model, config))

    def compile_vision(self, options: CompileOptions, model: ModelOptions, batch_size: int) -> None:
        """Export the vision tower for this run's pixel shape and compile it with --compiler."""
        size = self.config.vision_config.image_size
        example = torch.zeros(batch_size, 3, size, size, dtype=self.model.dtype, device=model.device)
        program = cached_export(self.vision, (self.config.vision_config.to_json_string(), tuple(example.shape),
                                              example.dtype),
                                lambda: torch.export.export(self.vision, (example,)), options.export_cache_dir)
        if options.compiler == "eager":
            self.vision = program.module()
        elif options.compiler == "inductor":
            self.vision = torch.compile(program.module(), dynamic=False)
        else:
            import torch_tensorrt

            from compilers.engine_cache import engine_cache_settings

            self.vision = torch_tensorrt.dynamo.compile(program, arg_inputs=[example],
                                                        min_block_size=options.min_block_size,
                                                        **engine_cache_settings(options))

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
        return features_from_vision(self.model, self.vision(inputs.pixel_values))

    def prompt(self, inputs: VisionInputs, image_embeds: torch.Tensor) -> Prompt:
        ids = inputs.input_ids
        embed_tokens = self.model.get_input_embeddings()
        embeds = merge_image_embeddings(embed_tokens(ids), ids, self.config.image_token_index, image_embeds)
        text = Prompt.text(ids)
        return Prompt(ids, embeds, embed_tokens, text.position_ids)

    def _forward(self, inputs: VisionInputs, ids: torch.Tensor) -> torch.Tensor:
        """The model's own forward on ids [B, L] (image included): logits [B, L, V]."""
        flags = torch.ones(inputs.pixel_values.shape[0], 1, dtype=torch.long, device=inputs.pixel_values.device)
        return self.model(pixel_values=inputs.pixel_values, input_ids=ids, image_flags=flags).logits

    def reference_logits(self, inputs: VisionInputs, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(inputs, tokens[:, :-1])[:, inputs.input_ids.shape[1] - 1:]

    def reference(self, inputs: VisionInputs, num_tokens: int, stop: StopRule, on_first_token=None) -> torch.Tensor:
        """The model's own forward on the whole sequence (image included) at every step."""
        def forward(ids, position_ids):
            return (self._forward(inputs, ids)[:, -1:],)

        with torch.no_grad():
            return generate_no_cache(forward, Prompt.text(inputs.input_ids), num_tokens, stop, on_first_token)


def load_remote_eagle2(model: ModelOptions, config):
    """A real Eagle2 checkpoint (remote code). Its config asks for flash attention 2; without the flash-attn
    package, attention is mapped to sdpa, and the run says so."""
    from transformers import AutoModel

    if importlib.util.find_spec("flash_attn") is None:
        logger.warning("flash-attn is not installed: Eagle2's attention runs as sdpa")
        for sub in (config, getattr(config, "vision_config", None), getattr(config, "text_config", None)):
            if sub is not None:
                sub._attn_implementation = "sdpa"
    loaded = AutoModel.from_pretrained(model.name, config=config, dtype=model.dtype, trust_remote_code=True)
    return loaded.to(model.device).eval()

