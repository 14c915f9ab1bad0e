"""Everything the default run needs, built in code: no network, no downloads."""

from sft_core.embedded.demo_data import DemoSplit, make_demo_split
from sft_core.embedded.model import build_tiny_llama, save_embedded_model, tiny_llama_config
from sft_core.embedded.tokenizer import build_byte_tokenizer

__all__ = ["DemoSplit", "build_byte_tokenizer", "build_tiny_llama", "make_demo_split", "save_embedded_model",
           "tiny_llama_config"]
