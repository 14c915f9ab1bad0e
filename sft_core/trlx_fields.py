"""trlX's config fields: which ones we honour, which RL-only ones we accept and ignore, and how
trlX's W&B-style tracking fields map onto MLflow.

A trlX config (YAML, or a script building ``TrainConfig(..., pipeline=..., trainer=...)``) must
load unchanged, so RL-only keys are dropped with a warning in each section's constructor. Any
other unknown key stays an error: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_core.config import TrackingConfig, TRLConfig

logger = logging.getLogger(__name__)

# trlX configs carry keys for RL pipelines and trainers: accepted so trlX configs load, reported as ignored.
RL_ONLY_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"pipeline", "orchestrator"}),
    "train": frozenset({"pipeline", "orchestrator", "trainer", "trainer_kwargs", "rollout_logging_dir"}),
    "method": frozenset({
        "num_rollouts", "chunk_size", "ppo_epochs", "init_kl_coef", "target", "horizon", "gamma", "lam",
        "cliprange", "cliprange_value", "vf_coef", "scale_reward", "ref_mean", "ref_std", "cliprange_reward",
        "gen_experience_kwargs", "num_value_layers_unfrozen", "tau", "cql_scale", "awac_scale", "alpha",
        "beta", "steps_for_target_q_sync", "two_qs", "num_train_sequences",
    }),
    "model": frozenset({"num_value_layers_unfrozen"}),
}

# Every field of trlX's six SFT sections at CarperAI/trlx 3340c2f (trlx/data/configs.py and the
# SFTConfig method of trlx/trainer/accelerate_sft_trainer.py). The README's field table lists the
# same fields; tests/test_trlx_parity.py checks both against the config classes.
TRLX_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("model_path", "model_arch_type", "num_layers_unfrozen", "peft_config", "model_extra_configs"),
    "tokenizer": ("tokenizer_path", "padding_side", "truncation_side", "tokenizer_extra_configs"),
    "optimizer": ("name", "kwargs"),
    "scheduler": ("name", "kwargs"),
    "train": ("total_steps", "seq_length", "epochs", "batch_size", "checkpoint_interval", "eval_interval",
              "pipeline", "trainer", "trainer_kwargs", "project_name", "run_name", "entity_name", "group_name",
              "checkpoint_dir", "rollout_logging_dir", "save_best", "save_optimizer", "resume_from_checkpoint",
              "tracker", "logging_dir", "tags", "seed", "minibatch_size"),
    "method": ("name", "gen_kwargs"),
}

DEFAULT_EXPERIMENT = "sftflow"  # the MLflow experiment when neither tracking.experiment_name nor train.project_name


def drop_rl_only_keys(section: str, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` without the RL-only keys of ``section`` ("" for the top level), and their dotted names."""
    rl_only = RL_ONLY_KEYS.get(section, frozenset())
    dropped = sorted(set(raw) & rl_only)
    if not dropped:
        return raw, []
    cleaned = {k: v for k, v in raw.items() if k not in rl_only}
    return cleaned, [f"{section}.{k}" if section else k for k in dropped]


def warn_ignored(keys: list[str]) -> None:
    logger.warning("Ignoring trlX RL-only config keys (not used by SFT): %s", ", ".join(keys))


def unknown_hparam(config_cls: type, dotted: str) -> str | None:
    """Why ``dotted`` names no field of ``config_cls`` (None when it does). A key below a free-form
    dict field (``optimizer.kwargs.lr``, ``method.gen_kwargs.top_k``) is known; an RL-only key is known
    (and ignored)."""
    from pydantic import BaseModel

    parts = dotted.split(".")
    model: Any = config_cls
    section = ""
    for i, part in enumerate(parts):
        if part in RL_ONLY_KEYS.get(section, ()):
            return None
        field = model.model_fields.get(part)
        if field is None:
            where = f"section {section!r}" if section else "the config"
            return f"parameter {dotted} is not present in the config (no {part!r} in {where}; a typo or a wrong config)"
        kind = field.annotation
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return None  # a value, or a free-form dict: anything below it is the value's business
        model, section = kind, ".".join(parts[: i + 1])
    return None


def unflatten(hparams: dict[str, Any]) -> dict[str, Any]:
    """``{"train.batch_size": 4, "optimizer": {"kwargs": {"lr": 1e-4}}}`` -> one nested dict (deep-merged)."""
    nested: dict[str, Any] = {}
    for dotted, value in hparams.items():
        *layers, leaf = str(dotted).split(".")
        node = nested
        for layer in layers:
            node = node.setdefault(layer, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **copy.deepcopy(value)}
        else:
            node[leaf] = copy.deepcopy(value)
    return nested


def leaf_keys(nested: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of a nested dict (an empty dict is a leaf)."""
    out: list[str] = []
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += leaf_keys(value, name + ".")
        else:
            out.append(name)
    return out


def resolve_tracking(config: TRLConfig) -> TrackingConfig:
    """``config.tracking`` with trlX's train.project_name / run_name / entity_name / group_name / tags
    filled in where ours are unset: project -> MLflow experiment, run_name -> run name, the rest ->
    run tags. Where both are set and differ, ours win, with a warning."""
    train, tracking = config.train, config.tracking
    experiment = _pick("tracking.experiment_name", tracking.experiment_name, "train.project_name", train.project_name)
    run_name = _pick("tracking.run_name", tracking.run_name, "train.run_name", train.run_name)
    from_trlx = {tag: "" for tag in train.tags}
    from_trlx.update({k: v for k, v in (("entity", train.entity_name), ("group", train.group_name)) if v is not None})
    clashes = sorted(k for k in set(from_trlx) & set(tracking.tags) if from_trlx[k] != tracking.tags[k])
    if clashes:
        logger.warning("tracking.tags and train.entity_name/group_name/tags both set %s; tracking.tags wins", clashes)
    return tracking.model_copy(update=dict(experiment_name=experiment or DEFAULT_EXPERIMENT, run_name=run_name,
                                           tags={**from_trlx, **tracking.tags}))


def _pick(ours_name: str, ours: str | None, theirs_name: str, theirs: str | None) -> str | None:
    if ours is not None and theirs is not None and ours != theirs:
        logger.warning("%s=%r and trlX's %s=%r are both set; using %s", ours_name, ours, theirs_name, theirs,
                       ours_name)
    return ours if ours is not None else theirs
