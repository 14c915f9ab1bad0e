"""GGUF input: files that are not GGUF, or hold an architecture transformers cannot read, are named.
(A real GGUF file trains and imports in test_real_model.py, which downloads one.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config
from sft_core import ConfigError, ModelLoadError, train
from sft_core.config import ModelConfig
from sft_core.gguf import gguf_location


def unsupported_gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="mamba9")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_nothing_left_behind(ws: Path) -> None:
    assert not (ws / "checkpoints").exists() and not (ws / "logs").exists(), sorted(p.name for p in ws.iterdir())
    assert not list(ws.rglob(".tmp-*"))


@pytest.mark.parametrize("make, names", [
    (lambda d: (d / "model.gguf").write_bytes(b"PK\x03\x04 a zip, not a GGUF file") and d / "model.gguf",
     ("model.gguf", "is not a GGUF file")),
    (lambda d: unsupported_gguf(d / "model.gguf"), ("model.gguf", "'mamba9'")),
    (lambda d: d / "missing.gguf", ("missing.gguf", "does not exist")),
], ids=["not-gguf", "unsupported-architecture", "missing"])
def test_a_bad_gguf_file_is_named_and_leaves_nothing(tmp_path, make, names):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    with pytest.raises(ModelLoadError) as raised:
        train(config=tiny_config(tmp_path / "run", model=dict(model_path=str(path)),
                                 data=dict(cache_dir=str(tmp_path / "cache"))))
    for name in names:
        assert name in str(raised.value), str(raised.value)
    assert_nothing_left_behind(tmp_path / "run")


def test_gguf_file_in_a_folder_or_named_directly(tmp_path):
    assert gguf_location(ModelConfig(model_path=str(tmp_path / "m.gguf"))) == (tmp_path, "m.gguf")
    assert gguf_location(ModelConfig(model_path=str(tmp_path), gguf_file="m.gguf")) == (tmp_path, "m.gguf")
    assert gguf_location(ModelConfig(model_path=str(tmp_path))) is None
    with pytest.raises(ConfigError, match="model.gguf_file"):
        gguf_location(ModelConfig(model_path=str(tmp_path / "m.gguf"), gguf_file="m.gguf"))
