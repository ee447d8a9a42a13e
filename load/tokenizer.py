"""The model's tokenizer, or a built-in byte-level one where that cannot be had offline; EOS and padding ids."""

from __future__ import annotations

from errors import UsageError, logger
from load.presets import MODEL_CONFIGS, is_tiny_preset
from options import ModelOptions


def load_tokenizer(model: ModelOptions, config):
    """The model's tokenizer, or the built-in byte tokenizer where that cannot be had offline."""
    name = model.tokenizer or model.name
    if not (is_tiny_preset(name) or (model.random_weights and model.tokenizer is None and name in MODEL_CONFIGS
                                     and not _hub_cached(name))):
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=True,
                                                 local_files_only=model.random_weights)
        except (OSError, ValueError) as err:
            if model.tokenizer is not None:
                raise UsageError(f"cannot load tokenizer '{name}' ({str(err).splitlines()[0]}); "
                                 "check the name, or leave out --tokenizer") from None
    logger.warning("using the built-in byte-level tokenizer: the tokenizer of %s is not available offline", name)
    return ByteTokenizer(config.bos_token_id, config.eos_token_id, getattr(config, "pad_token_id", None))


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)


def eos_token_ids(tokenizer, config) -> list[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def pad_token_id(tokenizer, config) -> int:
    for candidate in (getattr(config, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None)):
        if candidate is not None:
            return candidate
    eos = eos_token_ids(tokenizer, config)
    return eos[0] if eos else 0


class ByteTokenizer:
    """A byte-level tokenizer: ids 0-255 are UTF-8 bytes; other ids are shown as <|id|>.

    It stands in for the model's own tokenizer where that cannot be loaded (tiny presets,
    --random_weights with no network), so prompts and generated ids can still be shown as text.
    """

    def __init__(self, bos_token_id: int | None, eos_token_id: int | list[int] | None, pad_token_id: int | None):
        self.bos_token_id = bos_token_id
        eos = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
        self.eos_token_ids = [e for e in eos if e is not None]
        self.eos_token_id = self.eos_token_ids[0] if self.eos_token_ids else None
        self.pad_token_id = pad_token_id if pad_token_id is not None else self.eos_token_id

    def encode(self, text: str) -> list[int]:
        prefix = [self.bos_token_id] if self.bos_token_id is not None else []
        return prefix + list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out, pending = [], bytearray()
        for token in ids:
            if token < 256:
                pending.append(token)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            special = token in (self.bos_token_id, self.pad_token_id, *self.eos_token_ids)
            if not (skip_special_tokens and special):
                out.append(f"<|{token}|>")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)
