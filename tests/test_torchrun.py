"""Tasks that declare nproc_per_node/nnodes are launched with torchrun: the command built, the task field,
the executor the runner builds, and a real 2-process CPU run (gloo all-reduce) through the executor and
the scoring path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from speedrunner.core.errors import TaskError, UserError
from speedrunner.execution.local import LocalExecutor
from speedrunner.execution.torchrun import TorchrunExecutor, TorchrunSpec, torchrun_command
from speedrunner.runner import make_executor, task_fingerprint
from speedrunner.scoring.outcome import score
from speedrunner.tasks.spec import load_task

PY = sys.executable
RUN = [PY, "-m", "torch.distributed.run"]

TRAIN = """\
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)  # 1 + 2 + ... + world
if rank == 0:
    print(f"world_size: {world}")
    print(f"allreduce: {t.item():.1f}")
dist.destroy_process_group()
"""


def make_task(root: Path, **fields) -> Path:
    (root / "template").mkdir(parents=True, exist_ok=True)
    (root / "template" / "train.py").write_text(TRAIN)
    spec = {"name": "ddp", "description": "all-reduce on 2 processes", "command": ["{python}", "train.py"],
            "timeout_s": 120, "metric": {"name": "allreduce", "direction": "maximize"},
            "parsers": [{"pattern": r"^world_size: (?P<world_size>\d+)"},
                        {"pattern": r"^allreduce: (?P<allreduce>[0-9.]+)"}],
            "valid_if": ["exit_code == 0", "world_size == 2", "allreduce == 3"], **fields}
    (root / "task.yaml").write_text(yaml.safe_dump(spec))
    return root / "task.yaml"


def test_standalone_command():
    spec = TorchrunSpec(nproc_per_node=2)
    assert torchrun_command([PY, "train.py", "--lr", "1"], spec) == \
        [*RUN, "--standalone", "--nproc_per_node=2", "train.py", "--lr", "1"]
    assert torchrun_command(["python3", "-m", "pkg.train", "x"], spec) == \
        ["python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pkg.train", "x"]
    # interpreter options and other programs go through --no-python, with the same interpreter
    assert torchrun_command([PY, "-u", "train.py"], spec) == \
        [*RUN, "--standalone", "--nproc_per_node=2", "--no-python", PY, "-u", "train.py"]
    assert torchrun_command(["./run.sh", "a"], spec) == \
        [*RUN, "--standalone", "--nproc_per_node=2", "--no-python", "./run.sh", "a"]
    # a task that launches torchrun itself is left alone
    own = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "train_gpt.py"]
    assert torchrun_command(own, spec) == own
    assert torchrun_command(["torchrun", "x.py"], spec) == ["torchrun", "x.py"]
    assert torchrun_command([PY, "train.py"], TorchrunSpec(nproc_per_node=2, max_restarts=1,
                                                           extra_args=["--log-dir=logs"]))[3:] == \
        ["--standalone", "--nproc_per_node=2", "--max_restarts=1", "--log-dir=logs", "train.py"]


def test_multi_node_command_needs_a_rendezvous():
    spec = TorchrunSpec(nproc_per_node=8, nnodes=2, rdzv_endpoint="node1:29500", rdzv_id="job7", node_rank=1)
    assert torchrun_command([PY, "train.py"], spec) == \
        [*RUN, "--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=node1:29500",
         "--rdzv_id=job7", "--node_rank=1", "train.py"]
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        torchrun_command([PY, "train.py"], TorchrunSpec(nproc_per_node=8, nnodes=2))
    with pytest.raises(ValueError):
        TorchrunSpec(nproc_per_node=0)


def test_task_fields_and_the_executor_built_for_them(tmp_path):
    plain = load_task(make_task(tmp_path / "plain"), "plain")
    assert plain.nproc_per_node is None and plain.nnodes == 1 and not plain.distributed
    assert isinstance(make_executor({"name": "local"}, plain), LocalExecutor)

    task = load_task(make_task(tmp_path / "ddp", nproc_per_node=2), "ddp")
    assert task.distributed and task.nproc_per_node == 2
    ex = make_executor({"name": "local", "threads": 1}, task)
    assert isinstance(ex, TorchrunExecutor) and ex.spec.nproc_per_node == 2 and ex.threads == 1
    assert task_fingerprint(task) != task_fingerprint(plain)
    # the config may override the count (e.g. an 8-GPU record on a 1-GPU machine)
    assert make_executor({"name": "local", "torchrun": {"nproc_per_node": 1}}, task).spec.nproc_per_node == 1

    multi = load_task(make_task(tmp_path / "multi", nproc_per_node=2, nnodes=2), "multi")
    with pytest.raises(UserError, match="rdzv_endpoint"):
        make_executor({"name": "local"}, multi)
    ex = make_executor({"name": "local", "torchrun": {"rdzv_endpoint": "10.0.0.1:29400", "node_rank": 0}}, multi)
    assert "--rdzv_endpoint=10.0.0.1:29400" in torchrun_command([PY, "train.py"], ex.spec)

    with pytest.raises(TaskError, match="nproc_per_node"):
        load_task(make_task(tmp_path / "bad", nproc_per_node=0), "bad")


def test_two_processes_all_reduce_through_the_executor_and_the_scorer(tmp_path):
    task = load_task(make_task(tmp_path / "task", nproc_per_node=2), "ddp")
    executor = make_executor({"name": "local", "threads": 1, "memory_limit_mb": 4096}, task)
    ws = tmp_path / "node" / "workspace"
    ws.mkdir(parents=True)
    (ws / "train.py").write_text(TRAIN)
    res = executor.run(task.command, cwd=ws, out_dir=tmp_path / "node", timeout_s=task.timeout_s, env=task.env)
    outcome = score(task, res)
    assert outcome.valid, (outcome.reason, Path(res.stderr_path).read_text()[-2000:])
    assert outcome.metric == 3.0 and outcome.metrics["world_size"] == 2
