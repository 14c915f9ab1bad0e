"""The kubernetes work-pool template (deployments/k8s/base-job-template.json) against a real Prefect server:
the server accepts it for a kubernetes pool, keeps the GPU limit, /dev/shm and the runs volume, and every
placeholder has a variable whose default renders."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid

from conftest import PYTHON, ROOT, python_env

TEMPLATE = ROOT / "deployments" / "k8s" / "base-job-template.json"


def _create_and_read_back(template_path):
    """`prefect work-pool create` (the command the README gives), then the pool as the server stored it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    name = f"sft-k8s-{uuid.uuid4().hex[:8]}"
    # No prefect-kubernetes here: the server takes any pool type with an explicit template.
    done = subprocess.run([PYTHON, "-m", "prefect", "work-pool", "create", name, "--type", "kubernetes",
                           "--base-job-template", str(template_path)],
                          env=python_env(PREFECT_API_URL=PREFECT_API_URL.value()),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

    async def read():
        async with get_client() as client:
            return await client.read_work_pool(name)
    return asyncio.run(read())


def test_template_survives_a_real_server_and_renders(prefect_server):
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads(TEMPLATE.read_text())
    pool = _create_and_read_back(TEMPLATE)
    assert pool.type == "kubernetes"
    stored = pool.base_job_template
    assert stored == template  # the server stored it whole, nothing dropped or rewritten

    job = stored["job_configuration"]
    variables = stored["variables"]["properties"]
    # Every placeholder has a variable, so the worker can fill each one (a missing one would render blank).
    names = {p.name for p in find_placeholders(job)}
    assert {"gpus", "shm_size", "runs_volume_claim", "runs_path", "image", "command"} <= names
    assert names <= set(variables), f"placeholders without a variable: {names - set(variables)}"

    # The defaults render what the pod needs: one GPU, memory-backed /dev/shm, the runs claim at /runs.
    rendered = apply_values(job, {k: v["default"] for k, v in variables.items() if "default" in v})
    assert not re.search(r"\{\{.*\}\}", json.dumps(rendered)), "a placeholder was left unrendered"
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["dshm"] == "/dev/shm"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert mounts["runs"] == "/runs"
    assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "sftflow-runs"}
    # The MLflow store and caches live on the same volume, so a rescheduled pod finds them.
    assert rendered["env"]["MLFLOW_TRACKING_URI"] == "sqlite:////runs/mlflow.db"

    # A pool's values override the defaults: two GPUs and another claim.
    custom = apply_values(job, {**{k: v["default"] for k, v in variables.items() if "default" in v},
                                "gpus": 2, "runs_volume_claim": "other"})
    custom_pod = custom["job_manifest"]["spec"]["template"]["spec"]
    assert custom_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert custom_pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "other"
