"""The upstream-records importer on a synthetic upstream checkout (tests/fixtures/upstream/repo).

The fixture repeats every quirk of the real modded-nanogpt README and logs in a few rows: a table with and
one without leading pipes, times in minutes and hours and with '*', an escaped pipe in a description,
rows with no log ('none', '-', only a PR link), a link with './', one with an #anchor, a folder of logs
(with a baseline run of another code version inside), a nested path, a log whose README link points at a
folder that was renamed since, re-timings of one record, the three log layouts (llm.c without code, code
between separators, code first) and a log with triton_kernels.py appended. Where git history is needed,
the test builds it around the fixture with old commit dates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from speedrunner.core.errors import UserError
from speedrunner.tasks.metrics import parse_metrics
from speedrunner.tasks.registry import get_task, list_tasks
from speedrunner.tasks.upstream import import_records, parse_log, parse_readme
from speedrunner.tasks.upstream.importer import GENERATED_MARK, REPORT_FILE, choose_baseline
from speedrunner.tasks.upstream.readme import link_target, parse_time

FIXTURE = Path(__file__).parent / "fixtures" / "upstream"
T1 = "records/track_1_short"
MIRROR = Path("/work/.mirror/KellerJordan+modded-nanogpt/repo")


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    shutil.copytree(FIXTURE / "repo", repo)
    return repo


def _git(repo: Path, *args: str, date: str | None = None) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    if date:
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
                    *args], cwd=repo, env=env, check=True, capture_output=True)


def _with_history(tmp_path: Path) -> Path:
    """The fixture as the last of three commits: record 1's script on 2024-06-01, record 2's on
    2024-06-10, then everything on 2024-12-21."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "master")
    for name, date in (("record_1_train_gpt.py", "2024-06-01T12:00:00+00:00"),
                       ("record_2_train_gpt.py", "2024-06-10T12:00:00+00:00")):
        shutil.copy(FIXTURE / "history" / name, repo / "train_gpt.py")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", name, date=date)
    shutil.copytree(FIXTURE / "repo", repo, dirs_exist_ok=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "records", date="2024-12-21T12:00:00+00:00")
    return repo


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- README


def test_readme_tables_and_their_quirks():
    rm = parse_readme((FIXTURE / "repo" / "README.md").read_text())
    t1, t2 = rm.rows[1], rm.rows[2]
    assert [r.number for r in t1] == [1, 2, 3, 4, 5, 6, 6, 6, 7, 8, 9, 10]
    assert [r.number for r in t2] == [1, 2, 3]
    by = {(r.number, r.time_text): r for r in t1}
    r1 = by[(1, "45 minutes")]
    assert r1.minutes == 45 and r1.date == "2024-06-01" and r1.description == "Baseline"
    assert r1.description_links == ["https://example.org/baseline"]
    assert by[(2, "30 minutes")].log_links == []  # 'none'
    assert by[(3, "25 minutes")].log_links == [f"{T1}/2024-07-01_Between/0a1b2c3d-between.txt"]  # './' dropped
    r5 = by[(5, "15 minutes")]
    assert r5.log_links == [f"{T1}/2024-09-01_Anchor/run.txt#results"]
    assert r5.pr_links == ["https://github.com/example/toy/pull/5"]
    assert by[(6, "2 minutes")].description == "Nested path | kernels file"  # escaped pipe kept in the cell
    assert [r.minutes for r in t1 if r.number == 6] == [2, 2.07, 2.1]
    assert by[(8, "1.7 minutes")].log_links == []  # '-'
    r10 = by[(10, "1.2 minutes")]
    assert r10.log_links == [] and r10.pr_links == ["https://github.com/example/toy/pull/10"]
    assert t2[0].minutes == pytest.approx(5.8 * 60) and not t2[0].starred
    assert t2[1].minutes == pytest.approx(29.3) and t2[1].starred
    assert rm.rule_change_after == {1: 6}
    assert rm.notes[2] and "(*)" in rm.notes[2][0]


