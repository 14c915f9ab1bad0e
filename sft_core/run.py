"""A run's lifecycle, the same for the CLI and the Prefect flow: its folder, its MLflow run, its
cached data, training it (in this process or as a launched process tree), and registering the model.

    run = start_run(config, name="exp-1", runs_dir="runs")   # folder, config.yaml, MLflow run
    data = prepare_data(run)                                 # tokenized once, cached by content
    summary = train_run(run, data)                           # trains and exports runs/exp-1/model
    exported = save_model(run, summary)                      # logs, registers, gates, finishes the MLflow run
    # on an error instead: fail_run(run.root)

Each step reads only the typed ``Run`` and what the step before returned, so a Prefect task is one
call, and a run can always be inspected or resumed from its folder alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from sft_core.checkpoint import list_checkpoints
from sft_core.config import DistributedConfig, PromotionConfig, TRLConfig
from sft_core.trlx_fields import resolve_tracking
from sft_core.data.prepared import PreparedData, is_prepared, prepare_from_config, save_prepared
from sft_core.data.sources import fingerprint_source
from sft_core.errors import BAD_INPUT_EXIT_CODE, SFTError
from sft_core.launch import ChildFailed, launch_command, run_child
from sft_core.layout import METRICS_FILE, RunLayout
from sft_core.data.prepared import MARKER
from sft_core.lineage import export_step, lineage_tags, metric_tags, record_data_inputs
from sft_core.modeling import base_model_reference
from sft_core.promotion import Lock, PromotionDecision, promote
from sft_core.registry import RegisteredModel, log_and_register
from sft_core.trainer import Callback, TrainSummary
from sft_core.tracking import ensure_experiment, probe_tracking_server, redact_uri, resolve_tracking_uri

logger = logging.getLogger(__name__)

PREPARED_DIR = ".prepared"  # under runs_dir: tokenized data shared by every run with the same inputs
PREPARED_FORMAT = "2"  # bump when what a prepared folder holds changes, so old cache entries are not read


class Launch(BaseModel):
    """How ``train_run`` runs the trainer."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["in_process", "subprocess"] = "in_process"
    timeout_s: float | None = Field(None, gt=0)  # a child is killed, whole process tree, past this

    @classmethod
    def choose(cls, dist: DistributedConfig, *, timeout_s: float | None = None,
               mode: Literal["auto", "in_process", "subprocess"] = "auto") -> Launch:
        """auto: in this process for one process without a deadline (fastest to start); else a child,
        since only a child process can be killed on time or spread over several processes."""
        if mode == "auto":
            mode = "in_process" if not dist.launches_child and timeout_s is None else "subprocess"
        if mode == "in_process" and timeout_s is not None:
            raise SFTError("a training deadline needs launch mode 'subprocess': blocking code in this "
                           "process cannot be stopped on time")
        return cls(mode=mode, timeout_s=timeout_s)


class Run(BaseModel):
    """One run: its validated config (folders and MLflow run filled in), where it lives, how it trains."""

    model_config = ConfigDict(extra="forbid")

    name: str
    root: str
    config: TRLConfig
    launch: Launch = Field(default_factory=Launch)
    data_key: str  # content hash of everything that decides the tokenized data
    data_digest: str | None = None  # the training data's content digest when the run began: what it trains on
    prepared_root: str
    export: Literal["final", "best"] = "final"  # which weights register_model logs

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.root))

    @property
    def prepared_dir(self) -> Path:
        return Path(self.prepared_root) / self.data_key

    @property
    def mlflow_run_id(self) -> str | None:
        return self.config.tracking.run_id


