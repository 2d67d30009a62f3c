"""The edit formats: SEARCH/REPLACE blocks, whole files, and the file listing shown to models.

The property tests use a seeded random generator (hypothesis is not a dependency): every seed is a
fixed, reproducible example, and a failure prints the smallest failing examples.
"""

from __future__ import annotations

import copy
import random

import pytest

from speedrunner.agents.coders import CODERS, EditBlockCoder, EditError, WholeFileCoder
from speedrunner.agents.coders.editblock import replace_once
from speedrunner.agents.listing import fence_for, parse_files, render_files


def blk(path: str | None, search: str, replace: str) -> str:
    head = f"{path}\n" if path is not None else ""
    return f"{head}<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def apply_eb(text: str, files: dict[str, str], protected: list[str] | None = None):
    return EditBlockCoder().apply(text, files, protected or [])


SRC = (
    "import math\n"
    "\n"
    "def area(r):\n"
    "    if r < 0:\n"
    "        raise ValueError(r)\n"
    "    return math.pi * r * r\n"
    "\n"
    "print(area(2))\n"
)


# ---------------------------------------------------------------------------------------------- editblock


def test_registry_knows_both_coders():
    assert CODERS["editblock"] is EditBlockCoder
    assert CODERS["wholefile"] is WholeFileCoder


def test_exact_match_replaces_only_that_block():
    reply = "Use tau.\n\n" + blk("geo.py", "    return math.pi * r * r", "    return math.tau * r * r / 2")
    res = apply_eb(reply, {"geo.py": SRC})
    assert not res.no_change
    assert res.edits == {"geo.py": SRC.replace("math.pi * r * r", "math.tau * r * r / 2")}


def test_path_above_a_code_fence_is_found():
    reply = "geo.py\n```python\n<<<<<<< SEARCH\nprint(area(2))\n=======\nprint(area(3))\n>>>>>>> REPLACE\n```\n"
    assert apply_eb(reply, {"geo.py": SRC}).edits["geo.py"].endswith("print(area(3))\n")


def test_trailing_whitespace_in_file_is_tolerated():
    content = "x = 1   \ny = 2\t\nz = 3\n"
    res = apply_eb(blk("a.py", "x = 1\ny = 2", "x = 10\ny = 20"), {"a.py": content})
    assert res.edits["a.py"] == "x = 10\ny = 20\nz = 3\n"


def test_trailing_whitespace_in_search_is_tolerated():
    res = apply_eb(blk("geo.py", "def area(r):   \n    if r < 0:  ", "def area(r):\n    if r <= 0:"),
                   {"geo.py": SRC})
    assert "    if r <= 0:\n        raise ValueError(r)\n" in res.edits["geo.py"]
    assert "if r < 0" not in res.edits["geo.py"]


def test_search_with_less_indentation_is_reindented_to_the_file():
    # the model quoted the body of `area` without its 4-space indent
    search = "if r < 0:\n    raise ValueError(r)"
    replace = "if r < 0:\n    raise ValueError(f'negative radius {r}')\nassert r >= 0"
    res = apply_eb(blk("geo.py", search, replace), {"geo.py": SRC})
    assert res.edits["geo.py"] == SRC.replace(
        "    if r < 0:\n        raise ValueError(r)\n",
        "    if r < 0:\n        raise ValueError(f'negative radius {r}')\n    assert r >= 0\n",
    )


def test_search_with_more_indentation_is_reindented_to_the_file():
    search = "        if r < 0:\n            raise ValueError(r)"
    replace = "        if r <= 0:\n            return 0.0"
    res = apply_eb(blk("geo.py", search, replace), {"geo.py": SRC})
    assert res.edits["geo.py"] == SRC.replace(
        "    if r < 0:\n        raise ValueError(r)\n", "    if r <= 0:\n        return 0.0\n"
    )


def test_no_match_names_the_file_and_shows_the_closest_lines():
    search = "    if r < 1:\n        raise ValueError(r)"
    with pytest.raises(EditError) as ei:
        apply_eb(blk("geo.py", search, "pass"), {"geo.py": SRC})
    msg = str(ei.value)
    assert "geo.py" in msg
    assert "block 1" in msg
    assert "matched nothing" in msg
    # the lines of the file that come closest, quoted as they really are
    assert "    if r < 0:\n        raise ValueError(r)" in msg


