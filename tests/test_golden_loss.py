"""Golden losses: the embedded model's first 10 training losses, pinned to 1e-4 (as torchtune's recipe tests do).

Any change to the model, its initialization, the data, masking, packing, the loss, its normalization,
the optimizer or the LR schedule moves these numbers. If a change is meant to, rerun
``python tests/test_golden_loss.py`` and paste its output into GOLDEN_LOSSES, saying why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

# Losses of optimizer steps 1..10 (log_interval=1), fp32, one thread, deterministic kernels.
GOLDEN_LOSSES = [5.550347, 5.610621, 5.235439, 5.140293, 4.965975, 4.893241, 4.784678, 4.618504, 4.664772, 4.600283]
TOLERANCE = 1e-4  # absolute; what fp32 kernels of different CPUs (AVX2, AVX-512) leave after 10 steps


def golden_config(run_dir: Path):
    """Every setting that moves the losses written out, so that changing a default does not move them;
    only the embedded model (tiny_llama.json) comes from outside."""
    from sft_core import default_sft_config

    return default_sft_config().evolve(
        train=dict(total_steps=10, log_interval=1, batch_size=16, seq_length=64, gradient_accumulation_steps=1,
                   max_grad_norm=1.0, seed=1000, mixed_precision="no",
                   eval_interval=1000, checkpoint_interval=1000, tracker="jsonl", packing=True,
                   tokens_per_pass=None, group_by_length=False, gradient_checkpointing=False,
                   checkpoint_dir=str(run_dir / "checkpoints"), logging_dir=str(run_dir / "logs")),
        optimizer=dict(name="adamw", kwargs=dict(lr=1e-3, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.0)),
        scheduler=dict(name="cosine", warmup_steps=3, min_lr_ratio=0.1),
        data=dict(num_demo_rows=400, eval_fraction=0.05, max_rows=None, max_eval_prompts=0,
                  cache_dir=str(run_dir / "data-cache")),
        method=dict(metrics=[]),
    )


def first_losses(run_dir: Path) -> list[float]:
    """Train the golden config with one thread and deterministic algorithms; the per-step losses."""
    from sft_core import train
    from sft_core.tracking import read_history

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision()
    torch.set_num_threads(1)  # one thread: a parallel reduction's partial sums depend on the thread count
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")  # "medium" lets oneDNN use bf16 on AMX CPUs
    try:
        train(config=golden_config(run_dir))
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.set_float32_matmul_precision(saved[2])
    history = read_history(run_dir / "logs" / "metrics.jsonl")
    return [h["train/loss"] for h in history if "train/loss" in h]


def test_first_ten_losses_match_the_golden_values(tmp_path):
    losses = first_losses(tmp_path)
    assert len(losses) == 10
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=TOLERANCE), json.dumps(losses)


if __name__ == "__main__":  # print today's values, to review and paste above
    import tempfile

    print(json.dumps([round(x, 6) for x in first_losses(Path(tempfile.mkdtemp()))]))
    sys.exit(0)
