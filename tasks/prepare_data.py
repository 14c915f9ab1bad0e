"""Stage 2: load and tokenize the data once; cached across runs by its inputs and the source's content."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from sft_core.config import DataConfig, ModelConfig, SFTConfig, TokenizerConfig
from sft_core.data.prepared import prepare_from_config, save_prepared
from sft_core.modeling import load_tokenizer
from tasks.artifacts import DataSpec, PreparedData


@task(name="prepare_data", cache_policy=INPUTS + TASK_SOURCE, persist_result=True, result_serializer="json")
def prepare_data(spec: DataSpec) -> PreparedData:
    """Tokenized Arrow sets in ``<runs_dir>/.prepared/<key>``, shared by every run with the same inputs."""
    config = SFTConfig(
        model=ModelConfig(model_path=spec.model_path, trust_remote_code=spec.trust_remote_code),
        tokenizer=TokenizerConfig(**spec.tokenizer), data=DataConfig(**spec.data),
    ).evolve(train=dict(seq_length=spec.seq_length, seed=spec.seed))
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    bundle = prepare_from_config(config, tokenizer)
    key = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    path = save_prepared(bundle, Path(spec.prepared_root) / key, tokenizer=tokenizer, seq_length=spec.seq_length)
    train = bundle.train.stats
    get_run_logger().info("Prepared %s: %s", bundle.source, train.summary())
    return PreparedData(
        path=str(path), train_rows=train.rows_out, eval_rows=bundle.eval.stats.rows_out if bundle.eval else 0,
        eval_prompts=len(bundle.eval_prompts or []), train_tokens=train.total_tokens,
        target_tokens=train.target_tokens, truncated_rows=train.rows_truncated, dropped_rows=train.rows_dropped,
        fingerprint=bundle.fingerprint, source=bundle.source,
    )
