"""Stage 3: resolve the eval metrics (built-in names or 'module:function') before any training starts."""

from __future__ import annotations

from prefect import get_run_logger, task

from sft_core.metrics import resolve_metrics
from tasks.artifacts import MetricSuite, PreparedData, Run


@task(name="define_metrics", persist_result=True, result_serializer="json")
def define_metrics(run: Run, data: PreparedData) -> MetricSuite:
    """A typo in a metric name fails here, in seconds, not after an hour of training."""
    method = run.config.method
    resolve_metrics(method)
    if method.metrics and data.eval_prompts == 0:
        get_run_logger().warning("metrics %s are set but the data has no eval prompts to generate from",
                                 method.metrics)
    return MetricSuite(metrics=list(method.metrics), eval_prompts=data.eval_prompts)
