"""The fsdp2 launch config: what Accelerate builds from it, and its refusal on CPUs.

FSDP itself cannot run here: Accelerate 1.15 enables FSDP only for GPU-like devices (on CPUs it trains with
DDP instead, which the extended test below keeps checking), so sft_core refuses fsdp2 without a GPU. Training
under fsdp2 on a GPU, checkpointing and resuming are tests/test_gpu.py's (pytest -m gpu).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYTHON, ROOT, python_env, tiny_config
from sft_core import ConfigError
from sft_core.config import DistributedConfig
from sft_core.launch import launch_command

FSDP2_YAML = ROOT / "sft_core" / "launch_configs" / "fsdp2.yaml"


def test_the_fsdp2_config_gives_accelerate_an_fsdp2_plugin_that_wraps_each_decoder_layer(monkeypatch):
    """The YAML goes through accelerate launch's own parsing into the environment its workers read, and the
    plugin built from that environment is FSDP2 with per-layer wrapping and a loadable checkpoint format."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from sft_core.embedded import build_tiny_llama

    args = launch_command_parser().parse_args(
        ["--config_file", str(FSDP2_YAML), "--num_processes", "2", "--main_process_port", "0", "-m", "sft_core"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    model = build_tiny_llama(0)
    plugin.set_auto_wrap_policy(model)
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # loaded with torch.load(weights_only=True)
    assert plugin.reshard_after_forward is True
    wrapped = [m for m in model.modules() if plugin.auto_wrap_policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert wrapped and all(isinstance(m, LlamaDecoderLayer) for m in wrapped)
    assert len(wrapped) == model.config.num_hidden_layers


@pytest.mark.parametrize("dist, gpu, why", [
    (dict(num_processes=2), False, "no CUDA GPU"),
    (dict(num_processes=1, use_cpu=True), True, "use_cpu is true"),
])
def test_fsdp2_is_refused_where_it_would_train_on_cpus(tmp_path, dist, gpu, why):
    with pytest.raises(ConfigError) as caught:
        launch_command(tmp_path / "config.yaml", DistributedConfig(accelerate_config="fsdp2", **dist),
                       output_dir=tmp_path / "model", gpu_available=gpu)
    assert caught.value.field == "distributed.accelerate_config"
    assert why in str(caught.value) and "DDP" in str(caught.value)


def test_a_users_own_fsdp_yaml_is_refused_too_and_ddp_still_launches(tmp_path):
    own = tmp_path / "my_fsdp.yaml"
    own.write_text("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 1\n")
    with pytest.raises(ConfigError, match="distributed.accelerate_config"):
        launch_command(tmp_path / "c.yaml", DistributedConfig(accelerate_config=str(own), num_processes=2),
                       output_dir=tmp_path / "model", gpu_available=False)
    cmd, env = launch_command(tmp_path / "c.yaml", DistributedConfig(accelerate_config="ddp", num_processes=2),
                              output_dir=tmp_path / "model", gpu_available=False)
    assert "torch.distributed.run" in cmd and env["ACCELERATE_USE_CPU"] == "true"


def test_training_with_fsdp2_in_a_process_not_running_fsdp_fails_before_any_step(tmp_path):
    """`python -m sft_core train` (or train()) with fsdp2 but no FSDP launcher: refused, not trained unsharded."""
    from sft_core import train

    config = tiny_config(tmp_path, distributed=dict(accelerate_config="fsdp2"))
    with pytest.raises(ConfigError) as caught:
        train(config=config)
    assert caught.value.field == "distributed.accelerate_config"
    assert "no CUDA GPU" in str(caught.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


def test_checkpoint_helpers_find_an_fsdp_sharded_optimizer_folder(tmp_path):
    """Under FSDP with SHARDED_STATE_DICT, Accelerate writes the optimizer as a folder optimizer_0/; resuming must
    load it (not warn that it is missing and start a fresh optimizer)."""
    from sft_core.checkpoint import _optimizer_states

    (tmp_path / "optimizer_0").mkdir()
    (tmp_path / "optimizer.bin").write_bytes(b"")
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    assert sorted(p.name for p in _optimizer_states(tmp_path)) == ["optimizer.bin", "optimizer_0"]


PROBE = """
import sys
from pathlib import Path
from accelerate import Accelerator
from sft_core.embedded import build_tiny_llama
accelerator = Accelerator(cpu=True)
model = accelerator.prepare(build_tiny_llama(0))
seen = f"{accelerator.distributed_type.value} {type(model).__name__}"
Path(sys.argv[1], f"rank{accelerator.process_index}.txt").write_text(seen)
"""


@pytest.mark.extended
def test_accelerate_still_turns_fsdp_on_cpus_into_ddp(tmp_path):
    """Why fsdp2 is GPU-only: with ACCELERATE_USE_FSDP and FSDP_VERSION=2 on two CPU processes, Accelerate 1.15
    runs MULTI_CPU and wraps the model in DistributedDataParallel. If this starts failing, Accelerate shards on
    CPUs now: then test fsdp2 on CPUs against one process and lift sft_core.fsdp_glue's refusal."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 300), str(script), str(tmp_path)]
    result = subprocess.run(cmd, env=python_env(ACCELERATE_USE_CPU="true", ACCELERATE_USE_FSDP="true",
                                                FSDP_VERSION="2", OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert seen == ["MULTI_CPU DistributedDataParallel"] * 2
