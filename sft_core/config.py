"""Typed config: trlX's sections and field names, validated once at the edge.

``TRLConfig`` is the whole run (trlX's name); ``SFTConfig`` is its ``method`` section (trlX's SFT
method config), a ``MethodConfig``. Every default lives here, with a one-line comment. Code below
the edge receives a section (``config.train``, ``config.optimizer``...) and never calls ``get(key, default)``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from sft_core.config_io import as_config_error, deep_merge, flatten, load_yaml_text
from sft_core.config_io import parse_set_args  # noqa: F401 - callers import it from here
from sft_core.errors import ConfigError
from sft_core.trlx_fields import drop_rl_only_keys, leaf_keys, unflatten, unknown_hparam, warn_ignored

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:tiny-llama"
EMBEDDED_DATA = "embedded:demo"
# Modules a "module:function" metric may come from. The UI passes strings, so this is what stands
# between a form field and arbitrary imports: sft_core's own, and the conventional user module names.
DEFAULT_METRIC_MODULE_PREFIXES = ("sft_core.", "metrics.", "sftflow_metrics.")


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    section: ClassVar[str] = ""  # this section's key in TRLConfig: which trlX RL-only keys it accepts and ignores
    _ignored: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _ignore_rl_only_keys(cls, data: Any, handler: Any) -> Any:
        """trlX's RL-only keys (``TrainConfig(pipeline=..., trainer=...)``) load, with a warning, and are dropped."""
        ignored: list[str] = []
        if isinstance(data, dict):
            data, ignored = drop_rl_only_keys(cls.section, data)
        model = handler(data)
        if ignored:
            model._ignored = ignored
            warn_ignored(ignored)
        return model


class ModelConfig(_Section):
    section: ClassVar[str] = "model"
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
    section: ClassVar[str] = "tokenizer"
    tokenizer_path: str | None = None  # None: use model.model_path
    padding_side: Literal["left", "right"] = "right"  # for training batches; generation always pads left
    truncation_side: Literal["left", "right"] = "right"  # which end of a too-long row is cut
    tokenizer_extra_configs: dict[str, Any] = Field(default_factory=dict)  # extra from_pretrained kwargs
    # For a model without a chat template (or to replace its own): "chatml", a Jinja string, or a .jinja file.
    chat_template: str | None = None


