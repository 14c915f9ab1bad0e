"""Memory-for-compute trades: same gradients, fewer saved activations."""

import pytest
import torch

from sft_core import ConfigError, default_sft_config
from sft_core.data.batching import micro_batches, pack
from sft_core.embedded import build_tiny_llama
from sft_core.losses import token_loss_sum
from sft_core.modeling import (AUTO_PASS_ACTIVATION_BYTES, enable_gradient_checkpointing, resolve_tokens_per_pass,
                               saved_activation_bytes_per_token)
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


def _held_bytes(model, batch) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, _ = token_loss_sum(model, batch, "cpu")
    del loss
    return sum(event.self_cpu_memory_usage for event in prof.key_averages())


def test_passes_hold_a_fraction_of_the_activations_and_auto_sizes_them_by_the_model():
    model = build_tiny_llama(seed=3).train()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (60, 50, 45, 40, 33, 30, 20, 12)]
    (_, whole), = micro_batches(rows, rows, 0, max_tokens=None, block_len=64)
    passes = micro_batches(rows, rows, 0, max_tokens=64, block_len=64)
    per_pass = max(_held_bytes(model, batch) for _, batch in passes)
    print(f"held after forward: one pass {_held_bytes(model, whole)}, largest of {len(passes)} passes {per_pass}")
    assert per_pass < 0.4 * _held_bytes(model, whole)

    # The estimate is within 25% of what the profiler sees the forward keep, per token slot.
    estimate = saved_activation_bytes_per_token(model)
    measured = _held_bytes(model, whole) / whole["input_ids"].numel()
    assert 0.8 < estimate / measured < 1.25, (estimate, measured)
    auto = resolve_tokens_per_pass("auto", model, on_cpu=True, deepspeed=False)
    assert auto == AUTO_PASS_ACTIVATION_BYTES // estimate
    assert resolve_tokens_per_pass("auto", model, on_cpu=False, deepspeed=False) is None
    assert resolve_tokens_per_pass("auto", model, on_cpu=True, deepspeed=True) is None
    assert resolve_tokens_per_pass(None, model, on_cpu=True, deepspeed=False) is None
    assert resolve_tokens_per_pass(512, model, on_cpu=False, deepspeed=False) == 512


@pytest.mark.parametrize("value", [0, -5, "half", 1.5, True])
def test_tokens_per_pass_is_validated(value):
    with pytest.raises(ConfigError, match="train.tokens_per_pass"):
        default_sft_config().evolve(train=dict(tokens_per_pass=value))


def test_tokens_per_pass_under_deepspeed_names_the_field():
    with pytest.raises(ConfigError, match="train.tokens_per_pass"):
        resolve_tokens_per_pass(512, build_tiny_llama(seed=0), on_cpu=True, deepspeed=True)


def test_adam_steps_fused_unless_the_kwargs_choose():
    params = list(build_tiny_llama(seed=0).parameters())
    config = default_sft_config().optimizer
    assert build_optimizer(params, config).defaults["fused"] is True
    chosen = config.model_copy(update={"kwargs": {**config.kwargs, "foreach": True}})
    assert not build_optimizer(params, chosen).defaults["fused"]
    assert not build_optimizer(params, config, fused=False).defaults["fused"]
