"""The greedy search policy of the benchmark; flat, tree, forest, aide and multi_aide are its presets.

Step 0 drafts ``n_initial`` children of the root. Every later step draws one number from the seeded
RNG: below ``debug_prob`` it debugs a random buggy leaf whose ``bug_depth`` is at most
``max_bug_depth`` (one child); otherwise (or when no leaf qualifies) it improves the best valid node
among the root, the previous best and the newest children, with ``n_branch`` children; ties go to the
newest node. With ``n_branch: 0`` (flat, best-of-N) every step drafts again from the root.

"The previous best" is kept up to date on every step, debug steps included: before each decision the
newest children are folded into it. Without that, a best node made just before a debug step would
never be compared again (the debug child would replace it as "the newest children").

The policy sees only finished outcomes, so the same config and the same outcomes give the same
decisions: a resumed run replays the steps it already took and continues.

Several workers (``executor.workers > 1``): the loop asks for a step whenever a worker is free and no
node of an earlier step is still waiting to start, so some nodes of earlier steps may still be running.
``observe`` is then given the nodes that *finished* since the previous step (with one worker these are
exactly the nodes the previous step made), so every node is folded into the running best once, when its
outcome is known. The tree passed to ``next`` holds the finished nodes only; their ``children`` lists
include children that are decided but not finished, so a buggy node whose fix is under way is not
debugged twice. ``last_draw`` is the number drawn by the latest step (None when none was drawn), kept
in the loop's decision log.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from speedrunner.core.types import Operator, Status
from speedrunner.workspace.store import Node


@dataclass(frozen=True)
class Expansion:
    parent: int
    operator: Operator
    count: int


@dataclass
class GreedyPolicy:
    n_initial: int
    n_branch: int
    debug_prob: float
    max_bug_depth: int
    seed: int = 0
    direction: str = "minimize"
    rng: random.Random = field(init=False)
    step: int = field(default=0, init=False)
    prev_best: int | None = field(default=None, init=False)
    newest: list[int] = field(default_factory=list, init=False)
    last_draw: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.n_initial < 1:
            raise ValueError("scaffold.n_initial must be at least 1")
        if not 0.0 <= self.debug_prob <= 1.0:
            raise ValueError("scaffold.debug_prob must lie in [0, 1]")
        self.rng = random.Random(self.seed)

    def _better(self, a: Node, b: Node) -> bool:
        """a beats b: strictly better metric, or equal metric and newer (a node that only reuses an earlier
        node's result, ``duplicate_of``, never wins a tie against one that ran)."""
        assert a.outcome and b.outcome and a.outcome.metric is not None and b.outcome.metric is not None
        x, y = a.outcome.metric, b.outcome.metric
        if x == y:
            a_dup, b_dup = a.outcome.duplicate_of is not None, b.outcome.duplicate_of is not None
            return (not a_dup, a.id) > (not b_dup, b.id)
        return x < y if self.direction == "minimize" else x > y

    def best_of(self, nodes: list[Node]) -> Node | None:
        best = None
        for n in nodes:
            if n.outcome is None or n.outcome.status is not Status.VALID or n.outcome.metric is None:
                continue
            if best is None or self._better(n, best):
                best = n
        return best

    def debug_candidates(self, tree: dict[int, Node]) -> list[int]:
        return sorted(
            n.id for n in tree.values()
            if n.outcome is not None and n.outcome.status is Status.BUGGY and not n.children
            and n.bug_depth <= self.max_bug_depth and n.parent is not None
        )

    def next(self, tree: dict[int, Node]) -> Expansion:
        """The next expansion given the finished tree. Before each step after the first, :meth:`observe`
        gets the nodes to fold into the running best (see the module docstring)."""
        step = self.step
        self.step += 1
        self.last_draw = None
        if step > 0:  # fold the children of the last step into the running best
            pool = [tree[0]] + ([tree[self.prev_best]] if self.prev_best is not None else [])
            best = self.best_of(pool + [tree[i] for i in self.newest])
            self.prev_best = best.id if best is not None else None
        if step == 0:
            return Expansion(0, Operator.DRAFT, self.n_initial)
        if self.n_branch == 0:
            return Expansion(0, Operator.DRAFT, self.n_initial)
        draw = self.last_draw = self.rng.random()
        if draw < self.debug_prob:
            candidates = self.debug_candidates(tree)
            if candidates:
                return Expansion(self.rng.choice(candidates), Operator.DEBUG, 1)
        parent = self.prev_best if self.prev_best is not None else 0  # nothing valid yet: improve the root
        return Expansion(parent, Operator.IMPROVE, self.n_branch)

    def observe(self, created: list[int]) -> None:
        """The nodes to fold into the running best at the next step: those the previous step made (one
        worker), or those that finished since the previous step (several workers)."""
        self.newest = list(created)

    def state(self) -> dict:
        return {"step": self.step, "prev_best": self.prev_best, "newest": self.newest}