def test_no_match_in_second_file_names_that_file():
    files = {"a.py": "alpha = 1\n", "b.py": "beta = 2\n"}
    reply = blk("a.py", "alpha = 1", "alpha = 3") + "\n" + blk("b.py", "gamma = 2", "gamma = 4")
    with pytest.raises(EditError) as ei:
        apply_eb(reply, files)
    assert "block 2" in str(ei.value)
    assert "b.py" in str(ei.value)


def test_ambiguous_match_says_how_many_places():
    content = "x = 0\nprint(x)\nx = 0\nprint(x)\nx = 0\n"
    with pytest.raises(EditError) as ei:
        apply_eb(blk("a.py", "x = 0", "x = 1"), {"a.py": content})
    msg = str(ei.value)
    assert "a.py" in msg
    assert "3 places" in msg


def test_ambiguous_whitespace_tolerant_match_says_how_many_places():
    content = "def f():\n    y = 1\n\ndef g():\n    y = 1\n"
    with pytest.raises(EditError) as ei:
        apply_eb(blk("a.py", "y = 1   ", "y = 2"), {"a.py": content})
    assert "2 places" in str(ei.value)


def test_overlapping_occurrences_are_ambiguous():
    """'a\\na' occurs twice in 'a\\na\\na\\n' (lines 1-2 and 2-3); the edit must not pick the first."""
    content = "a\na\na\n"
    with pytest.raises(EditError) as ei:
        apply_eb(blk("f.py", "a\na", "b"), {"f.py": content})
    assert "2 places" in str(ei.value)
    assert replace_once(content, ["a", "a"], ["b"]) == 2


def test_search_matches_whole_lines_not_part_of_a_line():
    """A SEARCH line 'x = 1' must not match inside 'max = 10' and turn it into 'max = 20'."""
    content = "max = 10\nprint(max)\n"
    with pytest.raises(EditError):
        apply_eb(blk("a.py", "x = 1", "x = 2"), {"a.py": content})


def test_empty_search_creates_a_new_file():
    res = apply_eb(blk("pkg/util.py", "", "def helper():\n    return 1"), {"geo.py": SRC})
    assert res.edits == {"pkg/util.py": "def helper():\n    return 1\n"}


def test_empty_search_is_refused_for_an_existing_non_empty_file():
    with pytest.raises(EditError) as ei:
        apply_eb(blk("geo.py", "", "print('overwritten')"), {"geo.py": SRC})
    assert "geo.py" in str(ei.value)
    assert "already exists" in str(ei.value)


def test_edit_to_missing_file_lists_existing_files():
    with pytest.raises(EditError) as ei:
        apply_eb(blk("nope.py", "x = 1", "x = 2"), {"geo.py": SRC, "b.py": "x\n"})
    msg = str(ei.value)
    assert "nope.py" in msg and "does not exist" in msg
    assert "b.py, geo.py" in msg


@pytest.mark.parametrize("path,protected", [
    ("data/train.bin", ["data/*"]),
    ("eval.py", ["eval.py"]),
    ("sub/dir/eval.py", ["eval.py"]),  # a bare name protects the file in every folder
])
def test_edits_to_protected_files_are_refused(path, protected):
    files = {path: "secret = 1\n", "ok.py": "x = 1\n"}
    with pytest.raises(EditError) as ei:
        apply_eb(blk(path, "secret = 1", "secret = 2"), files, protected)
    assert path in str(ei.value)
    assert "protected" in str(ei.value)


def test_creating_a_protected_file_is_refused():
    with pytest.raises(EditError, match="protected"):
        apply_eb(blk("eval.py", "", "print('fake score')"), {"ok.py": "x = 1\n"}, ["eval.py"])


@pytest.mark.parametrize("path", ["../outside.py", "a/../../outside.py", "/etc/passwd", "/tmp/x.py"])
def test_paths_outside_the_workspace_are_refused(path):
    with pytest.raises(EditError) as ei:
        apply_eb(blk(path, "", "boom = 1"), {"ok.py": "x = 1\n"})
    assert "not a path inside the workspace" in str(ei.value)


