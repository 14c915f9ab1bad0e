"""LoRA through PEFT on the embedded model: only the adapter trains, checkpoints hold the adapter and
resume exactly, exports load with PEFT's and transformers' Auto classes, and bad settings are named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, ROOT, python_env, tiny_config
from sft_core import ConfigError, TRLConfig, train
from sft_core.embedded import save_embedded_model
from sft_core.export import export_model
from sft_core.tracking import read_history

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
        "task_type": "CAUSAL_LM"}


def lora_config(ws: Path, base: Path, **sections):
    config = tiny_config(ws, model=dict(model_path=str(base), peft_config=LORA),
                         train=dict(total_steps=4, checkpoint_interval=2, eval_interval=4, save_total_limit=None),
                         optimizer=dict(kwargs=dict(lr=3e-3)), data=dict(max_eval_prompts=4))
    return config.evolve(**sections) if sections else config


def losses(logs: Path) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in read_history(logs / "metrics.jsonl") if "train/loss" in h}


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One 4-step LoRA run on a folder holding the embedded model (so the adapter's base loads by path)."""
    ws = tmp_path_factory.mktemp("lora")
    base = save_embedded_model(ws / "base")
    return train(config=lora_config(ws, base)), ws, base


def test_the_log_shows_trainable_and_total_parameters(caplog):
    from sft_core.config import ModelConfig, TokenizerConfig
    from sft_core.modeling import load_model, load_tokenizer

    model_cfg = ModelConfig(peft_config=LORA)
    with caplog.at_level("INFO", logger="sft_core.adapters"):
        load_model(model_cfg, load_tokenizer(TokenizerConfig(), model_cfg), seed=0)
    assert "Trainable parameters: 78,848 of 916,352 (8.60%)" in caplog.text


def test_lora_trains_the_adapter_resumes_exactly_and_exports_both_ways(lora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    trainer, ws, base = lora_run
    base_weights = load_file(base / "model.safetensors")

    # Only the adapter changed, and only the adapter is in the checkpoint (with its optimizer state).
    model = trainer.accelerator.unwrap_model(trainer.model)
    for name, param in model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
    saved = load_file(ws / "checkpoints" / "step-2" / "model.safetensors")
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:3]
    optimizer_state = torch.load(ws / "checkpoints" / "step-2" / "optimizer.bin", weights_only=True)
    assert len(optimizer_state["state"]) == len(saved)
    current = model.get_base_model().state_dict()
    for name, tensor in base_weights.items():
        assert torch.equal(current[name.replace(".weight", ".base_layer.weight") if "proj" in name else name],
                           tensor), name

    # Resume from step 2 replays steps 3-4 exactly.
    resumed = lora_config(ws, base, train=dict(resume_from_checkpoint=str(ws / "checkpoints" / "step-2"),
                                                     logging_dir=str(ws / "logs-resumed")))
    train(config=resumed)
    first, second = losses(ws / "logs"), losses(ws / "logs-resumed")
    assert sorted(second) == [3, 4]
    assert max(abs(first[s] - second[s]) for s in second) < 1e-5

    # The adapter export loads with AutoPeftModelForCausalLM; the merged one with AutoModelForCausalLM.
    adapter_dir = trainer.save_pretrained(ws / "adapter")
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not (adapter_dir / "model.safetensors").exists()
    merged_dir = export_model(trainer.accelerator, trainer.model, trainer.tokenizer, ws / "merged",
                              merge_adapters=True)
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    ids = torch.tensor([list(b"add 3 4\n12")])
    adapter_model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    model.eval()
    expected = logits(model, ids)
    assert torch.allclose(logits(adapter_model, ids), expected, atol=1e-5)
    assert (logits(merged_model, ids) - logits(adapter_model, ids)).abs().max() < 1e-4
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base), ids), expected, atol=1e-3)


def test_adapter_registers_and_loads_by_alias(lora_run, tmp_path):
    import mlflow

    from sft_core.registry import log_and_register

    adapter_dir = lora_run[0].save_pretrained(tmp_path / "adapter")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("lora")
    with mlflow.start_run() as run:
        pass
    registered = log_and_register(adapter_dir, run_id=run.info.run_id, tracking_uri=uri, registered_name="lora-test",
                                  alias="candidate")
    assert registered.version == "1"
    pipe = mlflow.transformers.load_model("models:/lora-test@candidate")
    assert type(pipe.model).__name__ == "PeftModelForCausalLM"
    out = pipe("add 3 4\n", max_new_tokens=4, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)


def test_a_peft_config_object_is_stored_in_peft_form():
    import peft

    config = TRLConfig().evolve(model=dict(peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])))
    stored = config.model.peft_config
    assert stored["peft_type"] == "LORA" and stored["r"] == 4
    assert sorted(stored["target_modules"]) == ["q_proj", "v_proj"]
    assert TRLConfig.from_dict(config.to_dict()).model.peft_config == stored  # YAML round trip


def assert_nothing_left_behind(ws: Path) -> None:
    assert not (ws / "checkpoints").exists() and not (ws / "logs").exists(), sorted(p.name for p in ws.iterdir())
    assert not list(ws.rglob(".tmp-*"))


def test_a_target_module_the_model_lacks_is_named_with_the_linear_layers(tmp_path):
    config = tiny_config(tmp_path, model=dict(peft_config={**LORA, "target_modules": ["q_proj", "qkv"]}))
    with pytest.raises(ConfigError) as raised:
        train(config=config)
    message = str(raised.value)
    assert "model.peft_config.target_modules" in message and "'qkv'" in message
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
    assert_nothing_left_behind(tmp_path)


@pytest.mark.parametrize("peft_config, names", [
    ({**LORA, "peft_type": "LORRA"}, ("model.peft_config", "'LORRA'", "LORA")),
    ({**LORA, "rank": 8}, ("model.peft_config", "rank")),
])
def test_an_unknown_peft_type_or_field_is_a_config_error(tmp_path, peft_config, names):
    with pytest.raises(ConfigError) as raised:
        tiny_config(tmp_path, model=dict(peft_config=peft_config))
    for name in names:
        assert name in str(raised.value), str(raised.value)
    assert_nothing_left_behind(tmp_path)


def test_lora_with_frozen_layers_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="num_layers_unfrozen"):
        tiny_config(tmp_path, model=dict(peft_config=LORA, num_layers_unfrozen=2))


@pytest.mark.slow
def test_lora_trains_under_deepspeed_zero2(tmp_path):
    """One CPU process, as on a 1-GPU box: the adapter trains and is exported."""
    pytest.importorskip("deepspeed")
    base = save_embedded_model(tmp_path / "base")
    config = lora_config(tmp_path, base, train=dict(total_steps=6, checkpoint_interval=6, eval_interval=6,
                                                    tokens_per_pass=None))
    path = config.save_yaml(tmp_path / "config.yaml")
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "sft_core" / "launch_configs" / "zero2.yaml"), "--num_processes", "1",
           "--mixed_precision", "no", "-m", "sft_core", "train", str(path)]
    result = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "step-6" / "pytorch_model").is_dir()  # DeepSpeed really ran
    steps = losses(tmp_path / "logs")
    assert steps[6] < steps[1]
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and t.numel() > 0 for k, t in adapter.items())
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B starts at zero: it trained
