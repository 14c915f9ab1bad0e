"""When a task is worth retrying: a crash, a lost worker or an I/O hiccup is; bad input is not."""

from __future__ import annotations

from sft_core.errors import SFTError


def unless_bad_input(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry anything but an SFTError (the input itself is wrong)."""
    try:
        state.result()
    except SFTError:
        return False
    except Exception:  # noqa: BLE001 - any other failure may pass on a second try
        return True
    return False
