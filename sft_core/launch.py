"""Run training in a child process group: torchrun on CPUs, `accelerate launch` with a shipped config on GPUs.

On several machines each node runs its own launcher with the same config and its own
``distributed.machine_rank`` (``python -m sft_core train CONFIG --set distributed.machine_rank=k``);
the launchers meet at ``main_process_ip:main_process_port``.

The child's output is streamed line by line to a callback; a deadline, a cancel or an error in
the parent kills every process the child started (torchrun's workers run in sessions of their
own, so the whole tree is collected and signalled, then SIGKILLed after a grace period).
"""

from __future__ import annotations

import collections
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil

from sft_core.config import DistributedConfig
from sft_core.errors import BAD_INPUT_CAUSE, BAD_INPUT_EXIT_CODE, CAUSE_MARK
from sft_core.fsdp_glue import LAUNCH_CONFIGS, launch_config_path, require_gpu_for_fsdp  # noqa: F401 - re-exported

LAUNCHED_ENV = "SFTFLOW_LAUNCHED"


def is_launched() -> bool:
    """Whether this process was started by a launcher, ours (``LAUNCHED_ENV``) or torchrun by hand (``LOCAL_RANK``).

    Not LOCAL_RANK alone: ``accelerate launch`` with a config whose distributed_type is NO runs its one child
    directly, without it, and that child would launch again, and again."""
    return LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ


class ChildFailed(RuntimeError):
    """The child failed; ``exit_code`` is its status (None when we killed it at its deadline)."""

    def __init__(self, message: str, tail: list[str], exit_code: int | None = None):
        self.tail = tail
        self.exit_code = exit_code
        super().__init__(message + ("\n--- last lines ---\n" + "\n".join(tail) if tail else ""))


def launch_command(config_path: str | Path | None, dist: DistributedConfig, *, output_dir: str | Path,
                   gpu_available: bool | None = None, overrides: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment for this machine's part of one training run.

    ``dist.num_processes`` is per machine for both launchers: torchrun gets it as --nproc_per_node,
    accelerate launch (whose --num_processes counts every machine's) gets num_processes * num_machines.
    ``config_path`` None trains the embedded demo; ``overrides`` are passed on as ``--set`` arguments.
    """
    if gpu_available is None and not dist.use_cpu:
        import torch

        gpu_available = torch.cuda.is_available()
    train_args = ["-m", "sft_core", "train", *([str(config_path)] if config_path else []),
                  *(arg for item in overrides for arg in ("--set", item)), "--output", str(output_dir)]
    env = {"PYTHONUNBUFFERED": "1"}
    if not dist.launches_child:
        return [sys.executable, *train_args], env
    env[LAUNCHED_ENV] = "1"  # what the launcher starts trains; it never launches again (see is_launched)
    port = dist.rendezvous_port or free_port()
    if dist.use_cpu or not gpu_available:
        require_gpu_for_fsdp(dist, gpu_available=False)  # FSDP would silently run as DDP here
        # `accelerate launch --cpu --num_processes N` silently runs one process; torchrun does not
        # (https://github.com/huggingface/accelerate/issues/2741).
        env["ACCELERATE_USE_CPU"] = "true"
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dist.num_processes),
                *_torchrun_node_args(dist, port), *train_args], env
    config_file = str(launch_config_path(dist.accelerate_config))  # a shipped name, or the user's YAML
    machines = []
    if dist.num_machines > 1:
        machines = ["--num_machines", str(dist.num_machines), "--machine_rank", str(dist.machine_rank),
                    "--main_process_ip", str(dist.main_process_ip), "--rdzv_backend", dist.rdzv_backend]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "--num_processes",
            str(dist.world_size), *machines, "--main_process_port", str(port), *train_args], env


def _torchrun_node_args(dist: DistributedConfig, port: int) -> list[str]:
    """torchrun's arguments for where this machine meets the others."""
    if dist.num_machines == 1:
        return ["--master_port", str(port)]
    nodes = ["--nnodes", str(dist.num_machines), "--node_rank", str(dist.machine_rank)]
    if dist.rdzv_backend == "static":  # node 0's agent hosts the store at main_process_ip:port
        return [*nodes, "--master_addr", str(dist.main_process_ip), "--master_port", str(port)]
    # c10d: the store lives at the endpoint; the id only has to be the same on every node of this job
    return [*nodes, "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{dist.main_process_ip}:{port}",
            "--rdzv_id", f"sftflow-{port}"]


def run_child(cmd: list[str], *, env: dict[str, str], cwd: str | Path | None = None,
              on_line: Callable[[str], None] = print, on_tick: Callable[[], None] | None = None,
              timeout_s: float | None = None, tail_lines: int = 40, on_start: Callable[[int], None] | None = None) -> None:
    """Run ``cmd`` to completion; raise ChildFailed (with the log's tail) on error or deadline."""
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    if on_start is not None:
        on_start(proc.pid)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    cause = ""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                tail.append(line)
                on_line(line)
                if not cause and CAUSE_MARK in line:
                    cause = line.split(CAUSE_MARK, 1)[1].strip()
            if on_tick is not None:
                on_tick()
            if deadline is not None and time.monotonic() > deadline:
                kill_tree(proc.pid)
                raise ChildFailed(f"training exceeded its {timeout_s:.0f}s deadline and was killed", list(tail))
        code = proc.wait()
    finally:
        if proc.poll() is None:  # cancelled, interrupted or failed in the parent: take the children down
            kill_tree(proc.pid)
    if code != 0:
        reason = f": {cause}" if cause else ""
        bad_input = cause.startswith(BAD_INPUT_CAUSE)  # a worker under torchrun, whose exit code torchrun hides
        raise ChildFailed(f"training process exited with code {code}{reason}", list(tail),
                          exit_code=BAD_INPUT_EXIT_CODE if bad_input else code)


def kill_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process, its group and every descendant; SIGKILL whatever outlives the grace period."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _read_lines(stream, out: queue.Queue) -> None:
    """Split on \\n and \\r, so tqdm's in-place updates arrive as lines too."""
    buffer = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        buffer += chunk
        *complete, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            out.put(raw.decode("utf-8", "replace").rstrip())
    if buffer:
        out.put(buffer.decode("utf-8", "replace").rstrip())
    out.put(None)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the parent dies, even by SIGKILL (torchrun then stops its workers)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
