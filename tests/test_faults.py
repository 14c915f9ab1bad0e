"""Faults, with real processes and signals: a kill mid-checkpoint, a killed flow, a NaN loss, MLflow down,
a full disk. Each must lose nothing that was already safe, and say what happened."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from safetensors.torch import load_file

from conftest import PYTHON, listeners_beyond_loopback, prefect_home_env, python_env, small_run, task_runs, \
    tiny_config, wait_for
from sft_core import TrainingError, train
from sft_core.checkpoint import list_checkpoints
from sft_core.cli import main as sft_cli
from sft_core.embedded import save_embedded_model
from sft_core.tracking import read_history
from sft_core.trainer import AccelerateSFTTrainer


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its session (a flow's temporary server too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- SIGKILL while a checkpoint is being written ------------------------------------------------------
def medium_model_folder(folder: Path) -> Path:
    """~10M parameters, so a checkpoint (weights + AdamW state, ~120 MB) takes long enough to be caught mid-write."""
    return save_embedded_model(folder, hidden_size=448, intermediate_size=1216, num_hidden_layers=4,
                               num_attention_heads=7, num_key_value_heads=7)


def losses(logs: Path) -> dict[int, float]:
    """step -> train/loss; for a resumed run the newest line for a step wins."""
    return {h["step"]: h["train/loss"] for h in read_history(logs / "metrics.jsonl") if "train/loss" in h}


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_replays_exactly(tmp_path):
    """Killed after its second checkpoint, while writing the third: resume from the second."""
    model = medium_model_folder(tmp_path / "base-model")
    config = tiny_config(tmp_path, model=dict(model_path=str(model)), method=dict(metrics=[]),
                         train=dict(total_steps=8, checkpoint_interval=2, eval_interval=3, batch_size=8,
                                    save_total_limit=None),
                         data=dict(max_eval_prompts=0, eval_fraction=0.05))
    config_path = config.save_yaml(tmp_path / "config.yaml")
    checkpoints = tmp_path / "checkpoints"

    run = subprocess.Popen([PYTHON, "-m", "sft_core", "train", str(config_path)], env=python_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: (checkpoints / "step-4" / "trainer_state.json").exists(), 300, "the second checkpoint",
             proc=run, every_s=0.002)
    wait_for(lambda: (checkpoints / ".tmp-step-6").exists(), 300, "the third checkpoint's write", proc=run,
             every_s=0.002)
    kill_group(run)

    assert not (checkpoints / "step-6").exists(), "the kill came after the write finished; nothing was tested"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2, 4]
    intact = checkpoints / "step-4"
    assert json.loads((intact / "trainer_state.json").read_text())["step"] == 4
    assert load_file(intact / "model.safetensors")  # the previous checkpoint still loads

    resumed = train(config=config.evolve(train=dict(resume_from_checkpoint="latest")))
    assert resumed.summary.steps == 8
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2, 4, 6, 8]
    assert not list(checkpoints.glob(".tmp-*")), "the half-written folder was not cleaned up"
    state = json.loads((checkpoints / "step-8" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["target_tokens_seen"] > 0
    evals = [h["step"] for h in read_history(tmp_path / "logs" / "metrics.jsonl") if "eval/loss" in h]
    assert evals[-2:] == [6, 8]  # the eval schedule carried on

    # The same data order and RNG: every step's loss equals an uninterrupted run's.
    straight = config.evolve(train=dict(checkpoint_dir=str(tmp_path / "straight" / "ckpt"),
                                        logging_dir=str(tmp_path / "straight" / "logs")))
    train(config=straight)
    a, b = losses(tmp_path / "straight" / "logs"), losses(tmp_path / "logs")
    assert sorted(b) == list(range(1, 9))  # the step counter went on from the checkpoint
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5, (a, b)


# -- SIGKILL of a whole flow run, then the same run again ----------------------------------------------
FLOW_OVERRIDES = {"train.total_steps": 40, "train.checkpoint_interval": 10, "train.eval_interval": 20,
                  "train.batch_size": 16, "train.log_interval": 1, "data.num_demo_rows": 600, "data.max_eval_prompts": 8}


def flow_cli(tmp_path: Path, run_name: str) -> subprocess.Popen:
    """`python -m flows.sft` in a process of its own, reporting to the test's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    sets = [arg for key, value in FLOW_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
    env = python_env(PREFECT_HOME=str(tmp_path / "prefect-home"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
                     PREFECT_API_URL=PREFECT_API_URL.value(), SFTFLOW_CACHE=str(tmp_path / "cache"))
    return subprocess.Popen([PYTHON, "-m", "flows.sft", "--run-name", run_name, *sets], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


LOCAL_SERVER_SCRIPT = """
import time
from flows.local_server import start_temporary_server_early
server = start_temporary_server_early()
server.wait_until_up()
print(server.pid, server.api_url, flush=True)
time.sleep(600)
"""


def test_the_local_runs_prefect_server_is_loopback_only_and_dies_with_its_process(tmp_path):
    """With no server configured, `python -m flows.sft` starts Prefect's temporary server; even a SIGKILL
    of the run takes it down (and the watchdog that does it)."""
    parent = subprocess.Popen([PYTHON, "-c", LOCAL_SERVER_SCRIPT], cwd=tmp_path,
                              env=prefect_home_env(tmp_path / "prefect-home"), stdout=subprocess.PIPE, text=True)
    try:
        pid, api_url = parent.stdout.readline().split()
        server = psutil.Process(int(pid))
        assert api_url.startswith("http://127.0.0.1:") and server.ppid() == parent.pid
        assert not listeners_beyond_loopback(server.pid)
        helpers = psutil.Process(parent.pid).children(recursive=True)  # the server and its watchdog
        assert server in helpers and len(helpers) == 2, helpers
    finally:
        parent.kill()
        parent.wait()

    def exited(process: psutil.Process) -> bool:
        try:
            return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(lambda: all(map(exited, helpers)), 30, "the server and its watchdog to exit with their parent")


def test_the_temporary_prefect_server_listens_on_loopback_only(prefect_server):
    """The harness's server: Prefect's own SubprocessASGIServer (what deployments and tests use)."""
    from prefect.server.api.server import SubprocessASGIServer

    servers = [s for s in SubprocessASGIServer._instances.values() if getattr(s, "server_process", None)]
    assert servers and all(psutil.pid_exists(s.server_process.pid) for s in servers)
    for server in servers:
        assert not listeners_beyond_loopback(server.server_process.pid)


def test_killed_flow_run_resumes_to_the_same_final_loss(prefect_server, tmp_path, monkeypatch):
    from flows.sft import sft_pipeline
    from tasks.params import PipelineConfig

    run_dir = tmp_path / "runs" / "killed"
    first = flow_cli(tmp_path, "killed")
    wait_for(lambda: (run_dir / "checkpoints" / "step-20" / "trainer_state.json").exists(), 300,
             "the flow's second checkpoint", proc=first, every_s=0.05)
    kill_group(first)
    assert not (run_dir / "model").exists(), "the run finished before the kill"

    # The same run again (same run_name), here in-process: it resumes from the run's last checkpoint.
    monkeypatch.chdir(tmp_path)
    again = PipelineConfig(run_name="killed", overrides=FLOW_OVERRIDES, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert sft_pipeline(again, return_state=True).is_completed()
    steps = [h["step"] for h in read_history(run_dir / "logs" / "metrics.jsonl") if "train/loss" in h]
    assert steps.count(1) == 1 and sorted(set(steps)) == list(range(1, 41))  # resumed, not restarted

    # The same run, uninterrupted, from the config the flow saved.
    from sft_core import TRLConfig

    straight = TRLConfig.load_yaml(run_dir / "config.yaml").evolve(
        train=dict(checkpoint_dir=str(tmp_path / "straight" / "ckpt"), logging_dir=str(tmp_path / "straight" / "logs"),
                   resume_from_checkpoint=None, tracker="jsonl"),
        tracking=dict(run_id=None), data=dict(cache_dir=str(tmp_path / "cache")))
    reference = train(config=straight)

    def final(logs: Path) -> dict[str, float]:
        rows = read_history(logs / "metrics.jsonl")
        return {"train/loss": [r for r in rows if "train/loss" in r][-1]["train/loss"],
                "eval/loss": [r for r in rows if "eval/loss" in r][-1]["eval/loss"]}

    resumed, uninterrupted = final(run_dir / "logs"), final(tmp_path / "straight" / "logs")
    assert reference.summary.steps == 40
    for key in resumed:
        assert abs(resumed[key] - uninterrupted[key]) < 1e-5, (key, resumed, uninterrupted)


# -- NaN / inf loss -----------------------------------------------------------------------------------
EXPLODING = dict(optimizer=dict(name="sgd", kwargs=dict(lr=1e6)), scheduler=dict(name="constant_with_warmup", warmup_steps=2),
                 train=dict(total_steps=12, checkpoint_interval=1, eval_interval=100, max_grad_norm=None,
                            save_total_limit=None),
                 method=dict(metrics=[]))


def assert_checkpoints_hold_finite_weights(checkpoints: Path) -> list[int]:
    kept = list_checkpoints(checkpoints)
    for _, path in kept:
        assert all(t.isfinite().all() for t in load_file(path / "model.safetensors").values()), path
    return [step for step, _ in kept]


def test_a_diverging_run_stops_naming_the_step_and_keeps_only_good_checkpoints(tmp_path):
    """lr=1e6 without clipping: a real divergence (the loss explodes, then the weights overflow)."""
    with pytest.raises(TrainingError) as raised:
        train(config=tiny_config(tmp_path, **EXPLODING))
    message = str(raised.value)
    bad_step = int(message.split(" step ")[1].split(maxsplit=1)[0].rstrip(";.)"))
    kept = assert_checkpoints_hold_finite_weights(tmp_path / "checkpoints")
    assert kept and kept[-1] < bad_step, (kept, message)
    assert f"The last good checkpoint is {tmp_path / 'checkpoints' / f'step-{kept[-1]}'}." in message


class InfLossOnSteps(AccelerateSFTTrainer):
    """A custom loss (the documented compute_loss hook) that overflows on the batches of steps 3 and 5."""

    def compute_loss(self, batch):
        loss = super().compute_loss(batch)
        return loss * float("inf") if self.state.step + 1 in (3, 5) else loss


FIXED_LR = dict(train=dict(total_steps=8, checkpoint_interval=1, eval_interval=100, save_total_limit=None),
                method=dict(metrics=[]))


def test_an_inf_loss_stops_the_run_at_that_step(tmp_path):
    with pytest.raises(TrainingError, match=r"non-finite loss \(\w+\) at step 3\. The last good checkpoint is .*step-2"):
        train(config=tiny_config(tmp_path, **FIXED_LR), trainer_cls=InfLossOnSteps)
    assert assert_checkpoints_hold_finite_weights(tmp_path / "checkpoints") == [1, 2]


def test_an_inf_loss_can_skip_the_batch_and_count_it(tmp_path):
    config = tiny_config(tmp_path, **FIXED_LR).evolve(train=dict(on_nonfinite_loss="skip"))
    trainer = train(config=config, trainer_cls=InfLossOnSteps)
    assert trainer.summary.steps == 8 and trainer.summary.skipped_steps == 2
    state = json.loads((tmp_path / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 2  # the count survives a resume
    assert all(p.isfinite().all() for p in trainer.model.parameters())  # a skipped batch never reaches the weights
    assert assert_checkpoints_hold_finite_weights(tmp_path / "checkpoints") == list(range(1, 9))


# -- MLflow unreachable ---------------------------------------------------------------------------------
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_unreachable_mlflow_does_not_stop_training_and_can_be_synced_later(tmp_path, caplog):
    config = tiny_config(tmp_path, train=dict(tracker="mlflow"), tracking=dict(tracking_uri=DOWN))
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="sft_core.tracking"):
        trainer = train(config=config)
    assert time.monotonic() - started < 120  # no minutes of retries against a dead server
    assert trainer.summary.steps == 20 and trainer.summary.mlflow_run_id is None
    assert "sync-mlflow" in caplog.text and "127.0.0.1:9" in caplog.text
    logged = [h["step"] for h in read_history(tmp_path / "logs" / "metrics.jsonl") if "train/loss" in h]
    assert logged == list(range(1, 21))  # every step is on local disk

    store = f"sqlite:///{tmp_path / 'later.db'}"
    assert sft_cli(["sync-mlflow", str(tmp_path / "logs"), "--tracking-uri", store]) == 0
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("sftflow").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 21))


def test_the_flow_trains_through_an_unreachable_mlflow(prefect_server, tmp_path, monkeypatch):
    from flows.sft import sft_pipeline

    monkeypatch.chdir(tmp_path)
    state = sft_pipeline(small_run(tmp_path, tracking_uri=DOWN), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result.mlflow_run_id is None and result.version is None
    assert (Path(result.model_dir) / "model.safetensors").exists()
    assert read_history(Path(result.run_dir) / "logs" / "metrics.jsonl")


# -- a full disk ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """Writes past max_bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored so they raise, not kill)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_full_disk_during_export_leaves_no_half_written_model(tmp_path):
    trainer = train(config=tiny_config(tmp_path, train=dict(total_steps=2, eval_interval=100), method=dict(metrics=[])))
    target = tmp_path / "export"
    with file_size_limit(1 << 20), pytest.raises(OSError) as raised:  # the weights are ~3.4 MB
        trainer.save_pretrained(target)
    assert "export" in str(raised.value) and "disk full" in str(raised.value)
    assert not target.exists() and not list(tmp_path.glob(".tmp-*"))
    trainer.save_pretrained(target)  # with space again, the same call works
    assert (target / "model.safetensors").exists()


def test_unwritable_model_store_fails_the_save_task_and_registers_nothing(prefect_server, tmp_path, monkeypatch):
    from flows.sft import sft_pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlartifacts").write_text("a file where MLflow's artifact folder should be")
    params = small_run(tmp_path)
    state = sft_pipeline(params, return_state=True)
    assert state.is_failed(), state
    by_stage = {run.task_key.split("-")[0]: run.state for run in task_runs(state.state_details.flow_run_id)}
    assert by_stage["train"].is_completed() and by_stage["save"].is_failed()
    client = mlflow.MlflowClient(params.tracking_uri)
    assert client.search_registered_models() == [] and client.search_model_versions() == []
    experiment = client.get_experiment_by_name(params.experiment_name)
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FAILED"]
    assert not [m for m in client.search_logged_models([experiment.experiment_id]) if m.status == "READY"]
    run_dir = Path(params.runs_dir)
    (kept,) = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    assert (kept / "model" / "model.safetensors").exists()  # the trained model is kept for a retry of save