class TrainConfig(_Section):
    section: ClassVar[str] = "train"
    seq_length: int = Field(64, ge=2, description="Max tokens per row; longer rows are truncated.")
    epochs: int = Field(100, ge=1)  # upper bound; total_steps usually ends the run first
    # Optimizer steps. The demo's "add" task is learned last (from ~step 1000): at 1500 the run ended
    # mid-climb and exact match swung 0.83-0.98 with seed and CPU; 2000 gives 0.96-1.0 in <= 163 s of training
    # on 2 AMD EPYC cores (2200 gave 0.98-1.0 but up to 181 s: over the demo's 3-minute budget). benchmarks.demo_seeds
    total_steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1, description="Rows per micro-batch, per process.")
    # trlX's: run each batch as batch_size/minibatch_size forward/backward passes of this many rows, whose
    # gradients add up to the batch's update. Set, it decides the passes and tokens_per_pass is not applied;
    # gradient_accumulation_steps still gathers that many batches per optimizer step. None: tokens_per_pass decides.
    minibatch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches per optimizer step
    max_grad_norm: float | None = Field(1.0, gt=0)  # None disables clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 autocast works on AVX-512 CPUs
    checkpoint_interval: int = Field(500, ge=1)  # optimizer steps between checkpoints
    eval_interval: int = Field(500, ge=1)  # optimizer steps between evaluations (also at 0 and at the end)
    log_interval: int = Field(10, ge=1)  # optimizer steps between tracker writes
    checkpoint_dir: str = "runs/sft/checkpoints"  # step-N/ and best/ are written here
    logging_dir: str = "runs/sft/logs"  # metrics.jsonl, eval samples, loss curve; trlX's None means this default
    save_total_limit: int | None = Field(2, ge=1)  # keep the newest N step checkpoints; None keeps all
    save_best: bool = True  # keep best/ by best_metric
    # e.g. "exact_match". None: as trlX, the mean "reward" when metric_fn returns one, else eval/loss if any
    best_metric: str | None = None
    best_mode: Literal["max", "min"] | None = None  # None: "min" for losses, "max" otherwise
    seed: int = 1000  # trlX's default seed
    # metrics.jsonl is always written. "wandb" (trlX's default) goes through Accelerate's W&B tracker; needs wandb
    tracker: Literal["jsonl", "mlflow", "tensorboard", "wandb"] | None = "jsonl"
    resume_from_checkpoint: str | None = None  # a step-N folder, or "latest" under checkpoint_dir
    save_optimizer: bool = True  # false: checkpoints hold no optimizer state; a resume starts the optimizer fresh
    # trlX's W&B fields, used when tracking.* leaves them unset: project_name -> MLflow experiment,
    # run_name -> run name, entity_name/group_name -> run tags "entity"/"group", tags -> run tags (value "")
    project_name: str | None = None
    run_name: str | None = None
    entity_name: str | None = None
    group_name: str | None = None
    tags: list[str] = Field(default_factory=list)
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

    @field_validator("logging_dir", "tags", mode="before")
    @classmethod
    def _trlx_none(cls, v: Any, info: Any) -> Any:
        """trlX writes None for "not set" here; it means our default."""
        return cls.model_fields[info.field_name].get_default(call_default_factory=True) if v is None else v

    @model_validator(mode="after")
    def _minibatch_divides_batch(self) -> TrainConfig:
        if self.minibatch_size is not None and self.batch_size % self.minibatch_size:
            raise ValueError(f"train.minibatch_size ({self.minibatch_size}) must divide train.batch_size "
                             f"({self.batch_size}), as in trlX")
        return self


class OptimizerConfig(_Section):
    section: ClassVar[str] = "optimizer"
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


# Our schedules were called "cosine" and "constant" before trlX's names took "linear"; the old names still load.
DEPRECATED_SCHEDULES = {"cosine": "cosine_with_warmup", "constant": "constant_with_warmup"}
TRLX_SCHEDULES = ("cosine_annealing", "linear")  # torch's schedulers as trlX builds them: kwargs, no warmup
DEFAULT_WARMUP_STEPS = 50  # the *_with_warmup schedules' warmup when scheduler.warmup_steps is unset


