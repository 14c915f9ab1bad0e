"""The run form (tasks.params.PipelineConfig) over a base YAML: which value wins."""

from tasks.params import PipelineConfig


def test_a_yaml_registered_name_is_kept_over_the_forms_demo_default():
    config = PipelineConfig(config_path="configs/smollm2_lora.yaml").to_sft_config()
    assert config.tracking.registered_model_name == "smollm2-facts"  # not the demo's "sftflow-demo"
    assert config.tracking.experiment_name == "smollm2-facts"


def test_a_name_typed_into_the_form_overrides_the_yaml():
    config = PipelineConfig(config_path="configs/smollm2_lora.yaml", registered_model_name="facts-v2",
                            overrides={"tracking.experiment_name": "exp"}).to_sft_config()
    assert config.tracking.registered_model_name == "facts-v2"
    assert config.tracking.experiment_name == "exp"


def test_the_demo_registers_under_the_forms_default():
    config = PipelineConfig().to_sft_config()
    assert config.tracking.registered_model_name == "sftflow-demo"
    assert config.tracking.experiment_name == "sftflow"