def start_run(config: TRLConfig, *, name: str, runs_dir: str | Path = "runs",
              launch: Literal["auto", "in_process", "subprocess"] = "auto", train_timeout_s: float | None = None,
              export: Literal["final", "best"] = "final", tags: dict[str, str] | None = None,
              reuse_tag: str | None = None) -> Run:
    """Make ``runs_dir/name``, open its MLflow run and write its config.yaml.

    ``launch``/``train_timeout_s``: see ``Launch.choose``.
    ``tags`` go on the MLflow run; with ``reuse_tag``, an existing run carrying the same value for
    that tag is reused (a retried flow run keeps its MLflow run). A run folder that exists already
    resumes from its last checkpoint."""
    runs_dir = Path(runs_dir).resolve()
    layout = RunLayout(runs_dir / name)
    launch_as = Launch.choose(config.distributed, mode=launch, timeout_s=train_timeout_s)
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    tracking = resolve_tracking(config)  # trlX's train.project_name & co. where tracking.* is unset
    run_id = open_mlflow_run(tracking_uri, tracking.experiment_name, name, {**(tags or {}), **tracking.tags},
                             reuse_tag=reuse_tag, parent_run_id=tracking.parent_run_id)
    config = config.evolve(
        train=dict(checkpoint_dir=str(layout.checkpoints), logging_dir=str(layout.logs),
                   resume_from_checkpoint="latest", tracker="mlflow" if run_id else "jsonl"),
        tracking=dict(tracking_uri=tracking_uri, run_name=name, run_id=run_id),
    )
    config.save_yaml(layout.config)
    return Run(name=name, root=str(layout.root), config=config, launch=launch_as, export=export,
               data_key=data_cache_key(config), data_digest=fingerprint_source(config.data.path),
               prepared_root=str(runs_dir / PREPARED_DIR))


def data_cache_key(config: TRLConfig) -> str:
    """Everything that decides the tokenized data, and nothing else: a new learning rate hits the cache."""
    decides = dict(
        data=config.data.model_dump(mode="json", exclude={"cache_dir", "num_proc"}),
        tokenizer=config.tokenizer.model_dump(mode="json"),
        model_path=config.model.model_path, trust_remote_code=config.model.trust_remote_code,
        seq_length=config.train.seq_length, seed=config.train.seed,  # the seed draws the held-out split
        content=[fingerprint_source(config.data.path), fingerprint_source(config.data.eval_path)],
        format=PREPARED_FORMAT,
    )
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(run: Run, *, on_progress: Callable[[int, int, float], None] | None = None) -> PreparedData:
    """Tokenize the run's data into ``prepared_root/data_key``, unless an earlier run already did.
    ``on_progress(rows_done, rows_total, seconds)`` follows the tokenizing (a progress bar shows it too)."""
    from sft_core.modeling import load_tokenizer

    if not is_prepared(str(run.prepared_dir)):
        config = run.config
        tokenizer = load_tokenizer(config.tokenizer, config.model)
        bundle = prepare_from_config(config, tokenizer, on_progress=on_progress)
        save_prepared(bundle, run.prepared_dir, tokenizer=tokenizer, seq_length=config.train.seq_length)
    return PreparedData.read(run.prepared_dir)


def train_run(run: Run, data: PreparedData, *, on_event: Callback | None = None,
              on_line: Callable[[str], None] = print) -> TrainSummary:
    """Train on the prepared data and export ``run.layout.model``: in this process, or as a launched
    child (torchrun, accelerate launch) whose output goes to ``on_line``. ``on_event`` gets the
    trainer's events ("log", "eval", "checkpoint", "end") either way."""
    config = run.config.evolve(data=dict(path=data.path))
    layout = run.layout
    if run.mlflow_run_id:
        record_training_data(config, data)
    if run.launch.mode == "in_process":
        from sft_core.api import train

        trainer = train(config=config, callbacks=[on_event] if on_event else [])
        trainer.save_pretrained(layout.model)
    else:
        config_path = config.save_yaml(layout.launch_config)
        cmd, env = launch_command(config_path, config.distributed, output_dir=layout.model)
        logger.info("Launching: %s", " ".join(cmd))
        tail = _MetricsTail(layout.logs / METRICS_FILE, config.train.total_steps, on_event)
        try:
            run_child(cmd, env=env, cwd=layout.root, on_line=on_line, on_tick=tail.poll,
                      timeout_s=run.launch.timeout_s)
        except ChildFailed as err:
            if err.exit_code == BAD_INPUT_EXIT_CODE:  # the child refused its input: no retry will help
                raise SFTError(str(err)) from None
            raise
        tail.poll()
    summary = TrainSummary.read(layout.logs)
    summary.model_dir = str(layout.model)
    return summary


class ExportedModel(BaseModel):
    """The save stage's result: the model folder, and where the registry holds it."""

    model_dir: str
    files: list[str]
    model_uri: str | None = None  # models:/m-... (MLflow's logged model)
    registered_name: str | None = None
    version: str | None = None
    alias: str | None = None
    metrics_step: int | None = None  # the step whose metrics the logged model carries
    promotion: PromotionDecision | None = None  # the gate's decision, for a registered version


