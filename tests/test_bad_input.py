"""Bad input: every case fails with our own error type, a message that names the file and line or the
config field to fix, and leaves nothing behind: no run folder, no checkpoint, no MLflow model.

The cases go through the user's entry points (``train()``, YAML loading, the Prefect flow), not
through internals, so the message checked is the one a user sees.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pytest
import torch

from conftest import small_run, tiny_config
from sft_core import ConfigError, DataError, MetricError, ModelLoadError, TRLConfig, train
from sft_core.embedded import save_embedded_model
from sft_core.errors import SFTError


# -- the workspace a case runs in -----------------------------------------------------------------
def config(ws: Path, **sections: Any) -> TRLConfig:
    """A seconds-long run writing under ws/run; the tokenized-data cache lives outside it."""
    base = tiny_config(ws / "run", train=dict(total_steps=4, eval_interval=2, checkpoint_interval=2),
                       data=dict(cache_dir=str(ws / "cache")))
    return base.evolve(**sections)


def write(ws: Path, name: str, content: str | bytes) -> str:
    path = ws / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def pairs_file(ws: Path, rows: list[dict[str, Any]], name: str = "data.jsonl") -> str:
    return write(ws, name, "\n".join(json.dumps(r) for r in rows) + "\n")


GOOD_ROWS = [{"prompt": f"add {i} {i}\n", "completion": str(2 * i)} for i in range(40)]


def model_folder(ws: Path) -> Path:
    return save_embedded_model(ws / "inputs" / "model")


def without_tokenizer(ws: Path) -> str:
    folder = model_folder(ws)
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    return str(folder)


def pickle_weights_only(ws: Path) -> str:
    folder = model_folder(ws)
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return str(folder)


def remote_code_folder(ws: Path) -> str:
    """A model folder whose config asks for its own Python code; that code would leave a marker file."""
    folder = model_folder(ws)
    marker = ws / "inputs" / "REMOTE_CODE_RAN"
    (folder / "custom_llama.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "custom_llama"  # unknown to transformers, so only the folder's code can build it
    cfg["auto_map"] = {"AutoConfig": "custom_llama.CustomConfig", "AutoModelForCausalLM": "custom_llama.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def metric(result: Any) -> Callable[..., Any]:
    def broken_metric(samples, prompts, outputs, **metadata):
        if isinstance(result, Exception):
            raise result
        return result(outputs) if callable(result) else result
    return broken_metric


# -- the cases ------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]  # does what the user does, given the workspace
    error: type[Exception]
    names: tuple[str, ...]  # the file:line, field or sample the message must name


def train_on_file(name: str, content: str | bytes, **data: Any) -> Callable[[Path], Any]:
    return lambda ws: train(config=config(ws, data=dict(path=write(ws, name, content), **data)))


def train_with(**kwargs: Any) -> Callable[[Path], Any]:
    """train() on the embedded demo with extra arguments, or config sections given as dicts."""
    sections = {k: kwargs.pop(k) for k in list(kwargs) if k in TRLConfig.model_fields}
    return lambda ws: train(config=config(ws, **sections), **kwargs)


def train_with_model(make_folder: Callable[[Path], str], **model: Any) -> Callable[[Path], Any]:
    return lambda ws: train(config=config(ws, model=dict(model_path=make_folder(ws), **model)))


CASES = [
    # data files
    Case("jsonl-malformed-line", train_on_file("bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n'),
         DataError, ("bad.jsonl:3", "malformed JSON")),
    Case("jsonl-not-an-object", train_on_file("list.jsonl", '{"text": "a"}\n["text", "b"]\n'),
         DataError, ("list.jsonl:2", "JSON object")),
    Case("json-malformed", train_on_file("bad.json", '[{"text": "a"},\n {"text": }]'), DataError,
         ("bad.json:2", "malformed JSON")),
    Case("csv-extra-field", train_on_file("bad.csv", "prompt,completion\na,b\nc,d,e\n"), DataError,
         ("bad.csv:3", "header columns")),
    Case("missing-column", train_on_file("cols.jsonl", '{"question": "q", "answer": "a"}\n'), DataError,
         ("cols.jsonl:1", "columns")),
    Case("misnamed-column", lambda ws: train(config=config(ws, data=dict(
        path=pairs_file(ws, GOOD_ROWS), prompt_column="question")), ), DataError, ("data.jsonl:1", "'question'")),
    Case("empty-file", train_on_file("empty.jsonl", ""), DataError, ("empty.jsonl", "no rows")),
    Case("empty-after-filter", lambda ws: train(config=config(ws, data=dict(
        path=pairs_file(ws, [dict(r, label=0) for r in GOOD_ROWS]), filter="label == 1"))), DataError,
         ("data.filter", "label == 1")),
    Case("not-utf8", train_on_file("latin1.jsonl", '{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1")),
         DataError, ("latin1.jsonl:2", "UTF-8")),
    Case("missing-file", lambda ws: train(config=config(ws, data=dict(path=str(ws / "nope.jsonl")))), DataError,
         ("nope.jsonl", "file not found")),
    Case("unsupported-file-type", train_on_file("data.xml", "<rows/>"), DataError, ("data.xml", ".xml")),
    # samples given in Python
    Case("pair-of-wrong-arity", train_with(samples=[["p", "c"], ["only a prompt"]]), DataError, ("samples[1]",)),
    Case("empty-completion", train_with(samples=[["p", "c"], ["p", ""]]), DataError, ("samples[1]", "empty")),
    Case("empty-samples", train_with(samples=[]), DataError, ("samples",)),
    Case("every-prompt-too-long", train_with(samples=[["x" * 100, "y"]] * 8, train=dict(seq_length=16)),
         DataError, ("train.seq_length=16",)),
    Case("empty-eval-prompts", train_with(eval_prompts=[]), DataError, ("eval_prompts",)),
    # config
    Case("wrong-value-type", lambda ws: config(ws, train=dict(batch_size="many")), ConfigError,
         ("train.batch_size",)),
    Case("unknown-key", lambda ws: TRLConfig.from_dict({"train": {"batchsize": 8}}), ConfigError,
         ("train.batchsize",)),
    Case("unknown-section", lambda ws: TRLConfig.from_dict({"trainer": {"batch_size": 8}}), ConfigError,
         ("trainer",)),
    Case("zero-batch-size", lambda ws: config(ws, train=dict(batch_size=0)), ConfigError, ("train.batch_size",)),
    Case("negative-learning-rate", lambda ws: config(ws, optimizer=dict(kwargs=dict(lr=-1))), ConfigError,
         ("optimizer.kwargs", "lr")),
    Case("eval-fraction-over-one", lambda ws: config(ws, data=dict(eval_fraction=1.5)), ConfigError,
         ("data.eval_fraction",)),
    Case("accumulation-beyond-data", train_with(train=dict(gradient_accumulation_steps=10_000, epochs=1)),
         ConfigError, ("train.gradient_accumulation_steps",)),
    Case("malformed-yaml", lambda ws: TRLConfig.load_yaml(write(ws, "c.yaml", "train:\n  batch_size: [1,\n")),
         ConfigError, ("c.yaml", "line")),
    Case("set-without-equals", lambda ws: config(ws).with_overrides(["train.batch_size"]), ConfigError,
         ("train.batch_size",)),
    Case("resume-from-a-non-checkpoint", train_with(train=dict(resume_from_checkpoint="/nonexistent/step-5")),
         ConfigError, ("train.resume_from_checkpoint",)),
    Case("unknown-best-metric", train_with(train=dict(best_metric="bleu")), ConfigError, ("train.best_metric",)),
    # model
    Case("missing-model-folder", lambda ws: train(config=config(ws, model=dict(model_path=str(ws / "no-model")))),
         ModelLoadError, ("model.model_path", "does not exist")),
    Case("folder-without-tokenizer", train_with_model(without_tokenizer), ModelLoadError,
         ("model.model_path", "no tokenizer files")),
    Case("pickle-weights-only", train_with_model(pickle_weights_only), ModelLoadError,
         ("model.model_path", "safetensors")),
    Case("remote-code-not-trusted", train_with_model(remote_code_folder), ModelLoadError,
         ("model.trust_remote_code",)),
    Case("hub-name-offline", lambda ws: train(config=config(ws, model=dict(model_path="someorg/some-model"))),
         ModelLoadError, ("model.model_path", "someorg/some-model")),
    # metrics
    Case("metric-fn-raises", train_with(metric_fn=metric(ZeroDivisionError("boom"))), MetricError,
         ("broken_metric", "ZeroDivisionError")),
    Case("metric-fn-returns-nan", train_with(metric_fn=metric({"score": float("nan")})), MetricError,
         ("broken_metric", "'score'", "non-finite")),
    Case("metric-fn-wrong-shape", train_with(metric_fn=metric(lambda outs: {"score": [1.0] * (len(outs) + 1)})),
         MetricError, ("broken_metric", "'score'", "one per")),
    Case("unknown-metric-name", train_with(method=dict(metrics=["bleu"])), MetricError, ("method.metrics", "'bleu'")),
    Case("metric-module-does-not-import", train_with(method=dict(metrics=["metrics.nope:score"])), MetricError,
         ("method.metrics", "metrics.nope")),
    Case("metric-outside-allowed-modules", train_with(method=dict(metrics=["os:system"])), MetricError,
         ("method.metrics", "os:system", "method.metric_module_prefixes")),
]


def assert_nothing_left_behind(ws: Path) -> None:
    assert not (ws / "run").exists(), sorted(str(p.relative_to(ws)) for p in (ws / "run").rglob("*"))
    assert not [p for p in ws.rglob(".tmp-*")], "a half-written folder was left"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_leaves_nothing(case: Case, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(case.error) as raised:
        case.run(tmp_path)
    assert isinstance(raised.value, SFTError), f"{type(raised.value).__name__} is not one of sft_core's errors"
    message = str(raised.value)
    for name in case.names:
        assert name in message, f"{name!r} not in: {message}"
    assert_nothing_left_behind(tmp_path)
    assert not (tmp_path / "inputs" / "REMOTE_CODE_RAN").exists(), "untrusted model code ran"


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


# -- not errors: handled and reported --------------------------------------------------------------
def test_tokenizer_without_pad_token_pads_with_eos(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    trainer = train(config=config(tmp_path, model=dict(model_path=str(folder))))
    assert trainer.tokenizer.pad_token == trainer.tokenizer.eos_token
    assert trainer.summary.steps == 4


def test_a_too_long_prompt_is_dropped_and_counted(tmp_path: Path, caplog) -> None:
    samples = [["x" * 100, "y"]] + [[f"add {i} {i}\n", str(2 * i)] for i in range(40)]
    with caplog.at_level("INFO", logger="sft_core.api"):
        trainer = train(config=config(tmp_path, train=dict(seq_length=16)), samples=samples)
    assert trainer.summary.steps == 4
    assert "40/41 rows kept" in caplog.text and "dropped: 1 prompt_longer_than_seq_length" in caplog.text


def test_trusted_remote_code_runs_and_says_so(tmp_path: Path, caplog) -> None:
    from sft_core.config import ModelConfig, TokenizerConfig
    from sft_core.modeling import load_model, load_tokenizer

    model_cfg = ModelConfig(model_path=remote_code_folder(tmp_path), trust_remote_code=True)
    with caplog.at_level("WARNING", logger="sft_core.modeling"):
        load_model(model_cfg, load_tokenizer(TokenizerConfig(), model_cfg), seed=0)
    assert "trust_remote_code is ON" in caplog.text
    assert (tmp_path / "inputs" / "REMOTE_CODE_RAN").exists()


# -- the same through the Prefect flow: nothing in runs/, nothing registered -------------------------
def write_metric_package(root: Path) -> None:
    """A user metric module under an allowed prefix (sftflow_metrics.) that fails when called."""
    package = root / "sftflow_metrics"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("def score(samples, prompts, outputs, **kw):\n    raise KeyError('reference')\n")


FLOW_CASES = {
    "malformed-data-file": (lambda ws: dict(data_path=write(ws, "bad.jsonl", '{"text": "a"}\n{"text": \n')),
                            ("bad.jsonl:2", "malformed JSON")),
    "unknown-metric": (lambda ws: dict(metrics=["bleu"]), ("method.metrics", "'bleu'")),
    "metric-raises-at-first-eval": (lambda ws: dict(metrics=["sftflow_metrics.broken:score"]),
                                    ("score", "KeyError")),
}


@pytest.mark.parametrize("name", list(FLOW_CASES))
def test_bad_input_through_the_flow_leaves_no_run_and_no_model(name, prefect_server, tmp_path, monkeypatch) -> None:
    from flows.sft import sft_pipeline

    monkeypatch.chdir(tmp_path)
    write_metric_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    make_params, names = FLOW_CASES[name]
    params = small_run(tmp_path, **make_params(tmp_path))
    state = sft_pipeline(params, return_state=True)
    assert state.is_failed(), state
    with pytest.raises(SFTError) as raised:
        state.result()
    for expected in names:
        assert expected in str(raised.value), str(raised.value)

    runs_dir = Path(params.runs_dir)
    assert not [p for p in runs_dir.iterdir() if not p.name.startswith(".")], "a half-made run folder was left"
    client = mlflow.MlflowClient(params.tracking_uri)
    assert client.search_registered_models() == [] and client.search_model_versions() == []
    experiment = client.get_experiment_by_name(params.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]  # the failure is on record, and nothing else
    assert not client.search_logged_models([experiment.experiment_id])
    shutil.rmtree(tmp_path / "sftflow_metrics")
