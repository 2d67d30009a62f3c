"""executor=slurm against a real single-node Slurm (tests/slurm_fixture.py): submission with the
config's sbatch settings, the job id in the node folder and the journal, scancel at the timeout, a
requeued job that resumes its node, a resumed runner that re-attaches to its queued/running job, and a
grid handed to hydra-submitit-launcher as a job array. No sbatch is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import slurm_fixture
import yaml

from speedrunner.execution.slurm import JOB_FILE, SlurmExecutor, slurm_state
from speedrunner.execution.torchrun import TorchrunSpec

REPO = Path(__file__).resolve().parent.parent
slurm_cluster = slurm_fixture.slurm_cluster  # the session fixture (a real slurmctld + slurmd)


def tiny_task(root: Path, sleep_s: float = 0.0, name: str = "tiny") -> Path:
    """A task whose baseline sleeps, then prints its metric."""
    d = root / name
    (d / "template").mkdir(parents=True)
    (d / "template" / "solve.py").write_text(
        f"import time\ntime.sleep({sleep_s})\nprint('answer: 42')\nprint('score: 1.5')\n")
    (d / "task.yaml").write_text(yaml.safe_dump({
        "name": name, "description": "a tiny task for the Slurm tests", "command": ["{python}", "solve.py"],
        "timeout_s": 120, "metric": {"name": "score", "direction": "maximize"},
        "parsers": [{"pattern": r"^answer: (?P<answer>\d+)"}, {"pattern": r"^score: (?P<score>[0-9.]+)"}],
        "valid_if": ["exit_code == 0", "answer == 42"]}))
    return root


def wait_for(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def executor(tmp_path: Path, **kw) -> tuple[SlurmExecutor, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    ex = SlurmExecutor(folder=tmp_path / "slurm", poll_s=0.3, end_grace_s=5, time_margin_min=2,
                       cancel_grace_s=30, **kw)
    ex.on_event = lambda event, **f: events.append((event, f))
    return ex, events


# ------------------------------------------------------------------------------ without a cluster


def test_the_config_bakes_in_no_site_values():
    conf = yaml.safe_load((REPO / "src/speedrunner/conf/executor/slurm.yaml").read_text())
    for key in ("partition", "account", "qos", "time_min", "gpus_per_node", "cpus_per_task", "mem_gb", "folder"):
        assert conf[key] is None, key
    assert conf["sbatch"] == {} and conf["setup"] == []


def test_sbatch_parameters_come_from_the_config():
    ex = SlurmExecutor(partition="gpu", account="proj", qos="high", gpus_per_node=8, threads=2, mem_gb=64,
                       sbatch={"constraint": "h100", "exclusive": True}, setup=["module load cuda"],
                       torchrun=TorchrunSpec(nproc_per_node=8, nnodes=2), cancel_grace_s=60, time_margin_min=5)
    p = ex.sbatch_parameters(600)
    assert p["partition"] == "gpu" and p["account"] == "proj" and p["qos"] == "high"
    assert p["gpus_per_node"] == 8 and p["mem"] == "64GB" and p["nodes"] == 2 and p["ntasks_per_node"] == 1
    assert p["cpus_per_task"] == 16  # threads x processes per node
    assert p["time"] == 11 + 5  # ceil((600 + 60) / 60) + margin
    assert p["additional_parameters"] == {"constraint": "h100", "exclusive": True}
    assert p["setup"] == ["module load cuda"]
    _make_sbatch_string = pytest.importorskip("submitit.slurm.slurm")._make_sbatch_string

    text = _make_sbatch_string(command="python -m submitit.core._submit x", folder="/tmp/x", **p)
    for line in ("--partition=gpu", "--account=proj", "--qos=high", "--gpus-per-node=8", "--mem=64GB",
                 "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--time=16", "--constraint=h100",
                 "#SBATCH --exclusive", "module load cuda"):
        assert line in text, line
    assert SlurmExecutor(time_min=30).sbatch_parameters(600)["time"] == 30
    bare = SlurmExecutor().sbatch_parameters(60)
    assert not {"partition", "account", "qos", "gpus_per_node", "mem"} & set(bare)


# ------------------------------------------------------------------------------ with the cluster


def test_a_node_runs_as_a_job_with_the_configured_settings(slurm_cluster, tmp_path):
    ex, events = executor(tmp_path, partition=slurm_cluster.partition, account="speedrunner-test", mem_gb=0.25,
                          sbatch={"comment": "speedrunner-test"}, setup=["echo setup-line-ran"])
    ws, out = tmp_path / "ws", tmp_path / "nodes" / "v_0"
    ws.mkdir()
    res = ex.run([sys.executable, "-c", "import os; print('metric: 42'); print('cwd', os.getcwd())"], cwd=ws,
                 out_dir=out, timeout_s=60, env={"SPEEDRUNNER_TEST_VAR": "x"})
    assert res.exit_code == 0 and not res.timed_out, res
    stdout = Path(res.stdout_path).read_text()
    assert "metric: 42" in stdout and f"cwd {ws}" in stdout
    rec = json.loads((out / JOB_FILE).read_text())
    assert events[0][0] == "slurm_submitted" and events[0][1]["job_id"] == rec["job_id"]
    script = Path(rec["submission_file"]).read_text()
    for line in ("--partition=debug", "--account=speedrunner-test", "--comment=speedrunner-test", "--mem=256MB",
                 "echo setup-line-ran"):
        assert line in script, line
    wait_for(lambda: slurm_cluster.state(rec["job_id"]) == "COMPLETED", 30, "the job to complete")
    attempts = [json.loads(x) for x in (out / "slurm_attempts.jsonl").read_text().splitlines()]
    assert [a["job_id"] for a in attempts] == [rec["job_id"]]


def test_a_node_timeout_cancels_the_job(slurm_cluster, tmp_path):
    # the setup line keeps the job busy before the node's own timer starts: only the runner's watchdog ends it
    ex, events = executor(tmp_path, setup=["sleep 300"])
    ex.cancel_grace_s = 1.0
    out = tmp_path / "v_1"
    res = ex.run([sys.executable, "-c", "print(1)"], cwd=tmp_path, out_dir=out, timeout_s=2)
    assert res.timed_out and res.exit_code is None
    job_id = json.loads((out / JOB_FILE).read_text())["job_id"]
    assert f"Slurm job {job_id} cancelled" in res.killed_reason
    assert ("slurm_cancelled", job_id) in [(e, f.get("job_id")) for e, f in events]
    wait_for(lambda: slurm_cluster.state(job_id) == "CANCELLED", 30, "the job to be cancelled")


def test_a_requeued_job_resumes_its_node(slurm_cluster, tmp_path):
    ex, events = executor(tmp_path)
    out = tmp_path / "nodes" / "v_2"
    code = "import time; print('started', flush=True); time.sleep(3); print('metric: 7')"
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(res=ex.run([sys.executable, "-c", code], cwd=tmp_path,
                                                              out_dir=out, timeout_s=60)))
    t.start()
    job_id = wait_for(lambda: (out / JOB_FILE).exists() and json.loads((out / JOB_FILE).read_text())["job_id"],
                      60, "the submission")
    wait_for(lambda: "started" in (out / "stdout.log").read_text() if (out / "stdout.log").exists() else False,
             60, "the node to start")
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    t.join(timeout=120)
    assert not t.is_alive()
    res = box["res"]
    assert res.exit_code == 0 and "metric: 7" in Path(res.stdout_path).read_text(), res
    attempts = [json.loads(x) for x in (out / "slurm_attempts.jsonl").read_text().splitlines()]
    assert [(a["job_id"], a["restart"]) for a in attempts] == [(job_id, 0), (job_id, 1)]
    assert (out / "stdout.attempt0.log").read_text().startswith("started")
    assert [f["job_id"] for e, f in events if e == "slurm_requeued"] == [job_id]
    assert [f["job_id"] for e, f in events if e == "slurm_submitted"] == [job_id]  # never submitted again
    assert len((tmp_path / "slurm" / "jobs.jsonl").read_text().splitlines()) == 1


EDIT = "solve.py\n<<<<<<< SEARCH\nprint('score: 1.5')\n=======\nprint('score: 2.5')\n>>>>>>> REPLACE\n"


@pytest.mark.parametrize("node", [0, 1], ids=["baseline", "agent_node"])
def test_resume_reattaches_to_the_queued_job(slurm_cluster, tmp_path, node):
    """The runner is SIGKILLed while node ``node``'s job is queued; resume waits on that job (no second
    submission, no second LLM call) and scores it."""
    tasks = tiny_task(tmp_path / "tasks", sleep_s=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    model = ["model=null", "budget.max_nodes=0"]
    if node:
        script = tmp_path / "replies.yaml"
        script.write_text(yaml.safe_dump({"responses": [EDIT]}))
        model = ["model=scripted", f"model.path={script}", "budget.max_nodes=1", "scaffold=flat", "coder=editblock"]
    args = ["run", "executor=slurm", f"task_paths=[{tasks}]", "task.id=tiny", *model,
            "reeval.runs=0", "executor.poll_s=0.5", f"executor.partition={slurm_cluster.partition}",
            "+executor.sbatch.begin=now+4",  # an extra sbatch option: each job stays queued for 4 s
            f"run_dir={run_dir}"]
    runner = subprocess.Popen([sys.executable, "-m", "speedrunner", *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    job_file = run_dir / "nodes" / f"v_{node}" / JOB_FILE

    def submitted() -> str | None:
        journal = run_dir / "journal.jsonl"
        for line in journal.read_text().splitlines() if journal.exists() else []:
            try:
                e = json.loads(line)
            except ValueError:  # a line being written
                continue
            if e["event"] == "slurm_submitted" and e.get("node") == node:
                return e["job_id"]
        return None

    try:
        job_id = wait_for(submitted, 120, f"the runner to submit v_{node} and journal it")
    finally:
        runner.send_signal(signal.SIGKILL)  # no chance to clean up: the job goes on without its runner
        runner.wait(timeout=30)
    assert slurm_state(job_id)[0] == "PENDING"  # killed while its job is queued
    assert SlurmExecutor().pending_job(job_file.parent) == job_id  # what a resumed loop asks
    r = subprocess.run([sys.executable, "-m", "speedrunner", "resume", str(run_dir)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run_dir / "nodes" / f"v_{node}" / "result.json").read_text())
    assert result["status"] == "valid" and result["metric"] == [1.5, 2.5][node], result
    assert json.loads(job_file.read_text())["job_id"] == job_id
    events = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    mine = [e for e in events if e["event"].startswith("slurm_") and e["node"] == node]
    assert [e["job_id"] for e in mine if e["event"] == "slurm_submitted"] == [job_id]
    assert [e["job_id"] for e in mine if e["event"] == "slurm_reattached"] == [job_id]
    assert len((run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()) == node + 1
    assert job_id in [p.name for p in (run_dir / "slurm" / "jobs").iterdir()]
    assert SlurmExecutor().pending_job(job_file.parent) is None  # its result was taken
    if node:
        assert [e["event"] for e in events if e.get("node") == node and e["event"].startswith("node_")] == [
            "node_started", "node_created", "node_kept", "node_resumed", "node_finished"]
        assert sum(e["event"] == "llm_call" for e in events) == 1  # the edit was not asked for (or paid) twice
    wait_for(lambda: slurm_cluster.state(job_id) == "COMPLETED", 30, "the job to complete")


def test_a_grid_goes_to_slurm_as_an_array(slurm_cluster, tmp_path):
    tasks = tiny_task(tmp_path / "tasks")
    grid = tmp_path / "grid"
    r = subprocess.run([sys.executable, "-m", "speedrunner", "run", "-m", f"task_paths=[{tasks}]", "task.id=tiny",
                        "model=null", "budget.max_nodes=0", "reeval.runs=0", "seed=1,2",
                        "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={slurm_cluster.partition}",
                        "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", f"run_dir={grid}"],
                       cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = sorted(p.name for p in grid.iterdir() if not p.name.startswith("."))
    assert len(runs) == 2 and runs[0].startswith("000_") and runs[0].endswith("seed-1") and runs[1].endswith("seed-2")
    for name in runs:
        s = json.loads((grid / name / "summary.json").read_text())
        assert s["status"] == "finished" and s["baseline_metric"] == 1.5 and s["seed"] == int(name[-1])
    # both runs were tasks of one Slurm job array, run by the compute node, not by this process
    results = sorted((grid / ".launcher" / ".submitit").rglob("*_result.pkl"))
    array_ids = {p.name.split("_")[0] for p in results}
    assert len(results) == 2 and len(array_ids) == 1
    (array,) = array_ids
    wait_for(lambda: {slurm_cluster.state(f"{array}_{i}") for i in (0, 1)} == {"COMPLETED"}, 30,
             "the array's tasks to complete")
    # again: both finished, nothing is submitted
    again = subprocess.run([sys.executable, "-m", "speedrunner", "run", "-m", f"task_paths=[{tasks}]", "task.id=tiny",
                            "model=null", "budget.max_nodes=0", "reeval.runs=0", "seed=1,2",
                            "hydra/launcher=submitit_slurm", f"run_dir={grid}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == 2, again.stdout
