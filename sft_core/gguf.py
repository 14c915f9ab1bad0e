"""GGUF files (llama.cpp's format) as a starting point: load, dequantize, and write a plain HF folder.

transformers reads a GGUF file through the ``gguf`` package and dequantizes every tensor to
float32; the model it returns is marked GGUF-quantized, and its save_pretrained() refuses to
write. We copy its weights into a fresh model built from the same config, without the
quantization_config, so training, export and registration see an ordinary model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sft_core.config import ModelConfig
from sft_core.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def gguf_location(model_cfg: ModelConfig) -> tuple[Path, str] | None:
    """(folder, file name) when model.model_path is a .gguf file, or a folder plus model.gguf_file; else None."""
    path = Path(model_cfg.model_path).expanduser()
    if model_cfg.gguf_file is not None:
        if path.suffix == ".gguf":
            raise ConfigError("model.gguf_file", f"model.model_path already names a file ({path}); "
                              "set model_path to its folder, or drop gguf_file")
        return path, model_cfg.gguf_file
    if path.suffix == ".gguf":
        return path.parent, path.name
    return None


def check_gguf_file(path: Path, field: str = "model.model_path") -> str:
    """The file's architecture (general.architecture); a clear error if it is missing or not GGUF."""
    if not path.is_file():
        raise ModelLoadError(f"{field}: GGUF file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{field}: {path} is not a GGUF file (it starts with {head!r}, "
                             f"not {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as err:  # a truncated or corrupt file fails in many ways inside the reader
        raise ModelLoadError(f"{field}: cannot read GGUF file {path}: {err}") from err


def load_gguf_model(folder: Path, name: str, *, dtype: torch.dtype | str = torch.float32,
                    field: str = "model.model_path", **kwargs: Any) -> PreTrainedModel:
    """Dequantized weights in a plain model (no quantization_config), in ``dtype`` ("auto": float32)."""
    path = folder / name
    arch = check_gguf_file(path, field)
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32, **kwargs)
    except ValueError as err:
        if "not supported" not in str(err):
            raise
        raise ModelLoadError(f"{field}: {path}: transformers cannot read GGUF architecture {arch!r} "
                             f"({err}); convert the model to a HuggingFace folder elsewhere") from None
    quant = _file_type(path)
    model = _plain_copy(gguf_model, torch.float32 if dtype == "auto" else dtype)
    logger.info("Loaded %s: %s weights (%s) dequantized to %s; training and export use the dequantized copy",
                path, arch, quant, str(model.dtype).removeprefix("torch."))
    return model


def load_gguf_tokenizer(folder: Path, name: str, field: str = "model.model_path", **kwargs: Any):
    path = folder / name
    arch = check_gguf_file(path, field)
    try:
        return AutoTokenizer.from_pretrained(str(folder), gguf_file=name, **kwargs)
    except (ValueError, KeyError, OSError) as err:  # unsupported architecture or tokenizer model
        raise ModelLoadError(f"{field}: {path}: transformers cannot read the tokenizer of GGUF "
                             f"architecture {arch!r} ({err}); set tokenizer.tokenizer_path to a tokenizer folder, "
                             "or convert the model to a HuggingFace folder elsewhere") from None


def import_gguf(file: str | Path, directory: str | Path, *, dtype: str = "float32") -> Path:
    """Write a GGUF file as a normal HuggingFace folder (safetensors, config, tokenizer), once."""
    file, directory = Path(file).expanduser(), Path(directory).expanduser()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; remove it or choose another folder")
    model = load_gguf_model(file.parent, file.name, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                            field="import-gguf FILE")
    tokenizer = load_gguf_tokenizer(file.parent, file.name, field="import-gguf FILE")
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            directory.rmdir()
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Wrote %s from %s", directory, file)
    return directory


def _plain_copy(gguf_model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """A fresh model from the same config without quantization_config, holding the same weights."""
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.tie_weights()
    return model


def _file_type(path: Path) -> str:
    """The quantization named by general.file_type (e.g. MOSTLY_Q4_1), for the log."""
    from gguf import GGUFReader, LlamaFileType

    try:
        field = GGUFReader(path).fields["general.file_type"]
        return LlamaFileType(int(field.parts[field.data[0]][0])).name
    except Exception:  # an optional field; the log line is all that needs it
        return "unknown quantization"
