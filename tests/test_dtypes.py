"""model.dtype: the weights' dtype at load, kept by the export; float16 on a CPU is refused by name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from sft_core import ConfigError, TRLConfig, train
from sft_core.config import ModelConfig, TokenizerConfig
from sft_core.modeling import load_model, load_tokenizer

LORA = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}


def test_dtype_in_model_extra_configs_is_model_dtype():
    config = TRLConfig().evolve(model=dict(model_extra_configs={"dtype": "bfloat16", "attn_implementation": "sdpa"}))
    assert config.model.dtype == "bfloat16" and config.model.model_extra_configs == {"attn_implementation": "sdpa"}
    assert ModelConfig(model_extra_configs={"torch_dtype": "torch.bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ConfigError, match="disagree"):
        TRLConfig.from_dict({"model": {"dtype": "auto", "model_extra_configs": {"dtype": "bfloat16"}}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 weights are allowed where there is a GPU")
def test_float16_weights_on_the_cpu_name_the_field_and_suggest_bfloat16(tmp_path):
    with pytest.raises(ConfigError) as raised:
        train(config=tiny_config(tmp_path / "run", model=dict(dtype="float16"),
                                 data=dict(cache_dir=str(tmp_path / "cache"))))
    assert "model.dtype" in str(raised.value) and "bfloat16" in str(raised.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_bfloat16_lora_trains_under_bf16_autocast_and_exports_in_bfloat16(tmp_path, merge):
    from accelerate import Accelerator

    from sft_core.export import export_model

    model_cfg = ModelConfig(dtype="bfloat16", peft_config=LORA, merge_adapters_on_export=merge)
    tokenizer = load_tokenizer(TokenizerConfig(), model_cfg)
    model = load_model(model_cfg, tokenizer, seed=0)
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    adapter = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in adapter]
    optimizer = torch.optim.AdamW(adapter, lr=1e-2)
    ids = torch.tensor([list(b"add 3 4\n7")])
    for _ in range(2):  # B starts at zero; the second step moves A as well
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss) and all(not torch.equal(a, b) for a, b in zip(adapter, before))

    out = export_model(Accelerator(cpu=True), model, tokenizer, tmp_path / "out")
    weights = load_file(out / ("model.safetensors" if merge else "adapter_model.safetensors"))
    if merge:
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    else:
        assert weights and all("lora_" in k for k in weights)
