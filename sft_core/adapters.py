"""PEFT adapters (LoRA & co.) from ``model.peft_config``: build, check against the model, wrap.

The trainer sees an ordinary module whose only trainable parameters are the adapter's. Two things
make the rest of the engine work unchanged:
- the optimizer already takes only parameters that require grad (sft_core.optim);
- checkpoints hold only what trains: the wrapped model's state_dict leaves out the frozen base
  weights, and loading it back does not miss them (they come from model.model_path again).
"""

from __future__ import annotations

import enum
import json
import logging
import re
from typing import Any

import torch

from sft_core.errors import ConfigError

logger = logging.getLogger(__name__)

PEFT_FIELD = "model.peft_config"


def peft_config_as_dict(value: Any) -> dict[str, Any]:
    """A dict in PEFT's own form, checked by PEFT itself; a ``peft.PeftConfig`` becomes its non-default fields."""
    import peft

    if isinstance(value, peft.PeftConfig):
        defaults = type(value)().to_dict()
        raw = {k: v for k, v in value.to_dict().items() if k in ("peft_type", "task_type") or v != defaults.get(k)}
    elif isinstance(value, dict):
        raw = dict(value)
    else:
        raise ValueError(f"expected a dict in PEFT's form or a peft.PeftConfig, got {type(value).__name__}")
    raw.pop("peft_version", None)  # written by to_dict(); the installed peft is what runs
    try:
        raw = _plain(raw)
    except TypeError as err:
        raise ValueError(f"every value must be plain data (YAML/JSON): {err}") from None
    kind = str(raw.get("peft_type", "")).upper()
    known = sorted(str(t.value) for t in peft.PeftType)
    if kind not in known:
        raise ValueError(f"peft_type {raw.get('peft_type')!r} is not a PEFT method; known: {', '.join(known)}")
    raw["peft_type"] = kind
    raw.setdefault("task_type", "CAUSAL_LM")  # PeftModelForCausalLM: generate() and the LM head as for the base
    try:
        peft.get_peft_config(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{kind}: {err}") from None
    return raw


def build_peft_config(raw: dict[str, Any]):
    import peft

    return peft.get_peft_config(dict(raw))


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Short names of the model's Linear layers (q_proj, ..., lm_head): what target_modules may name."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_target_modules(model: torch.nn.Module, target_modules: Any) -> None:
    """Every listed entry must match a module; PEFT itself only fails when none of them does."""
    if target_modules is None or target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):  # PEFT reads a string as a regex over full module names
        missing = [] if any(re.fullmatch(target_modules, n) for n in names) else [target_modules]
    else:
        missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"{PEFT_FIELD}.target_modules",
                          f"{type(model).__name__} has no module named {', '.join(map(repr, missing))}; its linear "
                          f"layers are {', '.join(linear_layer_names(model))} (or use \"all-linear\")")


def apply_adapter(model: torch.nn.Module, raw: dict[str, Any]) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT model whose adapter alone trains."""
    import peft

    config = build_peft_config(raw)
    check_target_modules(model, getattr(config, "target_modules", None))
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. no module matched a regex, or a layer type the method cannot adapt
        raise ConfigError(PEFT_FIELD, f"{raw['peft_type']}: {err}") from None
    _checkpoint_only_trainable(wrapped)
    return wrapped


def log_parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """Log and return (trainable, total) parameter counts; tied weights count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
                100 * trainable / max(total, 1))
    return trainable, total


def is_adapter_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _checkpoint_only_trainable(model: torch.nn.Module) -> None:
    """state_dict() keeps only trainable tensors; load_state_dict() does not miss the frozen ones.

    Hooks on the module, so every writer (Accelerate's save_state, DeepSpeed's engine, a DDP
    wrapper that adds a "module." prefix) sees the same thing without knowing about adapters.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def drop_frozen(module, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in trainable]:
            del state_dict[key]

    def forgive_missing_frozen(module, incompatible_keys):
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if any(k == t or k.endswith("." + t) for t in trainable)]

    model.register_state_dict_post_hook(drop_frozen)
    model.register_load_state_dict_post_hook(forgive_missing_frozen)


def _plain(value: Any) -> Any:
    """JSON-ready copy: enums to their values, sets and tuples to lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    json.dumps(value)  # anything else must already be plain; TypeError tells which
    return value
