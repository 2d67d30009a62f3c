"""The device pool: which GPUs and CPU cores each running node gets, when several nodes run at once.

With ``executor.workers = K`` up to K nodes are in flight. Each node takes a :class:`Slot` from the
pool just before its command starts and gives it back as soon as the command has ended, whatever the
ending (normal exit, crash, timeout, kill, or an exception in the runner: ``with pool.slot(...)``
is a try/finally). A slot is

- a group of ``gpus_per_node`` GPUs (``CUDA_VISIBLE_DEVICES``), when ``executor.devices`` names GPUs
  (a list such as ``[0,1,2,3]``, a count, or ``auto``: the runner's ``CUDA_VISIBLE_DEVICES`` if set,
  else ``nvidia-smi -L``, else ``torch.cuda.device_count()`` in a subprocess);
- the CPU cores to pin the node to: ``executor.cpus`` split into equal contiguous parts, one per slot
  (none when ``executor.cpus`` is null);
- the thread count (``executor.threads``) the node may use.

The pool lives in memory only. A runner that dies loses it with everything else; the resumed runner
builds a new, empty one. There are ``K`` slots on CPU and ``len(devices) // gpus_per_node`` on GPU;
with more workers than GPU slots, coded nodes wait for a free slot (coding continues meanwhile).

How a slot reaches an executor (:func:`run_in_slot`), for any object with LocalExecutor's
``run(command, cwd, out_dir, timeout_s, env=None, hidden=None)``:

- ``env`` gets ``SPEEDRUNNER_SLOT`` (the slot index), ``CUDA_VISIBLE_DEVICES`` (when GPUs are managed)
  and ``SPEEDRUNNER_CPUS`` (the cores, comma-separated, when pinned), on top of the task's ``env``;
- pinning: a ``run`` with a parameter named ``cpus`` gets the cores; otherwise the node runs on a shallow
  copy of the executor whose ``cpus`` attribute is the slot's (LocalExecutor; a wrapper that keeps the
  executor it wraps in ``inner`` is copied with a pinned copy of it: :func:`pinned`).

With one worker and no GPUs the pool is *inactive*: the executor is called exactly as before.
This module imports only core (the execution layer's rule).
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError


@dataclass(frozen=True)
class Slot:
    index: int
    gpus: tuple[str, ...] | None = None  # None: GPUs are not managed (the runner's CUDA_VISIBLE_DEVICES)
    cpus: tuple[int, ...] | None = None  # None: not pinned by the pool (the executor's own setting)
    threads: int | None = None  # the node's thread budget (informative; the executor applies its own)

    def env(self) -> dict[str, str]:
        """Environment additions that tell the node's command its devices."""
        e = {"SPEEDRUNNER_SLOT": str(self.index)}
        if self.gpus is not None:
            e["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.cpus is not None:
            e["SPEEDRUNNER_CPUS"] = ",".join(str(c) for c in self.cpus)
        return e

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.index, "gpus": list(self.gpus) if self.gpus is not None else None,
                "cpus": list(self.cpus) if self.cpus is not None else None, "threads": self.threads}


