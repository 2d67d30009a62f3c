"""Reports over run folders, the HTML tree viewer, live progress and the similarity judge.

- ``write_report(paths, out) -> Path`` (report.py): report.md, CSV, JSON and PNG plots.
- ``write_viewer(run_dir, out=None) -> Path`` (viewer.py): one self-contained HTML file.
- ``LiveProgress`` (progress.py): the loop's ``Progress`` callbacks as a rich live display.
- ``judge_run(run_dir, model, reference, ...) -> Path`` (judge.py): the optional similarity judge.

Imports are lazy, so ``import speedrunner.report`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "write_report": "speedrunner.report.report",
    "build_report": "speedrunner.report.report",
    "write_viewer": "speedrunner.report.viewer",
    "LiveProgress": "speedrunner.report.progress",
    "judge_run": "speedrunner.report.judge",
    "judge_node": "speedrunner.report.judge",
    "reference_for_task": "speedrunner.report.judge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'speedrunner.report' has no attribute {name!r}")