@pytest.mark.parametrize("reply", ["NO CHANGE", "I looked at it.\n\nNO CHANGE\n", "no change."])
def test_no_change_reply(reply):
    files = {"geo.py": SRC}
    res = apply_eb(reply, files)
    assert res.no_change
    assert res.edits == {}


def test_reply_without_blocks_gets_a_message():
    with pytest.raises(EditError) as ei:
        apply_eb("I would make it faster by using numpy.", {"geo.py": SRC})
    assert "no SEARCH/REPLACE block" in str(ei.value)
    assert "NO CHANGE" in str(ei.value)


def test_unclosed_block_gets_a_message():
    with pytest.raises(EditError, match="not closed"):
        apply_eb("geo.py\n<<<<<<< SEARCH\nprint(area(2))\n=======\nprint(area(3))\n", {"geo.py": SRC})


def test_first_block_without_path_gets_a_message():
    with pytest.raises(EditError, match="no file path"):
        apply_eb(blk(None, "print(area(2))", "print(area(3))"), {"geo.py": SRC})


def test_several_blocks_are_applied_in_order():
    # the second block quotes a line that only exists after the first block was applied
    reply = (blk("geo.py", "print(area(2))", "result = area(2)\nprint(result)")
             + "\n" + blk("geo.py", "print(result)", "print(round(result, 3))"))
    res = apply_eb(reply, {"geo.py": SRC})
    assert res.edits["geo.py"].endswith("\nresult = area(2)\nprint(round(result, 3))\n")


def test_blocks_over_several_files():
    files = {"a.py": "alpha = 1\n", "b.py": "beta = 2\n", "c.py": "gamma = 3\n"}
    reply = blk("b.py", "beta = 2", "beta = 20") + "\n" + blk("a.py", "alpha = 1", "alpha = 10")
    res = apply_eb(reply, files)
    assert res.edits == {"a.py": "alpha = 10\n", "b.py": "beta = 20\n"}


def test_all_or_nothing_files_are_not_mutated_on_failure():
    files = {"a.py": "alpha = 1\n", "b.py": "beta = 2\n"}
    before = copy.deepcopy(files)
    reply = blk("a.py", "alpha = 1", "alpha = 10") + "\n" + blk("b.py", "no such line", "x")
    with pytest.raises(EditError):
        apply_eb(reply, files)
    assert files == before


def test_files_are_not_mutated_on_success_either():
    files = {"a.py": "alpha = 1\n"}
    res = apply_eb(blk("a.py", "alpha = 1", "alpha = 10"), files)
    assert files == {"a.py": "alpha = 1\n"}
    assert res.edits == {"a.py": "alpha = 10\n"}


def test_divider_line_inside_the_search_part_is_not_silently_misread():
    """An RST underline '=======' quoted in SEARCH looks like the divider. The block must be applied as
    meant or refused with a message, never split at the wrong divider and applied."""
    content = 'DOC = """\nResults\n=======\nold text\n"""\n'
    reply = blk("doc.py", "Results\n=======\nold text", "Results\n=======\nnew text")
    try:
        res = apply_eb(reply, {"doc.py": content})
    except EditError:
        return
    assert res.edits["doc.py"] == content.replace("old text", "new text")


def test_block_that_changes_nothing_is_no_change():
    res = apply_eb(blk("geo.py", "print(area(2))", "print(area(2))"), {"geo.py": SRC})
    assert res.no_change
    assert res.edits == {}


# ---------------------------------------------------------------------------------------------- render


def test_render_of_identical_files_is_no_change():
    reply = EditBlockCoder.render({"geo.py": SRC}, {"geo.py": SRC})
    assert apply_eb(reply, {"geo.py": SRC}).no_change


def test_render_creates_new_files_and_keeps_others():
    old = {"geo.py": SRC}
    new = {"geo.py": SRC, "util.py": "def two():\n    return 2\n"}
    res = apply_eb(EditBlockCoder.render(old, new), old)
    assert res.edits == {"util.py": "def two():\n    return 2\n"}


VOCAB = ["x = 1", "y = 2", "", "    return x", "def f():", "pass", "# note", "  a  ", "\tz = 0", "print(y)"]