class SchedulerConfig(_Section):
    section: ClassVar[str] = "scheduler"
    # trlX's, built as trlX builds them, torch's class(optimizer, **kwargs), no warmup:
    #   cosine_annealing: CosineAnnealingLR with T_max (default: total_steps; torch has none) and eta_min (default 0);
    #   linear: LinearLR with start_factor, end_factor, total_iters (torch's defaults 1/3, 1.0, 5).
    # Ours, Transformers' schedules after a linear warmup from 0: cosine_with_warmup decays to
    # min_lr_ratio*lr at total_steps, linear_with_warmup to 0, constant_with_warmup stays at lr.
    name: Literal["cosine_with_warmup", "linear_with_warmup", "constant_with_warmup", "cosine_annealing",
                  "linear"] = "cosine_with_warmup"
    # Optimizer steps of linear warmup from LR 0 (*_with_warmup only). None: 50 (DEFAULT_WARMUP_STEPS) for them.
    warmup_steps: int | None = Field(None, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # floor of the cosine decay, relative to lr; cosine_with_warmup only
    kwargs: dict[str, Any] = Field(default_factory=dict)  # trlX's schedules' constructor kwargs; an error for ours

    @field_validator("name", mode="before")
    @classmethod
    def _renamed(cls, v: Any) -> Any:
        if isinstance(v, str) and v in DEPRECATED_SCHEDULES:
            logger.warning("scheduler.name %r is deprecated: it is now called %r (same schedule)", v,
                           DEPRECATED_SCHEDULES[v])
            return DEPRECATED_SCHEDULES[v]
        return v

    @model_validator(mode="after")
    def _no_warmup_for_trlx_schedules(self) -> SchedulerConfig:
        if self.name in TRLX_SCHEDULES and self.warmup_steps:
            raise ValueError(f"scheduler.warmup_steps: trlX's {self.name} has no warmup; use "
                             f"{self.name.replace('_annealing', '')}_with_warmup for a warmup")
        return self

    @property
    def warmup(self) -> int:
        """The warmup in optimizer steps: 0 for trlX's schedules."""
        if self.name in TRLX_SCHEDULES:
            return 0
        return DEFAULT_WARMUP_STEPS if self.warmup_steps is None else self.warmup_steps


class MethodConfig(_Section):
    """trlX's base of method configs: just the method's name."""

    section: ClassVar[str] = "method"
    name: str = "sftconfig"  # trlX's method name; RL method names load but their fields are ignored


class SFTConfig(MethodConfig):
    """trlX's SFT method config (``name="sftconfig"``, ``gen_kwargs``), plus our evaluation settings."""

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
    section: ClassVar[str] = "data"
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
    section: ClassVar[str] = "tracking"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment_name: str | None = None  # None: train.project_name (trlX's), else "sftflow"
    run_name: str | None = None  # None: train.run_name (trlX's)
    run_id: str | None = None  # log into this existing MLflow run (the pipeline creates one per flow run)
    parent_run_id: str | None = None  # open the run nested under this MLflow run (a sweep's: sft-sweep sets it)
    tags: dict[str, str] = Field(default_factory=dict)  # plus train.entity_name/group_name/tags (trlX's)
    registered_model_name: str | None = None  # register the exported model under this name
    registered_model_alias: str = "candidate"
    log_samples: int = Field(32, ge=0)  # eval samples logged as a table


class PromotionConfig(_Section):
    """The save stage's gate (sft_core.promotion): does a newly registered version become the champion?"""

    section: ClassVar[str] = "promotion"
    # gate: only when it beats the champion on the gate set; always: every new version; never: none
    policy: Literal["always", "gate", "never"] = "gate"
    # Scored on the gate set: a generation metric (bare or metrics/NAME) or eval/loss (the references'
    # token loss). None: train.best_metric, by the same rule as best/ (eval/loss when that is unset too).
    metric: str | None = None
    mode: Literal["max", "min"] | None = None  # None: train.best_mode, else "min" for losses, "max" otherwise
    min_delta: float = Field(0.0, ge=0)  # the candidate must win by more than 0 and by at least this much
    # A JSON or JSONL file of {"prompt", "reference"} rows. None: the eval prompts of the run that made the
    # first champion, stored with that model, so new training data never moves the yardstick.
    gate_path: str | None = None
    champion_alias: str = "champion"  # the alias that moves only on promotion


class DistributedConfig(_Section):
    """How many processes train, on how many machines. Several processes or machines launch a child
    through torchrun (CPU) or ``accelerate launch`` (GPU); see sft_core.launch."""

    section: ClassVar[str] = "distributed"
    # Processes on THIS machine (one per GPU), for torchrun and accelerate launch alike; the run has
    # num_processes * num_machines ranks. >1 (or num_machines >1) launches a child.
    num_processes: int = Field(1, ge=1)
    accelerate_config: Literal["single", "ddp", "zero2", "zero3"] | str = "single"  # shipped name or a YAML path
    use_cpu: bool = False  # force CPU even where a GPU is present (CPU DDP runs over gloo)
    # Several machines: every node runs the same config with its own machine_rank (0 .. num_machines-1).
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)  # this node; node 0 hosts the rendezvous store (static backend)
    main_process_ip: str | None = None  # address of node 0 (or of the c10d endpoint); needed with num_machines >1
    main_process_port: int | None = Field(None, ge=1, le=65535)  # None: a free port on one machine, 29500 on several
    rdzv_backend: Literal["static", "c10d"] = "static"  # static: fixed node ranks; c10d: torchrun's rendezvous

    @model_validator(mode="after")
    def _machines_agree(self) -> DistributedConfig:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"distributed.machine_rank ({self.machine_rank}) must be below distributed.num_machines "
                             f"({self.num_machines}): nodes are numbered 0 .. num_machines-1")
        if self.num_machines > 1 and not (self.main_process_ip or "").strip():
            raise ValueError(f"distributed.main_process_ip is required with distributed.num_machines "
                             f"{self.num_machines}: the address every node reaches node 0 at")
        return self

    @property
    def world_size(self) -> int:
        """Ranks in the whole run."""
        return self.num_processes * self.num_machines

    @property
    def launches_child(self) -> bool:
        """Whether training runs under a launcher (torchrun / accelerate launch) rather than as one process."""
        return self.world_size > 1 or self.accelerate_config != "single"

    @property
    def rendezvous_port(self) -> int | None:
        """The port every node meets at: the configured one, torchrun's 29500 on several machines, else None."""
        if self.main_process_port is None and self.num_machines > 1:
            return 29500
        return self.main_process_port


