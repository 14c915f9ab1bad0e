"""Which Prefect server `python -m flows.sft` reports to: the one Prefect's settings name (environment,
profile, prefect.toml), else Prefect's own temporary server (see test_faults for its lifetime)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

from conftest import PYTHON, prefect_home_env

SERVER_URL = "http://127.0.0.1:9/api"  # only read from settings here, never contacted
STARTS_A_SERVER = "from flows.local_server import start_temporary_server_early; print(start_temporary_server_early())"


@pytest.mark.parametrize("source", ["environment", "profile", "prefect.toml"])
def test_a_server_named_in_prefects_settings_is_used_and_none_is_started(tmp_path, source):
    home = tmp_path / "prefect-home"
    home.mkdir()
    extra = {"PREFECT_API_URL": SERVER_URL} if source == "environment" else {}
    if source == "profile":
        (home / "profiles.toml").write_text(f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{SERVER_URL}"\n')
    if source == "prefect.toml":
        (tmp_path / "prefect.toml").write_text(f'[api]\nurl = "{SERVER_URL}"\n')
    out = subprocess.run([PYTHON, "-c", STARTS_A_SERVER], cwd=tmp_path, env=prefect_home_env(home, **extra),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


TINY = {"train.total_steps": 4, "train.eval_interval": 4, "train.batch_size": 16, "data.num_demo_rows": 600,
        "data.max_eval_prompts": 4}


def test_a_run_reports_to_the_server_its_prefect_profile_names(prefect_server, tmp_path):
    """The session's server (a real one, already running) named only in a profile: the run lands there."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{PREFECT_API_URL.value()}"\n')
    run_name = f"profile-{uuid.uuid4().hex[:8]}"
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    env = prefect_home_env(home, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
                           SFTFLOW_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([PYTHON, "-m", "flows.sft", "--run-name", run_name, *sets], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Starting temporary server" not in out.stderr  # Prefect's words when it starts one

    async def flow_runs():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sft-pipeline"])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=50)
    (run,) = [r for r in asyncio.run(flow_runs()) if r.parameters["config"].get("run_name") == run_name]
    assert run.state.is_completed(), run.state