def save_model(run: Run, summary: TrainSummary, *, version_tags: dict[str, str] | None = None,
               promotion_lock: Lock | None = None) -> ExportedModel:
    """Log the exported model (best/ with export='best') to the run's MLflow run with the metrics of the
    step it was evaluated at, register it under ``tracking.registered_model_name`` with
    ``tracking.registered_model_alias`` and its lineage tags (plus ``version_tags``), let the promotion
    gate decide whether it becomes the champion (``promotion_lock`` held around that), finish the run."""
    model_dir = Path(summary.best_checkpoint if run.export == "best" and summary.best_checkpoint
                     else summary.model_dir)
    exported = ExportedModel(model_dir=str(model_dir), files=sorted(p.name for p in model_dir.iterdir()))
    if not run.mlflow_run_id:
        logger.warning("No MLflow run (tracking was unreachable): the model is only at %s", model_dir)
        return exported
    config, tracking = run.config, run.config.tracking
    eval_prompts = _eval_prompts(run.prepared_dir)
    _record_data_inputs(run, eval_prompts)
    step = export_step(summary, export=run.export, logs_dir=run.layout.logs)
    tags = {**lineage_tags(config, base_model=base_model_reference(config.model), data_digest=run.data_digest,
                           extra=version_tags),
            **metric_tags(run.layout.logs, step)}
    registered = log_and_register(model_dir, run_id=run.mlflow_run_id, tracking_uri=tracking.tracking_uri,
                                  registered_name=tracking.registered_model_name,
                                  alias=tracking.registered_model_alias, step=step, tags=tags)
    decision = _gate(run, config, registered, eval_prompts, promotion_lock) if registered.version else None
    finish_run(run)
    return exported.model_copy(update=dict(model_uri=registered.model_uri, version=registered.version,
                                           registered_name=registered.registered_name, alias=registered.alias,
                                           metrics_step=step, promotion=decision))


def register_exported(run: Run, model_uri: str, model_dir: str | Path, *, registered_name: str,
                      alias: str | None = None, version_tags: dict[str, str] | None = None,
                      promotion: PromotionConfig | None = None, promotion_lock: Lock | None = None) -> ExportedModel:
    """Register a model that ``run`` logged without registering it (a sweep's best point), with the logged
    model's lineage and metric tags plus ``version_tags``; then the promotion gate decides, by ``promotion``
    (the sweep's settings) or else the run's own."""
    from sft_core.registry import register_logged_model

    model_dir = Path(model_dir)
    registered = register_logged_model(model_uri, tracking_uri=run.config.tracking.tracking_uri,
                                       registered_name=registered_name, alias=alias, tags=version_tags)
    config = run.config.evolve(promotion=promotion) if promotion is not None else run.config
    decision = _gate(run, config, registered, _eval_prompts(run.prepared_dir), promotion_lock)
    return ExportedModel(model_dir=str(model_dir), files=sorted(p.name for p in model_dir.iterdir()),
                         model_uri=registered.model_uri, registered_name=registered.registered_name,
                         version=registered.version, alias=registered.alias, promotion=decision)


def _gate(run: Run, config: TRLConfig, registered: RegisteredModel, eval_prompts: list[Any] | None,
          lock: Lock | None) -> PromotionDecision:
    return promote(config, registered_name=registered.registered_name, version=registered.version,
                   model_id=registered.model_id, tracking_uri=config.tracking.tracking_uri, eval_prompts=eval_prompts,
                   data_source=str(config.data.path), workdir=run.root, lock=lock)


def load_run(root: str | Path) -> Run:
    """A started run back from its folder alone (its config.yaml), e.g. a sweep's point to register."""
    layout = RunLayout(Path(root).resolve())
    if not layout.config.is_file():
        raise SFTError(f"{root}: not a run folder (it has no {layout.config.name})")
    config = TRLConfig.load_yaml(layout.config)
    return Run(name=layout.root.name, root=str(layout.root), config=config, data_key=data_cache_key(config),
               prepared_root=str(layout.root.parent / PREPARED_DIR))


def _eval_prompts(prepared_dir: Path) -> list[Any] | None:
    """The run's eval prompts (with references), as the prepare step stored them."""
    marker = prepared_dir / MARKER
    return json.loads(marker.read_text()).get("eval_prompts") if marker.is_file() else None


