"""``journal.jsonl``: one JSON event per line, appended, flushed and fsynced.

Every event has ``seq`` (0, 1, ...), ``t`` (unix seconds) and ``event`` (its type). A line cut short by
a crash is dropped when the journal is reopened, so the file always parses.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._seq = sum(1 for _ in self._lines())
        self._f = open(self.path, "a", encoding="utf-8")
        # Test hook for crash safety: SIGKILL this process right after the N-th event is written.
        kill_after = os.environ.get("SPEEDRUNNER_TEST_KILL_AFTER_EVENT")
        self._kill_after = int(kill_after) if kill_after else None

    def _lines(self):
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            yield from f

    def _repair(self) -> None:
        """Drop a trailing partial line left by a crash in the middle of a write."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"seq": self._seq, "t": round(time.time(), 3), "event": event, **_finite(fields)}
        self._f.write(json.dumps(rec, default=str, separators=(",", ":"), allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._seq += 1
        if self._kill_after is not None and self._seq >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return rec

    def close(self) -> None:
        self._f.close()


def _finite(obj: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    if not Path(path).exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a partial last line
    return out
