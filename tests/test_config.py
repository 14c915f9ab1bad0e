import pytest
import yaml

from sft_core import ConfigError, TRLConfig, default_sft_config
from sft_core.config import EMBEDDED_MODEL, parse_set_args

TRLX_SFT_YAML = """
train:
  seq_length: 1024
  epochs: 100
  total_steps: 1000
  batch_size: 8
  checkpoint_interval: 10000
  eval_interval: 100
  pipeline: "PromptPipeline"
  trainer: "AccelerateSFTTrainer"
  tracker: null
  seed: 1000
model:
  model_path: "gpt2"
  num_layers_unfrozen: -1
tokenizer:
  tokenizer_path: "gpt2"
  truncation_side: "right"
optimizer:
  name: "adamw"
  kwargs: {lr: 1.0e-4, betas: [0.9, 0.95], eps: 1.0e-8, weight_decay: 1.0e-6}
scheduler:
  name: "cosine_annealing"
  kwargs: {T_max: 1.0e12, eta_min: 1.0e-4}
method:
  name: "sftconfig"
  gen_kwargs: {max_new_tokens: 40, top_k: 0, top_p: 1.0, do_sample: true}
  num_rollouts: 128
  init_kl_coef: 0.05
"""


def test_default_config_points_at_the_embedded_model():
    config = default_sft_config()
    assert config.model.model_path == EMBEDDED_MODEL
    assert config.model.trust_remote_code is False
    assert config.train.batch_size > 0 and config.train.seq_length >= 16


def test_evolve_deep_merges_and_returns_a_new_config():
    base = default_sft_config()
    new = base.evolve(train=dict(batch_size=4), optimizer=dict(kwargs=dict(lr=1e-4)))
    assert new.train.batch_size == 4 and base.train.batch_size != 4
    assert new.train.seq_length == base.train.seq_length
    assert new.optimizer.kwargs["lr"] == 1e-4
    assert new.optimizer.kwargs["eps"] == base.optimizer.kwargs["eps"]  # merged, not replaced


def test_dotted_overrides_and_set_arguments():
    config = default_sft_config().with_overrides({"train.batch_size": 4, "method.gen_kwargs.max_new_tokens": 7})
    assert config.train.batch_size == 4 and config.method.gen_kwargs["max_new_tokens"] == 7
    parsed = parse_set_args(["train.batch_size=4", "train.mixed_precision=bf16", "train.max_grad_norm=null"])
    assert parsed == {"train.batch_size": 4, "train.mixed_precision": "bf16", "train.max_grad_norm": None}
    config = default_sft_config().with_overrides(["train.epochs=3", "optimizer.name=SGD"])
    assert config.train.epochs == 3 and config.optimizer.name == "sgd"


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-4` as a string; the README's own `--set optimizer.kwargs.lr=1e-4` must work."""
    assert parse_set_args(["optimizer.kwargs.lr=1e-4", "train.max_grad_norm=5E+1", "data.filter=1e"]) == {
        "optimizer.kwargs.lr": 1e-4, "train.max_grad_norm": 50.0, "data.filter": "1e"}
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  kwargs: {lr: 3e-4, eps: 1e-8}\n")
    assert TRLConfig.load_yaml(path).optimizer.kwargs == {"lr": 3e-4, "eps": 1e-8}


def test_switching_optimizer_drops_the_old_optimizers_kwargs():
    sgd = default_sft_config().evolve(optimizer=dict(name="sgd"))
    defaults = default_sft_config().optimizer.kwargs
    assert sgd.optimizer.kwargs == {"lr": defaults["lr"], "weight_decay": defaults["weight_decay"]}
    sgd = default_sft_config().with_overrides({"optimizer.name": "sgd", "optimizer.kwargs": {"lr": 0.5}})
    assert sgd.optimizer.kwargs == {"lr": 0.5}


def test_yaml_round_trip(tmp_path):
    config = default_sft_config().evolve(train=dict(batch_size=3), method=dict(stop_sequences=["\n"]))
    path = config.save_yaml(tmp_path / "c.yaml")
    assert TRLConfig.load_yaml(path) == config


def test_trlx_yaml_loads_and_reports_rl_only_keys(tmp_path, caplog):
    path = tmp_path / "trlx.yml"
    path.write_text(TRLX_SFT_YAML)
    config = TRLConfig.load_yaml(path)
    assert config.train.seq_length == 1024 and config.model.model_path == "gpt2"
    assert config.scheduler.name == "cosine_annealing" and config.train.tracker is None
    assert set(config.ignored_keys) == {"train.pipeline", "train.trainer", "method.num_rollouts", "method.init_kl_coef"}
    assert "method.num_rollouts" in caplog.text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"train": {"batch_sise": 4}}, "train.batch_sise"),
        ({"optimiser": {}}, "optimiser"),
        ({"method": {"gen_kwarg": {}}}, "method.gen_kwarg"),
    ],
)
def test_unknown_keys_name_the_key_and_section(raw, field):
    with pytest.raises(ConfigError) as err:
        TRLConfig.from_dict(raw)
    assert err.value.field == field
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"train.batch_size": -1}, "train.batch_size"),
        ({"train.batch_size": "many"}, "train.batch_size"),
        ({"optimizer.name": "lion"}, "optimizer.name"),
        ({"optimizer.kwargs": {"lr": -1}}, "optimizer.kwargs"),
        ({"train.mixed_precision": "fp8"}, "train.mixed_precision"),
        ({"scheduler.min_lr_ratio": 2}, "scheduler.min_lr_ratio"),
        ({"method.gen_kwargs": {"top_k": [1, 2], "temperature": [0.5, 1.0]}}, "method.gen_kwargs"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        default_sft_config().with_overrides(override)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_flat_params_are_dotted_scalars():
    flat = default_sft_config().flat()
    assert flat["train.batch_size"] == default_sft_config().train.batch_size
    assert "optimizer.kwargs.lr" in flat
    assert all(not isinstance(v, dict) for v in flat.values())


def test_override_needs_a_known_section():
    with pytest.raises(ConfigError, match="unknown section"):
        default_sft_config().with_overrides({"trian.batch_size": 2})
    with pytest.raises(ConfigError):
        default_sft_config().with_overrides(["train.batch_size"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        TRLConfig.load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        TRLConfig.load_yaml(tmp_path / "missing.yaml")
    assert yaml.safe_load(default_sft_config().to_yaml())["train"]["seq_length"] > 0
