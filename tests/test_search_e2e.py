"""End to end: whole searches on the collatz task with scripted, oracle and null models.

The scripted replies rewrite solve.py to print fixed runtimes (or crash), so every decision of the
search is determined and the exact tree can be asserted. Each preset's tree is checked two ways: by
expectations written out by hand from the paper's rules, and by an independent re-statement of the
rules (``check_policy``) that replays the seeded RNG.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_summary, read_tree, variant

from speedrunner.runner import build, compose, save_config

SCAFFOLD = {  # the paper's presets (FACTS.md)
    "flat": dict(n_initial=20, n_branch=0, debug_prob=0.0, max_bug_depth=5),
    "tree": dict(n_initial=1, n_branch=3, debug_prob=0.0, max_bug_depth=5),
    "forest": dict(n_initial=3, n_branch=3, debug_prob=0.0, max_bug_depth=5),
    "aide": dict(n_initial=3, n_branch=1, debug_prob=0.5, max_bug_depth=5),
    "multi_aide": dict(n_initial=3, n_branch=3, debug_prob=0.5, max_bug_depth=5),
}
X = None  # a crashing variant


def script_of(runtimes: list[float | None]) -> list[str]:
    return [variant(r, crash=r is None, tag=str(i + 1)) for i, r in enumerate(runtimes)]


@pytest.fixture(autouse=True)
def _fixed_task(fixed_collatz):
    global FIXED
    FIXED = fixed_collatz


FIXED: list[str] = []


def run_search(tmp_path: Path, script_file, runtimes, scaffold: str, *extra: str):
    script = script_file(script_of(runtimes))
    run_dir = tmp_path / f"run_{scaffold}"
    overrides = [*FIXED, f"scaffold={scaffold}", "model=scripted", f"model.path={script}", "coder=wholefile",
                 f"run_dir={run_dir}", *extra]
    cfg = compose(overrides)
    run = build(cfg, run_dir)
    save_config(cfg, run_dir, overrides)
    run.run()
    return run_dir


def check_policy(tree: dict[int, dict], params: dict, seed: int, max_nodes: int) -> list[tuple[int, str, int]]:
    """Replay the paper's greedy policy over the finished tree; assert every node is where it must be.

    Returns the expansions as (parent, operator, count)."""
    rng = random.Random(seed)
    expansions = []
    next_id, prev_best, newest, step = 1, None, [], 0

    def expect(parent: int, op: str, count: int) -> list[int]:
        nonlocal next_id
        ids = list(range(next_id, min(next_id + count, max_nodes + 1)))
        for i in ids:
            assert tree[i]["parent"] == parent and tree[i]["operator"] == op, (
                f"v_{i}: expected {op} of v_{parent}, got {tree[i]['operator']} of v_{tree[i]['parent']}")
        next_id += len(ids)
        expansions.append((parent, op, len(ids)))
        return ids

    def best_of(ids):
        valid = [i for i in ids if known[i]["status"] == "valid"]
        return min(valid, key=lambda i: (known[i]["metric"], -i)) if valid else None

    while next_id <= max_nodes:
        known = {i: n for i, n in tree.items() if i < next_id}
        if step > 0:  # the running best absorbs the last step's children, whatever that step was
            prev_best = best_of([0] + ([prev_best] if prev_best is not None else []) + newest)
        if step == 0 or params["n_branch"] == 0:
            newest = expect(0, "draft", params["n_initial"])
            step += 1
            continue
        step += 1
        draw = rng.random()
        if draw < params["debug_prob"]:
            leaves = sorted(i for i, n in known.items() if i != 0 and n["status"] == "buggy"
                            and n["bug_depth"] <= params["max_bug_depth"]
                            and not any(m["parent"] == i for m in known.values()))
            if leaves:
                newest = expect(rng.choice(leaves), "debug", 1)
                continue
        newest = expect(prev_best if prev_best is not None else 0, "improve", params["n_branch"])
    assert next_id == max_nodes + 1 == len(tree)
    return expansions


def depth_counts(tree: dict[int, dict]) -> dict[int, int]:
    def depth(i):
        return 0 if tree[i]["parent"] is None else 1 + depth(tree[i]["parent"])

    return dict(sorted(Counter(depth(i) for i in tree).items()))


def test_flat_is_best_of_n(tmp_path, script_file):
    runtimes = [900 - 10 * i if i % 7 != 3 else None for i in range(20)]
    run_dir = run_search(tmp_path, script_file, runtimes, "flat")
    tree = read_tree(run_dir)
    assert len(tree) == 21 and all(tree[i]["parent"] == 0 and tree[i]["operator"] == "draft" for i in range(1, 21))
    check_policy(tree, SCAFFOLD["flat"], 0, 20)
    s = read_summary(run_dir)
    assert s["best_node"] == 20 and s["best_metric"] == 710
    assert s["n_nodes"] == 20 and s["n_buggy"] == 3 and s["n_valid"] == 17
    assert s["baseline_metric"] == 1000 and s["speedup"] == pytest.approx(1000 / 710)


def test_tree_expands_the_best_with_three_children(tmp_path, script_file):
    runtimes = [900, 850, 800, 820, 810, 805, 830, 700, 700, 750, X, 690, 695, 600, 650, 620, 610, 620, 630, 640]
    run_dir = run_search(tmp_path, script_file, runtimes, "tree")
    tree = read_tree(run_dir)
    # v_9 beats v_8 on a tie (newest wins); v_3 is expanded twice because v_5..v_7 did not beat it.
    want = [0, 1, 1, 1, 3, 3, 3, 3, 3, 3, 9, 9, 9, 12, 12, 12, 14, 14, 14, 14]
    assert [tree[i]["parent"] for i in range(1, 21)] == want
    assert depth_counts(tree) == {0: 1, 1: 1, 2: 3, 3: 6, 4: 3, 5: 3, 6: 4}
    assert check_policy(tree, SCAFFOLD["tree"], 0, 20)[-1] == (14, "improve", 1)  # the last step is cut to 1
    assert tree[11]["status"] == "buggy" and read_summary(run_dir)["best_node"] == 14


def test_forest_drafts_three_then_expands_the_best(tmp_path, script_file):
    runtimes = [900, 880, 890, 850, 860, 870, 870, 860, 855, 800, 800, X, 790, 780, 900, 700, 710, 720, 650, 660]
    run_dir = run_search(tmp_path, script_file, runtimes, "forest")
    tree = read_tree(run_dir)
    want = [0, 0, 0, 2, 2, 2, 4, 4, 4, 4, 4, 4, 11, 11, 11, 14, 14, 14, 16, 16]
    assert [tree[i]["parent"] for i in range(1, 21)] == want
    assert depth_counts(tree) == {0: 1, 1: 3, 2: 3, 3: 6, 4: 3, 5: 3, 6: 2}
    check_policy(tree, SCAFFOLD["forest"], 0, 20)


# Replies for the debugging presets: crashes early on, so that buggy leaves exist to be picked.
DEBUG_SCRIPT = [X, 900, X, X, 850, X, 840, X, 800, X, 790, 780, X, 770, X, 760, 750, X, 740, 730]


@pytest.mark.parametrize("scaffold", ["aide", "multi_aide"])
def test_aide_presets_debug_under_a_fixed_seed(tmp_path, script_file, scaffold):
    run_dir = run_search(tmp_path, script_file, DEBUG_SCRIPT, scaffold)
    tree = read_tree(run_dir)
    expansions = check_policy(tree, SCAFFOLD[scaffold], 0, 20)
    ops = Counter(op for _, op, _ in expansions)
    assert ops["debug"] >= 2 and ops["improve"] >= 2, expansions
    # a debug child always hangs under a buggy node and deepens its bug chain
    for _i, n in tree.items():
        if n["operator"] == "debug":
            parent = tree[n["parent"]]
            assert parent["status"] == "buggy" and n["bug_depth"] == parent["bug_depth"] + 1


def test_aide_tree_is_pinned_for_seed_0(tmp_path, script_file):
    """The exact expansion sequence for seed 0 (a regression pin, derived from check_policy)."""
    run_dir = run_search(tmp_path, script_file, DEBUG_SCRIPT, "aide")
    tree = read_tree(run_dir)
    ops = [(tree[i]["operator"], tree[i]["parent"]) for i in range(1, 21)]
    assert ops[:3] == [("draft", 0)] * 3
    # random.Random(0).random() draws 0.844, 0.758, 0.421, ...: step 1 and 2 improve, step 3 debugs.
    draws = [random.Random(0).random() for _ in range(1)]
    assert draws[0] > 0.5 and ops[3] == ("improve", 2) and ops[4][0] == "improve"
    assert depth_counts(tree) == depth_counts(read_tree(run_search(tmp_path / "again", script_file, DEBUG_SCRIPT,
                                                                   "aide")))


def test_same_seed_same_tree_other_seed_other_debug_picks(tmp_path, script_file):
    a = read_tree(run_search(tmp_path / "a", script_file, DEBUG_SCRIPT, "aide", "seed=3"))
    b = read_tree(run_search(tmp_path / "b", script_file, DEBUG_SCRIPT, "aide", "seed=3"))
    c = read_tree(run_search(tmp_path / "c", script_file, DEBUG_SCRIPT, "aide", "seed=4"))
    shape = lambda t: [(t[i]["parent"], t[i]["operator"]) for i in sorted(t)]  # noqa: E731
    assert shape(a) == shape(b)
    check_policy(c, SCAFFOLD["aide"], 4, 20)
    assert shape(a) != shape(c)


def test_overrides_change_the_preset(tmp_path, script_file):
    run_dir = run_search(tmp_path, script_file, DEBUG_SCRIPT, "aide", "scaffold.debug_prob=0.0", "budget.max_nodes=8")
    tree = read_tree(run_dir)
    assert len(tree) == 9 and not any(n["operator"] == "debug" for n in tree.values())
    check_policy(tree, {**SCAFFOLD["aide"], "debug_prob": 0.0}, 0, 8)


def test_oracle_finds_the_faster_solution(tmp_path):
    run_dir = tmp_path / "oracle"
    cfg = compose(["task=collatz", "model=oracle", "scaffold=tree", "budget.max_nodes=4", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    s = read_summary(run_dir)
    assert s["n_valid"] >= 1 and s["best_node"] == 1
    assert s["speedup"] > 3, s  # the memoised reference is ~20x faster than the template
    # once the reference is in place the oracle has nothing left to change
    tree = read_tree(run_dir)
    assert all(tree[i]["status"] == "buggy" for i in (2, 3, 4))
    assert "reference" not in (run_dir / "nodes" / "v_1" / "diff.patch").read_text()
    assert "lengths = [0] * limit" in (run_dir / "nodes" / "v_1" / "workspace" / "solve.py").read_text()


@pytest.mark.parametrize("reuse", [True, False])
def test_identical_drafts_reuse_the_first_result_instead_of_running_again(tmp_path, reuse):
    """AIDE's three drafts from the oracle are the same code: with reuse_identical (the default) only the
    first runs; the others take its result and say so. Turned off, every draft runs."""
    run_dir = tmp_path / "oracle_aide"
    cfg = compose(["task=collatz", "model=oracle", "scaffold=aide", "budget.max_nodes=3", f"run_dir={run_dir}",
                   f"reuse_identical={str(reuse).lower()}", "reeval.runs=0"])
    build(cfg, run_dir).run()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    ran = sorted(e["node"] for e in events if e["event"] == "exec_started")
    results = {i: json.loads((run_dir / "nodes" / f"v_{i}" / "result.json").read_text()) for i in (1, 2, 3)}
    assert all(r["status"] == "valid" for r in results.values())
    if reuse:
        assert ran == [0, 1]
        assert results[1]["duplicate_of"] is None
        for i in (2, 3):
            assert results[i]["duplicate_of"] == 1 and results[i]["metric"] == results[1]["metric"]
            assert (run_dir / "nodes" / f"v_{i}" / "stdout.log").read_text() == \
                (run_dir / "nodes" / "v_1" / "stdout.log").read_text()
        skipped = [(e["node"], e["duplicate_of"]) for e in events if e["event"] == "exec_skipped"]
        assert skipped == [(2, 1), (3, 1)]
        # the node that ran stays the best: a duplicate never wins a tie against its twin
        assert json.loads((run_dir / "summary.json").read_text())["best_node"] == 1
    else:
        assert ran == [0, 1, 2, 3] and all(r["duplicate_of"] is None for r in results.values())


def test_reuse_identical_must_be_a_boolean(tmp_path):
    from speedrunner.core.errors import UserError

    with pytest.raises(UserError, match="reuse_identical must be true or false, got 'maybe'"):
        build(compose(["task=collatz", "model=null", "reuse_identical=maybe", f"run_dir={tmp_path / 'r'}"]),
              tmp_path / "r")


def test_a_node_whose_run_rewrote_its_code_is_no_twin(tmp_path, script_file):
    """v_1's run rewrites its own solve.py into v_2's code: v_2 must still run, not take v_1's result."""
    later = variant(500, tag="b").split("```python\n", 1)[1].rsplit("```", 1)[0]
    rewriter = (f"open(__file__, 'w').write({later!r})\n"
                'print("answer: 77031 (chain length 351)")\nprint("runtime_ms: 900")\n')
    replies = [f"Rewrite solve.py.\n\n### File: solve.py\n```python\n{rewriter}```\n", variant(500, tag="b")]
    run_dir = tmp_path / "rewriter"
    overrides = [*FIXED, "scaffold=flat", "scaffold.n_initial=2", "budget.max_nodes=2", "model=scripted",
                 f"model.path={script_file(replies)}", "coder=wholefile", "reeval.runs=0", f"run_dir={run_dir}"]
    build(compose(overrides), run_dir).run()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert sorted(e["node"] for e in events if e["event"] == "exec_started") == [0, 1, 2]
    v2 = json.loads((run_dir / "nodes" / "v_2" / "result.json").read_text())
    assert v2["duplicate_of"] is None and v2["status"] == "valid" and v2["metric"] == 500


