"""task.yaml: loading, every kind of mistake named by file and field, extends, sizes, the registry."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from speedrunner.core.errors import TaskError, UserError
from speedrunner.tasks.metrics import Condition
from speedrunner.tasks.registry import find_task, get_task, list_tasks
from speedrunner.tasks.spec import load_task

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "name": "toy",
    "description": "Make solve.py faster.",
    "rules": "Keep the answer.",
    "command": ["{python}", "solve.py", "--n", "{n}"],
    "timeout_s": 30,
    "vars": {"n": 100},
    "metric": {"name": "runtime_ms", "direction": "minimize", "kind": "time", "unit": "ms"},
    "parsers": [
        {"pattern": r"^answer: (?P<answer>\d+)"},
        {"pattern": r"^runtime_ms: (?P<runtime_ms>[0-9.]+)", "match": "last"},
    ],
    "valid_if": ["exit_code == 0", "answer == 42"],
    "protected": ["data/*"],
}


def write_task(folder: Path, data: dict, template: bool = True, name: str = "task.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if template:
        (folder / "template").mkdir(exist_ok=True)
        (folder / "template" / "solve.py").write_text("print('answer: 42')\n")
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_valid_task_loads(tmp_path):
    spec = write_task(tmp_path / "toy", BASE)
    task = load_task(spec, "toy")
    assert task.id == "toy" and task.name == "toy"
    assert task.description == "Make solve.py faster."
    assert task.command == [sys.executable, "solve.py", "--n", "100"]
    assert task.timeout_s == 30.0
    assert task.template_dir == (tmp_path / "toy" / "template").resolve()
    assert task.metric.name == "runtime_ms" and task.metric.direction == "minimize"
    assert task.conditions == [Condition("exit_code", "==", 0.0), Condition("answer", "==", 42.0)]
    assert [p.match for p in task.parsers] == ["last", "last"]
    assert task.protected == ["data/*"]
    assert task.hints_dir is None and task.reference_dir is None
    assert task.better(1.0, 2.0) and not task.better(2.0, 1.0) and not task.better(1.0, 1.0)


def test_defaults(tmp_path):
    data = {k: BASE[k] for k in ("name", "description", "command", "metric", "parsers")}
    data["command"] = ["{python}", "solve.py"]
    task = load_task(write_task(tmp_path / "t", data), "t")
    assert task.timeout_s == 600.0
    assert task.conditions == [Condition("exit_code", "==", 0.0)]
    assert task.editable == ["*.py"]


def test_maximize_direction(tmp_path):
    data = copy.deepcopy(BASE)
    data["metric"]["direction"] = "maximize"
    task = load_task(write_task(tmp_path / "t", data), "t")
    assert task.better(2.0, 1.0) and not task.better(1.0, 2.0)


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    last = keys[-1]
    if value is _DEL:
        del d[last]
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


_DEL = object()


@pytest.mark.parametrize("change,value,field,also", [
    ("description", _DEL, "description", "required"),
    ("command", _DEL, "command", "required"),
    ("metric", _DEL, "metric", "required"),
    ("metric.name", _DEL, "metric.name", "required"),
    ("timeout_s", "soon", "timeout_s", "soon"),
    ("command", "python solve.py", "command", "list"),
    ("command", [], "command", "program"),
    ("vars", ["n", 1], "vars", "dictionary"),
    ("metric.direction", "down", "metric.direction", "'minimize' or 'maximize'"),
    ("metric.kind", "speed", "metric.kind", "time"),
    ("parsers.0.pattern", r"^answer: (?P<answer>\d+", "parsers.0.pattern", "regular expression"),
    ("parsers.0.pattern", r"^answer: (\d+)", "parsers.0.pattern", "named group"),
    ("parsers.1.match", "middle", "parsers.1.match", "'last' or 'first'"),
    ("colour", "red", "colour", "not permitted"),
    ("metric.units", "ms", "metric.units", "not permitted"),
    ("valid_if", ["val_loss is small"], "valid_if", "cannot parse condition"),
    ("metric.name", "val_loss", "metric.name", "produced by no parser"),
    ("valid_if", ["exit_code == 0", "val_loss <= 3.28"], "valid_if", "'val_loss' is produced by no parser"),
    ("command", ["{python}", "solve.py", "{pyhton}"], "command[2]", "unknown placeholder {pyhton}"),
    ("env", {"SEED": "{seed}"}, "env.SEED", "unknown placeholder {seed}"),
    ("valid_if", ["answer == {answer}"], "valid_if[0]", "unknown placeholder {answer}"),
    ("command", ["{python}", "solve.py", "{n"], "command[2]", "placeholder"),
    ("template", "no_such_folder", "template", "does not exist"),
    ("hints", "no_hints_here", "hints", "does not exist"),
    ("reference", "no_reference", "reference", "does not exist"),
])
def test_malformed_task_names_file_and_field(tmp_path, change, value, field, also):
    data = copy.deepcopy(BASE)
    _set(data, change, value)
    spec = write_task(tmp_path / "bad", data)
    with pytest.raises(TaskError) as ei:
        load_task(spec, "bad")
    msg = str(ei.value)
    assert str(spec.resolve()) in msg
    assert f"field '{field}'" in msg
    assert also.lower() in msg.lower()


def test_template_that_is_a_file_not_a_folder(tmp_path):
    data = dict(BASE, template="solve.py")
    spec = write_task(tmp_path / "t", data)
    (tmp_path / "t" / "solve.py").write_text("x\n")
    with pytest.raises(TaskError, match=r"field 'template': .* is not a folder"):
        load_task(spec, "t")


def test_task_error_is_a_user_error():
    assert issubclass(TaskError, UserError)


@pytest.mark.parametrize("text,what", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "expected a mapping"),
])
def test_unreadable_task_file_names_the_file(tmp_path, text, what):
    (tmp_path / "template").mkdir()
    spec = tmp_path / "task.yaml"
    spec.write_text(text)
    with pytest.raises(TaskError) as ei:
        load_task(spec, "t")
    assert str(spec.resolve()) in str(ei.value)
    assert what in str(ei.value)


def test_extends_merges_base_and_child(tmp_path):
    write_task(tmp_path / "family", BASE, template=False, name="base.yaml")
    child = {
        "extends": "../family/base.yaml",
        "name": "toy-hard",
        "vars": {"n": 5000},
        "metric": {"direction": "maximize"},  # deep merge: name, kind, unit stay
    }
    spec = write_task(tmp_path / "hard", child)
    task = load_task(spec, "hard")
    assert task.name == "toy-hard"
    assert task.description == "Make solve.py faster."  # from the base
    assert task.metric.name == "runtime_ms" and task.metric.kind == "time"
    assert task.metric.direction == "maximize"
    assert task.command[-1] == "5000"
    # path fields stay relative to the file being loaded, not the base
    assert task.template_dir == (tmp_path / "hard" / "template").resolve()
    assert task.spec_path == spec.resolve()


def test_extends_chain_of_three(tmp_path):
    write_task(tmp_path, BASE, template=False, name="a.yaml")
    write_task(tmp_path, {"extends": "a.yaml", "timeout_s": 5}, template=False, name="b.yaml")
    spec = write_task(tmp_path, {"extends": "b.yaml", "name": "c"}, name="c.yaml")
    task = load_task(spec, "c")
    assert (task.name, task.timeout_s, task.description) == ("c", 5.0, "Make solve.py faster.")


def test_extends_cycle(tmp_path):
    write_task(tmp_path, dict(BASE, extends="b.yaml"), name="a.yaml")
    write_task(tmp_path, {"extends": "a.yaml", "name": "b"}, template=False, name="b.yaml")
    with pytest.raises(TaskError) as ei:
        load_task(tmp_path / "a.yaml", "a")
    msg = str(ei.value)
    assert "'extends'" in msg and "cycle" in msg
    assert str((tmp_path / "a.yaml").resolve()) in msg


def test_extends_self_is_a_cycle(tmp_path):
    spec = write_task(tmp_path, dict(BASE, extends="task.yaml"))
    with pytest.raises(TaskError, match="cycle"):
        load_task(spec, "t")


def test_extends_must_be_a_path(tmp_path):
    spec = write_task(tmp_path, dict(BASE, extends=["a.yaml"]))
    with pytest.raises(TaskError) as ei:
        load_task(spec, "t")
    assert str(spec.resolve()) in str(ei.value) and "field 'extends'" in str(ei.value)


def test_extends_to_a_missing_file_names_the_field(tmp_path):
    spec = write_task(tmp_path / "t", dict(BASE, extends="../nowhere/base.yaml"))
    with pytest.raises(TaskError) as ei:
        load_task(spec, "t")
    msg = str(ei.value)
    assert "nowhere" in msg and "not found" in msg
    assert "'extends'" in msg  # the user must learn which field points at the missing file
    assert str(spec.resolve()) in msg


SIZED = dict(
    BASE,
    timeout_s=30,
    sizes={
        "tiny": {"vars": {"n": 10}, "timeout_s": 5, "description": "seconds"},
        "full": {"vars": {"n": 100000}},
    },
    default_size="tiny",
)


def test_sizes_select_vars_and_timeouts(tmp_path):
    spec = write_task(tmp_path, SIZED)
    tiny = load_task(spec, "t")
    assert (tiny.size, tiny.command[-1], tiny.timeout_s) == ("tiny", "10", 5.0)
    full = load_task(spec, "t", size="full")
    assert (full.size, full.command[-1], full.timeout_s) == ("full", "100000", 30.0)
    assert full.vars["size"] == "full"


def test_unknown_size_is_rejected_with_the_list_of_sizes(tmp_path):
    spec = write_task(tmp_path, SIZED)
    with pytest.raises(TaskError) as ei:
        load_task(spec, "t", size="huge")
    msg = str(ei.value)
    assert "'huge'" in msg
    assert "full" in msg and "tiny" in msg
    assert str(spec.resolve()) in msg


def test_sizes_without_default_need_a_size(tmp_path):
    spec = write_task(tmp_path, {k: v for k, v in SIZED.items() if k != "default_size"})
    with pytest.raises(TaskError, match="full.*tiny"):
        load_task(spec, "t")


def test_size_for_a_task_without_sizes_does_not_apply(tmp_path):
    """A task without sizes has exactly one; a size chosen for another task (the config's default) is
    ignored rather than an error, so task.id=... overrides work from any default."""
    spec = write_task(tmp_path, BASE)
    assert load_task(spec, "t", size="tiny").size is None


def test_bad_size_entry_names_the_field(tmp_path):
    data = copy.deepcopy(SIZED)
    data["sizes"]["tiny"]["timeout"] = 5
    spec = write_task(tmp_path, data)
    with pytest.raises(TaskError, match=r"field 'sizes\.tiny\.timeout'"):
        load_task(spec, "t")


# ---------------------------------------------------------------------------------------------- registry


def test_builtin_collatz_loads():
    task = get_task("collatz")
    assert task.id == "collatz"
    assert task.metric.name == "runtime_ms" and task.metric.direction == "minimize"
    assert task.metric.kind == "time"
    assert task.command[0] == sys.executable
    assert (task.template_dir / "solve.py").is_file()
    assert task.reference_dir is not None and (task.reference_dir / "solve.py").is_file()
    assert task.hints_dir is not None and task.hints_dir.is_dir()
    assert Condition("exit_code", "==", 0.0) in task.conditions
    assert any(c.name == "answer" for c in task.conditions)


def test_list_tasks_includes_collatz_and_user_folders(tmp_path):
    write_task(tmp_path / "mine" / "fast", BASE)
    tasks = list_tasks([tmp_path])
    assert "collatz" in tasks
    assert tasks["mine/fast"] == tmp_path / "mine" / "fast" / "task.yaml"
    task = get_task("mine/fast", extra=[tmp_path])
    assert task.id == "mine/fast" and task.name == "toy"


def test_get_task_by_folder_path(tmp_path):
    write_task(tmp_path / "by_path", BASE)
    task = get_task(str(tmp_path / "by_path"))
    assert task.name == "toy"
    assert task.spec_path == (tmp_path / "by_path" / "task.yaml").resolve()


def test_unknown_task_lists_known_tasks():
    with pytest.raises(TaskError) as ei:
        find_task("colatz")
    assert "'colatz'" in str(ei.value)
    assert "collatz" in str(ei.value).replace("'colatz'", "")


def test_package_declares_the_libraries_the_task_loader_imports():
    """spec.py imports pydantic; a fresh `pip install .` must bring it."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()
             for d in deps}
    assert "pydantic" in names, f"pyproject dependencies {sorted(names)} lack pydantic"