def _random_text(rng: random.Random, vocab: list[str], unique: bool = False) -> str:
    n = rng.randint(0, 10)
    if unique:
        lines = [f"line_{i}_{rng.randint(0, 9)}" for i in range(n)]
    else:
        lines = [rng.choice(vocab) for _ in range(n)]
    text = "\n".join(lines)
    if text and rng.random() < 0.6:
        text += "\n"
    return text


def _mutate(rng: random.Random, text: str, vocab: list[str], unique: bool = False) -> str:
    """Insertions, deletions and replacements of whole lines; the trailing newline may come or go."""
    lines = text.split("\n")
    fresh = iter(range(10_000))
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randint(0, len(lines))
        if op < 0.35:
            lines.insert(i, f"new_{next(fresh)}" if unique else rng.choice(vocab + ["inserted()"]))
        elif op < 0.7 and lines:
            del lines[min(i, len(lines) - 1)]
        elif lines:
            lines[min(i, len(lines) - 1)] = f"changed_{next(fresh)}"
    return "\n".join(lines)


def _plain_lines(text: str) -> str:
    """Non-blank lines, each ending with a newline."""
    return "".join(line + "\n" for line in text.split("\n") if line.strip())


def _roundtrip_failures(coder_cls, seeds, unique: bool, only_trailing_newline: bool = False,
                        plain: bool = False):
    failures = []
    for seed in seeds:
        rng = random.Random(seed)
        old = _random_text(rng, VOCAB, unique)
        new = _mutate(rng, old, VOCAB, unique)
        if only_trailing_newline:
            old = old.rstrip("\n") + "\n"
            new = new.rstrip("\n") + "\n"
        if plain:
            old, new = _plain_lines(old), _plain_lines(new)
            if not old:
                continue
        extra = {"keep.py": "untouched = True\n"}
        before = {"a.py": old, **extra}
        reply = coder_cls.render(before, {"a.py": new, **extra})
        try:
            res = coder_cls().apply(reply, before, [])
            got = {**before, **res.edits}["a.py"]
            if "keep.py" in res.edits:
                got = "touched keep.py"
        except EditError as e:
            got = f"EditError: {str(e)[:80]}"
        want = new
        if not old.strip() and new and not new.endswith("\n"):
            want = new + "\n"  # an empty file is rewritten like a new one: it ends with a newline
        if got != want:
            failures.append((len(old) + len(new), seed, old, new, got))
    failures.sort()
    return failures


def _kind(new: str, got: str) -> str:
    if got.startswith("EditError"):
        return "refused"
    return "trailing newlines differ" if got.rstrip("\n") == new.rstrip("\n") else "wrong content"


def _fmt(failures) -> str:
    """The two smallest failures of each kind."""
    out, seen = [], {}
    for _, s, o, n, g in failures:
        k = _kind(n, g)
        seen[k] = seen.get(k, 0) + 1
        if seen[k] <= 2:
            out.append(f"[{k}] seed {s}: old={o!r} new={n!r} got={g!r}")
    return "\n".join(out)


def test_editblock_render_roundtrip_distinct_lines():
    """The common case: no line repeats, no blank lines, a trailing newline."""
    failures = _roundtrip_failures(EditBlockCoder, range(400), unique=True, plain=True)
    assert not failures, f"{len(failures)} failures, smallest:\n{_fmt(failures)}"


def test_editblock_render_roundtrip_random_edits():
    """render(old, new) applied to old gives exactly new: repeated lines, blank lines, with and
    without a trailing newline."""
    failures = _roundtrip_failures(EditBlockCoder, range(600), unique=False)
    assert not failures, f"{len(failures)} of 600 failed, smallest:\n{_fmt(failures)}"


def test_editblock_render_roundtrip_repeated_lines():
    # 'a\na\n' occurs (overlapping) twice in the old file; the block must land at the end
    old, new = "a\na\na\n", "a\na\na\nb\n"
    res = apply_eb(EditBlockCoder.render({"f.py": old}, {"f.py": new}), {"f.py": old})
    assert res.edits["f.py"] == new


