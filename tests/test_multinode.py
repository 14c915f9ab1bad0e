"""Several machines, as two "nodes" on localhost: two launcher processes (torchrun each, --nnodes 2) that
meet over a rendezvous (gloo on the CPU). Each node is started the documented way,
`python -m sft_core train CONFIG --set distributed.machine_rank=k`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
from pathlib import Path
from typing import Sequence

import psutil
import pytest

from conftest import PYTHON, python_env, tiny_config, wait_for
from sft_core.checkpoint import list_checkpoints
from sft_core.config import DistributedConfig, TRLConfig
from sft_core.errors import ConfigError
from sft_core.launch import ChildFailed, free_port, launch_command, run_child
from sft_core.nodes import SHARED_CHECK_DIR
from sft_core.tracking import read_history

TWO_NODES = dict(num_machines=2, main_process_ip="127.0.0.1", use_cpu=True)


# -- settings and commands (no processes) -----------------------------------------------------------
@pytest.mark.parametrize("distributed, field", [
    (dict(num_machines=2, machine_rank=2, main_process_ip="10.0.0.1"), "distributed.machine_rank"),
    (dict(num_machines=2), "distributed.main_process_ip"),
    (dict(main_process_port=70000), "distributed.main_process_port"),
    (dict(num_machines=0), "distributed.num_machines"),
    (dict(rdzv_backend="etcd"), "distributed.rdzv_backend"),
])
def test_multinode_settings_are_checked_at_the_edge(distributed, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TRLConfig.from_dict({"distributed": distributed})


def node(machine_rank: int, **distributed):
    return TRLConfig.from_dict({"distributed": dict(num_machines=2, main_process_ip="10.0.0.1",
                                                    machine_rank=machine_rank, **distributed)}).distributed


def test_num_processes_is_per_machine_for_torchrun_and_accelerate_launch():
    static, _ = launch_command("c.yaml", node(1, num_processes=4, use_cpu=True), output_dir="m")
    assert static[static.index("--nproc_per_node") + 1] == "4"
    assert static[static.index("--nnodes") + 1:static.index("--nnodes") + 6] == [
        "2", "--node_rank", "1", "--master_addr", "10.0.0.1"]
    assert static[static.index("--master_port") + 1] == "29500"  # every node must agree: no random port

    c10d, _ = launch_command("c.yaml", node(1, use_cpu=True, rdzv_backend="c10d", main_process_port=29400),
                             output_dir="m", overrides=["distributed.machine_rank=1"])
    assert c10d[c10d.index("--rdzv_endpoint") + 1] == "10.0.0.1:29400"
    assert c10d[c10d.index("--rdzv_backend") + 1] == "c10d" and "--rdzv_id" in c10d
    assert c10d[-5:] == ["c.yaml", "--set", "distributed.machine_rank=1", "--output", "m"]

    gpus, _ = launch_command("c.yaml", node(1, num_processes=4, accelerate_config="ddp"), output_dir="m",
                             gpu_available=True)
    assert gpus[gpus.index("--num_processes") + 1] == "8"  # accelerate launch counts every machine's processes
    assert gpus[gpus.index("--num_machines") + 1:gpus.index("--num_machines") + 8] == [
        "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--rdzv_backend", "static"]


def test_what_a_launcher_starts_never_launches_again(monkeypatch):
    """accelerate launch with a distributed_type NO config (single.yaml given as a path) runs its child directly,
    without LOCAL_RANK: the child must train, not launch once more (processes piling up without end)."""
    from sft_core.launch import LAUNCH_CONFIGS, LAUNCHED_ENV, is_launched

    dist = DistributedConfig(accelerate_config=str(LAUNCH_CONFIGS / "single.yaml"))
    assert dist.launches_child
    cmd, env = launch_command("c.yaml", dist, output_dir="m", gpu_available=True)
    assert "accelerate.commands.launch" in cmd and env[LAUNCHED_ENV] == "1"
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    assert not is_launched()
    monkeypatch.setenv(LAUNCHED_ENV, env[LAUNCHED_ENV])
    assert is_launched()


def test_a_worker_that_refuses_its_input_fails_the_launch_as_bad_input(tmp_path):
    """torchrun exits 1 whatever its workers exit with: the worker's marked reason is how the launcher knows
    that a retry will not help (the pipeline's train task then raises SFTError, which Prefect does not retry)."""
    from sft_core.errors import BAD_INPUT_CAUSE, BAD_INPUT_EXIT_CODE, CAUSE_MARK

    def child(message: str) -> list[str]:
        return [PYTHON, "-c", f"import sys; print({message!r}, file=sys.stderr); sys.exit(1)"]

    with pytest.raises(ChildFailed) as refused:
        run_child(child(CAUSE_MARK + BAD_INPUT_CAUSE + "data.path: /nope.jsonl: no such file"), env={},
                  on_line=lambda line: None)
    assert refused.value.exit_code == BAD_INPUT_EXIT_CODE and "/nope.jsonl: no such file" in str(refused.value)
    with pytest.raises(ChildFailed) as crashed:  # any other failure keeps its code: worth a retry
        run_child(child(CAUSE_MARK + "node 1 (machine_rank 1) exited or died"), env={}, on_line=lambda line: None)
    assert crashed.value.exit_code == 1


@pytest.mark.extended
def test_a_bad_data_path_under_torchrun_exits_as_bad_input(tmp_path):
    """The real thing: two workers under torchrun refuse a missing data file; the launcher exits 2, naming it."""
    config = write_config(tmp_path, data=dict(path=str(tmp_path / "missing.jsonl")),
                          distributed=dict(num_processes=2, use_cpu=True))
    done = subprocess.run([PYTHON, "-m", "sft_core", "train", str(config)], env=python_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "its input is wrong" in done.stderr and "missing.jsonl" in done.stderr


# -- real nodes ------------------------------------------------------------------------------------
def write_config(run_dir: Path, **sections) -> Path:
    path = run_dir / "config.yaml"
    tiny_config(run_dir, **sections).save_yaml(path)
    return path


def start_node(config: Path, machine_rank: int, log: Path, *sets: str, extra: Sequence[str] = ()) -> subprocess.Popen:
    """`python -m sft_core train CONFIG --set distributed.machine_rank=k`: node k's launcher."""
    args = [arg for item in (f"distributed.machine_rank={machine_rank}", *sets) for arg in ("--set", item)]
    return subprocess.Popen([PYTHON, "-m", "sft_core", "train", str(config), *args, *extra],
                            env=python_env(OMP_NUM_THREADS="1"),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree_now(proc: subprocess.Popen) -> None:
    """Freeze, then SIGKILL, a node's whole launcher tree (CLI, torchrun agent, workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()  # first stop all, so none of them runs another step while the others die
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    proc.wait(timeout=30)


def finish(nodes: list[subprocess.Popen], logs: list[Path], timeout_s: float = 600) -> None:
    try:
        for proc, log in zip(nodes, logs):
            assert proc.wait(timeout=timeout_s) == 0, log.read_text()[-4000:]
    finally:
        for proc in nodes:
            if proc.poll() is None:
                kill_tree_now(proc)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss; for a resumed run the newest line for a step wins."""
    return {h["step"]: h["train/loss"] for h in read_history(run_dir / "logs" / "metrics.jsonl") if "train/loss" in h}


FAST = dict(total_steps=20, eval_interval=20, checkpoint_interval=20, log_interval=1)


@pytest.mark.slow
def test_two_nodes_train_as_one_process_with_the_same_global_batch(tmp_path):
    """2 nodes x batch 4 = 1 process x batch 8: the same rows per step, so the same loss per step."""
    from sft_core import train

    nodes_dir, one_dir = tmp_path / "nodes", tmp_path / "one"
    nodes_dir.mkdir()
    config = write_config(nodes_dir, train=dict(FAST, batch_size=4), data=dict(max_eval_prompts=0),
                          distributed=dict(TWO_NODES, main_process_port=free_port()))
    logs = [nodes_dir / f"node{k}.log" for k in (0, 1)]
    finish([start_node(config, k, logs[k]) for k in (0, 1)], logs)

    train(config=tiny_config(one_dir, train=dict(FAST, batch_size=8), data=dict(max_eval_prompts=0)))
    a, b = losses(one_dir), losses(nodes_dir)
    rows = [h for h in read_history(nodes_dir / "logs" / "metrics.jsonl") if "train/loss" in h]
    assert [h["step"] for h in rows] == list(range(1, 21))  # global rank 0 alone logs: one line per step
    worst = max(abs(a[s] - b[s]) for s in range(1, 21))
    assert worst < 1e-4, worst
    checkpoint = nodes_dir / "checkpoints" / "step-20"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                             "random_states_1.pkl"]
    assert not (nodes_dir / "checkpoints" / SHARED_CHECK_DIR).exists()  # the start-up check cleaned up
    assert "Trained 20 steps" in logs[0].read_text() and "Trained 20 steps" not in logs[1].read_text()


@pytest.mark.extended
def test_a_checkpoint_folder_that_is_not_shared_is_refused_by_name(tmp_path):
    """Node 1 writes into another folder than node 0 sees, as with a node-local disk. The nodes are
    torchrun started by hand on a config that says nothing about machines: the check still runs."""
    config = write_config(tmp_path, train=FAST, data=dict(max_eval_prompts=0))
    port = free_port()
    logs = [tmp_path / f"node{k}.log" for k in (0, 1)]
    local = ["--set", f"train.checkpoint_dir={tmp_path / 'node1-local' / 'checkpoints'}"]
    nodes = [subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(k),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "sft_core", "train", str(config), *(local if k else [])],
                              env=python_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true"), stdout=logs[k].open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True) for k in (0, 1)]
    codes = [proc.wait(timeout=600) for proc in nodes]
    assert codes[0] != 0 and codes[1] != 0
    out = logs[0].read_text()
    assert "train.checkpoint_dir" in out and "is not shared storage" in out, out[-3000:]
    assert "node 1 (machine_rank 1)" in out
    assert not list_checkpoints(tmp_path / "checkpoints")


@pytest.mark.extended
def test_a_killed_node_is_named_and_both_nodes_resume_to_the_end(tmp_path, monkeypatch):
    """Node 0 runs as the pipeline's train task does (sft_core.run.train_run); node 1 with the documented
    command on the run's train_config.yaml. Node 1's launcher tree is killed after the second checkpoint:
    node 0 fails naming node 1, no half-written checkpoint is left, and both nodes relaunched (the same
    command each) resume to step 20."""
    import mlflow

    from sft_core import run as lifecycle

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, train=dict(FAST, checkpoint_interval=2, save_total_limit=None),
                         data=dict(max_eval_prompts=0), tracking=dict(tracking_uri=tracking_uri),
                         distributed=dict(TWO_NODES, main_process_port=free_port()))
    run = lifecycle.start_run(config, name="two-nodes", runs_dir=tmp_path / "runs")
    data = lifecycle.prepare_data(run)
    checkpoints = run.layout.checkpoints

    def both_nodes(attempt: str) -> tuple[concurrent.futures.Future, subprocess.Popen, list[str]]:
        lines: list[str] = []
        node0 = pool.submit(lifecycle.train_run, run, data, on_line=lines.append)
        node1 = start_node(run.layout.launch_config, 1, tmp_path / f"node1-{attempt}.log",
                           extra=["--wait-for-config", "300"])
        return node0, node1, lines

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        node0, node1, lines = both_nodes("first")
        try:
            wait_for(lambda: (checkpoints / "step-4" / "trainer_state.json").exists(), 300, "the second checkpoint",
                     proc=node1, every_s=0.01)
        finally:
            kill_tree_now(node1)
        with pytest.raises(ChildFailed) as failed:
            node0.result(timeout=300)
        message = str(failed.value).partition("\n")[0]
        assert "node 1 (machine_rank 1) exited or died" in message, "\n".join(lines[-60:])
        done = [step for step, _ in list_checkpoints(checkpoints)]
        assert done and done[-1] < 20, "node 1 was killed after the run ended; nothing was tested"
        for path in checkpoints.glob("step-*"):  # complete or absent
            assert (path / "trainer_state.json").exists() and (path / "random_states_1.pkl").exists(), path
        assert not list(checkpoints.glob(".tmp-*"))

        node0, node1, lines = both_nodes("again")  # the same port: as a restarted Job's pods would
        summary = node0.result(timeout=600)
        assert node1.wait(timeout=120) == 0, (tmp_path / "node1-again.log").read_text()[-3000:]
    assert summary.steps == 20
    assert any(f"Resumed from {checkpoints / f'step-{done[-1]}'} at step {done[-1]}" in line for line in lines)
    assert sorted(losses(run.layout.root)) == list(range(1, 21))
    # Global rank 0 alone logs to the run's MLflow run: steps before the resume point once, not once per node.
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run.mlflow_run_id, "train/loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(1, 21))
    assert all(steps.count(s) == 1 for s in range(1, done[-1] + 1)), sorted(steps)
