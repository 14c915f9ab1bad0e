"""Memory-for-compute trades: same gradients, fewer saved activations."""

import pytest
import torch

from sft_core import ConfigError, default_sft_config
from sft_core.data.batching import pack
from sft_core.embedded import build_tiny_llama
from sft_core.losses import token_loss_sum
from sft_core.modeling import enable_gradient_checkpointing
from sft_core.optim import build_optimizer


def _packed_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (40, 25, 17, 60, 9)]
    return pack(rows, rows, block_len=64, pad_id=0)


def _grads_and_held_bytes(mode) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients, and the bytes the forward pass leaves allocated for backward (the profiler's net allocations)."""
    model = build_tiny_llama(seed=3)
    enable_gradient_checkpointing(model, mode)
    model.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, n = token_loss_sum(model, _packed_batch(), "cpu")
    held = sum(event.self_cpu_memory_usage for event in prof.key_averages())
    (loss / n).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}, held


def test_selective_checkpointing_keeps_gradients_and_saves_less():
    plain, plain_bytes = _grads_and_held_bytes(False)
    selective, selective_bytes = _grads_and_held_bytes("selective")
    full, full_bytes = _grads_and_held_bytes(True)
    for name, grad in plain.items():
        torch.testing.assert_close(selective[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(full[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    print(f"held after forward: plain {plain_bytes}, selective {selective_bytes}, full {full_bytes} bytes")
    assert full_bytes < selective_bytes < 0.75 * plain_bytes


def test_gradient_checkpointing_modes_are_validated():
    assert default_sft_config().evolve(train=dict(gradient_checkpointing="selective")).train.gradient_checkpointing \
        == "selective"
    with pytest.raises(ConfigError, match="train.gradient_checkpointing"):
        default_sft_config().evolve(train=dict(gradient_checkpointing="partial"))


def test_adam_steps_fused_unless_the_kwargs_choose():
    params = list(build_tiny_llama(seed=0).parameters())
    config = default_sft_config().optimizer
    assert build_optimizer(params, config).defaults["fused"] is True
    chosen = config.model_copy(update={"kwargs": {**config.kwargs, "foreach": True}})
    assert not build_optimizer(params, chosen).defaults["fused"]
    assert not build_optimizer(params, config, fused=False).defaults["fused"]
