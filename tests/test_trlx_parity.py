"""trlX parity: trlX's three SFT examples run with `trlx` renamed to `sft_core` (tests/trlx_examples/),
trlX's module paths, names, train() order and SFT keys (minibatch_size, save_optimizer, peft_config,
save_best by reward, wandb, project_name & co.), and the README's field table against the code."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import PYTHON, ROOT, python_env, tiny_config
from sft_core import ConfigError, SFTConfig, TRLConfig, train
from sft_core.config import MethodConfig
from sft_core.data import default_configs
from sft_core.embedded import save_embedded_model
from sft_core.embedded.model import build_tiny_llama
from sft_core.trlx_fields import RL_ONLY_KEYS, TRLX_FIELDS, resolve_tracking

EXAMPLES = ROOT / "tests" / "trlx_examples"
STOPS = ["Human:", "human:", "Assistant:", "assistant:"]
# trlX-style sweep hparams, dotted, as its examples take them on the command line: kept to a few tiny steps.
TINY = {"train.total_steps": 6, "train.seq_length": 64, "train.batch_size": 8, "train.eval_interval": 3,
        "optimizer.kwargs.lr": 3e-3, "method.gen_kwargs.max_new_tokens": 12}


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """All three examples at once, each in a folder of its own (they write relative to the working folder)."""
    root = tmp_path_factory.mktemp("trlx-examples")
    model = save_embedded_model(root / "tiny-llama")
    runs = {
        "sft_sentiments": [json.dumps(TINY)],
        "sft_alpaca": [json.dumps({**TINY, "train.batch_size": 4, "train.eval_interval": 6, "train.seq_length": 256}), "--model_name", str(model)],
        "sft_hh": [json.dumps({**TINY, "train.batch_size": 4, "train.total_steps": 8, "train.eval_interval": 2})],
    }
    procs = {}
    for name, args in runs.items():
        (root / name).mkdir()
        env = python_env(HF_DATASETS_CACHE=str(root / "hf-datasets"), SFT_EXAMPLE_MODEL=str(model),
                         OMP_NUM_THREADS="1")
        procs[name] = subprocess.Popen([PYTHON, str(EXAMPLES / f"{name}.py"), *args], cwd=root / name, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = {name: proc.communicate(timeout=300)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{logs[name][-3000:]}"
    return root, model, logs


def assert_loads_with_auto_classes(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("great movie", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[:2] == ids.shape


def test_sft_sentiments_runs_and_saves_a_loadable_model(examples):
    root, _, logs = examples
    assert_loads_with_auto_classes(root / "sft_sentiments" / "reviews-sft")
    summary = json.loads(next((root / "sft_sentiments").rglob("summary.json")).read_text())
    assert summary["steps"] == TINY["train.total_steps"] and "metrics/sentiments" in summary["final_metrics"]


def test_sft_alpaca_runs_on_a_model_folder_and_saves_a_loadable_model(examples):
    root, model, _ = examples
    assert_loads_with_auto_classes(root / "sft_alpaca" / f"{model.name}-alpaca-sft")


def test_sft_hh_applies_its_stop_sequences_and_keeps_the_best_by_reward(examples):
    root, _, logs = examples
    folder = root / "sft_hh"
    assert "train.pipeline, train.trainer" in logs["sft_hh"]  # reported as ignored, not refused
    summary = json.loads(next(folder.rglob("summary.json")).read_text())
    assert summary["best_metric"] == "metrics/reward"  # trlX's rule: best_metric unset, metric_fn gives reward
    assert summary["best_checkpoint"] and Path(summary["best_checkpoint"]).name == "best"
    assert_loads_with_auto_classes(folder / "checkpoints" / "sft_hh" / "best")
    saved = TRLConfig.load_yaml(next((folder / "checkpoints" / "sft_hh").glob("step-*/config.yaml")))
    assert saved.method.stop_sequences == STOPS and saved.method.gen_kwargs["top_k"] == 20
    outputs = [json.loads(line)["output"] for line in next(folder.rglob("eval_samples.jsonl")).read_text().splitlines()]
    assert outputs and not [o for o in outputs if any(s in o for s in STOPS)]


def test_trlx_module_paths_and_names():
    from sft_core.data import configs

    for module, names in ((default_configs, ["TRLConfig", "TrainConfig", "ModelConfig", "TokenizerConfig",
                                             "OptimizerConfig", "SchedulerConfig", "SFTConfig", "default_sft_config"]),
                          (configs, ["TRLConfig", "TrainConfig", "ModelConfig", "TokenizerConfig", "OptimizerConfig",
                                     "SchedulerConfig", "MethodConfig"])):
        assert all(hasattr(module, name) for name in names), module.__name__
    assert default_configs.TRLConfig is TRLConfig and default_configs.SFTConfig is SFTConfig
    assert issubclass(SFTConfig, MethodConfig) and TRLConfig.model_fields["method"].annotation is SFTConfig
    assert SFTConfig().name == "sftconfig"


def test_trlx_default_sft_config_is_trlxs_with_the_embedded_model():
    config = default_configs.default_sft_config()
    t = config.train
    assert (t.seq_length, t.epochs, t.total_steps, t.batch_size, t.checkpoint_interval, t.eval_interval) == (
        1024, 100, 1000, 8, 10000, 100)
    assert config.optimizer.name == "adamw"
    assert config.optimizer.kwargs == dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-6)
    assert config.scheduler.name == "cosine_annealing" and config.scheduler.warmup == 0
    assert config.scheduler.kwargs == dict(T_max=1e12, eta_min=1e-4)
    assert config.method.gen_kwargs == dict(max_new_tokens=40, top_k=0, top_p=1.0, do_sample=True)
    assert config.model.model_path == "embedded:tiny-llama"
    from sft_core import default_sft_config

    assert default_sft_config().train.total_steps == 2000  # ours stays the demo recipe


def test_update_merges_dotted_and_nested_hparams_into_a_dict_or_a_config():
    base = default_configs.default_sft_config()
    hparams = {"train.total_steps": 16, "optimizer.kwargs.lr": 1e-3, "method": {"gen_kwargs": {"top_k": 5}},
               "train.pipeline": "PromptPipeline"}
    for given in (base, base.to_dict()):
        config = TRLConfig.update(given, hparams)
        assert config.train.total_steps == 16 and config.optimizer.kwargs["lr"] == 1e-3
        assert config.optimizer.kwargs["eps"] == 1e-8 and config.method.gen_kwargs["top_k"] == 5
        assert config.method.gen_kwargs["max_new_tokens"] == 40


@pytest.mark.parametrize("hparams, key", [
    ({"train.total_stepz": 16}, "train.total_stepz"),
    ({"optimiser.kwargs.lr": 1e-3}, "optimiser.kwargs.lr"),
    ({"method": {"gen_kwarg": {"top_k": 1}}}, "method.gen_kwarg.top_k"),
])
def test_update_with_an_unknown_key_raises_value_error_naming_it(hparams, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        TRLConfig.update(default_configs.default_sft_config().to_dict(), hparams)


def test_trlx_constructors_accept_rl_only_fields_and_report_them(caplog):
    train_cfg = default_configs.TrainConfig(pipeline="PromptPipeline", trainer="AccelerateSFTTrainer", batch_size=4)
    config = TRLConfig(train=train_cfg, method=SFTConfig(name="sftconfig", gen_kwargs=dict(max_new_tokens=3)))
    assert config.ignored_keys == ["train.pipeline", "train.trainer"]
    assert "Ignoring trlX RL-only config keys" in caplog.text and "train.trainer" in caplog.text
    assert TRLConfig.from_dict({"pipeline": "x", "train": {"trainer_kwargs": {}}}).ignored_keys == [
        "pipeline", "train.trainer_kwargs"]
    with pytest.raises(ValueError, match="seq2seq"):  # a value that asks for what SFT here is not: refused
        default_configs.ModelConfig(model_arch_type="seq2seq")


def test_train_takes_trlxs_positional_order_and_refuses_rl_arguments(tmp_path):
    order = ["model_path", "reward_fn", "dataset", "samples", "rewards", "prompts", "eval_prompts", "metric_fn",
             "config", "stop_sequences"]
    params = list(inspect.signature(train).parameters.values())
    assert [p.name for p in params[:10]] == order
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:10])
    with pytest.raises(ValueError, match=r"\['prompts', 'reward_fn'\].*supervised only"):
        train(None, lambda **kw: [0.0], None, None, None, ["p"])


def test_minibatches_give_the_whole_batchs_update(run_dir):
    from sft_core.data.batching import micro_batches

    ids, labels = [[5, 6, 7]] * 8, [[-100, 6, 7]] * 8
    passes = micro_batches(ids, labels, 0, max_tokens=None, block_len=64, max_rows=2)
    assert [rows for rows, _ in passes] == [[0, 1], [2, 3], [4, 5], [6, 7]]

    def weights(name: str, **train_kw):
        config = tiny_config(run_dir / name, train=dict(total_steps=2, batch_size=8, tokens_per_pass=None,
                                                        eval_interval=100, checkpoint_interval=100, **train_kw),
                             data=dict(max_eval_prompts=0, eval_fraction=0.0), method=dict(metrics=[]))
        trainer = train(config=config)
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    whole, split = weights("whole"), weights("split", minibatch_size=2)
    assert max((whole[k] - split[k]).abs().max().item() for k in whole) < 1e-5
    start = build_tiny_llama(1000).state_dict()  # what train() starts from (train.seed)
    assert max((whole[k] - start[k]).abs().max().item() for k in whole) > 1e-4  # the weights did move
    with pytest.raises(ConfigError, match="minibatch_size"):
        tiny_config(run_dir, train=dict(batch_size=8, minibatch_size=3))


def test_without_the_optimizer_state_a_resume_restores_the_rest_and_says_so(run_dir, caplog):
    common = dict(total_steps=4, checkpoint_interval=2, eval_interval=100, save_optimizer=False, batch_size=8)
    sections = dict(data=dict(max_eval_prompts=0), method=dict(metrics=[]))
    train(config=tiny_config(run_dir, train=common, **sections))
    step2 = run_dir / "checkpoints" / "step-2"
    assert (step2 / "model.safetensors").exists() and not list(step2.glob("optimizer*.bin"))
    resumed = tiny_config(run_dir, train=dict(common, resume_from_checkpoint=str(step2),
                                               logging_dir=str(run_dir / "logs-resumed")), **sections)
    trainer = train(config=resumed)
    assert trainer.state.step == 4 and trainer.summary.steps == 4
    assert "the optimizer starts fresh" in caplog.text
    steps = [json.loads(line)["step"] for line in (run_dir / "logs-resumed" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == [3, 4]  # data position and step continue


def test_a_trlx_config_with_peft_config_trains_a_lora_adapter(run_dir):
    config = TRLConfig.update(default_configs.default_sft_config(), {
        "model.peft_config": {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
        "train.total_steps": 2, "train.seq_length": 32, "train.eval_interval": 100, "optimizer.kwargs.lr": 1e-2,
        "train.checkpoint_dir": str(run_dir / "ckpts"), "train.logging_dir": str(run_dir / "logs")})
    trainer = train(samples=["great movie", "lovely film"] * 8, config=config)
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0: it trained


def test_best_metric_follows_trlxs_reward_rule():
    from sft_core.evaluation import resolve_best_metric

    assert resolve_best_metric(None, {"eval/loss": 1.0, "metrics/reward": 0.2}) == "metrics/reward"
    assert resolve_best_metric(None, {"eval/loss": 1.0, "metrics/other": 0.2}) == "eval/loss"
    assert resolve_best_metric("other", {"eval/loss": 1.0, "metrics/other": 0.2}) == "metrics/other"


def test_wandb_tracker_without_wandb_names_the_field_and_the_install(run_dir):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    from sft_core.tracking import build_trackers

    config = tiny_config(run_dir, train=dict(tracker="wandb"))
    with pytest.raises(ConfigError) as raised:
        build_trackers(config, is_main_process=True)
    assert raised.value.field == "train.tracker" and "pip install wandb" in str(raised.value)


def test_trlx_tracking_fields_fill_ours_where_unset_and_ours_win(caplog):
    config = TRLConfig().evolve(train=dict(project_name="sweeps", run_name="r1", entity_name="me", group_name="g",
                                           tags=["lora", "small"]))
    tracking = resolve_tracking(config)
    assert (tracking.experiment_name, tracking.run_name) == ("sweeps", "r1")
    assert tracking.tags == {"lora": "", "small": "", "entity": "me", "group": "g"}
    assert resolve_tracking(TRLConfig()).experiment_name == "sftflow"
    both = config.evolve(tracking=dict(experiment_name="ours"))
    assert resolve_tracking(both).experiment_name == "ours"
    assert "train.project_name" in caplog.text and "using tracking.experiment_name" in caplog.text


def readme_field_table() -> dict[str, str]:
    """``section.field`` -> status, from the README's trlX field table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| trlX field | here |"):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def code_status(section: str, field: str) -> str:
    """What the code does with a trlX field: a field of ours, an RL-only key, or neither (refused)."""
    if field in RL_ONLY_KEYS.get(section, ()):
        return "ignored"
    section_cls = TRLConfig.model_fields[section].annotation
    return "honoured" if field in section_cls.model_fields else "refused"


def test_the_readme_field_table_matches_the_code():
    table = readme_field_table()
    expected = {f"{s}.{f}": code_status(s, f) for s, fields in TRLX_FIELDS.items() for f in fields}
    assert sorted(table) == sorted(expected)
    assert {k: v.split()[0].strip("*,") for k, v in table.items()} == expected
