"""The embedded demo model: a tiny Llama built from tiny_llama.json, random-initialized."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

CONFIG_PATH = Path(__file__).with_name("tiny_llama.json")


def tiny_llama_config() -> LlamaConfig:
    fields = {k: v for k, v in json.loads(CONFIG_PATH.read_text()).items() if not k.startswith("_")}
    return LlamaConfig(**fields)


def build_tiny_llama(seed: int, **config_overrides) -> LlamaForCausalLM:
    """Same seed, same weights; the global RNG is left as it was. Overrides resize it (e.g. hidden_size)."""
    config = tiny_llama_config()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model


def save_embedded_model(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """The embedded model and byte-level tokenizer as a HuggingFace model folder (what any local model looks like)."""
    from sft_core.embedded.tokenizer import build_byte_tokenizer

    build_tiny_llama(seed, **config_overrides).save_pretrained(directory)
    build_byte_tokenizer().save_pretrained(directory)
    return Path(directory)
