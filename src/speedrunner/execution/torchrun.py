"""Launch a task's command with torchrun (``python -m torch.distributed.run``).

A task that declares ``nproc_per_node`` (and optionally ``nnodes``) is started as upstream starts its
records: one launcher per node that runs ``nproc_per_node`` copies of the script, each with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.

- One node: ``python -m torch.distributed.run --standalone --nproc_per_node=N script.py ARGS``
  (a rendezvous on a free loopback port, so several nodes of a search can run side by side).
- Several nodes: ``--nnodes=M --node_rank=K --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --rdzv_id=ID``,
  with the endpoint from the config (``executor.torchrun.rdzv_endpoint``) or, under Slurm, the job's
  first node (execution/slurm.py fills it in inside the job).

``TorchrunExecutor`` wraps another executor (``LocalExecutor``): it rewrites the command and widens the
CPU-time budget to ``threads x nproc_per_node`` (each process gets ``threads`` threads). It imports only
core, like the rest of execution/.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from speedrunner.core.types import ExecResult

_PYTHON = re.compile(r"^python[0-9.]*$")


@dataclass
class TorchrunSpec:
    """How a node's command is launched. ``nproc_per_node``: processes per node; ``nnodes``: nodes."""

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None  # HOST:PORT; required when nnodes > 1 (Slurm: the job's first node)
    rdzv_port: int = 29500  # the port used with the job's first node when rdzv_endpoint is not given
    rdzv_id: str | None = None  # the same on every node of one launch (Slurm: the job id)
    node_rank: int | None = None  # this node's rank among nnodes (Slurm: SLURM_NODEID)
    max_restarts: int = 0
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.nproc_per_node) < 1 or int(self.nnodes) < 1:
            raise ValueError(f"torchrun: nproc_per_node and nnodes must be 1 or more, got "
                             f"{self.nproc_per_node} and {self.nnodes}")
        self.nproc_per_node, self.nnodes = int(self.nproc_per_node), int(self.nnodes)
        self.extra_args = [str(a) for a in self.extra_args or []]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def launcher_args(self) -> list[str]:
        """torchrun's own arguments (everything between ``torch.distributed.run`` and the script)."""
        if self.nnodes == 1:
            args = ["--standalone", f"--nproc_per_node={self.nproc_per_node}"]
        else:
            if not self.rdzv_endpoint:
                raise ValueError(f"torchrun: nnodes={self.nnodes} needs a rendezvous endpoint HOST:PORT "
                                 "(executor.torchrun.rdzv_endpoint), or executor=slurm, which uses the job's first node")
            args = [f"--nnodes={self.nnodes}", f"--nproc_per_node={self.nproc_per_node}",
                    f"--rdzv_backend={self.rdzv_backend}", f"--rdzv_endpoint={self.rdzv_endpoint}",
                    f"--rdzv_id={self.rdzv_id or 'speedrunner'}"]
            if self.node_rank is not None:
                args.append(f"--node_rank={self.node_rank}")
        if self.max_restarts:
            args.append(f"--max_restarts={self.max_restarts}")
        return args + list(self.extra_args)


def is_python(program: str) -> bool:
    """``python``, ``python3``, ``python3.11`` or a path to one of them, or this interpreter."""
    if program == sys.executable:
        return True
    return bool(_PYTHON.match(os.path.basename(program)))


def already_distributed(command: list[str]) -> bool:
    """The task launches torchrun itself (``torchrun ...`` or ``python -m torch.distributed.run ...``)."""
    if not command:
        return False
    if os.path.basename(command[0]) == "torchrun":
        return True
    return any(command[i] == "-m" and command[i + 1] in ("torch.distributed.run", "torch.distributed.launch")
               for i in range(min(len(command) - 1, 3)))


def torchrun_command(command: list[str], spec: TorchrunSpec, launcher_python: str | None = None) -> list[str]:
    """The command that starts ``command`` under torchrun.

    ``python script.py ARGS`` -> ``python -m torch.distributed.run FLAGS script.py ARGS`` (the same
    interpreter runs the launcher); ``python -m pkg ARGS`` -> ``... FLAGS -m pkg ARGS``; a python with its
    own options (``python -u x.py``) or any other program -> ``... FLAGS --no-python PROGRAM ARGS``, the
    launcher being ``launcher_python`` (default: this interpreter). A command that already runs torchrun is
    returned unchanged."""
    command = list(command)
    if not command or already_distributed(command):
        return command
    flags = spec.launcher_args()
    head, rest = command[0], command[1:]
    if is_python(head):
        if not rest or rest[0] == "-c":
            return [head, "-m", "torch.distributed.run", *flags, "--no-python", head, *rest]
        if rest[0] == "-m" and len(rest) > 1:
            return [head, "-m", "torch.distributed.run", *flags, "-m", *rest[1:]]
        if rest[0].startswith("-"):
            return [head, "-m", "torch.distributed.run", *flags, "--no-python", head, *rest]
        return [head, "-m", "torch.distributed.run", *flags, *rest]
    return [launcher_python or sys.executable, "-m", "torch.distributed.run", *flags, "--no-python", *command]


@dataclass
class TorchrunExecutor:
    """Runs every command through torchrun on top of ``inner`` (a LocalExecutor or compatible)."""

    inner: Any
    spec: TorchrunSpec

    def run(self, command: list[str], cwd, out_dir, timeout_s: float, env: dict[str, str] | None = None,
            hidden=None, **kwargs: Any) -> ExecResult:
        cmd = torchrun_command(command, self.spec)
        extra: dict[str, str] = {}
        if self.spec.nnodes == 1:
            # everything is on this machine: keep the collectives' sockets on loopback (inside a network
            # namespace the host's name may resolve to an address that does not exist there)
            extra.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
        res = self.inner.run(cmd, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env={**extra, **(env or {})},
                             hidden=hidden, **kwargs)
        return self._rebudget(res)

    def _rebudget(self, res: ExecResult) -> ExecResult:
        """The inner executor checks CPU time against ``threads``; torchrun runs nproc_per_node processes
        of ``threads`` threads each (the launcher itself is mostly idle)."""
        if not res.violation or res.cpu_s is None:
            return res
        threads = int(getattr(self.inner, "threads", 1))
        tolerance = float(getattr(self.inner, "cpu_tolerance", 1.5))
        allowed = threads * self.spec.nproc_per_node
        if res.cpu_s <= allowed * res.wall_s * tolerance + 1.0 + self.spec.nproc_per_node:
            return replace(res, violation=None)
        return replace(res, violation=(
            f"used {res.cpu_s:.1f} CPU-seconds in {res.wall_s:.1f} s with {self.spec.nproc_per_node} process(es) "
            f"x {threads} thread(s) allowed: it ran more threads than the task gives it"))

    def __getattr__(self, name: str) -> Any:  # threads, notes, network, ... of the wrapped executor
        if name in ("inner", "spec") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)
