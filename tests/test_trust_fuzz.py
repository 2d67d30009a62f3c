"""Fuzzed model output through the agent and the loop, for coder=editblock and coder=wholefile.

Random text, truncated and overlapping edit blocks, edits to missing files, binary junk and NUL bytes,
paths no file system takes, a 10 MB reply, edits to protected files and paths outside the workspace,
and random mutations of good replies. Whatever the model sends, the run must finish, and every node
must end with a verdict: valid, or buggy/invalid with a reason that says why. Cases with a known answer
also check the verdict and the message. (hypothesis is not installed: the cases come from a seeded
random generator.)
"""

from __future__ import annotations

import json
import random
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from speedrunner.core.types import Completion, Message, Usage
from speedrunner.runner import build, compose
from speedrunner.tasks.registry import BUILTIN_ROOT
from speedrunner.workspace.journal import read_events

SEED = 5
BASE = "import sys\nANSWER = 77031\nprint(f'answer: {ANSWER} (chain length 351)')\nprint('runtime_ms: 1000')\n"
FASTER = BASE.replace("runtime_ms: 1000", "runtime_ms: 900")
MB10 = 10 * 1024 * 1024
APPLY_FAILED = "the coder's edits could not be applied after 1 attempt(s): "


@dataclass
class Case:
    label: str
    reply: str
    status: str | None = None  # None: any verdict will do (random mutations)
    reason: tuple[str, ...] = ()  # fragments the node's reason must contain
    metric: float | None = None
    refused: bool = False  # the coder refused every attempt: the node was not run


def refused(label: str, reply: str, *why: str) -> Case:
    return Case(label, reply, "buggy", why, refused=True)


class Playlist:
    """A model that sends the given replies in order (no file to parse: NUL bytes and 10 MB go as they are)."""

    name = "fuzz"

    def __init__(self, replies: list[str]):
        self.replies, self.calls = replies, 0

    def complete(self, messages: list[Message]) -> Completion:
        text = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        return Completion(text=text, usage=Usage(tokens_in=1, tokens_out=len(text) // 4))


def editblock(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def wholefile(path: str, text: str) -> str:
    return f"### File: {path}\n```python\n{text}```\n"


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_letters, k=rng.randint(1, 9))) for _ in range(n))


def junk(rng: random.Random, n: int) -> str:
    return bytes(rng.randrange(256) for _ in range(n)).decode("latin-1")


def mutate(rng: random.Random, text: str) -> str:
    """A few random deletions, duplications, insertions of junk and line swaps."""
    for _ in range(rng.randint(1, 6)):
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        op = rng.choice(["delete", "duplicate", "insert", "swap"])
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "insert":
            text = text[:i] + rng.choice(["\x00", "=======", "<<<<<<< SEARCH", "```", "\n", junk(rng, 8)]) + text[i:]
        else:
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


