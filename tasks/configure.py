"""Stage 1: validate the parameters into a full sft_core config, make the run folder and the MLflow run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.runtime import flow_run

from sft_core.run import Run, start_run
from tasks.params import FLOW_RUN_TAG, PipelineConfig, run_name_for
from tasks.reporting import mlflow_run_url
from tasks.retries import unless_bad_input


@task(name="configure", persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
      retry_condition_fn=unless_bad_input)
def configure(params: PipelineConfig) -> Run:
    """The config is validated here, once; every later stage trusts it."""
    run = start_run(params.to_sft_config(), name=run_name_for(params, flow_run.get_name()), runs_dir=params.runs_dir,
                    launch=params.launch, train_timeout_s=params.train_timeout_s, export=params.export, tags={FLOW_RUN_TAG: str(flow_run.get_id())},
                    reuse_tag=FLOW_RUN_TAG)
    if run.mlflow_run_id:
        create_link_artifact(link=mlflow_run_url(run), link_text="MLflow run", key="mlflow-run",
                             description=f"Metrics, samples and the model of `{run.name}` "
                             "(for a sqlite store, open it with `mlflow ui --backend-store-uri ...`).")
    get_run_logger().info("Run folder %s; MLflow run %s", run.root, run.mlflow_run_id)
    return run
