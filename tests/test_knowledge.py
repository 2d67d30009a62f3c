"""The hint store: level selection, globs, and clean markdown for the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrunner.agents.ideators import IDEATORS
from speedrunner.agents.ideators.base import IdeaContext
from speedrunner.agents.ideators.hints import HintsIdeator
from speedrunner.core.errors import UserError
from speedrunner.core.types import Operator
from speedrunner.tasks.knowledge import Hint, format_hints, select_hints
from speedrunner.tasks.registry import get_task
from speedrunner.workspace.store import Node

COLLATZ_HINTS = Path(__file__).resolve().parent.parent / "src/speedrunner/benchmarks/collatz/hints"


@pytest.fixture
def hints_dir(tmp_path):
    d = tmp_path / "hints"
    d.mkdir()
    (d / "level_1_pseudo.md").write_text("```\nfor i in range(n): cache[i] = ...\n```\n")
    (d / "level_2_description.md").write_text("Cache the chain lengths.\n\nKeep `cache = [0] * n` small.\n")
    (d / "level_2_extra.txt").write_text("A second level-2 note.\n")
    (d / "level_3_paper.md").write_text("# Mini paper\n\nAbstract.\n")
    (d / "README.md").write_text("not a hint file\n")
    return d


def assert_clean_markdown(text: str, hints: list[Hint]) -> None:
    """One '### ' section per hint, in order, each followed by the file's text; no Python repr."""
    sections = [s for s in text.split("### ") if s]
    assert len(sections) == len(hints)
    for sec, h in zip(sections, hints, strict=True):
        title, _, body = sec.partition("\n")
        assert title == h.title
        assert body.strip() == h.text
    assert not text.startswith("[") and not text.startswith("(")
    for bad in ("Hint(", "PosixPath(", "['### ", "\\n"):
        assert bad not in text


def test_levels_are_selected_in_the_order_asked(hints_dir):
    hints = select_hints(hints_dir, [3, 1], [])
    assert [(h.level, h.kind) for h in hints] == [(3, "paper"), (1, "pseudo")]
    assert hints[0].text == "# Mini paper\n\nAbstract."


def test_a_level_with_several_files_gives_them_all(hints_dir):
    hints = select_hints(hints_dir, [2], [])
    assert [(h.level, h.kind) for h in hints] == [(2, "description"), (2, "extra")]


def test_no_levels_no_globs_gives_nothing(hints_dir):
    assert select_hints(hints_dir, [], []) == []
    assert select_hints(None, [], []) == []
    assert format_hints([]) == ""


def test_missing_level_lists_the_present_ones(hints_dir):
    with pytest.raises(UserError) as ei:
        select_hints(hints_dir, [1, 5], [])
    msg = str(ei.value)
    assert "level 5" in msg
    assert str(hints_dir) in msg
    assert "1, 2, 3" in msg


def test_level_0_is_the_reference_diff():
    task = get_task("collatz")
    ref = (task.template_dir, task.reference_dir, task.editable)
    hints = select_hints(task.hints_dir, [0, 2], [], reference=ref)
    assert [h.level for h in hints] == [0, 2]
    diff = hints[0].text
    assert diff.startswith("```diff\n--- a/solve.py\n+++ b/solve.py\n@@")
    assert diff.endswith("\n```")
    assert_clean_markdown(format_hints(hints), hints)
    with pytest.raises(UserError, match="reference"):
        select_hints(task.hints_dir, [0], [])


def test_levels_without_a_hint_folder(tmp_path):
    with pytest.raises(UserError, match="no hint folder"):
        select_hints(None, [1], [])
    with pytest.raises(UserError, match="no hint folder"):
        select_hints(tmp_path / "absent", [1], [])


def test_globs_select_files_outside_the_task(tmp_path, hints_dir):
    notes = tmp_path / "notes"
    (notes / "deep").mkdir(parents=True)
    (notes / "level_1_trick.md").write_text("Use bit shifts.\n")
    (notes / "b_idea.md").write_text("Unroll the loop.\n")
    (notes / "deep" / "c_more.md").write_text("Deeper note.\n")
    hints = select_hints(hints_dir, [2], [str(notes / "level_1_*.md"), str(notes / "**" / "*_more.md")])
    assert [h.path.name for h in hints] == ["level_2_description.md", "level_2_extra.txt", "level_1_trick.md",
                                            "c_more.md"]
    assert hints[2].level == 1 and hints[2].title == "Hint level 1: pseudocode"
    assert hints[3].level is None and hints[3].title == "Note: c more"
    hints = select_hints(None, [], [str(notes / "*.md")])
    assert [h.path.name for h in hints] == ["b_idea.md", "level_1_trick.md"]


def test_glob_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(UserError) as ei:
        select_hints(None, [], [str(tmp_path / "nothing_*.md")])
    assert "knowledge_src_paths" in str(ei.value) and "nothing_*.md" in str(ei.value)


def test_format_is_markdown_sections(hints_dir):
    hints = select_hints(hints_dir, [1, 2, 3], [])
    text = format_hints(hints)
    assert_clean_markdown(text, hints)
    assert text.startswith("### Hint level 1: pseudocode\n\n```\nfor i in range(n)")
    assert "### Hint level 3: mini-paper\n\n# Mini paper\n\nAbstract." in text


def test_collatz_hints_format_cleanly():
    hints = select_hints(COLLATZ_HINTS, [1, 2, 3], [])
    assert [h.level for h in hints] == [1, 2, 3]
    text = format_hints(hints)
    assert_clean_markdown(text, hints)
    assert "['" not in text and '["' not in text


def test_hints_ideator_gives_markdown_text(hints_dir):
    task = get_task("collatz")
    hints_text = format_hints(select_hints(hints_dir, [2, 3], []))
    root = Node(id=0, parent=None, operator=Operator.ROOT)
    ctx = IdeaContext(task, Operator.DRAFT, root, {"solve.py": "x\n"}, "", hints_text)
    idea = IDEATORS["hints"]().propose(ctx, None)
    assert hints_text in idea.text
    assert "['" not in idea.text
    assert idea.summary
    empty = HintsIdeator().propose(IdeaContext(task, Operator.DRAFT, root, {}, "", ""), None)
    assert empty.text == ""


def test_knowledge_src_paths_from_the_config_reach_the_run(tmp_path):
    """`knowledge_src_paths='[DIR/level_1_*.md]'` with `hints=[2]`: the run's hint text holds both."""
    from speedrunner.runner import build, compose

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "level_1_cache.md").write_text("Cache chain lengths in a list.\n")
    (notes / "idea_shift.md").write_text("Use n >> 1.\n")
    cfg = compose(["task=collatz", f"knowledge_src_paths=[{notes}/level_1_*.md,{notes}/idea_*.md]", "hints=[2]",
                   "model=null", "budget.max_nodes=0"])
    run = build(cfg, tmp_path / "run")
    try:
        text = run.hints_text
    finally:
        run.journal.close()
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert titles == ["### Hint level 2: text description", "### Hint level 1: pseudocode", "### Note: idea shift"]
    assert "Cache chain lengths in a list." in text and "Use n >> 1." in text
    assert "['" not in text
