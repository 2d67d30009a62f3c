"""Find tasks by id. A task id is the path of its folder (the one holding task.yaml) relative to a
search root: the package's ``benchmarks/`` first, then each of the user's ``task_paths``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from speedrunner.core.errors import TaskError
from speedrunner.tasks.spec import TASK_FILE, Task, load_task

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "benchmarks"


def search_roots(extra: Iterable[str | Path] = ()) -> list[Path]:
    roots = [BUILTIN_ROOT]
    roots += [Path(p).expanduser().resolve() for p in extra]
    return roots


def list_tasks(extra: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Map task id -> task.yaml path, over all search roots (earlier roots win)."""
    found: dict[str, Path] = {}
    for root in search_roots(extra):
        if not root.is_dir():
            continue
        for spec in sorted(root.rglob(TASK_FILE)):
            tid = spec.parent.relative_to(root).as_posix()
            found.setdefault(tid, spec)
    return found


def find_task(task_id: str, extra: Iterable[str | Path] = ()) -> Path:
    direct = Path(task_id).expanduser()
    if (direct / TASK_FILE).is_file():
        return (direct / TASK_FILE).resolve()
    tasks = list_tasks(extra)
    if task_id in tasks:
        return tasks[task_id]
    known = ", ".join(sorted(tasks)) or "(none)"
    raise TaskError(
        f"unknown task {task_id!r}. Known tasks: {known}. "
        "Add a folder with a task.yaml to task_paths=[DIR] or pass task.id=PATH/TO/TASK_FOLDER."
    )


def get_task(task_id: str, size: str | None = None, extra: Iterable[str | Path] = (),
             data_dir: Path | None = None) -> Task:
    spec = find_task(task_id, extra)
    tid = task_id if not (Path(task_id) / TASK_FILE).is_file() else spec.parent.name
    return load_task(spec, tid, size=size, data_dir=data_dir)