class DevicePool:
    """Hands out :class:`Slot` objects, lowest free index first; ``acquire`` blocks while all are taken."""

    def __init__(self, slots: list[Slot], workers: int = 1, active: bool | None = None,
                 notes: list[str] | None = None):
        if not slots:
            raise ValueError("a device pool needs at least one slot")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.slots = list(slots)
        self.workers = int(workers)
        gpus = any(s.gpus is not None for s in slots)
        self.active = (workers > 1 or gpus) if active is None else bool(active)
        self.notes = list(notes or [])
        self._free = sorted(s.index for s in slots)
        self._by_index = {s.index: s for s in slots}
        self._held: dict[int, Any] = {}  # slot index -> owner (a node id)
        self._cond = threading.Condition()
        self.peak = 0  # the most slots held at once

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, workers: int = 1, devices: Any = None, gpus_per_node: int = 1, cpus: Any = None,
              threads: int = 1) -> DevicePool:
        """``devices``: None (GPUs not managed), ``"auto"``, a count, or a list of GPU ids;
        ``cpus``: None or the list of cores to split among the slots."""
        try:
            workers = int(workers)
        except (TypeError, ValueError):
            raise UserError(f"executor.workers: expected a whole number of workers, got {workers!r}") from None
        if workers < 1:
            raise UserError(f"executor.workers must be 1 or more, got {workers}")
        threads = int(threads or 1)
        notes: list[str] = []
        gpu_list = _gpu_list(devices)
        if gpu_list is not None and not gpu_list:
            if devices == "auto":
                notes.append("executor.devices=auto found no GPU: nodes run on CPU slots")
                gpu_list = None
            else:
                raise UserError("executor.devices: the list of GPUs is empty")
        groups: list[tuple[str, ...] | None]
        if gpu_list is not None:
            g = int(gpus_per_node or 1)
            if g < 1:
                raise UserError(f"executor.gpus_per_node must be 1 or more, got {g}")
            n = len(gpu_list) // g
            if n < 1:
                raise UserError(f"executor.gpus_per_node={g} but executor.devices has only {len(gpu_list)} GPU(s): "
                                f"{', '.join(gpu_list)}")
            groups = [tuple(gpu_list[i * g:(i + 1) * g]) for i in range(n)]
            if len(gpu_list) % g:
                notes.append(f"GPU(s) {', '.join(gpu_list[n * g:])} left unused: {len(gpu_list)} GPUs do not split "
                             f"into groups of {g}")
            if n > workers:
                notes.append(f"{n} GPU slots but executor.workers={workers}: {n - workers} slot(s) stay idle")
        else:
            groups = [None] * workers
        core_groups = _split_cpus(cpus, len(groups), threads, workers)
        slots = [Slot(i, groups[i], core_groups[i], threads) for i in range(len(groups))]
        return cls(slots, workers=workers, notes=notes)

    @classmethod
    def from_config(cls, ex: Mapping[str, Any] | Any) -> DevicePool:
        """From the ``executor`` config section: ``workers``, ``devices``, ``gpus_per_node``, ``cpus``,
        ``threads`` (all optional)."""
        get = ex.get if hasattr(ex, "get") else (lambda k, d=None: getattr(ex, k, d))
        devices = get("devices", None)
        if devices is not None and not isinstance(devices, (str, int)):
            devices = list(devices)
        cpus = get("cpus", None)
        return cls.build(workers=get("workers", 1) or 1, devices=devices,
                         gpus_per_node=get("gpus_per_node", 1) or 1,
                         cpus=list(cpus) if cpus else None, threads=get("threads", 1) or 1)

    # ------------------------------------------------------------------ use
    @property
    def size(self) -> int:
        return len(self.slots)

    def acquire(self, owner: Any = None, timeout: float | None = None) -> Slot:
        """The lowest free slot; waits until one is given back. ``timeout``: raise TimeoutError after it."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout=timeout):
                raise TimeoutError(f"no device slot free after {timeout} s")
            idx = self._free.pop(0)
            self._held[idx] = owner
            self.peak = max(self.peak, len(self._held))
            return self._by_index[idx]

    def release(self, slot: Slot) -> None:
        with self._cond:
            if slot.index not in self._held:
                raise RuntimeError(f"device slot {slot.index} released but not held")
            del self._held[slot.index]
            self._free.append(slot.index)
            self._free.sort()
            self._cond.notify()

    @contextmanager
    def slot(self, owner: Any = None) -> Iterator[Slot]:
        """``with pool.slot(node_id) as s:`` the slot is given back however the block ends."""
        s = self.acquire(owner)
        try:
            yield s
        finally:
            self.release(s)

    def in_use(self) -> dict[int, Any]:
        """Held slots: index -> owner. Empty when no node is running."""
        with self._cond:
            return dict(self._held)

    def free(self) -> int:
        with self._cond:
            return len(self._free)


# ---------------------------------------------------------------------- running a node in a slot
_ACCEPTS: dict[tuple[type, str], bool] = {}


def _names_param(executor: Any, name: str) -> bool:
    """``executor.run`` has a parameter called ``name`` (a ``**kwargs`` does not count: wrappers forward
    it to an inner executor that may not take it)."""
    key = (type(executor), name)
    if key not in _ACCEPTS:
        try:
            _ACCEPTS[key] = name in inspect.signature(executor.run).parameters
        except (TypeError, ValueError):
            _ACCEPTS[key] = False
    return _ACCEPTS[key]


def pinned(executor: Any, cpus: list[int]) -> Any | None:
    """A shallow copy of ``executor`` whose ``cpus`` is ``cpus``, the shared one untouched. A wrapper that
    keeps the executor it wraps in ``inner`` (TorchrunExecutor, EnvExecutor) is copied with a pinned copy
    of its inner one. None when no executor in the chain has a ``cpus`` attribute of its own."""
    own = getattr(executor, "__dict__", {})
    if "cpus" in own:
        ex = copy.copy(executor)
        ex.cpus = list(cpus)
        return ex
    if own.get("inner") is not None:
        inner = pinned(own["inner"], cpus)
        if inner is None:
            return None
        ex = copy.copy(executor)
        ex.inner = inner
        return ex
    return None


def run_in_slot(executor: Any, slot: Slot | None, command: list[str], *, cwd: Path, out_dir: Path,
                timeout_s: float, env: dict[str, str] | None = None, hidden: list[Path] | None = None,
                active: bool = True) -> Any:
    """``executor.run(...)`` with the slot's devices (see the module docstring). ``slot=None`` or
    ``active=False``: the plain call."""
    if slot is None or not active:
        return executor.run(command, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env=env, hidden=hidden)
    full_env = {**(env or {}), **slot.env()}
    kwargs: dict[str, Any] = {}
    ex = executor
    if slot.cpus is not None:
        if _names_param(executor, "cpus"):
            kwargs["cpus"] = list(slot.cpus)
        else:
            ex = pinned(executor, list(slot.cpus)) or executor
    return ex.run(command, cwd=cwd, out_dir=out_dir, timeout_s=timeout_s, env=full_env, hidden=hidden, **kwargs)


# ---------------------------------------------------------------------- helpers
def _gpu_list(devices: Any) -> list[str] | None:
    if devices is None or devices is False or devices == "none" or devices == "null":
        return None
    if devices == "auto":
        return detect_gpus()
    if isinstance(devices, bool):
        raise UserError("executor.devices: expected null, auto, a count or a list of GPU ids")
    if isinstance(devices, int):
        if devices < 1:
            raise UserError(f"executor.devices: a count of GPUs must be 1 or more, got {devices}")
        return [str(i) for i in range(devices)]
    if isinstance(devices, str):
        items = [d.strip() for d in devices.strip("[]").split(",") if d.strip()]
    else:
        items = [str(d).strip() for d in devices]
    if len(set(items)) != len(items):
        raise UserError(f"executor.devices: a GPU is listed twice: {items}")
    return items


def detect_gpus() -> list[str]:
    """The GPUs this runner may use: its own CUDA_VISIBLE_DEVICES when set (ids or UUIDs), else the
    count from ``nvidia-smi -L``, else from torch (in a subprocess, so that CUDA is never initialised in
    the runner, whose children are forked)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return [d.strip() for d in vis.split(",") if d.strip() and not d.strip().startswith("-")]
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            n = sum(1 for line in r.stdout.splitlines() if line.startswith("GPU "))
            if r.returncode == 0:
                return [str(i) for i in range(n)]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0 and r.stdout.strip().isdigit():
            return [str(i) for i in range(int(r.stdout.strip()))]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return []


def _split_cpus(cpus: Any, n: int, threads: int, workers: int) -> list[tuple[int, ...] | None]:
    """``cpus`` split into ``n`` equal contiguous groups (one per slot), or no pinning when None."""
    if not cpus:
        return [None] * n
    try:
        cores = [int(c) for c in cpus]
    except (TypeError, ValueError):
        raise UserError(f"executor.cpus: expected a list of core numbers, got {cpus!r}") from None
    if len(set(cores)) != len(cores):
        raise UserError(f"executor.cpus: a core is listed twice: {cores}")
    if n == 1:
        return [tuple(cores)]  # one slot: every listed core, as with a single node
    per = len(cores) // n
    if per < 1 or per < threads:
        raise UserError(f"executor.cpus has {len(cores)} core(s) for {n} slots of {threads} thread(s) each "
                        f"(executor.workers={workers}); list at least {n * threads} cores, lower the workers or "
                        "threads, or set executor.cpus=null (no pinning)")
    return [tuple(cores[i * per:(i + 1) * per]) for i in range(n)]
