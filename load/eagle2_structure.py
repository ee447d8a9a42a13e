"""A model with Eagle2's structure, for --random_weights and the tiny-eagle2 preset (no Hub access).

Eagle2 (nvidia/Eagle2-2B) is remote code on the Hub. This class has its parts under the same
attribute names, so that run_vlm.py drives both the same way:

    vision_model    SigLIP vision transformer: pixels [N, 3, S, S] -> [N, (S / P)^2, Hv]
    pixel_shuffle   [N, h, w, Hv] -> [N, h / 2, w / 2, 4 Hv]: token (i, j) holds patches (2i, 2j), (2i, 2j + 1),
                    (2i + 1, 2j), (2i + 1, 2j + 1), in that channel order
    mlp1            LayerNorm(4 Hv), Linear(4 Hv -> H), GELU, Linear(H -> H)
    language_model  Qwen2ForCausalLM; image embeddings replace the rows whose id is image_token_index
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "eagle2_structure"


class Eagle2Config:
    model_type = MODEL_TYPE

    def __init__(self, vision_config: dict, text_config: dict, downsample_ratio: float = 0.5,
                 image_token_index: int = 151667, image_start_id: int = 151665, image_end_id: int = 151666):
        self.vision_config = SiglipVisionConfig(**vision_config)
        self.text_config = Qwen2Config(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.downsample_ratio = downsample_ratio
        self.image_token_index, self.image_start_id, self.image_end_id = image_token_index, image_start_id, image_end_id
        self._attn_implementation = "sdpa"

    def get_text_config(self) -> Qwen2Config:
        return self.text_config


class Eagle2ForConditionalGeneration(torch.nn.Module):
    def __init__(self, config: Eagle2Config):
        super().__init__()
        self.config = config
        config.vision_config._attn_implementation = config.text_config._attn_implementation = "sdpa"
        self.vision_model = SiglipVisionModel(config.vision_config)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        shuffled = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2
        hidden = config.text_config.hidden_size
        self.mlp1 = torch.nn.Sequential(torch.nn.LayerNorm(shuffled), torch.nn.Linear(shuffled, hidden),
                                        torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
        self.downsample_ratio = config.downsample_ratio
        self.image_token_index = config.image_token_index

    @classmethod
    def from_config(cls, config: Eagle2Config, dtype: torch.dtype = torch.float32) -> "Eagle2ForConditionalGeneration":
        return cls(config).to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp1[1].weight.dtype

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        n, h, w, c = x.shape
        f = int(1 / scale_factor)
        x = x.view(n, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5)  # [n, i, j, m, k, c]: patch (f i + m, f j + k)
        return x.reshape(n, h // f, w // f, f * f * c)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return features_from_vision(self, self.vision_model(pixel_values=pixel_values).last_hidden_state)

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                image_flags: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        """Logits of the whole sequence, the image's embeddings merged in (Eagle2's forward, without a cache)."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            mask = (input_ids == self.image_token_index).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, self.extract_feature(pixel_values).to(embeds.dtype))
        return CausalLMOutputWithPast(logits=self.language_model(inputs_embeds=embeds, use_cache=False).logits)


def features_from_vision(model, vision_hidden: torch.Tensor) -> torch.Tensor:
    """SigLIP's last hidden state [N, patches, Hv] -> image embeddings [N * tokens per tile, H].

    Only Eagle2's attribute names are used (pixel_shuffle, downsample_ratio, mlp1), so this serves the
    remote-code model as well as the class above.
    """
    n, patches, channels = vision_hidden.shape
    side = int(patches ** 0.5)
    shuffled = model.pixel_shuffle(vision_hidden.reshape(n, side, side, channels), scale_factor=model.downsample_ratio)
    embeds = model.mlp1(shuffled.reshape(n, -1, shuffled.shape[-1]))  # [N, tokens per tile, H]
    return embeds.reshape(-1, embeds.shape[-1])
