"""Stage 1: validate the parameters into a full sft_core config, make the run folder and the MLflow run."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.runtime import flow_run

from sft_core.config import SFTConfig, default_sft_config
from sft_core.data.sources import fingerprint_source
from sft_core.tracking import ensure_experiment, probe_tracking_server, redact_uri, resolve_tracking_uri
from tasks.artifacts import DataSpec, RunConfig
from tasks.params import PipelineConfig

FLOW_RUN_TAG = "prefect.flow_run_id"


@task(name="configure", persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2)
def configure(params: PipelineConfig) -> RunConfig:
    """The config is validated here, once; every later stage trusts it."""
    config = build_config(params)
    run_name = params.run_name or flow_run.get_name() or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = (Path(params.runs_dir) / run_name).resolve()
    tracking_uri = pipeline_tracking_uri(params, config)
    mlflow_run_id, experiment_id = start_mlflow_run(tracking_uri, params.experiment_name, run_name)

    config = config.evolve(
        train=dict(checkpoint_dir=str(run_dir / "checkpoints"), logging_dir=str(run_dir / "logs"),
                   resume_from_checkpoint="latest", tracker="mlflow" if mlflow_run_id else "jsonl"),
        tracking=dict(tracking_uri=tracking_uri, experiment_name=params.experiment_name, run_name=run_name,
                      run_id=mlflow_run_id),
        distributed=dict(num_processes=params.num_processes, accelerate_config=params.accelerate_config),
    )
    config_path = config.save_yaml(run_dir / "config.yaml")
    if mlflow_run_id:
        create_link_artifact(link=mlflow_run_url(tracking_uri, experiment_id, mlflow_run_id), link_text="MLflow run",
                             key="mlflow-run", description=f"Metrics, samples and the model of `{run_name}` "
                             "(for a sqlite store, open it with `mlflow ui --backend-store-uri ...`).")
    get_run_logger().info("Run folder %s; MLflow run %s", run_dir, mlflow_run_id)
    return RunConfig(
        run_name=run_name, run_dir=str(run_dir), config=config, config_path=str(config_path),
        data_spec=data_spec(config, Path(params.runs_dir).resolve() / ".prepared"),
        mlflow_run_id=mlflow_run_id, mlflow_experiment_id=experiment_id, tracking_uri=tracking_uri,
        launch=choose_launch(params), train_timeout_s=params.train_timeout_minutes * 60
        if params.train_timeout_minutes else None, concurrency_limit=params.concurrency_limit, export=params.export,
        registered_model_name=params.registered_model_name, model_alias=params.model_alias,
    )


def build_config(params: PipelineConfig) -> SFTConfig:
    """The sft_core config a pipeline run trains with: its base YAML (or the demo) plus its overrides."""
    base = SFTConfig.load_yaml(params.config_path) if params.config_path else default_sft_config()
    return base.with_overrides(params.config_overrides())


def pipeline_tracking_uri(params: PipelineConfig, config: SFTConfig) -> str:
    return resolve_tracking_uri(params.tracking_uri or config.tracking.tracking_uri)


def data_spec(config: SFTConfig, prepared_root: Path) -> DataSpec:
    return DataSpec(
        data=config.data.model_dump(mode="json"), tokenizer=config.tokenizer.model_dump(mode="json"),
        model_path=config.model.model_path, trust_remote_code=config.model.trust_remote_code,
        seq_length=config.train.seq_length, seed=config.train.seed,
        source_fingerprint=fingerprint_source(config.data.path) + fingerprint_source(config.data.eval_path),
        prepared_root=str(prepared_root),
    )


def choose_launch(params: PipelineConfig) -> str:
    if params.launch != "auto":
        return params.launch
    single = params.num_processes == 1 and params.accelerate_config == "single"
    return "in_process" if single and params.train_timeout_minutes is None else "subprocess"


def start_mlflow_run(tracking_uri: str, experiment: str, run_name: str) -> tuple[str | None, str | None]:
    """One MLflow run per flow run; a retried flow run finds the one it made before."""
    import mlflow

    flow_run_id = flow_run.get_id()
    try:
        probe_tracking_server(tracking_uri)
        experiment_id = ensure_experiment(experiment, tracking_uri)  # first: it opens the store under a lock
        client = mlflow.MlflowClient(tracking_uri)
        if flow_run_id:
            found = client.search_runs([experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'")
            if found:
                return found[0].info.run_id, experiment_id
        tags = {FLOW_RUN_TAG: flow_run_id} if flow_run_id else {}
        run = client.create_run(experiment_id, run_name=run_name, tags={**tags, "sftflow.run_name": run_name})
        return run.info.run_id, experiment_id
    except Exception as err:  # noqa: BLE001 - MLflow being down must not stop training
        get_run_logger().warning("MLflow at %s is unreachable (%s); training goes on with local logs only. "
                                 "Sync later: python -m sft_core sync-mlflow RUN_DIR/logs",
                                 redact_uri(tracking_uri), err)
        return None, None


def mlflow_run_url(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    base = redact_uri(tracking_uri).replace("***@", "") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