def test_readme_numbered_list_of_older_snapshots():
    text = """# Old

## World record history

1. [45 minutes: llm.c baseline](https://example.org/a) (05/28/24) [[training log](./records/101324_llmc/main.log)]
2. [31.4 minutes: Tuned lr](https://example.org/b) (06/06/24) [[training log](./records/060624_AdamW/x.log)] (note)
3. [24.9 minutes: Muon](https://example.org/c) (10/04/24)
5. [22.3 minutes: Muon improvements](https://example.org/d) (10/11/24) [[reproducible log](./records/101024_Muon/y.txt)]

Direct contributors: someone
"""
    rows = parse_readme(text).rows[1]
    assert [(r.number, r.minutes, r.date) for r in rows] == [
        (1, 45, "2024-05-28"), (2, 31.4, "2024-06-06"), (3, 24.9, "2024-10-04"), (4, 22.3, "2024-10-11")]
    assert rows[0].log_links == ["records/101324_llmc/main.log"] and rows[2].log_links == []
    assert rows[3].description == "Muon improvements"


def test_link_targets():
    assert link_target("https://github.com/KellerJordan/modded-nanogpt/blob/master/records/t/x%20y.txt#L3") == \
        "records/t/x y.txt#L3"
    assert link_target("https://github.com/karpathy/llm.c/blob/master/train_gpt2.py").startswith("https://")
    assert link_target(" ./records/a/b.txt ") == "records/a/b.txt"


def test_a_table_of_an_unknown_track_is_reported(tmp_path):
    (tmp_path / "README.md").write_text("## Track 3: optimization\n\n| # | Record time | Log |\n|---|---|---|\n"
                                        "| 1 | 10 minutes | [log](records/x.txt) |\n")
    rep = import_records(tmp_path, tmp_path / "out")
    assert rep.tasks == [] and any("track 3" in w for w in rep.warnings)


@pytest.mark.parametrize("text,minutes,star", [("45 minutes", 45, False), ("5.8 hours", 348, False),
                                               ("25.95 minutes*", 25.95, True), ("90 s", 1.5, False),
                                               ("-", None, False)])
def test_times(text, minutes, star):
    value, starred = parse_time(text)
    assert (value == pytest.approx(minutes) if minutes is not None else value is None) and starred == star


# ----------------------------------------------------------------------------------------- logs