def _record_data_inputs(run: Run, eval_prompts: list[Any] | None) -> None:
    try:
        record_data_inputs(run.config.tracking.tracking_uri, run.mlflow_run_id, run.config, eval_prompts)
    except Exception as err:  # noqa: BLE001 - bookkeeping must not lose the model
        logger.warning("Could not log the source data and eval set to MLflow: %s", err)


# -- the MLflow run ------------------------------------------------------------------------------------
def open_mlflow_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], *,
                    reuse_tag: str | None = None, parent_run_id: str | None = None) -> str | None:
    """The run's MLflow run id; None (with a warning) when MLflow is unreachable: training goes on
    with local logs, which ``python -m sft_core sync-mlflow`` copies over later. With ``parent_run_id``
    the run is nested under that one (MLflow's ``mlflow.parentRunId`` tag, what its UI groups by)."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if parent_run_id:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
    try:
        probe_tracking_server(tracking_uri)
        experiment_id = ensure_experiment(experiment, tracking_uri)  # first: it opens the store under a lock
        client = mlflow.MlflowClient(tracking_uri)
        if reuse_tag and tags.get(reuse_tag):
            found = client.search_runs([experiment_id], filter_string=f"tags.`{reuse_tag}` = '{tags[reuse_tag]}'")
            if found:
                return found[0].info.run_id
        return client.create_run(experiment_id, run_name=run_name, tags={**tags, "sftflow.run_name": run_name}
                                 ).info.run_id
    except Exception as err:  # noqa: BLE001 - MLflow being down must not stop training
        logger.warning("MLflow at %s is unreachable (%s); training goes on with local logs only. "
                       "Sync later: python -m sft_core sync-mlflow RUN_DIR/logs", redact_uri(tracking_uri), err)
        return None


def finish_run(run: Run) -> None:
    """Mark the MLflow run FINISHED (the trainer leaves a run it did not open to its owner)."""
    if run.mlflow_run_id:
        import mlflow

        mlflow.MlflowClient(run.config.tracking.tracking_uri).set_terminated(run.mlflow_run_id, "FINISHED")


def fail_run(root: str | Path) -> None:
    """After a failure: mark the run's MLflow run FAILED, and remove its folder when it holds nothing
    to keep (no checkpoint, no model), so bad input leaves no half-made run behind."""
    layout = RunLayout(Path(root))
    if not layout.config.is_file():
        return  # the run never started: nothing was created
    tracking = TRLConfig.load_yaml(layout.config).tracking
    if not list_checkpoints(layout.checkpoints) and not layout.model.exists():
        shutil.rmtree(layout.root, ignore_errors=True)
    if tracking.run_id and tracking.tracking_uri:
        import mlflow

        probe_tracking_server(tracking.tracking_uri)  # a down server would hold us in MLflow's retries for minutes
        mlflow.MlflowClient(tracking.tracking_uri).set_terminated(tracking.run_id, "FAILED")


def record_training_data(config: TRLConfig, data: PreparedData) -> None:
    """The tokenized training set on the MLflow run (schema, digest, source), through ``mlflow.data``."""
    from datasets import load_from_disk

    from sft_core.tracking import log_input_dataset

    try:
        dataset = load_from_disk(str(Path(data.path) / "train"))
        log_input_dataset(config.tracking.tracking_uri, config.tracking.run_id, dataset, source=data.source,
                          name=f"{Path(data.source).name}-tokenized")
    except Exception as err:  # noqa: BLE001 - bookkeeping must not stop training
        logger.warning("Could not log the training set to MLflow: %s", err)


class _MetricsTail:
    """A launched child's metrics.jsonl, read as it grows, replayed as the trainer's own events."""

    def __init__(self, path: Path, total_steps: int, on_event: Callback | None):
        self.path, self.total_steps, self.on_event = path, total_steps, on_event
        self.offset = 0

    def poll(self) -> None:
        if self.on_event is None or not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self.offset)
            complete, _, _ = f.read().rpartition("\n")  # a line still being written waits for the next poll
        self.offset += len(complete) + 1 if complete else 0
        for line in filter(str.strip, complete.splitlines()):
            row: dict[str, Any] = json.loads(line)
            step = row.pop("step")
            row.pop("time", None)
            if any(key.startswith("train/") for key in row):
                self.on_event("log", {"step": step, "total_steps": self.total_steps, "metrics": row})
            else:
                self.on_event("eval", {"step": step, "metrics": row, "samples": []})