class TRLConfig(_Section):
    """The whole run (trlX's name for it): trlX's six sections plus data, tracking and distributed."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    method: SFTConfig = Field(default_factory=SFTConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)

    @property
    def ignored_keys(self) -> list[str]:
        """trlX RL-only keys that were present in the input and ignored (dotted)."""
        sections = [getattr(self, name) for name in type(self).model_fields]
        return self._ignored + [key for section in sections for key in section._ignored]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TRLConfig:
        """Validate a nested dict; errors name the dotted field (``train.batch_size``)."""
        if not isinstance(raw, dict):
            raise ConfigError("<config>", f"expected a mapping of sections, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)  # each section drops (and reports) trlX's RL-only keys itself
        except ValidationError as err:
            raise as_config_error(err) from None

    @classmethod
    def update(cls, base: TRLConfig | dict[str, Any], hparams: dict[str, Any]) -> TRLConfig:
        """trlX's sweep merge: ``TRLConfig.update(config_or_dict, {"optimizer.kwargs.lr": 1e-4})``.

        ``hparams`` keys are dotted paths or nested dicts. A key the config does not have raises
        ValueError (our ConfigError) naming it, as trlX does; keys below a free-form dict
        (``optimizer.kwargs``, ``method.gen_kwargs``) are the dict's own.
        """
        config = base if isinstance(base, TRLConfig) else cls.from_dict(copy.deepcopy(base))
        nested = unflatten(hparams)
        for dotted in leaf_keys(nested):
            problem = unknown_hparam(cls, dotted)
            if problem:
                raise ConfigError(dotted, problem)
        return config.evolve(**nested)

    @classmethod
    def load_yaml(cls, path: str | Path) -> TRLConfig:
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
    def evolve(self, **sections: dict[str, Any]) -> TRLConfig:
        """A new config with ``sections`` deep-merged in: ``config.evolve(train=dict(batch_size=4))``.

        One exception: switching ``optimizer.name`` or ``scheduler.name`` does not carry the old
        kwargs over (AdamW's betas mean nothing to SGD); kwargs given with the new name replace
        them, and without any only the optimizer's lr and weight_decay carry over.
        """
        base = self.to_dict()
        sections = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in sections.items()}
        for section, keep in (("optimizer", ("lr", "weight_decay")), ("scheduler", ())):
            update = sections.get(section)
            if isinstance(update, dict) and update.get("name", base[section]["name"]) != base[section]["name"]:
                base[section]["kwargs"] = {k: v for k, v in base[section]["kwargs"].items()
                                           if k in keep and "kwargs" not in update}
                if section == "scheduler":  # a warmup set for the old schedule is not one for the new
                    base[section]["warmup_steps"] = None
        return type(self).from_dict(deep_merge(base, sections))

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> TRLConfig:
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
        return flatten(self.to_dict())


def default_sft_config() -> TRLConfig:
    """Our defaults, the embedded demo: a tiny Llama learning short instruction tasks, offline, in minutes
    on a CPU. (trlX's SFT defaults: ``sft_core.data.default_configs.default_sft_config``.)"""
    return TRLConfig()
