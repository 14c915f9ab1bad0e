"""Real training of the tiny embedded Llama: learning, masking, accumulation, export, eval."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, tiny_config
from sft_core import AccelerateSFTTrainer, ConfigError, DataError, ModelLoadError, default_sft_config, train
from sft_core.data import collate
from sft_core.data.masking import IGNORE_INDEX
from sft_core.embedded import build_byte_tokenizer, build_tiny_llama, save_embedded_model
from sft_core.tracking import read_history


def test_demo_learns(run_dir):
    """A shortened demo: exact match starts at 0 and rises; held-out loss falls by more than half.

    The full demo (README's main command, 2000 steps) reaches >= 0.92 on every seed; see benchmarks.demo_seeds.
    """
    config = tiny_config(run_dir, train=dict(total_steps=600, eval_interval=300, batch_size=64),
                         data=dict(num_demo_rows=20000, max_eval_prompts=128))
    trainer = train(config=config)
    history = [h for h in read_history(run_dir / "logs" / "metrics.jsonl") if "eval/loss" in h]
    first, last = history[0], history[-1]
    assert first["step"] == 0 and last["step"] == 600
    assert first["metrics/exact_match"] < 0.02
    assert last["eval/loss"] < first["eval/loss"] / 2
    assert last["metrics/exact_match"] > 0.05
    assert trainer.summary.final_metrics == {k: v for k, v in last.items() if k.startswith(("eval/", "metrics/"))}


def test_trlx_style_script(run_dir):
    """Only the import changes from a trlX script; the saved folder loads with Auto classes."""
    calls = []

    def metric_fn(samples, prompts, outputs, **kwargs):
        calls.append(dict(samples=samples, prompts=prompts, outputs=outputs, **kwargs))
        return {"length": [float(len(o)) for o in outputs], "constant": 1.0}

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdef") for _ in range(4)) for _ in range(64)]
    trainer = train(
        samples=[[f"upper {w}\n", w.upper()] for w in words],
        eval_prompts=[f"upper {w}\n" for w in words[:4]],
        metric_fn=metric_fn,
        config=default_sft_config().evolve(
            train=dict(total_steps=6, eval_interval=3, checkpoint_interval=6, batch_size=8, seq_length=32,
                       checkpoint_dir=str(run_dir / "ck"), logging_dir=str(run_dir / "logs")),
        ),
    )
    out = trainer.save_pretrained(run_dir / "out")
    assert len(calls) == 3  # steps 0, 3 and 6
    assert set(calls[0]) == {"samples", "prompts", "outputs"}
    assert calls[0]["prompts"][0] == "upper " + words[0] + "\n"
    assert calls[0]["samples"][1] == calls[0]["prompts"][1] + calls[0]["outputs"][1]
    assert trainer.summary.final_metrics["metrics/constant"] == 1.0

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert tokenizer("hé").input_ids == build_byte_tokenizer()("hé").input_ids
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id


class PassCountingTrainer(AccelerateSFTTrainer):
    passes = 0

    def compute_loss(self, batch):
        PassCountingTrainer.passes += 1
        return super().compute_loss(batch)


def _params_after_one_step(run_dir, name, batch_size, accumulation, **train_settings):
    config = tiny_config(
        run_dir / name,
        train=dict(total_steps=1, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                   max_grad_norm=None, eval_interval=100, checkpoint_interval=100, **train_settings),
        optimizer=dict(name="sgd", kwargs=dict(lr=1.0)),  # SGD: the update *is* the gradient
        scheduler=dict(name="constant_with_warmup", warmup_steps=0),
        method=dict(metrics=[]), data=dict(eval_fraction=0.01),
    )
    PassCountingTrainer.passes = 0
    trainer = train(config=config, trainer_cls=PassCountingTrainer)
    return {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def test_gradient_accumulation_matches_the_big_batch(run_dir):
    big = _params_after_one_step(run_dir, "big", batch_size=8, accumulation=1)
    small = _params_after_one_step(run_dir, "small", batch_size=2, accumulation=4)
    start = build_tiny_llama(default_sft_config().train.seed).state_dict()
    moved = max((big[k] - start[k]).abs().max().item() for k in big)
    assert moved > 1e-3  # the step really changed the weights
    worst = max((big[k] - small[k]).abs().max().item() for k in big)
    assert worst < 1e-5


@pytest.mark.parametrize("packing", [True, False])
def test_a_batch_run_as_several_passes_makes_the_same_update(run_dir, packing):
    one = _params_after_one_step(run_dir, f"one-{packing}", batch_size=8, accumulation=1, packing=packing,
                                 tokens_per_pass=None)
    assert PassCountingTrainer.passes == 1
    split = _params_after_one_step(run_dir, f"split-{packing}", batch_size=8, accumulation=1, packing=packing,
                                   tokens_per_pass=40)
    assert PassCountingTrainer.passes >= 3  # each packed block (or row) a pass of its own
    worst = max((one[k] - split[k]).abs().max().item() for k in one)
    assert worst < 1e-5


def _prompt_token_loss(model, rows):
    """Mean loss on the prompt tokens only (the ones SFT must not train on)."""
    input_ids = [r[0] for r in rows]
    labels = [[IGNORE_INDEX] + p[1:] + [IGNORE_INDEX] * (len(i) - len(p)) for i, p in
              ((r[0], r[0][: r[1]]) for r in rows)]
    batch = collate(input_ids, labels, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX).item()


@pytest.mark.parametrize("masked", [True, False])
def test_noise_prompts_are_not_learned(run_dir, masked):
    """Prompts are random letters, completions are digits. With masking, loss on the prompt
    tokens must not fall; without it (plain text, the control) it falls."""
    rng = random.Random(1)
    pairs = [["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12)),
              "".join(rng.choice("0123456789") for _ in range(4))] for _ in range(512)]
    samples = pairs if masked else [p + c for p, c in pairs]
    tok = build_byte_tokenizer()
    probe = [(tok(p + c, add_special_tokens=False).input_ids, len(tok(p, add_special_tokens=False).input_ids))
             for p, c in pairs[:64]]
    before = _prompt_token_loss(build_tiny_llama(default_sft_config().train.seed), probe)
    config = tiny_config(run_dir, train=dict(total_steps=60, eval_interval=100, checkpoint_interval=100, batch_size=32),
                         method=dict(metrics=[]))
    trainer = train(samples=samples, config=config)
    after = _prompt_token_loss(trainer.accelerator.unwrap_model(trainer.model), probe)
    if masked:
        assert after >= before - 0.05, (before, after)
    else:
        assert after < before - 1.0, (before, after)


def test_best_checkpoint_and_rotation(run_dir):
    config = tiny_config(run_dir, train=dict(total_steps=30, eval_interval=10, checkpoint_interval=10,
                                             save_total_limit=2, best_metric="eval/loss"))
    trainer = train(config=config)
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["best", "step-20", "step-30"]
    assert trainer.summary.best_metric == "eval/loss" and trainer.summary.best_value is not None
    assert AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "best") is not None


def test_unknown_best_metric_names_the_field(run_dir):
    with pytest.raises(ConfigError, match="train.best_metric"):
        train(config=tiny_config(run_dir, train=dict(total_steps=2, best_metric="bleu")))


def test_frozen_layers_do_not_change(run_dir):
    config = tiny_config(run_dir, model=dict(num_layers_unfrozen=1), train=dict(total_steps=3))
    trainer = train(config=config)
    start = build_tiny_llama(config.train.seed).state_dict()
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert torch.equal(start["model.layers.0.mlp.up_proj.weight"], trained["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(start["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])
    assert not torch.equal(start["model.layers.3.mlp.up_proj.weight"], trained["model.layers.3.mlp.up_proj.weight"])


def test_local_model_folder_and_sweep(run_dir):
    """model_path may name any local HF folder; a list in gen_kwargs runs a sweep, as in trlX."""
    folder = save_embedded_model(run_dir / "base")
    config = tiny_config(run_dir, model=dict(model_path=str(folder)), train=dict(total_steps=2, eval_interval=2),
                         method=dict(gen_kwargs=dict(max_new_tokens=[2, 4], do_sample=False), metrics=["length"]))
    train(config=config)
    evals = [h for h in read_history(run_dir / "logs" / "metrics.jsonl") if "eval/loss" in h]
    assert [e["step"] for e in evals] == [0, 2]
    for e in evals:
        assert e["metrics/length@max_new_tokens=2"] <= 2 and e["metrics/length@max_new_tokens=4"] <= 4
    assert evals[0]["metrics/length@max_new_tokens=4"] > evals[0]["metrics/length@max_new_tokens=2"]


def test_bad_inputs_name_the_field(run_dir):
    with pytest.raises(ModelLoadError, match="model.model_path"):
        train(config=tiny_config(run_dir, model=dict(model_path=str(run_dir / "no-such-model"))))
    with pytest.raises(DataError, match="train.seq_length=4"):
        train(config=tiny_config(run_dir, train=dict(seq_length=4)))
    with pytest.raises(ConfigError, match="train.batch_size"):
        tiny_config(run_dir, train=dict(batch_size=-2))
    with pytest.raises(ConfigError, match="optimizer.name"):
        tiny_config(run_dir, optimizer=dict(name="adafactor"))
    with pytest.raises(DataError, match="eval_prompts: empty"):
        train(samples=[["a ", "b"]] * 8, eval_prompts=[], config=tiny_config(run_dir))
    assert not (run_dir / "checkpoints").exists()  # nothing was left half-done


def test_losses_are_finite_and_logged_every_step(run_dir):
    train(config=tiny_config(run_dir, train=dict(total_steps=5)))
    steps = [h for h in read_history(run_dir / "logs" / "metrics.jsonl") if "train/loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(h["train/loss"]) and h["train/tokens_per_s"] > 0 for h in steps)


def test_same_seed_same_run_and_bf16_close_to_fp32(run_dir):
    """Deterministic on the CPU; bf16 autocast in the same process (Accelerate state is reset) stays close."""
    fp32_a = train(config=tiny_config(run_dir / "a", train=dict(total_steps=4))).summary.final_metrics
    bf16 = train(config=tiny_config(run_dir / "b", train=dict(total_steps=4, mixed_precision="bf16")))
    assert bf16.accelerator.mixed_precision == "bf16"
    fp32_b = train(config=tiny_config(run_dir / "c", train=dict(total_steps=4))).summary.final_metrics
    assert fp32_a == fp32_b
    assert bf16.summary.final_metrics != fp32_a  # autocast really ran ...
    assert abs(bf16.summary.final_metrics["eval/loss"] - fp32_a["eval/loss"]) < 0.02  # ... and stays close


def test_hub_model_name_offline_is_a_clear_error(run_dir):
    with pytest.raises(ModelLoadError, match="could not be fetched from the HuggingFace hub"):
        train(config=tiny_config(run_dir, model=dict(model_path="gpt2")))


def test_example_alpaca_config_runs_on_a_local_model_folder(run_dir):
    """configs/alpaca_local.yaml: a local HF model folder + Alpaca JSONL, the path beyond the demo."""
    from sft_core import TRLConfig
    from sft_core.cli import main

    assert main(["export-embedded", str(run_dir / "model-in")]) == 0
    config = TRLConfig.load_yaml(ROOT / "configs" / "alpaca_local.yaml").evolve(
        model=dict(model_path=str(run_dir / "model-in")),
        data=dict(path=str(ROOT / "configs" / "examples" / "alpaca_sample.jsonl")),
        train=dict(total_steps=4, eval_interval=4, checkpoint_interval=4, checkpoint_dir=str(run_dir / "ck"),
                   logging_dir=str(run_dir / "logs")),
    )
    trainer = train(config=config)
    assert {"metrics/exact_match", "metrics/rougeL", "eval/loss"} <= set(trainer.summary.final_metrics)
    assert trainer.summary.best_metric == "metrics/rougeL"