def test_editblock_render_roundtrip_later_block_made_ambiguous_by_earlier_one():
    old, new = "a\na\nb\na\n", "b\na\na\nb\na\na\n"
    res = apply_eb(EditBlockCoder.render({"f.py": old}, {"f.py": new}), {"f.py": old})
    assert res.edits["f.py"] == new


@pytest.mark.parametrize("old,new", [
    ("x = 1\nx = 1\n", "x = 1\n\n"),         # trailing blank line added
    ("\tz\nx = 1\n\n", "new\nx = 1\n"),      # trailing blank line removed
])
def test_editblock_render_roundtrip_trailing_blank_lines(old, new):
    res = apply_eb(EditBlockCoder.render({"f.py": old}, {"f.py": new}), {"f.py": old})
    assert res.edits["f.py"] == new


def test_editblock_render_never_emits_a_blank_only_search():
    """A SEARCH part of blank lines reads as 'create a new file' and is refused for an existing one."""
    old, new = "a\n\n\n", "a\n\n\nb\n"
    res = apply_eb(EditBlockCoder.render({"f.py": old}, {"f.py": new}), {"f.py": old})
    assert res.edits["f.py"] == new


@pytest.mark.parametrize("content", ["a = 1\n", "a = 1\n\n", "a = 1"])
def test_editblock_render_new_file_exact(content):
    """A created file gets exactly its lines, and always ends with a newline (the documented convention)."""
    res = apply_eb(EditBlockCoder.render({}, {"n.py": content}), {})
    assert res.edits == {"n.py": content if content.endswith("\n") else content + "\n"}


# ---------------------------------------------------------------------------------------------- wholefile


def wf(path: str, content: str, fence: str = "```", lang: str = "python") -> str:
    return f"### File: {path}\n{fence}{lang}\n{content}{fence}\n"


def test_wholefile_replaces_the_file():
    new = "print('hello')\n"
    res = WholeFileCoder().apply("Simpler.\n\n" + wf("geo.py", new), {"geo.py": SRC}, [])
    assert res.edits == {"geo.py": new}
    assert not res.no_change


@pytest.mark.parametrize("header", ["geo.py", "`geo.py`", "geo.py:", "File: geo.py", "## geo.py"])
def test_wholefile_header_variants(header):
    res = WholeFileCoder().apply(f"{header}\n```python\nx = 1\n```\n", {"geo.py": SRC}, [])
    assert res.edits == {"geo.py": "x = 1\n"}


def test_wholefile_unchanged_file_is_no_change():
    res = WholeFileCoder().apply(wf("geo.py", SRC), {"geo.py": SRC}, [])
    assert res.no_change and res.edits == {}


def test_wholefile_new_file_in_subfolder():
    res = WholeFileCoder().apply(wf("pkg/util.py", "x = 1\n"), {"geo.py": SRC}, [])
    assert res.edits == {"pkg/util.py": "x = 1\n"}


def test_wholefile_content_with_triple_backticks_roundtrips_with_four_backtick_fence():
    content = 'DOC = """\n```python\nprint(1)\n```\n"""\n'
    reply = WholeFileCoder.render({"doc.py": "DOC = ''\n"}, {"doc.py": content})
    assert "````python" in reply
    res = WholeFileCoder().apply(reply, {"doc.py": "DOC = ''\n"}, [])
    assert res.edits == {"doc.py": content}
    # written by hand, as a model would
    res = WholeFileCoder().apply(wf("doc.py", content, fence="````"), {"doc.py": "DOC = ''\n"}, [])
    assert res.edits == {"doc.py": content}


@pytest.mark.parametrize("marker", ["# ... rest unchanged", "    # ... rest of the file unchanged",
                                    "// ... existing code", "# ... remaining functions"])
def test_wholefile_elided_content_is_refused(marker):
    new = f"import math\n\ndef area(r):\n    return 0\n{marker}\n"
    with pytest.raises(EditError) as ei:
        WholeFileCoder().apply(wf("geo.py", new), {"geo.py": SRC}, [])
    assert "geo.py" in str(ei.value)
    assert "elided" in str(ei.value)


def test_wholefile_marker_already_in_the_file_is_not_elision():
    old = "# ... rest unchanged is a phrase we print\nprint(1)\n"
    new = "# ... rest unchanged is a phrase we print\nprint(2)\n"
    res = WholeFileCoder().apply(wf("a.py", new), {"a.py": old}, [])
    assert res.edits == {"a.py": new}