def test_log_layouts():
    repo = FIXTURE / "repo" / T1
    llmc = parse_log((repo / "2024-06-01_Baseline/main.log").read_text())
    assert llmc.layout == "no-code" and not llmc.files and llmc.val_loss == pytest.approx(3.279) and llmc.steps == 100
    between = parse_log((repo / "2024-07-01_Between/0a1b2c3d-between.txt").read_text())
    assert between.layout == "code-between" and list(between.files) == ["train_gpt.py"]
    assert between.env["torch_version"] == "2.4.1+cu121" and between.env["cuda_version"] == "12.1"
    assert between.env["gpu_name"] == "NVIDIA H100 80GB HBM3" and between.env["gpu_count"] == "8"
    assert between.steps == 60 and between.train_time_ms == 60 * 25000 and between.val_loss == pytest.approx(3.277)
    first = parse_log((repo / "2024-10-01_Nested/this_pr/11111111-nested.txt").read_text())
    assert first.layout == "code-first" and list(first.files) == ["train_gpt.py", "triton_kernels.py"]
    assert first.files["triton_kernels.py"].startswith('"""Toy kernels file')
    assert first.files["train_gpt.py"].endswith("ms\")\n")  # no banner or blank lines left over
    assert "----" not in first.files["train_gpt.py"]
    assert first.env == {"python_version": "3.12.7", "torch_version": "2.6.0.dev20241203+cu124", "cuda_version": "12.4",
                         "triton_version": "3.1.0", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": "8"}
    assert (first.step, first.steps, first.train_time_ms) == (40, 40, 120000)


def test_logged_script_is_the_script_itself():
    """The file split back out of a log is byte-identical to the script that was logged."""
    log = parse_log((FIXTURE / "repo" / T1 / "2024-12-05_RenamedLater/55555555-renamed.txt").read_text())
    assert log.files["train_gpt.py"] == (FIXTURE / "repo" / "train_gpt.py").read_text()
    assert log.files["triton_kernels.py"] == (FIXTURE / "repo" / "triton_kernels.py").read_text()


# ----------------------------------------------------------------------------------------- import


def test_import_without_git_history(tmp_path):
    out = tmp_path / "tasks"
    rep = import_records(_copy(tmp_path), out)
    assert rep.commit is None
    assert rep.tasks == ["nanogpt_speedrun/record_3", "nanogpt_speedrun/record_4", "nanogpt_speedrun/record_5",
                         "nanogpt_speedrun/record_6", "nanogpt_speedrun_medium/record_2"]
    c1, c2 = rep.tracks[1], rep.tracks[2]
    assert (c1.rows, c1.records, c1.retimings, c1.with_code, c1.transitions_possible, c1.transitions_written) == \
        (12, 10, 2, 6, 9, 4)
    assert (c2.records, c2.with_code, c2.transitions_written) == (3, 2, 1)
    assert c1.unlinked_folders == [f"{T1}/2024-08-15_SideExperiment"]  # a side experiment is not a record
    skipped = {(s.track, s.record): s.reason for s in rep.skipped_records}
    assert set(skipped) == {(1, 1), (1, 2), (1, 8), (1, 10), (2, 1)}
    assert "no code" in skipped[(1, 1)] and "not a git repository" in skipped[(1, 1)]
    assert "links no log" in skipped[(1, 2)] and "pull/10" in skipped[(1, 10)]
    trans = {(s.track, s.record): s.reason for s in rep.skipped_transitions}
    assert trans[(1, 7)] == "no code for record 8" and trans[(1, 9)] == "no code for record 10"
    assert any("120524_Renamed" in w and "2024-12-05_RenamedLater" in w for w in rep.warnings)
    assert (out / REPORT_FILE).is_file() and json.loads((out / REPORT_FILE).read_text())["tasks"] == rep.tasks
    assert "track 1 (nanogpt_speedrun): 10 records in 12 README rows" in rep.summary()

    # a folder of logs: the runs of the version whose mean time is nearest the README's, not the baseline run
    t3 = get_task("nanogpt_speedrun/record_3", extra=[out])
    assert "USE_NEW_TRICK" in (t3.reference_dir / "train_gpt.py").read_text()
    assert t3.vars["next_runs"] == 3 and t3.vars["next_log"].endswith("2024-08-01_Folder/run-aaa.txt")
    assert (t3.hints_dir / "level_3_writeup.md").read_text().startswith("> Source: records/track_1_short/2024-08-01_Folder")
    # an #anchor, a PR link
    t4 = get_task("nanogpt_speedrun/record_4", extra=[out])
    assert t4.vars["next_log"] == f"{T1}/2024-09-01_Anchor/run.txt" and t4.vars["next_pr"].endswith("/pull/5")
    # nested path + kernels file in the reference; re-timings: the row with record 7's torch is the baseline
    t5 = get_task("nanogpt_speedrun/record_5", extra=[out])
    assert sorted(p.name for p in t5.reference_dir.iterdir()) == ["train_gpt.py", "triton_kernels.py"]
    t6 = get_task("nanogpt_speedrun/record_6", extra=[out])
    assert t6.vars["t_R_min"] == 2.1 and t6.vars["t_next_min"] == 1.75 and t6.vars["retimed"] is True
    assert "2.7.0.dev20250110+cu126" in t6.vars["baseline_choice"]
    assert t6.vars["record_log"].endswith("33333333-torch.txt")
    assert sorted(p.name for p in t6.template_dir.iterdir()) == ["train_gpt.py", "triton_kernels.py"]
    assert "since record 7" in t6.rules  # the timing rules changed after record 6
    # track 2: hours, '*', its own target and family
    m2 = get_task("nanogpt_speedrun_medium/record_2", extra=[out])
    assert m2.suite == "nanogpt_speedrun_medium" and m2.record == 2 and m2.vars["target_val_loss"] == 2.92
    assert m2.vars["time_notes"] and "coordinate_descent_tuning" in m2.rules


def test_tasks_follow_the_task_format_and_the_metric_contract(tmp_path):
    out = tmp_path / "tasks"
    import_records(_copy(tmp_path), out)
    ids = sorted(t for t in list_tasks([out]) if t.startswith("nanogpt_speedrun"))
    assert len(ids) == 5
    for tid in ids:
        task = get_task(tid, extra=[out])
        assert task.spec_path.read_text().startswith(GENERATED_MARK)
        assert task.command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "train_gpt.py"]
        assert task.metric.name == "train_time_ms" and task.metric.kind == "time"
        assert task.suite == tid.split("/")[0] and task.record == int(tid.rsplit("_", 1)[1])
        assert task.timeout_s >= 3600 and task.editable == ["*.py"]
        assert task.reference_dir is not None and (task.reference_dir / "train_gpt.py").is_file()
        assert (task.hints_dir / "level_2_readme_row.md").read_text().startswith("> Source: upstream README")
        # the template, run as a plain script, prints what the task's parser and conditions read
        p = subprocess.run([sys.executable, "train_gpt.py"], cwd=task.template_dir, capture_output=True, text=True,
                           check=True)
        metrics = parse_metrics(task.parsers, {"stdout": p.stdout, "stderr": ""}) | {"exit_code": 0.0}
        assert [c.check(metrics) for c in task.conditions] == [None, None]
        assert metrics["train_time_ms"] == pytest.approx(task.vars["record_train_time_ms"], rel=0.01)  # a mean
        assert metrics["val_loss"] == pytest.approx(task.vars["record_val_loss"], abs=1e-3)
    paper = [t for t in ids if "paper" in get_task(t, extra=[out]).vars["suites"]]
    assert paper == ["nanogpt_speedrun/record_3", "nanogpt_speedrun/record_4", "nanogpt_speedrun/record_5"]


