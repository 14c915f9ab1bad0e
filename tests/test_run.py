"""The run's lifecycle (sft_core.run) on its own, without Prefect: what the CLI and the flow share."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.transformers
import pytest

from conftest import tiny_config
from sft_core import TRLConfig
from sft_core.cli import main as sft_cli
from sft_core.errors import SFTError
from sft_core.run import data_cache_key, fail_run, prepare_data, start_run, train_run

QUICK = ["--set", "train.total_steps=4", "--set", "train.eval_interval=2", "--set", "train.checkpoint_interval=2",
         "--set", "data.num_demo_rows=600", "--set", "data.max_eval_prompts=8", "--set", "train.batch_size=16"]


def test_the_data_cache_key_covers_what_decides_the_data_and_nothing_else(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    config = TRLConfig.from_dict({"data": {"path": str(data)}})
    key = data_cache_key(config)
    assert data_cache_key(config.with_overrides({"optimizer.kwargs.lr": 3e-4, "train.total_steps": 7})) == key
    assert data_cache_key(config.with_overrides({"data.cache_dir": str(tmp_path / "elsewhere")})) == key
    assert data_cache_key(config.with_overrides({"train.seq_length": 32})) != key
    assert data_cache_key(config.with_overrides({"data.template": "Q: {prompt}\nA: "})) != key
    data.write_text('{"prompt": "a", "completion": "c"}\n')  # same name and size, new content
    assert data_cache_key(config) != key


def test_the_cli_runs_the_whole_pipeline_without_prefect(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", *QUICK, "--run-name", "cli", "--set", f"tracking.tracking_uri={store}",
            "--set", "tracking.registered_model_name=cli-model"]
    assert sft_cli(args) == 0

    run_dir = tmp_path / "runs" / "cli"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "model" / "model.safetensors").is_file()
    client = mlflow.MlflowClient(store)
    (version,) = client.search_model_versions("name='cli-model'")
    assert client.get_model_version_by_alias("cli-model", "candidate").version == version.version
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sftflow.run_name"] == "cli"
    assert "metrics/exact_match" in run.data.metrics

    mlflow.set_tracking_uri(store)
    pipe = mlflow.transformers.load_model("models:/cli-model@candidate")
    assert pipe("add 1 2\n", max_new_tokens=3, min_new_tokens=1, do_sample=False)[0]["generated_text"]

    # The same command again prepares nothing: the tokenized data is found by its key.
    prepared = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs" / ".prepared").iterdir()}
    assert sft_cli(["run", *QUICK, "--run-name", "cli-2", "--set", f"tracking.tracking_uri={store}",
                    "--set", "optimizer.kwargs.lr=3e-4"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs" / ".prepared").iterdir()} == prepared


def test_a_launched_child_that_refuses_its_input_fails_as_bad_input_and_leaves_no_run(tmp_path):
    """The child exits with the bad-input code; train_run raises SFTError, which the flow does not retry."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, tracking=dict(tracking_uri=store),
                         train=dict(total_steps=4, best_metric="no_such_metric"))
    run = start_run(config, name="bad", runs_dir=tmp_path / "runs", launch="subprocess")
    data = prepare_data(run)
    with pytest.raises(SFTError) as raised:
        train_run(run, data, on_line=lambda line: None)
    assert "train.best_metric" in str(raised.value)

    fail_run(run.root)
    assert not Path(run.root).exists()
    assert mlflow.MlflowClient(store).get_run(run.mlflow_run_id).info.status == "FAILED"
