"""A real single-node Slurm cluster for the tests: Debian's slurmctld and slurmd on 127.0.0.1.

``slurm_cluster`` (session scope) writes a slurm.conf into a fresh folder (its own ports, state and spool
folders and pid files, so it disturbs no other Slurm on the machine and two test sessions can run side
by side), starts both daemons in the foreground as children of the test process, waits until the node
is idle, points ``SLURM_CONF`` at the file for the tests and everything they start, and at the end
cancels what is left, stops the daemons (by their process ids) and restores ``SLURM_CONF``.

The configuration is the one known to work on these machines (single node, run as root, no systemd):
``auth/none`` + ``cred/none`` (no munge), ``proctrack/linuxproc``, ``task/none``, no accounting,
``NodeName`` = ``hostname -s`` with the CPUs and memory that ``slurmd -C`` reports, ``NodeAddr``
127.0.0.1; plus ``select/cons_tres`` with ``CR_CPU`` so jobs share the node by cores, a 1-second
scheduler interval and ``cred_expire=5`` so that a requeued job starts again within seconds (Slurm
holds a requeued job for ``cred_expire`` seconds), and ``KillWait=3``.

Where Slurm (the daemons and clients, root, or submitit) is missing, the tests that use the fixture are
skipped with the reason; with ``SPEEDRUNNER_REQUIRE_SLURM=1`` (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")

CONF = """\
ClusterName=speedrunner-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
KillWait=3
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    conf: Path
    dir: Path
    host: str
    partition: str = "debug"

    def run(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def jobs(self) -> dict[str, str]:
        """Every job the controller knows (finished ones too): id -> state."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def state(self, job_id: str) -> str | None:
        m = re.search(r"JobState=(\S+)", self.run("scontrol", "show", "job", "-o", str(job_id), check=False))
        return m.group(1) if m else None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                         for p in sorted(self.dir.glob("*.log")))


def _which(name: str) -> str | None:
    """Daemons live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _unavailable(why: str) -> None:
    if os.environ.get("SPEEDRUNNER_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here (SPEEDRUNNER_REQUIRE_SLURM=1) but {why}")
    pytest.skip(f"no Slurm test cluster: {why}; install Debian's slurmctld slurmd slurm-client (.ci/run does), "
                "pip install -e '.[slurm]', run as root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    cpus = re.search(r"\bCPUs=(\d+)", out)
    mem = re.search(r"\bRealMemory=(\d+)", out)
    return (int(cpus.group(1)) if cpus else os.cpu_count() or 1), (int(mem.group(1)) if mem else 1024)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not found")
    if os.geteuid() != 0:
        _unavailable("the test cluster runs slurmctld and slurmd as root")
    try:
        import submitit  # noqa: F401
    except ImportError:
        _unavailable("submitit is not installed")
    d = Path(tempfile.mkdtemp(prefix="speedrunner-slurm-"))
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    cpus, memory = _node_resources()
    conf = d / "slurm.conf"
    conf.write_text(CONF.format(host=host, ctld_port=_free_port(), d_port=_free_port(), dir=d, cpus=cpus,
                                memory=memory))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    procs: list[subprocess.Popen] = []
    cluster = SlurmCluster(conf=conf, dir=d, host=host)
    try:
        for name, *args in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            with open(d / f"{name}.out", "w") as out:
                procs.append(subprocess.Popen([_which(name), *args, "-f", str(conf)], stdin=subprocess.DEVNULL,
                                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%T"], capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and r.stdout.strip().startswith("idle"):
                break
            dead = [Path(p.args[0]).name for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                _unavailable(f"the test cluster did not come up ({'exited: ' + ', '.join(dead) if dead else 'timeout'})"
                             f"\n{cluster.logs()}")
            time.sleep(0.2)
        yield cluster
    finally:
        try:
            subprocess.run(["scancel", "--full", "--partition", cluster.partition], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for p in reversed(procs):
            _stop(p)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(d, ignore_errors=True)
