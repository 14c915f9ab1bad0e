"""Typed SFT config: trlX's sections and field names, validated once at the edge.

Every default lives here, with a one-line comment. Code below the edge receives a
section (``config.train``, ``config.optimizer``...) and never calls ``get(key, default)``.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from sft_core.errors import ConfigError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:tiny-llama"
EMBEDDED_DATA = "embedded:demo"
# Modules a "module:function" metric may come from. The UI passes strings, so this is what stands
# between a form field and arbitrary imports: sft_core's own, and the conventional user module names.
DEFAULT_METRIC_MODULE_PREFIXES = ("sft_core.", "metrics.", "sftflow_metrics.")


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; read it as the float everyone means."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    model_path: str = Field(EMBEDDED_MODEL, description="Local HF causal-LM folder, hub name, .gguf file, "
                                                        "or 'embedded:tiny-llama'.")
    num_layers_unfrozen: int = Field(-1, ge=-1, description="Train only the top N blocks (+ head); -1 trains all.")
    model_arch_type: Literal["causal"] = "causal"  # trlX field; SFT here is decoder-only
    trust_remote_code: bool = False  # off unless you trust the model folder's Python code
    model_extra_configs: dict[str, Any] = Field(default_factory=dict)  # extra from_pretrained kwargs
    # Weights' dtype. "auto": the checkpoint's own. float16 trains only on a GPU; on a CPU use bfloat16.
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    gguf_file: str | None = None  # a .gguf file inside the model_path folder (or set model_path to the file)
    # A PEFT adapter in PEFT's own form, as in trlX, e.g. {"peft_type": "LORA", "r": 16, "lora_alpha": 32,
    # "target_modules": "all-linear"}; or a peft.PeftConfig from Python. None: train the weights themselves.
    peft_config: dict[str, Any] | None = None
    merge_adapters_on_export: bool = False  # export the merged full model instead of the adapter alone

    @model_validator(mode="before")
    @classmethod
    def _dtype_from_extra_configs(cls, data: Any) -> Any:
        """`dtype` (or transformers' older `torch_dtype`) in model_extra_configs means model.dtype."""
        if not isinstance(data, dict) or not isinstance(data.get("model_extra_configs"), dict):
            return data
        extra = dict(data["model_extra_configs"])
        found = {key: extra.pop(key) for key in ("dtype", "torch_dtype") if key in extra}
        if not found:
            return data
        values = {str(v).removeprefix("torch.") for v in found.values()}
        explicit = data.get("dtype", "float32")  # the default gives way to model_extra_configs
        if len(values) > 1 or (explicit != "float32" and str(explicit) not in values):
            raise ValueError(f"model.dtype and model_extra_configs {sorted(found)} disagree; set only model.dtype")
        return {**data, "model_extra_configs": extra, "dtype": values.pop()}

    @field_validator("peft_config", mode="before")
    @classmethod
    def _peft_config(cls, v: Any) -> Any:
        """A PeftConfig object becomes its dict; a dict is checked by peft itself (peft_type, field names)."""
        if v is None:
            return None
        from sft_core.adapters import peft_config_as_dict

        return peft_config_as_dict(v)

    @model_validator(mode="after")
    def _adapter_or_unfrozen_layers(self) -> ModelConfig:
        if self.peft_config is not None and self.num_layers_unfrozen != -1:
            raise ValueError("model.num_layers_unfrozen freezes layers of the full model; with model.peft_config "
                             "only the adapter trains, so leave num_layers_unfrozen at -1")
        return self


class TokenizerConfig(_Section):
    tokenizer_path: str | None = None  # None: use model.model_path
    padding_side: Literal["left", "right"] = "right"  # for training batches; generation always pads left
    truncation_side: Literal["left", "right"] = "right"  # which end of a too-long row is cut
    tokenizer_extra_configs: dict[str, Any] = Field(default_factory=dict)  # extra from_pretrained kwargs
    # For a model without a chat template (or to replace its own): "chatml", a Jinja string, or a .jinja file.
    chat_template: str | None = None


class TrainConfig(_Section):
    seq_length: int = Field(64, ge=2, description="Max tokens per row; longer rows are truncated.")
    epochs: int = Field(100, ge=1)  # upper bound; total_steps usually ends the run first
    # Optimizer steps. The demo's "add" task is learned last (from ~step 1000): at 1500 the run ended
    # mid-climb and exact match swung 0.83-0.98 with seed and CPU; 2000 gives 0.96-1.0 in <= 163 s of training
    # on 2 AMD EPYC cores (2200 gave 0.98-1.0 but up to 181 s: over the demo's 3-minute budget). benchmarks.demo_seeds
    total_steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1, description="Rows per micro-batch, per process.")
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches per optimizer step
    max_grad_norm: float | None = Field(1.0, gt=0)  # None disables clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 autocast works on AVX-512 CPUs
    checkpoint_interval: int = Field(500, ge=1)  # optimizer steps between checkpoints
    eval_interval: int = Field(500, ge=1)  # optimizer steps between evaluations (also at 0 and at the end)
    log_interval: int = Field(10, ge=1)  # optimizer steps between tracker writes
    checkpoint_dir: str = "runs/sft/checkpoints"  # step-N/ and best/ are written here
    logging_dir: str = "runs/sft/logs"  # metrics.jsonl, eval samples, loss curve
    save_total_limit: int | None = Field(2, ge=1)  # keep the newest N step checkpoints; None keeps all
    save_best: bool = True  # keep best/ by best_metric
    best_metric: str | None = None  # e.g. "exact_match"; None: eval/loss when held-out samples exist
    best_mode: Literal["max", "min"] | None = None  # None: "min" for losses, "max" otherwise
    seed: int = 1000  # trlX's default seed
    tracker: Literal["jsonl", "mlflow", "tensorboard"] | None = "jsonl"  # metrics.jsonl is always written
    resume_from_checkpoint: str | None = None  # a step-N folder, or "latest" under checkpoint_dir
    on_nonfinite_loss: Literal["raise", "skip"] = "raise"  # a NaN/inf loss stops the run, or skips the batch
    packing: bool = True  # lay each batch's rows into seq_length blocks (no row split, no cross-row attention)
    # Trade compute for activation memory. true: recompute each block in backward (~1/3 more compute,
    # least memory); "selective": recompute only the elementwise ops (a few % more compute, most of the saving).
    gradient_checkpointing: bool | Literal["selective"] = False
    # Most token slots (padding included) in one forward/backward. A bigger batch runs as several
    # passes whose gradients add up to the same update: the same result with less activation memory.
    # "auto": on the CPU, about 128 MB of saved activations by the model's shape; on a GPU and
    # under DeepSpeed, one pass. None: always one pass.
    tokens_per_pass: Annotated[int, Field(ge=1, strict=True)] | Literal["auto"] | None = "auto"  # strict: true is no 1
    group_by_length: bool = False  # batch rows of similar length; beware: can make batches single-task


class OptimizerConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    # weight_decay 0.1: the usual AdamW value, for the demo's held-out sums (tried with total_steps 2000-2200, not alone)
    kwargs: dict[str, Any] = Field(default_factory=lambda: dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1))

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("kwargs")
    @classmethod
    def _positive_lr(cls, v: dict[str, Any]) -> dict[str, Any]:
        lr = v.get("lr", 1e-3)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        return v


class SchedulerConfig(_Section):
    # Transformers' schedules (constant_with_warmup, linear, cosine_with_min_lr): warmup, then
    # constant: lr; linear: decay to 0 at total_steps; cosine: cosine decay to min_lr_ratio*lr at total_steps.
    # cosine_annealing: trlX's, torch's CosineAnnealingLR(**kwargs) with T_max (default total_steps)
    # and eta_min (default 0); no warmup, as in trlX.
    name: Literal["constant", "linear", "cosine", "cosine_annealing"] = "cosine"
    warmup_steps: int = Field(50, ge=0)  # optimizer steps of linear warmup from LR 0; not for cosine_annealing
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # floor of the cosine decay, relative to lr; cosine only
    kwargs: dict[str, Any] = Field(default_factory=dict)  # cosine_annealing's T_max, eta_min; an error for the others


class MethodConfig(_Section):
    name: str = "sftconfig"  # trlX's method name; RL method names load but their fields are ignored
    gen_kwargs: dict[str, Any] = Field(
        default_factory=lambda: dict(max_new_tokens=16, do_sample=False)
    )  # a list value runs a sweep over that key, as in trlX
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"])  # built-in names or "module:function"
    # "module:function" metrics import only from modules under these prefixes (a UI form must not name os:system)
    metric_module_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_METRIC_MODULE_PREFIXES))
    stop_sequences: list[str] = Field(default_factory=list)  # generated text is cut at the first one
    eval_batch_size: int = Field(64, ge=1)  # prompts per generate() call

    @field_validator("gen_kwargs")
    @classmethod
    def _one_sweep(cls, v: dict[str, Any]) -> dict[str, Any]:
        swept = [k for k, val in v.items() if isinstance(val, list)]
        if len(swept) > 1:
            raise ValueError(f"only one key may be a list (a sweep); got lists for {swept}")
        return v


