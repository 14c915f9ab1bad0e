"""Atomic checkpoints: written to a hidden temporary folder, then renamed into place.

A crash at any moment leaves either the complete step-N/ or nothing (plus a .tmp-* folder that
the next save removes). Weights are safetensors; optimizer and RNG states are loaded by
Accelerate with ``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from accelerate import Accelerator
from accelerate.utils import OPTIMIZER_NAME, DistributedType
from accelerate.utils import load as accelerate_load

from sft_core.errors import ConfigError
from sft_core.layout import CHECKPOINT_CONFIG_FILE, CHECKPOINT_PREFIX

logger = logging.getLogger(__name__)


class _TiedWeightsNote(logging.Filter):
    """Accelerate warns on every save that it dropped tied weights (lm_head = embeddings); reload re-ties them.

    safetensors cannot store one tensor under two names (https://huggingface.co/docs/safetensors/torch_shared_tensors);
    Accelerate's load_state re-ties them since https://github.com/huggingface/accelerate/pull/2875.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())

STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks the checkpoint complete
STEP_DIR = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


@dataclass
class TrainerState:
    """Everything besides weights/optimizer/RNG that a resumed run needs. Saved as JSON."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # position of the next batch ...
    batch_in_epoch: int = 0  # ... in the seeded order
    target_tokens_seen: int = 0
    skipped_steps: int = 0  # non-finite losses skipped (train.on_nonfinite_loss="skip")
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    global_batch_size: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """Where the checkpoint after optimizer step ``step`` lives."""
    return checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"


def _out_of_space(err: BaseException) -> bool:
    """ENOSPC/EFBIG/EDQUOT, raised as an OSError or (by safetensors' Rust writer) as a message."""
    codes = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    if isinstance(err, OSError):
        return err.errno in codes
    return any(f"(os error {code})" in str(err) for code in codes)


def atomic_dir_write(accelerator: Accelerator, final: Path, write: Any) -> Path:
    """Run ``write(tmp_dir)`` on every rank, then (main rank) rename tmp_dir to ``final``."""
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        write(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(tmp)
            if final.exists():
                old = final.parent / f".old-{final.name}"
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync_dir(final.parent)
    except BaseException as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(err):
            raise OSError(errno.ENOSPC, f"could not write {final}: {err} (disk full, or over a quota or file-size "
                                        "limit); nothing was written there") from err
        raise
    accelerator.wait_for_everyone()
    return final


def save_checkpoint(accelerator: Accelerator, path: Path, trainer_state: dict[str, Any], config_yaml: str, *,
                    save_optimizer: bool = True) -> Path:
    def write(tmp: Path) -> None:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if not save_optimizer and accelerator.is_main_process:  # Accelerate always writes it; trlX's switch drops it
            for found in _optimizer_states(tmp):
                if found.is_dir():
                    shutil.rmtree(found)
                else:
                    found.unlink(missing_ok=True)
        if accelerator.is_main_process:
            (tmp / CHECKPOINT_CONFIG_FILE).write_text(config_yaml)
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))  # last: marks it complete

    return atomic_dir_write(accelerator, path, write)


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    try:
        if rng_file.exists():
            # Accelerate skips an unreadable RNG file with an info line, so a resume would silently
            # differ from the original run; read it here first (same weights-only loader) to refuse it.
            # Upstream: https://github.com/huggingface/accelerate/issues/4283 (open; a warning is
            # proposed in https://github.com/huggingface/accelerate/pull/4308).
            accelerate_load(rng_file)
        if _optimizer_states(path) or accelerator.distributed_type == DistributedType.DEEPSPEED:
            accelerator.load_state(str(path))
        else:
            with _without_optimizers(accelerator):
                accelerator.load_state(str(path))
            logger.warning("%s holds no optimizer state (train.save_optimizer was false): weights, step, data "
                           "position and LR schedule are restored; the optimizer starts fresh", path)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met something other than tensors
        raise ConfigError("train.resume_from_checkpoint", f"{path} holds pickled objects that are not plain tensors "
                          f"and states, so it was not loaded (loading them could run code): "
                          f"{str(err).splitlines()[0]}") from None
    return json.loads((path / STATE_FILE).read_text())


def _optimizer_states(path: Path) -> list[Path]:
    """The optimizer state Accelerate wrote: optimizer.bin (optimizer_N.bin), or under FSDP with a sharded
    state dict a folder optimizer_N/ of torch.distributed.checkpoint shards."""
    return [p for p in path.glob(f"{OPTIMIZER_NAME}*") if p.suffix == ".bin" or p.is_dir()]


@contextlib.contextmanager
def _without_optimizers(accelerator: Accelerator) -> Iterator[None]:
    """Hide the prepared optimizers from load_state, which loads every prepared optimizer and fails on a
    missing file. _optimizers is private, but Accelerate (1.15, Accelerator.load_state) has no switch to
    skip them, and we found no upstream issue asking for one."""
    saved = accelerator._optimizers
    accelerator._optimizers = []
    try:
        yield
    finally:
        accelerator._optimizers = saved


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete step-N checkpoints, oldest first (a folder without trainer_state.json is not one)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return sorted(found)


def resolve_resume(resume_from: str, checkpoint_dir: Path) -> Path | None:
    """'latest' -> newest complete checkpoint (None if there is none yet); else a path that must exist."""
    if resume_from == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not (path / STATE_FILE).exists():
        raise ConfigError("train.resume_from_checkpoint", f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def rotate_checkpoints(checkpoint_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it would add)."""
    path = path.resolve()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
