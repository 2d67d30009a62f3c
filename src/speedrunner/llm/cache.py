"""A content-addressed response cache (SQLite) and ``CachingModel``, the wrapper that uses it.

A request's key is the SHA-256 of the model's identity (provider, name, sampling parameters), the
messages, and a namespace. Identical requests are told apart by an *occurrence index*: the n-th
identical request of a run gets the n-th stored answer, so three identical draft prompts still get
three different samples, and a replay gets them back in the same order.

- Resume: ``CachingModel.resume(calls)`` takes the journal records of the calls the kept nodes made
  (they carry ``cache_key`` and ``occurrence`` from ``Completion.meta``) and marks those occurrences
  used; a request then gets the lowest occurrence not used yet, so the calls of a node made again after
  a crash hit the cache, even when (several workers) a node that finished had asked after it: resume
  never pays twice.
- Replay: ``strict=True`` raises :class:`~speedrunner.llm.errors.CacheMiss` instead of calling the
  model, so a replay needs no network and no key, and stops at the first request the run never made.

A call that failed is stored as a failure: a replay fails at the same place (the same tree), while
outside strict mode the call is simply made again.

A hit reports zero tokens and zero USD (nothing was paid); the cost of the stored call is in
``Completion.meta["cached_usage"]``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from speedrunner.core.types import Completion, Message, Model, Usage
from speedrunner.llm.errors import CacheMiss, ModelCallError

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (key, occurrence)
);
"""


def request_key(identity: dict[str, Any], messages: list[Message], namespace: str = "") -> str:
    blob = json.dumps({"v": 1, "ns": namespace, "model": identity,
                       "messages": [{"role": m.get("role"), "content": m.get("content")} for m in messages]},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """One SQLite file. ``readonly=True`` opens it for replay (nothing is written, a missing file is an
    error). Occurrence counters live here, so every model sharing the cache counts together."""

    def __init__(self, path: str | Path, *, readonly: bool = False, namespace: str = ""):
        self.path = Path(path)
        self.readonly = readonly
        self.namespace = namespace
        self._lock = threading.Lock()
        self._next: dict[str, int] = defaultdict(int)  # per key: no occurrence below this is free
        self._taken: dict[str, set[int]] = defaultdict(set)  # per key: occurrences at or above it already used
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"response cache {self.path} does not exist")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.commit()

    # ------------------------------------------------------------------ occurrence counters
    def take_occurrence(self, key: str) -> int:
        """The lowest occurrence of ``key`` not used yet in this process (0, 1, 2, ... in a fresh run)."""
        with self._lock:
            n = self._next[key]
            taken = self._taken.get(key)
            while taken and n in taken:
                taken.discard(n)
                n += 1
            self._next[key] = n + 1
            return n

    def seen(self, key: str, occurrence: int) -> None:
        """Record that ``occurrence`` of ``key`` was used (resume). Occurrences below it that no kept node
        used stay free: with several workers a node cut off by a crash may have asked before a node that
        finished, and when it is made again it gets its stored answer back instead of a new, paid call."""
        with self._lock:
            occ = int(occurrence)
            if occ >= self._next[key]:
                self._taken[key].add(occ)

    def reset_counters(self) -> None:
        with self._lock:
            self._next.clear()
            self._taken.clear()

    # ------------------------------------------------------------------ storage
    def get(self, key: str, occurrence: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key=? AND occurrence=?",
                                   (key, occurrence)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, occurrence: int, model: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        if self.readonly:
            raise RuntimeError(f"response cache {self.path} is read-only")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                             (key, occurrence, model, json.dumps(request, ensure_ascii=False),
                              json.dumps(response, ensure_ascii=False), time.time()))
            self._db.commit()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachingModel:
    """Wraps a model: answers from ``cache`` when it can, else asks ``inner`` and stores the answer.

    ``Completion.meta`` gets ``cache_key``, ``occurrence`` and ``cached``. ``strict=True`` (replay)
    raises :class:`CacheMiss` on a miss; every miss is also listed in ``misses``."""

    def __init__(self, inner: Model, cache: ResponseCache, *, strict: bool = False,
                 identity: dict[str, Any] | None = None):
        self.inner = inner
        self.cache = cache
        self.strict = strict
        if cache.readonly and not strict:
            raise ValueError("a read-only response cache can only be used with strict=True (replay)")
        self.name = inner.name
        ident = identity if identity is not None else getattr(inner, "identity", None)
        self.identity: dict[str, Any] = ident() if callable(ident) else (ident or {"name": inner.name})
        self.model_id = f"{self.identity.get('provider', '')}/{self.identity.get('name', inner.name)}".lstrip("/")
        self.hits = 0
        self.misses: list[str] = []

    def key(self, messages: list[Message]) -> str:
        return request_key(self.identity, messages, self.cache.namespace)

    def resume(self, calls: list[dict[str, Any]]) -> None:
        for rec in calls:
            if rec.get("cache_key") and rec.get("occurrence") is not None:
                self.cache.seen(str(rec["cache_key"]), int(rec["occurrence"]))
        fresh = [r for r in calls if not r.get("cached")]
        if fresh and hasattr(self.inner, "resume"):
            self.inner.resume(fresh)

    def complete(self, messages: list[Message]) -> Completion:
        key = self.key(messages)
        occ = self.cache.take_occurrence(key)
        t0 = time.monotonic()
        stored = self.cache.get(key, occ)
        if stored is not None and "error" in stored:
            if self.strict:  # the original run failed here: fail the same way
                self.hits += 1
                raise ReplayedFailure(f"replayed failure of the original run: {stored['error']}")
            stored = None  # outside replay a failed call is tried again
        if stored is not None:
            self.hits += 1
            meta = dict(stored.get("meta") or {})
            meta.update(cache_key=key, occurrence=occ, cached=True, cached_usage=stored.get("usage"))
            return Completion(text=stored["text"], reasoning=stored.get("reasoning"),
                              usage=Usage(latency_s=round(time.monotonic() - t0, 4)), meta=meta)
        if self.strict:
            self.misses.append(f"{key}#{occ}")
            raise CacheMiss(f"no cached answer of {self.model_id} for this request (cache_key {key[:16]}..., "
                            f"occurrence {occ}) in {self.cache.path}: the replayed run asks something the "
                            "original run never asked, or asks it more often")
        try:
            comp = self.inner.complete(messages)
        except Exception as e:  # kept, so that a replay fails where the run failed
            if not self.cache.readonly:
                self.cache.put(key, occ, self.model_id, {"model": self.identity, "messages": messages},
                               {"error": f"{type(e).__name__}: {e}"})
            raise
        u = comp.usage
        stored_meta = {k: v for k, v in comp.meta.items() if k not in ("cache_key", "occurrence", "cached")}
        self.cache.put(key, occ, self.model_id, {"model": self.identity, "messages": messages},
                       {"text": comp.text, "reasoning": comp.reasoning, "meta": stored_meta,
                        "usage": {"tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "usd": u.usd,
                                  "latency_s": u.latency_s}})
        meta = dict(comp.meta)
        meta.update(cache_key=key, occurrence=occ, cached=False)
        return Completion(text=comp.text, usage=u, reasoning=comp.reasoning, meta=meta)


class ReplayedFailure(ModelCallError):
    """Replay of a call that failed in the original run."""


class ReplayOnly:
    """The inner model of a strict replay: it is never called (a miss raises first)."""

    def __init__(self, name: str, identity: dict[str, Any]):
        self.name = name
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return self._identity

    def complete(self, messages: list[Message]) -> Completion:
        raise CacheMiss(f"{self.name}: replay makes no model calls")
