"""Live progress of a run: nodes in flight, best so far, spend against the budget.

On a terminal it is a rich ``Live`` display (finished nodes scroll above it, one line each); otherwise it
prints plain lines, one when a node starts and one when it finishes. Plug it into the loop's
``Progress`` callbacks::

    live = LiveProgress.for_run(run)        # sets run.progress; or, by hand:
    # live = LiveProgress(run.task.metric.name, run.budget.max_nodes, spend=lambda: run.spend,
    #                     direction=run.task.metric.direction, max_usd=...)
    # run.progress = live.callbacks()
    with live:
        run.run()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from speedrunner.core.types import Operator, Status
from speedrunner.search.loop import Progress
from speedrunner.workspace.store import Node

STATUS_STYLE = {Status.VALID: "green", Status.INVALID: "yellow", Status.BUGGY: "red"}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _elapsed(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class LiveProgress:
    """Progress display for a search run.

    ``metric``: the task's primary metric name; ``max_nodes``: the node budget (agent nodes);
    ``spend``: a callable returning the run's spend so far (``SearchRun.spend``: llm_calls, tokens_in,
    tokens_out, usd); ``max_usd``: a spend budget to show against, if any; ``live``: force the rich
    display on or off (default: on when the console is a terminal)."""

    def __init__(self, metric: str, max_nodes: int | None = None, *,
                 spend: Callable[[], Mapping[str, Any]] | None = None, max_usd: float | None = None,
                 direction: str = "minimize", console: Console | None = None, live: bool | None = None,
                 refresh_per_second: float = 4.0):
        self.metric = metric
        self.max_nodes = max_nodes
        self.spend = spend
        self.max_usd = max_usd
        self.direction = direction
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.use_live = (self.console.is_terminal and not self.console.is_dumb_terminal) if live is None else live
        self.refresh_per_second = refresh_per_second
        self.in_flight: dict[int, tuple[Operator, int, float]] = {}
        self.done = 0  # finished agent nodes
        self.counts = {s: 0 for s in Status}
        self.best: tuple[int, float | None] | None = None
        self.baseline: float | None = None
        self.started = time.time()
        self._lock = threading.RLock()
        self._live: Any = None

    @classmethod
    def for_run(cls, run: Any, **kw: Any) -> LiveProgress:
        """A display for a ``SearchRun``: its metric and direction, node budget, spend, and the USD cap of
        its ledger when it has one. Sets ``run.progress`` too."""
        ledger = getattr(run, "ledger", None)
        kw.setdefault("max_usd", getattr(ledger, "max_usd", None))
        live = cls(run.task.metric.name, run.budget.max_nodes, spend=lambda: run.spend,
                   direction=run.task.metric.direction, **kw)
        run.progress = live.callbacks()
        return live

    # ------------------------------------------------------------------ the loop's callbacks
    def callbacks(self) -> Progress:
        return Progress(node_started=self.node_started, node_finished=self.node_finished)

    def node_started(self, nid: int, op: Operator, parent: int) -> None:
        with self._lock:
            self.in_flight[nid] = (op, parent, time.time())
        if not self.use_live:
            self.console.print(f"[dim]v_{nid:<3} {self._origin(op, parent):<18} running[/dim]")
        self._refresh()

    def node_finished(self, node: Node, best: Node | None) -> None:
        o = node.outcome
        with self._lock:
            start = self.in_flight.pop(node.id, (node.operator, node.parent, time.time()))[2]
            if node.id != 0:
                self.done += 1
            elif o is not None and o.valid:
                self.baseline = o.metric
            if o is not None and node.id != 0:
                self.counts[o.status] += 1
            if best is not None and best.outcome is not None:
                self.best = (best.id, best.outcome.metric)
        if o is None:
            return
        origin = self._origin(node.operator, node.parent)
        style = STATUS_STYLE[o.status]
        value = f"{self.metric}={_fmt(o.metric)}" if o.metric is not None else ""
        reason = o.reason.strip().splitlines()[0][:80] if o.reason.strip() else ""
        best_s = f"best v_{best.id} {_fmt(best.outcome.metric)}" if best and best.outcome else "best -"
        took = f"[dim]{time.time() - start:>6.1f}s[/dim] " if self.use_live else ""
        self.console.print(f"v_{node.id:<3} {origin:<18} [{style}]{o.status.value:<7}[/{style}] {escape(value):<24} "
                           f"{escape(best_s):<22} {took}[dim]{escape(reason)}[/dim]")
        self._refresh()

    # ------------------------------------------------------------------ live display
    @staticmethod
    def _origin(op: Operator, parent: int | None) -> str:
        return "baseline" if op is Operator.ROOT or parent is None or parent < 0 else f"{op.value} of v_{parent}"

    def _spend(self) -> Mapping[str, Any]:
        if self.spend is None:
            return {}
        try:
            return dict(self.spend())
        except Exception:  # a display must never break the run
            return {}

    def status_line(self) -> str:
        """Nodes done against the budget, running, best, spend against the budget, on one line."""
        return " · ".join(self.status_lines())

    def status_lines(self) -> list[str]:
        """The same as two lines: the search, then the spend."""
        with self._lock:
            parts = [f"nodes {self.done}/{self.max_nodes}" if self.max_nodes else f"nodes {self.done}",
                     f"{len(self.in_flight)} running",
                     f"{self.counts[Status.VALID]} valid · {self.counts[Status.INVALID]} invalid · "
                     f"{self.counts[Status.BUGGY]} buggy"]
            if self.best is not None:
                bid, bm = self.best
                gain = ""
                if self.baseline and bm is not None and bid != 0:
                    gain = f" ({(bm - self.baseline) / self.baseline * 100:+.1f}% vs baseline)"
                parts.append(f"best v_{bid} {self.metric}={_fmt(bm)}{gain}")
            else:
                parts.append("best -")
        second = []
        sp = self._spend()
        if sp:
            usd = float(sp.get("usd", 0.0) or 0.0)
            money = f"${usd:.4f}" + (f" / ${self.max_usd:.2f}" if self.max_usd else "")
            second.append(f"spend {money} · {int(sp.get('llm_calls', 0) or 0)} calls · "
                          f"{int(sp.get('tokens_in', 0) or 0):,} in / {int(sp.get('tokens_out', 0) or 0):,} out tokens")
        second.append(f"elapsed {_elapsed(time.time() - self.started)}")
        return [" · ".join(parts), " · ".join(second)]

    def __rich__(self) -> Group:
        now = time.time()
        items: list[Any] = []
        with self._lock:
            flying = sorted(self.in_flight.items())
        if flying:
            t = Table(box=None, show_header=False, padding=(0, 1))
            for nid, (op, parent, since) in flying:
                t.add_row(Text("⠿", style="cyan"), f"v_{nid}", self._origin(op, parent),
                          Text(f"running {_elapsed(now - since)}", style="dim"))
            items.append(t)
        if self.max_nodes:
            bar = Table(box=None, show_header=False, padding=(0, 1))
            bar.add_row(ProgressBar(total=self.max_nodes, completed=self.done, width=40),
                        f"{self.done}/{self.max_nodes} nodes")
            items.append(bar)
        sp = self._spend()
        if self.max_usd and sp:
            usd = float(sp.get("usd", 0.0) or 0.0)
            money = Table(box=None, show_header=False, padding=(0, 1))
            money.add_row(ProgressBar(total=self.max_usd, completed=min(usd, self.max_usd), width=40,
                                      complete_style="yellow"), f"${usd:.4f} / ${self.max_usd:.2f}")
            items.append(money)
        first, second = self.status_lines()
        items.append(Text(first, style="bold"))
        items.append(Text(second))
        return Group(*items)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def start(self) -> None:
        if self.use_live and self._live is None:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=self.refresh_per_second,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveProgress:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
