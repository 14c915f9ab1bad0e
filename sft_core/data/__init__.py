"""Data: sample formats, masking, tokenization with caching, batching, and file loaders."""

from sft_core.data.batching import BatchPosition, EpochBatchSampler, collate
from sft_core.data.formats import Segments, detect_format, prompt_segments, to_segments
from sft_core.data.masking import IGNORE_INDEX, build_example, show_mask, truncate
from sft_core.data.prepare import PreparedSplit, PrepStats, encode_prompt, prepare_samples

__all__ = [
    "IGNORE_INDEX", "BatchPosition", "EpochBatchSampler", "PrepStats", "PreparedSplit", "Segments", "build_example",
    "collate", "detect_format", "encode_prompt", "prepare_samples", "prompt_segments", "show_mask", "to_segments",
    "truncate",
]