def test_wholefile_protected_and_outside_paths_are_refused():
    with pytest.raises(EditError, match="protected"):
        WholeFileCoder().apply(wf("eval.py", "x = 1\n"), {"eval.py": "x = 0\n"}, ["eval.py"])
    with pytest.raises(EditError, match="not a path inside the workspace"):
        WholeFileCoder().apply(wf("../x.py", "x = 1\n"), {}, [])


def test_wholefile_all_or_nothing():
    files = {"a.py": "a = 1\n", "eval.py": "e = 1\n"}
    before = dict(files)
    with pytest.raises(EditError):
        WholeFileCoder().apply(wf("a.py", "a = 2\n") + "\n" + wf("eval.py", "e = 2\n"), files, ["eval.py"])
    assert files == before


def test_wholefile_no_change_and_nothing_found():
    assert WholeFileCoder().apply("NO CHANGE", {"a.py": "x\n"}, []).no_change
    with pytest.raises(EditError, match="no file"):
        WholeFileCoder().apply("I think it is fine as it is, maybe.", {"a.py": "x\n"}, [])


def test_wholefile_render_roundtrip_random_edits():
    failures = _roundtrip_failures(WholeFileCoder, range(400), unique=False, only_trailing_newline=True)
    assert not failures, f"{len(failures)} failures, smallest:\n{_fmt(failures)}"


def test_wholefile_render_roundtrip_without_trailing_newline():
    failures = []
    for seed in range(200):
        rng = random.Random(seed)
        old = _random_text(rng, VOCAB)
        new = _mutate(rng, old, VOCAB)
        reply = WholeFileCoder.render({"a.py": old}, {"a.py": new})
        got = {"a.py": old, **WholeFileCoder().apply(reply, {"a.py": old}, []).edits}["a.py"]
        want = new if new.endswith("\n") or not new else new + "\n"  # whole files always end with a newline
        if got != want:
            failures.append((len(old) + len(new), seed, old, new, got))
    failures.sort()
    assert not failures, f"{len(failures)} of 200 failed, smallest:\n{_fmt(failures)}"


@pytest.mark.parametrize("path", ["Makefile", "scripts/run", "Dockerfile"])
def test_wholefile_render_roundtrip_files_without_extension(path):
    old = {path: "all:\n\techo old\n"}
    new = {path: "all:\n\techo new\n"}
    res = WholeFileCoder().apply(WholeFileCoder.render(old, new), old, [])
    assert res.edits == new


# ---------------------------------------------------------------------------------------------- listing


@pytest.mark.parametrize("files", [
    {"geo.py": SRC},
    {"a.py": "x = 1\n", "sub/b.md": "# Title\n\n```python\nprint(1)\n```\n", "c.txt": ""},
    {"d.md": "inline ```` four and ``` three\n`````\nfive\n"},
    {"e.py": "\n\nleading blank lines\n"},
    {"f.py": "trailing blank lines\n\n\n"},
    {"Makefile": "all:\n\techo hi\n"},
])
def test_listing_roundtrip(files):
    assert parse_files(render_files(files)) == files


def test_listing_roundtrip_inside_a_larger_prompt():
    files = {"a.py": "x = '```'\n", "b.py": "y = 2\n"}
    prompt = f"# Current code (v_3)\n{render_files(files)}\n\n## How to reply\nblah ```\n"
    assert parse_files(prompt) == files


def test_listing_roundtrip_file_of_one_blank_line():
    assert parse_files(render_files({"blank.py": "\n"})) == {"blank.py": "\n"}


def test_listing_fence_is_longer_than_any_backtick_run():
    assert fence_for("no ticks") == "```"
    assert fence_for("a ``` b") == "````"
    assert fence_for("``````") == "```````"
    text = render_files({"x.md": "a ````` b\n"})
    assert "``````markdown\n" in text


def test_listing_last_listing_of_a_path_wins():
    text = render_files({"a.py": "old\n"}) + "\n\n" + render_files({"a.py": "new\n"})
    assert parse_files(text) == {"a.py": "new\n"}
