"""LR schedules: the libraries' curves under our names, trlX's names as trlX builds them, one T_max default,
old names mapped with a warning, and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sft_core import ConfigError
from sft_core.config import SchedulerConfig
from sft_core.optim import build_scheduler

LR = 1e-3


def lrs(cfg: SchedulerConfig, total_steps: int, steps: int | None = None) -> list[float]:
    """The LR each optimizer step runs at, as the trainer sees it (optimizer.step, then scheduler.step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    out = []
    for _ in range(total_steps if steps is None else steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_rises_linearly_from_zero_then_constant():
    got = lrs(SchedulerConfig(name="constant_with_warmup", warmup_steps=4), 10)
    assert got == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4] + [LR] * 6, abs=1e-12)


def test_linear_with_warmup_decays_to_zero_at_the_last_step_and_ignores_min_lr_ratio():
    got = lrs(SchedulerConfig(name="linear_with_warmup", warmup_steps=2, min_lr_ratio=0.5), 10)
    assert got[:3] == pytest.approx([0, LR / 2, LR], abs=1e-12)
    assert got[2:] == pytest.approx([LR * (10 - k) / 8 for k in range(2, 10)], abs=1e-12)


def test_cosine_decays_to_its_floor():
    total, warmup, floor = 100, 10, 0.1
    got = lrs(SchedulerConfig(name="cosine_with_warmup", warmup_steps=warmup, min_lr_ratio=floor), total, steps=total + 1)
    assert got[warmup] == pytest.approx(LR)
    assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1:]))  # never rises after warmup
    halfway = warmup + (total - warmup) // 2
    assert got[halfway] == pytest.approx(LR * (floor + (1 - floor) / 2))
    assert got[total] == pytest.approx(LR * floor)  # the floor, reached at total_steps


def test_cosine_annealing_is_torchs_with_t_max_defaulting_to_the_run_length():
    total = 20
    got = lrs(SchedulerConfig(name="cosine_annealing", kwargs={"eta_min": 1e-4}), total, steps=total + 1)
    assert got[0] == LR  # trlX's schedule: no warmup
    expected = [1e-4 + (LR - 1e-4) * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total + 1)]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[total] == pytest.approx(1e-4)  # T_max = total_steps: the minimum at the last step
    explicit = lrs(SchedulerConfig(name="cosine_annealing", kwargs={"eta_min": 1e-4, "T_max": total}), 3 * total,
                   steps=total + 1)  # an explicit T_max wins over the run length
    assert explicit == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("kwargs, field", [
    ({"T_max": 0}, "scheduler.kwargs.T_max"),
    ({"T_max": -5}, "scheduler.kwargs.T_max"),
    ({"t_max": 10}, "scheduler.kwargs"),
])
def test_bad_cosine_annealing_kwargs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as raised:
        lrs(SchedulerConfig(name="cosine_annealing", kwargs=kwargs), 10)
    assert raised.value.field == field


def test_kwargs_for_a_schedule_that_takes_none_are_an_error():
    with pytest.raises(ConfigError, match="only cosine_annealing and linear take kwargs"):
        lrs(SchedulerConfig(name="cosine_with_warmup", kwargs={"T_max": 10}), 10)


def test_linear_is_trlxs_torch_linear_lr_with_its_kwargs():
    got = lrs(SchedulerConfig(name="linear", kwargs={"start_factor": 1.0, "end_factor": 0.1, "total_iters": 9}), 12)
    assert got == pytest.approx([LR * (1 - 0.9 * min(k, 9) / 9) for k in range(12)], rel=1e-9)
    assert lrs(SchedulerConfig(name="linear"), 7) == pytest.approx(  # torch's defaults: 1/3 -> 1 over 5 steps
        [LR * (1 / 3 + (2 / 3) * min(k, 5) / 5) for k in range(7)], rel=1e-9)
    with pytest.raises(ConfigError, match="start_factor"):
        lrs(SchedulerConfig(name="linear", kwargs={"warmup_steps": 3}), 10)


def test_trlx_schedules_have_no_warmup_and_ours_default_to_fifty_steps():
    assert SchedulerConfig(name="cosine_annealing").warmup == 0 and SchedulerConfig(name="linear").warmup == 0
    assert SchedulerConfig().warmup == 50 and SchedulerConfig(name="linear_with_warmup", warmup_steps=3).warmup == 3
    with pytest.raises(ValueError, match="cosine_with_warmup"):
        SchedulerConfig(name="cosine_annealing", warmup_steps=10)


def test_old_schedule_names_map_to_the_new_with_a_warning(caplog):
    assert SchedulerConfig(name="cosine").name == "cosine_with_warmup"
    assert SchedulerConfig(name="constant", warmup_steps=0).name == "constant_with_warmup"
    assert "deprecated" in caplog.text and "cosine_with_warmup" in caplog.text


@pytest.mark.parametrize("cfg", [
    SchedulerConfig(name="cosine_with_warmup", warmup_steps=5, min_lr_ratio=0.1),
    SchedulerConfig(name="linear_with_warmup", warmup_steps=5),
    SchedulerConfig(name="constant_with_warmup", warmup_steps=5),
    SchedulerConfig(name="linear", kwargs={"start_factor": 0.5, "total_iters": 20}),
    SchedulerConfig(name="cosine_annealing", kwargs={"eta_min": 1e-5}),
    SchedulerConfig(name="cosine_annealing", kwargs={"T_max": 7}),  # past T_max it climbs back up
], ids=lambda c: f"{c.name}-{c.kwargs}")
def test_a_restored_scheduler_continues_the_curve_exactly(cfg):
    """What resume does: a new optimizer and scheduler, then both load the saved states (the
    scheduler's through JSON, as trainer_state.json holds it)."""
    total, cut = 30, 12
    straight = lrs(cfg, total)

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=LR)
    scheduler = build_scheduler(optimizer, cfg, total)
    for _ in range(cut):
        optimizer.step()
        scheduler.step()
    saved_opt, saved_sched = optimizer.state_dict(), json.loads(json.dumps(scheduler.state_dict()))

    optimizer = torch.optim.AdamW([param], lr=LR)
    scheduler = build_scheduler(optimizer, cfg, total)
    optimizer.load_state_dict(saved_opt)
    scheduler.load_state_dict(saved_sched)
    resumed = []
    for _ in range(total - cut):
        resumed.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert resumed == straight[cut:]  # bit for bit
