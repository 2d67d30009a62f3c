"""An executor that returns what a finished run's nodes measured, for ``speedrunner replay``.

Replay re-drives a run's search from its response cache: the models answer from the cache and this
executor answers for the task, with the original node's logs and result, after checking that the
replayed node holds exactly the same files. The search then takes the same decisions and must reach the
same tree; a node whose files differ raises :class:`ReplayDivergence`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from speedrunner.core.types import ExecResult
from speedrunner.workspace.fsutil import sha256_file


class ReplayDivergence(RuntimeError):
    pass


class RecordedExecutor:
    def __init__(self, original: Path, threads: int = 1):
        self.original = Path(original)
        self.threads = threads
        self.notes: list[str] = []

    def run(self, command: list[str], cwd: Path, out_dir: Path, timeout_s: float,
            env: dict[str, str] | None = None, hidden: list[Path] | None = None) -> ExecResult:
        name = Path(out_dir).name
        orig = self.original / "nodes" / name
        if not (orig / "result.json").is_file():
            raise ReplayDivergence(f"the replay asked to run {name}, which the original run did not run")
        meta = json.loads((orig / "meta.json").read_text())
        for rel, entry in meta["files"].items():
            want = entry.get("sha256")
            if want and (not (Path(cwd) / rel).is_file() or sha256_file(Path(cwd) / rel) != want):
                raise ReplayDivergence(f"{name}: {rel} differs from the original run's; the replay diverged")
        out_dir.mkdir(parents=True, exist_ok=True)
        for log in ("stdout.log", "stderr.log"):
            if (orig / log).is_file():
                shutil.copy2(orig / log, out_dir / log)
        res = json.loads((orig / "result.json").read_text())
        metrics = res.get("metrics") or {}
        return ExecResult(exit_code=res.get("exit_code"), wall_s=float(res.get("wall_s") or 0.0),
                          killed_reason=None if res.get("exit_code") is not None else "recorded: no exit code",
                          stdout_path=str(out_dir / "stdout.log"), stderr_path=str(out_dir / "stderr.log"),
                          cpu_s=metrics.get("cpu_s"))
