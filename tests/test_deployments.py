"""Served deployments against a real `prefect server start`: API-triggered runs, schedules, the UI form
in headless Chromium, and cancelling a multi-process training run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from conftest import api_healthy, python_env, wait_for
from sft_core.data.digest import data_digest
from sft_core.launch import free_port, kill_tree

pytestmark = pytest.mark.slow
SERVER: dict[str, str] = {}  # set by the `served` fixture
BIN = Path(sys.executable).parent
RETRAIN_YAML = """\
train: {total_steps: 12, eval_interval: 6, checkpoint_interval: 6, batch_size: 8, seq_length: 64}
data: {max_eval_prompts: 4}
method: {gen_kwargs: {max_new_tokens: 6, do_sample: false}}
"""
SMALL = {"total_steps": 20, "eval_interval": 10,
         "overrides": {"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Prefect server on a free localhost port, and `python -m deployments.serve` registered with it
    (sft-retrain on retrain.yaml, a seconds-long run)."""
    home = tmp_path_factory.mktemp("served")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = python_env(PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=api, PREFECT_UI_API_URL=api,
                     PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}")
    logs = open(home / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        wait_for(lambda: api_healthy(api), 120, "the Prefect server")
        (home / "retrain.yaml").write_text(RETRAIN_YAML)  # sft-retrain's base config: a seconds-long run
        serve = subprocess.Popen([sys.executable, "-m", "deployments.serve", "--limit", "2", "--retrain-config",
                                  str(home / "retrain.yaml")], cwd=home, env=env,
                                 stdout=open(home / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        SERVER["api"] = api
        wait_for(lambda: len(_run(_deployments())) == 4, 120, "the four deployments")
        yield {"api": api, "home": home, "ui": f"http://127.0.0.1:{port}"}
    finally:
        for proc in (serve, server):
            if proc is not None:
                kill_tree(proc.pid)


def _run(coro):
    """asyncio.run in a thread of its own (it also works inside Playwright's sync API, which holds a
    loop), with this module's server as the API: settings contexts do not cross threads."""
    def in_thread():
        with temporary_settings(updates={PREFECT_API_URL: SERVER["api"]}):
            return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(in_thread).result()


async def _deployments():
    async with get_client() as client:
        return await client.read_deployments()


async def _trigger(name: str, parameters: dict):
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        return await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


async def _flow_run(flow_run_id):
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _task_runs(flow_run_id):
    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def finished(flow_run_id):
    run = _run(_flow_run(flow_run_id))
    return run if run.state.is_final() else None


def test_deployments_have_schedule_and_a_usable_form(served):
    by_name = {d.name: d for d in _run(_deployments())}
    assert set(by_name) == {"sft-retrain", "sft-adhoc", "watch-data", "sft-sweep"}
    sweep_form = by_name["sft-sweep"].parameter_openapi_schema
    assert sweep_form["required"] == ["grid"] and "config" in sweep_form["properties"]
    retrain = by_name["sft-retrain"]
    assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 1"]
    assert retrain.parameters["config"]["registered_model_name"] == "sftflow-demo"
    assert [s.active for s in by_name["watch-data"].schedules] == [False]  # served without paths to watch
    assert not by_name["sft-adhoc"].schedules
    schema = by_name["sft-adhoc"].parameter_openapi_schema
    form = schema["definitions"]["PipelineConfig"]["properties"]
    assert form["accelerate_config"]["enum"] == ["single", "ddp", "zero2", "zero3"]  # a dropdown
    assert all(field.get("description") for field in form.values())
    assert "anyOf" not in form["total_steps"]  # a plain number input, not a type switch


def test_trigger_through_the_api_with_parameters(served):
    flow_run = _run(_trigger("sft-pipeline/sft-adhoc", {"config": {**SMALL, "run_name": "api-run"}}))
    done = wait_for(lambda: finished(flow_run.id), 300, "the flow run")
    assert done.state.is_completed(), done.state
    # The server records task runs from the events the serving process sends in the background: poll.
    stages = sorted(["configure", "prepare_data", "define_metrics", "train", "save"])
    wait_for(lambda: sorted(t.task_key.split("-")[0] for t in _run(_task_runs(flow_run.id))) == stages, 60,
             "the flow run's five task runs on the server")
    assert (served["home"] / "runs" / "api-run" / "model" / "model.safetensors").exists()


def test_cancelling_a_multi_process_run_leaves_no_training_process(served):
    params = {"config": {"total_steps": 100000, "num_processes": 2, "run_name": "to-cancel",
                         "overrides": {"data.num_demo_rows": 600, "train.batch_size": 8}}}
    flow_run = _run(_trigger("sft-pipeline/sft-adhoc", params))
    marker = str(served["home"] / "runs" / "to-cancel")

    def training_processes():
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if marker in cmd and "sft_core" in cmd:
                found.append(p.info["pid"])
        return found

    metrics = Path(marker) / "logs" / "metrics.jsonl"
    wait_for(lambda: len(training_processes()) >= 3 and metrics.exists(), 240, "torchrun and its 2 workers to train")
    pids = training_processes()

    async def cancel():
        async with get_client() as client:
            await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

    _run(cancel())
    done = wait_for(lambda: finished(flow_run.id), 120, "the cancelled flow run")
    assert done.state.is_cancelled(), done.state
    alive = lambda: [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    wait_for(lambda: not alive(), 30, f"training processes {pids} to exit")


async def _runs_of(deployment_name: str):
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def _retrain_run_on(path: str):
    return next((r for r in _run(_runs_of("sft-pipeline/sft-retrain"))
                 if r.parameters["config"].get("data_path") == path), None)


@pytest.mark.extended
def test_new_data_retrains_on_it(served, tmp_path):
    """data-updated on a changed file: sft-retrain runs on that file and trains on it; unchanged: nothing is
    sent; watch-data on another file: a run on that one."""
    import mlflow

    data = (tmp_path / "rows.jsonl").resolve()
    data.write_text("".join(f'{{"prompt": "{i} plus {i} is", "completion": " {2 * i}"}}\n' for i in range(60)))
    env = python_env(PREFECT_API_URL=served["api"])
    announce = lambda: subprocess.run([sys.executable, "-m", "flows.data_updated", str(data)], cwd=tmp_path,
                                      env=env, capture_output=True, text=True, timeout=120)
    sent = announce()
    assert sent.returncode == 0 and f"changed: {data}" in sent.stdout, sent.stdout + sent.stderr
    run = wait_for(lambda: _retrain_run_on(str(data)), 60, "the sft-retrain run the event triggers")
    done = wait_for(lambda: finished(run.id), 300, "the triggered run")
    assert done.state.is_completed(), done.state
    trained = yaml.safe_load((served["home"] / "runs" / run.name / "config.yaml").read_text())
    assert trained["data"]["path"] == str(data) and trained["train"]["total_steps"] == 12  # retrain.yaml + event
    assert (served["home"] / "runs" / run.name / "model" / "model.safetensors").exists()
    versions = mlflow.MlflowClient(f"sqlite:///{served['home'] / 'mlflow.db'}").search_model_versions(
        "name='sftflow-demo'")
    (version,) = [v for v in versions if v.tags.get("sftflow.data.path") == str(data)]
    assert version.tags["sftflow.data.digest"] == data_digest(data).digest  # the digest the event announced

    again = announce()
    assert again.returncode == 0 and f"unchanged: {data}" in again.stdout, again.stdout + again.stderr

    other = (tmp_path / "more.jsonl").resolve()
    other.write_text(data.read_text())
    watcher = _run(_trigger("watch-data/watch-data", {"paths": [str(other)]}))
    assert wait_for(lambda: finished(watcher.id), 120, "the watch-data run").state.is_completed()
    wait_for(lambda: _retrain_run_on(str(other)), 60, "the run watch-data's event triggers")
    assert [r.parameters["config"]["data_path"] for r in _run(_runs_of("sft-pipeline/sft-retrain"))
            if r.parameters["config"].get("data_path") == str(data)] == [str(data)]  # still one run on the first


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("SFTFLOW_REQUIRE_BROWSER"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_custom_run_from_the_ui_in_a_real_browser(served, tmp_path):
    """Headless Chromium: find the deployment, fill the run form, submit, and see five tasks complete."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "SFTFLOW_REQUIRE_BROWSER is set but no chromium binary is on PATH"
    shots = Path(os.environ.get("SFTFLOW_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    ui = served["ui"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/deployments", wait_until="networkidle")
        page.get_by_role("link", name="sft-adhoc").click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("button", name="Custom run").click()
        page.wait_for_url("**/run**")
        page.wait_for_load_state("networkidle")
        form_field(page, "Total Steps").locator("input").fill("20")
        form_field(page, "Eval Interval").locator("input").fill("10")
        form_field(page, "Run Name").locator("textarea").fill("from-the-ui")
        form_field(page, "Overrides").locator("textarea").fill(
            '{"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16}')
        page.screenshot(path=str(shots / "run-form.png"))
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url("**?tab=Runs**")

        run_dir = served["home"] / "runs" / "from-the-ui"
        wait_for(lambda: (run_dir / "model" / "model.safetensors").exists(), 300, "the UI-triggered run's model")
        flow_run_id = wait_for(lambda: _flow_run_named_by_run_dir("from-the-ui"), 60, "the flow run")
        wait_for(lambda: finished(flow_run_id), 120, "the flow run to finish")
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for()
        page.get_by_role("tab", name="Task Runs").click() if page.get_by_role("tab", name="Task Runs").count() else None
        for stage in ("configure", "prepare_data", "define_metrics", "train", "save"):
            page.get_by_text(stage, exact=False).first.wait_for(timeout=30000)
        page.screenshot(path=str(shots / "flow-run.png"), full_page=True)
        browser.close()
    assert _run(_flow_run(flow_run_id)).state.is_completed()


def form_field(page, label: str):
    span = page.locator("span.schema-form-property__label", has_text=label).first
    return span.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]")


def _flow_run_named_by_run_dir(run_name: str):
    async def find():
        async with get_client() as client:
            for run in await client.read_flow_runs():
                if (run.parameters.get("config") or {}).get("run_name") == run_name:
                    return run.id
        return None
    return _run(find())
