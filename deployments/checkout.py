"""The pull step of deployments/prefect.yaml: run each flow run in the sftflow checkout of the worker's machine.

A process worker starts every flow run in a fresh temporary folder, and whatever `prefect deploy` writes into a
deployment is the deploying machine's. So the folder is found when the run starts, on the worker:
``$SFTFLOW_ROOT`` if the worker's environment sets it, else the checkout the worker's Python imports sftflow from
(``pip install -e .``, as ``make setup`` and the Dockerfile install it). Relative paths of the run (``runs/``,
the default ``mlflow.db``) then land in that checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ENTRYPOINT = Path("flows") / "sft.py"


def checkout_root() -> Path:
    """The checkout a flow run on this machine works in; an error that says what to set when there is none."""
    named = os.environ.get("SFTFLOW_ROOT")
    if named:
        root = Path(named).expanduser().resolve()
        if not (root / ENTRYPOINT).is_file():
            raise FileNotFoundError(f"SFTFLOW_ROOT={named} on this worker holds no {ENTRYPOINT}: set it to the "
                                    "sftflow checkout, or unset it to use the one this Python imports sftflow from")
        return root
    root = Path(__file__).resolve().parents[1]
    if (root / ENTRYPOINT).is_file() and (root / "pyproject.toml").is_file():
        return root
    raise FileNotFoundError(f"sftflow is imported from {root}, which is not a checkout (no pyproject.toml beside "
                            f"{ENTRYPOINT}): install it with `pip install -e .` from the checkout, or start the "
                            "worker with SFTFLOW_ROOT=/path/to/checkout")


def enter_checkout() -> dict[str, str]:
    """Prefect pull step: change into the checkout; its output's ``directory`` is the flow run's working folder."""
    root = checkout_root()
    os.chdir(root)
    return {"directory": str(root)}