def test_git_history_supplies_code_the_logs_lack(tmp_path):
    out = tmp_path / "tasks"
    rep = import_records(_with_history(tmp_path), out)
    assert rep.commit and len(rep.commit) == 40
    assert "nanogpt_speedrun/record_1" in rep.tasks and "nanogpt_speedrun/record_2" in rep.tasks
    t1 = get_task("nanogpt_speedrun/record_1", extra=[out])
    assert (t1.template_dir / "train_gpt.py").read_text() == (FIXTURE / "history" / "record_1_train_gpt.py").read_text()
    assert (t1.reference_dir / "train_gpt.py").read_text() == (FIXTURE / "history" / "record_2_train_gpt.py").read_text()
    assert t1.vars["record_code_from"] == "git" and t1.vars["record_git_path"] == "train_gpt.py"
    assert "step count 100 matches the log" in t1.vars["record_code_notes"][-1]
    assert "unverified" in t1.vars["next_code_notes"][-1]  # record 2 has no log to check against
    assert "from git history" in t1.description or "git history" in t1.description
    assert len(rep.recovered) == 2
    skipped = {(s.track, s.record): s.reason for s in rep.skipped_records}
    assert set(skipped) == {(1, 8), (1, 10), (2, 1)}
    assert "same date 2024-12-05" in skipped[(1, 8)]  # record 9 shares it: that day's commit is ambiguous
    assert "more than 7 days" in skipped[(1, 10)]  # the last commit by its date is months older
    assert "no commit on or before 2024-05-28" in skipped[(2, 1)]


def test_git_recovery_refuses_another_records_code(tmp_path):
    """A record without a log whose date's commit holds a neighbour's logged code gets nothing."""
    repo = _with_history(tmp_path)
    readme = repo / "README.md"
    # date record 10 the day after the last commit, whose train_gpt.py is record 9's logged code
    readme.write_text(readme.read_text().replace("| 12/20/24 | [PR]", "| 12/22/24 | [PR]"))
    _git(repo, "commit", "-q", "-am", "redate", date="2024-12-21T13:00:00+00:00")
    rep = import_records(repo, tmp_path / "tasks")
    reason = {(s.track, s.record): s.reason for s in rep.skipped_records}[(1, 10)]
    assert "is the code of record 9" in reason