def cases(coder: str, rng: random.Random) -> list[Case]:
    eb = coder == "editblock"
    good = editblock("solve.py", "print('runtime_ms: 1000')\n", "print('runtime_ms: 900')\n") if eb \
        else wholefile("solve.py", FASTER)
    nothing = "contained no SEARCH/REPLACE block" if eb else "Your reply contained no file"
    out = [Case("good", good, "valid", metric=900),
           Case("no change", "NO CHANGE", "buggy", ("no change: the coder proposed no edit",))]
    for _ in range(3):
        out.append(refused("random text", words(rng, rng.randint(1, 400)), nothing))
        out.append(refused("binary junk", junk(rng, rng.randint(1, 4096)), nothing))
    # truncated: cut strictly inside the edit's body
    body_start = good.index("\n", good.index("SEARCH" if eb else "```")) + 1
    for _ in range(3):
        cut = rng.randrange(body_start, len(good) - len(">>>>>>> REPLACE\n" if eb else "```\n"))
        out.append(refused("truncated", good[:cut], "is not closed", *(() if eb else ("cut off",))))
    # NUL bytes inside an edit that applies: the file is written and Python refuses it
    nul = editblock("solve.py", "ANSWER = 77031\n", "ANSWER = 77031\x00\n") if eb \
        else wholefile("solve.py", BASE.replace("ANSWER = 77031", "ANSWER = 77031\x00"))
    out.append(Case("NUL in the code", nul, "buggy", ("exit code 1", "null bytes")))
    surrogate = editblock("solve.py", "ANSWER = 77031\n", "ANSWER = 77031  # \ud800\n") if eb \
        else wholefile("solve.py", BASE.replace("ANSWER = 77031", "ANSWER = 77031  # \ud800"))
    out.append(refused("a lone surrogate in the code", surrogate, "cannot be written as UTF-8"))
    if eb:
        # overlapping blocks: the second searches lines the first has already replaced
        out.append(refused("overlapping blocks",
                           editblock("solve.py", "import sys\nANSWER = 77031\n", "import sys\nANSWER = 77031  # x\n")
                           + editblock("solve.py", "ANSWER = 77031\n" + BASE.splitlines(True)[2], "ANSWER = 1\n"),
                           "The SEARCH part of block 2 for solve.py matched nothing"))
        out.append(refused("the same block twice", good + good, "The SEARCH part of block 2 for solve.py matched nothing"))
        out.append(refused("edit to a missing file", editblock("missing.py", "x = 1\n", "x = 2\n"),
                           "Block 1 edits missing.py, which does not exist"))
    else:
        # two listings of one file: the last one counts (a documented rule), and it runs
        out.append(Case("overlapping listings", wholefile("solve.py", BASE.replace("1000", "1100")) + good,
                        "valid", metric=900))
        out.append(Case("new file, nothing else changed", wholefile("missing.py", "x = 1\n"), "valid", metric=1000))
    out.append(refused("edit to a file that may not be edited", (editblock("notes.txt", "", "hello\n") if eb
                                                               else wholefile("notes.txt", "hello\n")),
                       "notes.txt: not a file you may edit"))
    # paths no file system takes, or that collide with a file
    create = (lambda p: editblock(p, "", "x = 1\n")) if eb else (lambda p: wholefile(p, "x = 1\n"))
    out.append(refused("a path inside a file", create("solve.py/inner.py"),
                       "'solve.py/inner.py' puts a file inside 'solve.py', which is a file"))
    out.append(refused("a path inside a protected file", create("check.py/inner.py"), "is protected"))
    out.append(refused("a folder where a file is", create("solve.py") + create("solve.py/x.py")
                       if not eb else create("pkg/a.py") + create("pkg"), "is a folder"))
    out.append(refused("a name too long", create("a" * 300 + ".py"), "a name in this path is too long"))
    if eb:  # the whole-file header takes only [\w./-] in a path
        out.append(refused("a NUL in the path", create("so\x00lve.py"), "contains a control character"))
    # protected, absolute, outside
    for path, why in [("check.py", "is protected"), ("/etc/passwd", "is not a path inside the workspace"),
                      ("../escape.py", "is not a path inside the workspace")]:
        out.append(refused(f"edit to {path}", (editblock(path, "", "x = 1\n") if eb else wholefile(path, "x = 1\n")),
                           f"'{path}' {why}"))
    # 10 MB: all junk, and a good edit followed by junk
    big = words(rng, 40)
    big = (big + "\n") * (MB10 // (len(big) + 1))
    out.append(refused("10 MB of text", big, nothing))
    out.append(Case("a good edit in 10 MB", good + big, "valid", metric=900))
    # random mutations of good replies: any verdict, as long as there is one
    for _ in range(30):
        out.append(Case("mutated", mutate(rng, rng.choice([good, good + good, nul, create("new.py")]))))
    return out


@pytest.fixture
def fuzz_task(tmp_path) -> list[str]:
    """collatz with a fixed baseline (1000 ms) and a protected checker the model may not touch."""
    dst = tmp_path / "tasks" / "collatz_fuzz"
    shutil.copytree(BUILTIN_ROOT / "collatz", dst)
    (dst / "template" / "solve.py").write_text(BASE)
    (dst / "template" / "check.py").write_text("# the task's own checker\n")
    spec = yaml.safe_load((dst / "task.yaml").read_text())
    spec["protected"] = ["check.py"]
    (dst / "task.yaml").write_text(yaml.safe_dump(spec))
    return ["task=collatz", f"task_paths=[{tmp_path / 'tasks'}]", "task.id=collatz_fuzz"]


def run_fuzz(run_dir: Path, task: list[str], coder: str, replies: list[str]) -> dict:
    cfg = compose([*task, f"coder={coder}", "coder.max_retries=0", "scaffold=flat", "model=null",
                   f"budget.max_nodes={len(replies)}", f"run_dir={run_dir}", "reeval.runs=0"])
    run = build(cfg, run_dir)
    model = Playlist(replies)
    run.models = {role: model for role in run.models}
    return run.run()


@pytest.mark.parametrize("coder", ["editblock", "wholefile"])
def test_fuzzed_replies_end_each_node_with_a_verdict_and_the_run_finishes(tmp_path, fuzz_task, coder):
    all_cases = cases(coder, random.Random(f"{SEED}-{coder}"))
    run_dir = tmp_path / "run"
    summary = run_fuzz(run_dir, fuzz_task, coder, [c.reply for c in all_cases])
    assert summary["status"] == "finished" and summary["n_nodes"] == len(all_cases)
    events = read_events(run_dir / "journal.jsonl")
    assert events[-1]["event"] == "run_finished"
    assert [e["seq"] for e in events] == list(range(len(events)))
    seen_executed = 0
    for i, case in enumerate(all_cases, 1):
        node = run_dir / "nodes" / f"v_{i}"
        what = f"v_{i} ({case.label}): "
        result = json.loads((node / "result.json").read_text())
        meta = json.loads((node / "meta.json").read_text())
        assert result["status"] in ("valid", "invalid", "buggy"), what + str(result)
        assert result["valid"] == (result["status"] == "valid")
        if not result["valid"]:
            assert result["reason"].strip(), what + "no reason"
        if meta["coder_error"] is not None:  # not run: the reason is the coder's error
            assert result["status"] == "buggy" and result["reason"] == meta["coder_error"], what + str(result)
            assert result["exit_code"] is None
        else:
            seen_executed += 1
            assert (node / "stdout.log").exists(), what + "applied but not run"
        if case.status is not None:
            assert result["status"] == case.status, what + result["reason"][:500]
            assert all(f in result["reason"] for f in case.reason), what + result["reason"][:500]
        if case.refused:
            assert meta["coder_error"] is not None and result["reason"].startswith(APPLY_FAILED), what + result["reason"]
        if case.metric is not None:
            assert result["metric"] == case.metric, what + str(result["metric"])
        assert (node / "workspace" / "check.py").read_text() == "# the task's own checker\n", what
        assert json.loads((node / "transcript.json").read_text())[0]["role"] == "coder"
    assert seen_executed >= 4
    assert summary["best_node"] is not None and summary["best_metric"] == 900



def test_edits_the_file_system_refuses_make_a_buggy_node_and_the_run_goes_on(tmp_path, fuzz_task):
    """A write the coder's checks let through but the disk refuses (here: a full disk on the first node)."""
    good = editblock("solve.py", "print('runtime_ms: 1000')\n", "print('runtime_ms: 900')\n")
    cfg = compose([*fuzz_task, "coder=editblock", "coder.max_retries=0", "scaffold=flat", "model=null",
                   "budget.max_nodes=2", f"run_dir={tmp_path / 'run'}", "reeval.runs=0"])
    run = build(cfg, tmp_path / "run")
    run.models = {role: Playlist([good]) for role in run.models}
    real = run.store.create_child

    def full_disk(parent, node_id, op, edits, **kw):
        if node_id == 1 and edits:
            (run.store.dir / f".v_{node_id}.tmp").mkdir()  # half-built, as a failed write leaves it
            raise OSError(28, "No space left on device")
        return real(parent, node_id, op, edits, **kw)

    run.store.create_child = full_disk
    summary = run.run()
    assert summary["status"] == "finished" and summary["n_nodes"] == 2
    first = json.loads((tmp_path / "run" / "nodes" / "v_1" / "result.json").read_text())
    assert first["status"] == "buggy"
    assert "the edits could not be written: OSError: [Errno 28] No space left on device" in first["reason"]
    assert (tmp_path / "run" / "nodes" / "v_1" / "diff.patch").read_text() == ""
    second = json.loads((tmp_path / "run" / "nodes" / "v_2" / "result.json").read_text())
    assert second["status"] == "valid" and second["metric"] == 900
    assert not list((tmp_path / "run" / "nodes").glob(".v_*.tmp"))
