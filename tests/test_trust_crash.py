"""Crash safety under many kills, with a real model server: a run SIGKILLed at a dozen seeded random
points and resumed after each ends exactly like the same run left alone.

The kills use the journal's test hook (SPEEDRUNNER_TEST_KILL_AFTER_EVENT: SIGKILL right after the N-th
event is written), so every point is reproducible and every kind of event can be hit. A kill from
outside at an arbitrary instant (tests/test_resume.py has one) can also land between a provider's
answer and the response cache's write, where paying again is unavoidable; the hook's points never do.

Builds on tests/test_resume.py (fixed kill points, the journal's view) with what only an outside
observer can count:
- every execution of a node's code (and of each re-evaluation run) appends a line to a marker file
  outside the run folder, with the number of the session that ran it: a node may run again only after
  the session running it was killed while it was in flight, never twice in one session, and never once
  it has finished;
- every model call is a real HTTP request to a loopback server speaking the OpenAI protocol
  (model=openai_compatible): the killed run must send exactly the requests the undisturbed run sent,
  in the same order, none twice (the response cache answers every call a resume makes again).

Each session is a `speedrunner` process forked from a zygote that imported speedrunner and litellm once
(importing litellm costs seconds per process; the zygote keeps the test near half a minute).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO, read_summary, read_tree
from llm_fake_server import FakeLLMServer

from speedrunner.tasks.registry import BUILTIN_ROOT

pytestmark = pytest.mark.slow

SEED = 20251124
KILLS = 12
X = None  # a crashing variant
SCRIPT = [X, 900, X, X, 850, X, 840, X, 800, X, 790, 780]

ZYGOTE = r"""
import json, os, sys, traceback
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from speedrunner import cli
from speedrunner.llm.provider import import_litellm
import_litellm()
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # one `speedrunner` process
        os.environ.update(req["env"])
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            code = cli.main(req["args"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    def __init__(self, tmp: Path):
        (tmp / "zygote.py").write_text(ZYGOTE)
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.proc = subprocess.Popen([sys.executable, str(tmp / "zygote.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        assert self.proc.stdout.readline().strip() == "ready"
        self.n = 0

    def speedrunner(self, *args: str, env: dict[str, str]) -> tuple[int, str]:
        """Runs `speedrunner ARGS` in a fresh process; its exit status (-9: SIGKILLed) and output."""
        self.n += 1
        log = self.logs / f"{self.n}.log"
        self.proc.stdin.write(json.dumps({"args": list(args), "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return rc, log.read_text() if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def program(runtime: float | None, marker: Path, tag: str) -> str:
    """solve.py: notes each execution (session, folder) in the marker file, then prints a fixed result or crashes."""
    lines = [f"# variant {tag}", "import os, sys", f"with open({str(marker)!r}, 'a') as f:",
             "    f.write(os.environ.get('TRUST_SESSION', '?') + ' ' + os.getcwd() + '\\n')"]
    if runtime is None:
        lines.append('sys.exit("boom: this variant crashes")')
    else:
        lines += ['print("answer: 77031 (chain length 351)")', f'print("runtime_ms: {runtime}")']
    return "\n".join(lines) + "\n"


def reply(code: str) -> dict[str, str]:
    return {"content": f"Rewrite solve.py.\n\n### File: solve.py\n```python\n{code}```\n"}


def executions(marker: Path, run_dir: Path) -> list[tuple[str, str]]:
    """(session, unit) per execution, in order; a unit is `v_N` (the node's run) or `reeval/v_N/run_K`."""
    out = []
    for line in marker.read_text().splitlines():
        session, cwd = line.split(" ", 1)
        if not Path(cwd).is_relative_to(run_dir):
            continue  # the other run's
        rel = Path(cwd).relative_to(run_dir)
        if rel.parts[0] == "nodes":
            out.append((session, rel.parts[1]))
        else:
            assert rel.parts[0] == "reeval", rel
            out.append((session, "/".join(rel.parts[:3])))
    return out


def journal(run_dir: Path) -> list[dict]:
    """Every line of journal.jsonl, strictly: a torn or missing line fails."""
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    return events


def shape(run_dir: Path) -> dict:
    return {i: (n["parent"], n["operator"], n["status"], n["metric"]) for i, n in read_tree(run_dir).items()}


def cache_rows(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "llm_cache.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def test_sigkill_at_random_points_and_resume_gives_the_same_run_and_pays_each_call_once(tmp_path):
    marker = tmp_path / "executions.txt"
    marker.touch()
    task = tmp_path / "tasks" / "collatz_crash"
    shutil.copytree(BUILTIN_ROOT / "collatz", task)
    (task / "template" / "solve.py").write_text(program(1000, marker, "baseline"))
    replies = [reply(program(r, marker, str(i))) for i, r in enumerate(SCRIPT)]
    fallback = {"content": "NO CHANGE"}

    zygote = Zygote(tmp_path)
    try:
        def run_args(run_dir: Path, base_url: str) -> list[str]:
            return ["run", "task=collatz", f"task_paths=[{tmp_path / 'tasks'}]", "task.id=collatz_crash",
                    "model=openai_compatible", f"model.base_url={base_url}", "model.name=fake", "scaffold=aide",
                    "coder=wholefile", f"budget.max_nodes={len(SCRIPT)}", "reeval.runs=1",
                    "executor.sandbox=none", f"run_dir={run_dir}"]  # no sandbox: nodes write the marker

        ref = tmp_path / "reference"
        with FakeLLMServer(script=replies, fallback=fallback) as srv:
            rc, out = zygote.speedrunner(*run_args(ref, srv.base_url), env={"TRUST_SESSION": "ref"})
            ref_requests = [json.dumps(r["body"]["messages"]) for r in srv.chat_requests()]
        assert rc == 0, out
        n_events = len(journal(ref))

        # kill points: KILLS - 1 distinct positions in the undisturbed run's events, drawn at random, and
        # the start of the re-evaluation (the two events after it are left out); session k is killed when the
        # run has got that far again (a node in flight at a kill is made again: its events repeat)
        points = sorted(random.Random(SEED).sample(range(1, n_events - 2), KILLS - 1) + [n_events - 2])
        ref_finished = {e["node"]: e["seq"] + 1 for e in journal(ref) if e["event"] == "node_finished"}
        killed = tmp_path / "killed"
        sessions = []
        with FakeLLMServer(script=replies, fallback=fallback) as srv:
            for k, point in enumerate(points):
                before = len(journal(killed)) if (killed / "journal.jsonl").exists() else 0
                if k == 0:
                    after = point
                else:  # where the kept nodes bring the run, in the reference's events; then what a resume writes
                    kept = [int(d.name[2:]) for d in (killed / "nodes").glob("v_*") if (d / "result.json").exists()]
                    cut_off = sum(1 for d in (killed / "nodes").glob("v_*") if not (d / "result.json").exists()
                                  and d.name != "v_0")  # discarded by the resume: one event each
                    done = ref_finished[max(kept)] if kept else 2
                    after = before + cut_off + 1 + max(1, point - done)
                args = run_args(killed, srv.base_url) if k == 0 else ["resume", str(killed)]
                rc, out = zygote.speedrunner(*args, env={"TRUST_SESSION": str(k),
                                                         "SPEEDRUNNER_TEST_KILL_AFTER_EVENT": str(after)})
                assert rc == -signal.SIGKILL, f"session {k} (kill after event {after}) was not killed: {out}"
                sessions.append((before, after, journal(killed)[-1]["event"]))
            rc, out = zygote.speedrunner("resume", str(killed), env={"TRUST_SESSION": str(KILLS)})
            requests = [json.dumps(r["body"]["messages"]) for r in srv.chat_requests()]
        assert rc == 0, out
    finally:
        zygote.close()

    # the kills landed all over the run: on many kinds of events
    assert len({event for _, _, event in sessions}) >= 4, sessions
    assert sessions[-1][2] == "reeval_started", sessions

    # the same run: same tree, same best node, same re-evaluation
    assert shape(killed) == shape(ref)
    s, s_ref = read_summary(killed), read_summary(ref)
    assert s["status"] == "finished" and s["best_node"] == s_ref["best_node"]
    assert s["reeval"] == s_ref["reeval"]

    # the journal parses, line by line, and tells the same story
    events = journal(killed)
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert sum(e["event"] == "run_resumed" for e in events) == KILLS
    finished = defaultdict(int)
    for e in events:
        if e["event"] == "node_finished":
            finished[e["node"]] += 1
        if e["event"] in ("node_started", "exec_started") and finished[e["node"]]:
            raise AssertionError(f"v_{e['node']} started again after it finished: {e}")
    assert dict(finished) == {i: 1 for i in range(len(SCRIPT) + 1)}

    # no execution lost or repeated: each node and re-evaluation run of the undisturbed run ran once ...
    ref_runs = executions(marker, ref)
    assert sorted(u for _, u in ref_runs) == sorted({u for _, u in ref_runs})
    mine = [(int(sess), unit) for sess, unit in executions(marker, killed)]
    assert {u for _, u in mine} == {u for _, u in ref_runs}
    # ... and in the killed run a unit ran again only in a later session, after the session running it
    # was killed while it was in flight (it is that session's last execution)
    last_of_session = {sess: unit for sess, unit in mine}
    by_unit = defaultdict(list)
    for sess, unit in mine:
        by_unit[unit].append(sess)
    for unit, runs in by_unit.items():
        assert runs == sorted(set(runs)), f"{unit} ran twice in one session: {runs}"
        for sess in runs[:-1]:
            assert sess < KILLS and last_of_session[sess] == unit, (unit, runs, sessions)
    assert len(mine) <= len(ref_runs) + KILLS

    # no model call paid twice: the same requests reached the server, in the same order
    assert len(requests) == len(ref_requests) == len(SCRIPT)
    assert requests == ref_requests
    assert cache_rows(killed) == cache_rows(ref) == len(SCRIPT)
    assert (s["tokens_in"], s["tokens_out"]) == (s_ref["tokens_in"], s_ref["tokens_out"])