def test_bare_repository_reads_like_its_work_tree(tmp_path):
    repo = _with_history(tmp_path)
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, capture_output=True)
    a, b = import_records(repo, tmp_path / "a"), import_records(bare, tmp_path / "b")
    assert a.tasks == b.tasks and a.commit == b.commit
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_import_is_deterministic_and_replaces_its_own_output_only(tmp_path):
    repo = _copy(tmp_path)
    out = tmp_path / "tasks"
    import_records(repo, out)
    first = _tree(out)
    # a stale task of an earlier import goes; a folder of the user's own stays and blocks that transition
    stale = out / "nanogpt_speedrun" / "record_99"
    shutil.copytree(out / "nanogpt_speedrun" / "record_3", stale)
    mine = out / "nanogpt_speedrun" / "record_4"
    shutil.rmtree(mine)
    (mine / "template").mkdir(parents=True)
    (mine / "task.yaml").write_text("name: mine\n")
    rep = import_records(repo, out)
    assert not stale.exists() and (mine / "task.yaml").read_text() == "name: mine\n"
    assert any(s.record == 4 and "not written by the importer" in s.reason for s in rep.skipped_transitions)
    shutil.rmtree(mine)
    import_records(repo, out)
    assert _tree(out) == first
    other = tmp_path / "again"
    import_records(repo, other)
    assert _tree(other) == first


def test_a_template_without_the_metric_line_is_not_a_task(tmp_path):
    repo = _copy(tmp_path)
    log = repo / T1 / "2024-09-01_Anchor" / "run.txt"
    log.write_text(log.read_text().replace("train_time:{t:.0f}ms", "elapsed:{t:.0f}ms"))
    rep = import_records(repo, tmp_path / "tasks")
    trans = {(s.track, s.record): s.reason for s in rep.skipped_transitions}
    assert "record 5 prints no `step:N/M val_loss:X train_time:Yms` line" in trans[(1, 4)]
    assert "record 5 prints no" in trans[(1, 5)]
    assert "nanogpt_speedrun/record_6" in rep.tasks


def test_original_hint_folder_is_imported(tmp_path):
    hints = tmp_path / "knowledge" / "data" / "nanogpt_speedrun_knowledge_in_levels"
    (hints / "record_3").mkdir(parents=True)
    (hints / "record_3" / "level_1_pseudo.txt").write_text("pseudo 3->4")
    (hints / "record_3" / "level_2_description.txt").write_text("description 3->4")
    (hints / "record_3" / "notes.pdf").write_text("not a hint")
    (hints / "record_5").mkdir()
    (hints / "record_5" / "level_9_flex attn.txt").write_text("extra")
    (hints / "record_1").mkdir()
    (hints / "record_1" / "level_1_pseudo.txt").write_text("pseudo 1->2")
    (hints / "muon.md").write_text("shared document")
    out = tmp_path / "tasks"
    rep = import_records(_copy(tmp_path), out, hints=tmp_path / "knowledge")
    h3 = out / "nanogpt_speedrun" / "record_3" / "hints"
    assert sorted(p.name for p in h3.iterdir()) == ["level_1_pseudo.txt", "level_2_description.txt",
                                                    "level_3_writeup.md"]  # their level 2 replaces ours
    assert (h3 / "level_1_pseudo.txt").read_text() == "pseudo 3->4"
    h5 = out / "nanogpt_speedrun" / "record_5" / "hints"
    assert sorted(p.name for p in h5.iterdir()) == ["level_2_readme_row.md", "level_9_flex_attn.txt"]
    assert (out / "nanogpt_speedrun" / "shared_hints" / "muon.md").read_text() == "shared document"
    assert rep.hints_imported == 4
    assert any("notes.pdf" in w for w in rep.warnings)
    assert any("record_1 not used" in w for w in rep.warnings)
    from speedrunner.tasks.knowledge import select_hints

    chosen = select_hints(h3, [1, 2], [])
    assert [h.title for h in chosen] == ["Hint level 1: pseudocode", "Hint level 2: text description"]
    with pytest.raises(UserError, match="record_<R>"):
        import_records(_copy(tmp_path / "x"), tmp_path / "t2", hints=tmp_path / "nothing-here")


