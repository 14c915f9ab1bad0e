"""On a CUDA GPU: bf16 training really runs there and learns, and the fsdp2 launch config trains, checkpoints,
resumes and exports on one GPU. `pytest -m gpu`; scripts/gpu_check.sh runs them on a lent GPU machine.
Skipped without CUDA (tests/conftest.py skips every test marked gpu).

The loss thresholds come from the same runs on the CPU under bf16 autocast (eval loss 5.61 -> 3.73 for full
fine-tuning and 5.61 -> 4.91 for LoRA in 30 steps), with margin for the GPU's other kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, python_env, tiny_config
from sft_core.tracking import read_history

pytestmark = pytest.mark.gpu

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
        "task_type": "CAUSAL_LM"}


def eval_losses(logs: Path) -> list[float]:
    return [h["eval/loss"] for h in read_history(logs / "metrics.jsonl") if "eval/loss" in h]


def train_losses(logs: Path) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in read_history(logs / "metrics.jsonl") if "train/loss" in h}


def test_full_finetuning_under_bf16_autocast_learns_on_the_gpu(tmp_path):
    from sft_core import train

    config = tiny_config(tmp_path, train=dict(total_steps=30, eval_interval=30, checkpoint_interval=30,
                                              mixed_precision="bf16"), data=dict(max_eval_prompts=4))
    trainer = train(config=config)
    assert trainer.accelerator.device.type == "cuda" and trainer.accelerator.mixed_precision == "bf16"
    assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    before, after = eval_losses(tmp_path / "logs")[0], eval_losses(tmp_path / "logs")[-1]
    assert after < before - 1.0, (before, after)


def test_lora_on_bf16_weights_learns_on_the_gpu(tmp_path):
    import torch

    from sft_core import train

    config = tiny_config(tmp_path, model=dict(dtype="bfloat16", peft_config=LORA),
                         train=dict(total_steps=30, eval_interval=30, checkpoint_interval=30, mixed_precision="bf16"),
                         optimizer=dict(kwargs=dict(lr=3e-3)), data=dict(max_eval_prompts=4))
    trainer = train(config=config)
    named = dict(trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {p.device.type for p in named.values()} == {"cuda"}
    assert all(p.dtype == torch.bfloat16 for n, p in named.items() if n not in trainable)  # the frozen base
    before, after = eval_losses(tmp_path / "logs")[0], eval_losses(tmp_path / "logs")[-1]
    assert after < before - 0.3, (before, after)
    exported = trainer.save_pretrained(tmp_path / "adapter")
    assert (exported / "adapter_model.safetensors").is_file()


def run_launched(run_dir: Path, **train_fields) -> list[str]:
    """Train the embedded demo through the fsdp2 launch config on one GPU, as `sftflow run` would launch it."""
    from sft_core.config import DistributedConfig
    from sft_core.launch import launch_command, run_child

    config = tiny_config(run_dir, train=dict(total_steps=10, checkpoint_interval=5, eval_interval=10, log_interval=1,
                                             **train_fields),
                         data=dict(max_eval_prompts=4), distributed=dict(accelerate_config="fsdp2"))
    config.save_yaml(run_dir / "config.yaml")
    cmd, env = launch_command(run_dir / "config.yaml", DistributedConfig(accelerate_config="fsdp2"),
                              output_dir=run_dir / "model", gpu_available=True)
    assert "accelerate.commands.launch" in cmd and str(ROOT / "sft_core" / "launch_configs" / "fsdp2.yaml") in cmd
    lines: list[str] = []
    run_child(cmd, env={**python_env(), **env}, cwd=run_dir, on_line=lines.append, timeout_s=240)
    return lines


def test_fsdp2_config_trains_checkpoints_resumes_and_exports_on_one_gpu(tmp_path):
    """fp32 (mixed_precision no) so the resumed steps can be compared with the original's: the same kernels on
    the same batches from the same weights, optimizer and RNG; 1e-4 leaves room only for CUDA's
    non-deterministic atomics (the embedding's backward), not for a lost optimizer state (>1e-2 here)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sft_core.embedded import build_tiny_llama

    first = tmp_path / "first"
    first.mkdir()
    run_launched(first)
    checkpoint = first / "checkpoints" / "step-5"
    # Accelerate's FSDP writer made these (FULL_STATE_DICT): FSDP really ran, and the optimizer state was saved.
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    run_launched(resumed, resume_from_checkpoint=str(checkpoint))
    a, b = train_losses(first / "logs"), train_losses(resumed / "logs")
    assert sorted(b) == list(range(6, 11))
    worst = max(abs(a[s] - b[s]) for s in b)
    assert worst < 1e-4, worst

    # The export is gathered whole (not this rank's shards), loads as the plain architecture, and the resumed
    # run ends at the weights the uninterrupted one ended at.
    exported = resumed / "model"
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.num_parameters() == build_tiny_llama(0).num_parameters()
    original, again = load_file(first / "model" / "model.safetensors"), load_file(exported / "model.safetensors")
    assert sorted(original) == sorted(again)
    assert max(float((original[k] - again[k]).abs().max()) for k in original) < 1e-3