class DataConfig(_Section):
    path: str | None = EMBEDDED_DATA  # file, folder, hub name or "embedded:demo"; unused when train() gets samples
    format: Literal["auto", "text", "pairs", "dialogue", "chat"] = "auto"  # how rows become samples
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    template: str | None = None  # "alpaca", or a format string over columns, e.g. "Q: {question}\nA: "
    filter: str | None = None  # a simple condition on one column, e.g. "label == 1"
    eval_path: str | None = None  # held-out file; else eval_fraction of path is held out
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    max_eval_prompts: int = Field(256, ge=0)  # held-out prompts used for generation metrics
    max_rows: int | None = Field(None, ge=1)  # cap on training rows, for quick runs
    num_demo_rows: int = Field(20000, ge=10)  # rows the embedded demo generates
    cache_dir: str | None = None  # tokenized-data cache; None: ~/.cache/sftflow/datasets
    split: str = "train"  # hub data sets and saved DatasetDict folders: the split to train on
    subset: str | None = None  # hub data sets: the subset (configuration) name, e.g. "en"
    num_proc: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"  # tokenizers; auto: usable cores, 1 below 20k rows


class TrackingConfig(_Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment_name: str = "sftflow"
    run_name: str | None = None
    run_id: str | None = None  # log into this existing MLflow run (the pipeline creates one per flow run)
    tags: dict[str, str] = Field(default_factory=dict)
    registered_model_name: str | None = None  # register the exported model under this name
    registered_model_alias: str = "candidate"
    log_samples: int = Field(32, ge=0)  # eval samples logged as a table


class DistributedConfig(_Section):
    num_processes: int = Field(1, ge=1)  # >1 launches a child through torchrun
    accelerate_config: Literal["single", "ddp", "zero2", "zero3"] | str = "single"  # shipped name or a YAML path
    use_cpu: bool = False  # force CPU even where a GPU is present (CPU DDP runs over gloo)


# trlX configs carry keys for RL pipelines. We accept them so a trlX YAML loads, and say they are ignored.
RL_ONLY_KEYS: dict[str, set[str]] = {
    "": {"pipeline", "orchestrator"},
    "train": {
        "pipeline", "orchestrator", "trainer", "trainer_kwargs", "rollout_logging_dir", "project_name",
        "entity_name", "group_name", "tags", "minibatch_size", "save_optimizer",
    },
    "method": {
        "num_rollouts", "chunk_size", "ppo_epochs", "init_kl_coef", "target", "horizon", "gamma", "lam",
        "cliprange", "cliprange_value", "vf_coef", "scale_reward", "ref_mean", "ref_std", "cliprange_reward",
        "gen_experience_kwargs", "num_value_layers_unfrozen", "tau", "cql_scale", "awac_scale", "alpha",
        "beta", "steps_for_target_q_sync", "two_qs", "num_train_sequences",
    },
    "model": {"num_value_layers_unfrozen"},
}


class SFTConfig(_Section):
    """The whole run: trlX's sections plus data, tracking and distributed."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    _ignored_keys: list[str] = PrivateAttr(default_factory=list)

    @property
    def ignored_keys(self) -> list[str]:
        """trlX RL-only keys that were present in the input and ignored."""
        return list(self._ignored_keys)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SFTConfig:
        """Validate a nested dict; errors name the dotted field (``train.batch_size``)."""
        if not isinstance(raw, dict):
            raise ConfigError("<config>", f"expected a mapping of sections, got {type(raw).__name__}")
        cleaned, ignored = _drop_rl_only_keys(raw)
        try:
            config = cls.model_validate(cleaned)
        except ValidationError as err:
            raise _as_config_error(err) from None
        config._ignored_keys = ignored
        if ignored:
            logger.warning("Ignoring trlX RL-only config keys (not used by SFT): %s", ", ".join(ignored))
        return config

    @classmethod
    def load_yaml(cls, path: str | Path) -> SFTConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("<config>", f"config file not found: {path}")
        try:
            raw = load_yaml_text(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(str(path), f"not valid YAML: {err}") from None
        return cls.from_dict(raw)

    def save_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)
        return path

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    # -- derivation ---------------------------------------------------------------------------
    def evolve(self, **sections: dict[str, Any]) -> SFTConfig:
        """A new config with ``sections`` deep-merged in: ``config.evolve(train=dict(batch_size=4))``.

        One exception: switching ``optimizer.name`` or ``scheduler.name`` does not carry the old
        kwargs over (AdamW's betas mean nothing to SGD); kwargs given with the new name replace
        them, and without any only the optimizer's lr and weight_decay carry over.
        """
        base = self.to_dict()
        for section, keep in (("optimizer", ("lr", "weight_decay")), ("scheduler", ())):
            update = sections.get(section)
            if isinstance(update, dict) and update.get("name", base[section]["name"]) != base[section]["name"]:
                base[section]["kwargs"] = {k: v for k, v in base[section]["kwargs"].items()
                                           if k in keep and "kwargs" not in update}
        return type(self).from_dict(_deep_merge(base, sections))

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> SFTConfig:
        """Apply dotted overrides: ``{"train.batch_size": 4}`` or ``["train.batch_size=4"]``."""
        if isinstance(overrides, list):
            overrides = parse_set_args(overrides)
        nested: dict[str, Any] = {}
        for dotted, value in overrides.items():
            parts = dotted.split(".")
            if len(parts) < 2 or not all(parts):
                raise ConfigError(dotted, "an override key must be SECTION.FIELD, e.g. train.batch_size")
            if parts[0] not in type(self).model_fields:
                raise ConfigError(dotted, f"unknown section {parts[0]!r}; known: {', '.join(type(self).model_fields)}")
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return self.evolve(**nested)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> scalar, for trackers (MLflow params)."""
        return _flatten(self.to_dict())


def default_sft_config() -> SFTConfig:
    """The embedded demo: a tiny Llama learning short instruction tasks, offline, in minutes on a CPU."""
    return SFTConfig()


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """``["train.batch_size=4", "method.gen_kwargs={max_new_tokens: 8}"]`` -> typed dict (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "expected --set SECTION.FIELD=VALUE")
        try:
            out[key.strip()] = load_yaml_text(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


# -- helpers ------------------------------------------------------------------------------------
def _drop_rl_only_keys(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    cleaned = copy.deepcopy(raw)
    ignored: list[str] = []
    for key in list(cleaned):
        if key in RL_ONLY_KEYS[""]:
            cleaned.pop(key)
            ignored.append(key)
    for section, keys in RL_ONLY_KEYS.items():
        body = cleaned.get(section) if section else None
        if isinstance(body, dict):
            for key in sorted(set(body) & keys):
                body.pop(key)
                ignored.append(f"{section}.{key}")
    return cleaned, ignored


def _as_config_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<config>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in first["loc"][:-1]) or "top level"
        msg = f"unknown key {first['loc'][-1]!r} in section {section!r}"
    elif "input" in first and first["type"] not in ("missing",):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in err.errors()[1:4])
        msg += f"; {more} more error(s) at {others}"
    return ConfigError(field, msg)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))  # an empty dict adds nothing
        else:
            out[name] = value
    return out