def test_null_model_changes_nothing(tmp_path):
    run_dir = tmp_path / "null"
    cfg = compose(["task=collatz", "model=null", "scaffold=aide", "budget.max_nodes=5", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    s = read_summary(run_dir)
    assert s["n_valid"] == 0 and s["best_node"] == 0 and s["speedup"] == 1.0
    # nodes without a change are not run at all (no chance of a lucky timing)
    for i in range(1, 6):
        assert not (run_dir / "nodes" / f"v_{i}" / "stdout.log").exists()
        assert "no change" in (run_dir / "nodes" / f"v_{i}" / "result.json").read_text()


def test_hints_reach_the_coder_as_markdown(tmp_path, script_file):
    run_dir = run_search(tmp_path, script_file, [800], "tree", "budget.max_nodes=1", "hints=[1,2]")
    import json

    transcript = json.loads((run_dir / "nodes" / "v_1" / "transcript.json").read_text())
    messages = transcript[0]["messages"]
    assert messages[0]["role"] == "system" and "Collatz" in messages[0]["content"]
    prompt = messages[1]["content"]
    assert "### Hint level 1: pseudocode" in prompt and "### Hint level 2: text description" in prompt
    assert "['" not in prompt and "\\n" not in prompt  # never a Python repr of the hint list


def test_edits_outside_the_editable_files_are_refused_and_retried(tmp_path, script_file):
    bad = "### File: notes.txt\n```text\nhello\n```\n"  # collatz allows *.py only
    script = script_file([bad, variant(700)])
    run_dir = tmp_path / "run"
    cfg = compose([*FIXED, "scaffold=tree", "model=scripted", f"model.path={script}", "coder=wholefile",
                   "budget.max_nodes=1", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    import json

    transcript = json.loads((run_dir / "nodes" / "v_1" / "transcript.json").read_text())
    assert transcript[0]["attempts"] == 2
    assert "notes.txt: not a file you may edit" in transcript[0]["messages"][3]["content"]
    assert read_summary(run_dir)["best_metric"] == 700
    assert not (run_dir / "nodes" / "v_1" / "workspace" / "notes.txt").exists()


def test_the_analyst_reads_each_result_and_its_reading_reaches_later_prompts(tmp_path, script_file):
    import json

    analysis = "Memoisation paid off; next, try bit operations."
    script = script_file([variant(700), analysis, variant(600), "Smaller gain."])
    run_dir = tmp_path / "run"
    cfg = compose([*FIXED, "scaffold=tree", "model=scripted", f"model.path={script}", "coder=wholefile",
                   "budget.max_nodes=2", "analyst.enabled=true", "reeval.runs=0", f"run_dir={run_dir}"])
    build(cfg, run_dir).run()
    r1 = json.loads((run_dir / "nodes" / "v_1" / "result.json").read_text())
    assert r1["analysis"] == analysis
    t2 = json.loads((run_dir / "nodes" / "v_2" / "transcript.json").read_text())
    assert f"Analysis: {analysis}" in t2[0]["messages"][1]["content"]
    assert [e["role"] for e in t2] == ["coder", "analyst"]
    assert read_summary(run_dir)["llm_calls"] == 4
