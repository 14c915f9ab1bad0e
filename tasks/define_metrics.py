"""Stage 3: resolve the eval metrics (built-in names or 'module:function') before any training starts."""

from __future__ import annotations

from prefect import get_run_logger, task

from sft_core.metrics import resolve_metric
from tasks.artifacts import MetricSuite, PreparedData


@task(name="define_metrics", persist_result=True, result_serializer="json")
def define_metrics(metrics: list[str], data: PreparedData, allowed_prefixes: list[str]) -> MetricSuite:
    """A typo in a metric name fails here, in seconds, not after an hour of training."""
    for ref in metrics:
        resolve_metric(ref, allowed_prefixes)
    if metrics and data.eval_prompts == 0:
        get_run_logger().warning("metrics %s are set but the data has no eval prompts to generate from", metrics)
    return MetricSuite(metrics=list(metrics), eval_prompts=data.eval_prompts)
