"""The shared work every contender does: one model folder, one data set, one set of hyperparameters."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

# ~20M parameters: the "larger" model of the benchmark (the embedded one is 0.8M). head_dim is set
# because a config resized after construction keeps the embedded model's (32).
MEDIUM_LLAMA = dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8, num_attention_heads=7,
                    num_key_value_heads=7, head_dim=64, max_position_embeddings=1024)
# SmolLM2-135M's shape (its config.json: Llama, 134.5M parameters with tied embeddings), random weights, for GPU
# throughput without a weight download. The byte-level tokenizer uses 262 of the 49152 ids; the embedding and the
# LM head's matmul are the real model's size, so the compute per token is SmolLM2's.
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                    tie_word_embeddings=True)
# The same plumbing at a size a CPU trains in seconds (gpu_check --dry-run).
TINY_GQA_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=512,
                      tie_word_embeddings=True)
MODEL_SHAPES = {"tiny": {}, "medium": MEDIUM_LLAMA, "smollm2": SMOLLM2_135M, "tiny_gqa": TINY_GQA_LLAMA}


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # "tiny" (the embedded config) or "medium"
    data: str  # "demo" or "varlen"
    seq_length: int
    batch_size: int
    lr: float
    warmup_steps: int  # untimed steps, then `windows` timed windows of `window_steps`
    window_steps: int
    windows: int = 3
    seed: int = 0
    device: str = "cpu"  # "cuda": every contender trains on the GPU
    bf16: bool = False  # bf16 autocast over fp32 weights, for every contender (TRL's bf16=True)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.windows * self.window_steps

    def to_json(self) -> str:
        return json.dumps(asdict(self))


WORKLOADS = {
    "demo": Workload("demo", model="tiny", data="demo", seq_length=64, batch_size=64, lr=1e-3, warmup_steps=5,
                     window_steps=20),
    "varlen": Workload("varlen", model="medium", data="varlen", seq_length=512, batch_size=4, lr=5e-4,
                       warmup_steps=2, window_steps=4),
}
# Not in the default run (python -m benchmarks.vs_trl --workloads smollm2_gpu): needs a CUDA GPU.
GPU_WORKLOADS = {
    "smollm2_gpu": Workload("smollm2_gpu", model="smollm2", data="varlen", seq_length=512, batch_size=16, lr=2e-4,
                            warmup_steps=3, window_steps=15, device="cuda", bf16=True),
}


def build_model_folder(kind: str, folder: Path) -> Path:
    """The contenders all load the same saved folder (weights, config, byte-level tokenizer)."""
    from sft_core.embedded import save_embedded_model

    if (folder / "config.json").exists():
        return folder
    return save_embedded_model(folder, seed=0, **MODEL_SHAPES[kind])


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 7))) for _ in range(n))


def varlen_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Instruction rows whose byte length (= token count) is spread evenly over about 16-512."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = rng.randint(16, 500)
        prompt_len = max(4, int(total * rng.uniform(0.2, 0.7)))
        prompt = ("summarize: " + _words(rng, prompt_len))[:prompt_len] + "\n"
        completion = _words(rng, total)[: max(4, total - prompt_len)]
        rows.append((prompt, completion))
    return rows


def load_pairs(kind: str, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held_out) pairs."""
    if kind == "demo":
        from sft_core.embedded import make_demo_split

        split = make_demo_split(20000, held_out_fraction=0.02)
        return split.train, split.held_out
    rows = varlen_pairs(2064, seed)
    return rows[64:], rows[:64]