def test_not_a_checkout(tmp_path):
    with pytest.raises(UserError, match="no README.md"):
        import_records(tmp_path, tmp_path / "out")
    (tmp_path / "README.md").write_text("# nothing\n")
    with pytest.raises(UserError, match="no record table"):
        import_records(tmp_path, tmp_path / "out")


def test_baseline_is_the_retiming_under_the_next_records_rules():
    from speedrunner.tasks.upstream.importer import Source
    from speedrunner.tasks.upstream.logs import ParsedLog
    from speedrunner.tasks.upstream.readme import Row

    def src(n, minutes, date, torch):
        return Source(row=Row(track=1, number=n, line=n, time_text=f"{minutes} minutes", minutes=minutes, date=date),
                      files={"train_gpt.py": f"# {minutes}\n"}, log=ParsedLog("code-first", env={"torch_version": torch}))

    rows = [src(21, 2.933, "2025-01-26", "a"), src(21, 2.997, "2025-02-01", "a"), src(21, 3.014, "2025-05-24", "b")]
    # the next record came before the last re-timing: that one was not measured under its rules
    pick, why = choose_baseline(rows, src(22, 2.95, "2025-03-01", "c"))
    assert pick is rows[1] and "on or before record 22" in why
    pick, why = choose_baseline(rows, src(22, 2.99, "2025-05-24", "b"))
    assert pick is rows[2] and "same PyTorch" in why
    pick, _ = choose_baseline(rows[:1], src(22, 2.9, "2025-01-30", "a"))
    assert pick is rows[0]


# ----------------------------------------------------------------------------------------- the real thing


def _real_checkout() -> Path | None:
    env = os.environ.get("SPEEDRUNNER_UPSTREAM")
    if env:
        return Path(env)
    return MIRROR if (MIRROR / "HEAD").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_real_checkout() is None,
                    reason="no upstream checkout: set SPEEDRUNNER_UPSTREAM to a modded-nanogpt checkout")
def test_real_upstream_checkout(tmp_path):
    rep = import_records(_real_checkout(), tmp_path / "tasks")
    assert rep.seconds < 30
    c1, c2 = rep.tracks[1], rep.tracks[2]
    assert c1.records >= 89 and c2.records >= 18
    assert c1.transitions_written >= 80 and c2.transitions_written >= 14
    out = tmp_path / "tasks"
    t20 = get_task("nanogpt_speedrun/record_20", extra=[out])
    assert (t20.vars["t_R_min"], t20.vars["t_next_min"]) == (2.992, 2.933) and "paper" in t20.vars["suites"]
    t21 = get_task("nanogpt_speedrun/record_21", extra=[out])
    assert t21.vars["t_R_min"] == 3.014 and "same PyTorch" in t21.vars["baseline_choice"]
    t60 = get_task("nanogpt_speedrun/record_60", extra=[out])
    assert sorted(p.name for p in t60.reference_dir.iterdir()) == ["train_gpt.py", "triton_kernels.py"]
    assert "import os" in (t60.template_dir / "train_gpt.py").read_text()
    assert get_task("nanogpt_speedrun_medium/record_9", extra=[out]).vars["next_log"] is not None
    skipped = {(s.track, s.record) for s in rep.skipped_records}
    assert {(1, 1), (1, 66), (1, 86), (2, 1), (2, 11)} <= skipped


def test_tasks_lists_imported_suites_and_requirements(tmp_path):
    from conftest import run_cli

    out = tmp_path / "tasks"
    import_records(_copy(tmp_path), out)
    listing = run_cli("tasks", "--task-paths", str(out), "--suite", "track1")
    assert listing.returncode == 0, listing.stderr
    assert "nanogpt_speedrun/record_" in listing.stdout and "collatz" not in listing.stdout
    assert "nanogpt_speedrun_medium" not in listing.stdout
    medium = run_cli("tasks", "--task-paths", str(out), "--suite", "track2")
    assert "nanogpt_speedrun_medium/record_" in medium.stdout
    specs = sorted(out.rglob("task.yaml"))
    reqs = [yaml.safe_load(p.read_text()).get("requirements") for p in specs]
    assert any(r and r.get("torch") for r in reqs)
