"""TTT-Discover's archive of earlier solutions and its PUCT rule for picking where to start from.

Every valid answer becomes a state (its text and value, higher is better) in a buffer; each rollout
group starts from a state s chosen by

    score(s) = Q(s) + c · scale · P(s) · sqrt(1 + T) / (1 + n(s))

with Q(s) the best value reached from s (m(s)) once s was expanded (n(s) > 0), else its own value;
P the rank prior (the best of N states weighs N, the worst 1, normalised); scale the value range of
the non-initial states (at least 1e-6); n(s) the expansions of s and its descendants; T all
expansions. Ties are broken by value, then by buffer order. Picking several states at once skips
the whole lineage (ancestors and descendants) of each state already picked. After a step, each
parent keeps its best `topk_children` children and the buffer its best `max_size` states (the
initial states always stay).

This is test-time-training/discover, tinker_cookbook/recipes/ttt/sampler.py `PUCTSampler`
(:319-623; score :483-500, lineage :502-516, update :529-583, truncation :585-599, flush :601-617,
failed rollouts :619-623), with its defaults c = 1, topk_children = 2, max_size = 1000 (:338-343)
and its group size G fixed to 1 (:355-356). Differences: ids are counters, not uuid4 (a resumed
run must be bit-exact), and the rank prior breaks ties among equal values by buffer order (numpy's
argsort there is unstable for ties past 16 states).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class State:
    id: int
    text: str                                # the solution ("" for an initial state)
    value: float
    timestep: int                            # the rollout step that made it (-1: initial)
    parents: list[int] = field(default_factory=list)          # ancestors, most recent first
    parent_values: list[float] = field(default_factory=list)  # their values, most recent first


class PUCTBuffer:
    def __init__(self, c: float = 1.0, topk_children: int = 2, max_size: int = 1000,
                 initial_value: float = 0.0, n_initial: int = 1):
        self.c, self.topk_children, self.max_size = float(c), int(topk_children), int(max_size)
        self.states: list[State] = [State(i, "", float(initial_value), -1) for i in range(n_initial)]
        self.initial: set[int] = {s.id for s in self.states}
        self.next_id = n_initial
        self.n: dict[int, int] = {}
        self.m: dict[int, float] = {}
        self.T = 0

    # -- selection (sampler.py:471-527) ---------------------------------------------------------
    def scores(self) -> list[tuple[float, float, int]]:
        """(score, value, buffer index) of every state, best first."""
        vals = [s.value for s in self.states]
        later = [v for s, v in zip(self.states, vals) if s.id not in self.initial] or vals
        scale = max(max(later) - min(later), 1e-6)
        order = sorted(range(len(vals)), key=lambda i: -vals[i])     # rank 0 = best
        weights = [0.0] * len(vals)
        for rank, i in enumerate(order):
            weights[i] = float(len(vals) - rank)
        total = sum(weights)
        sqrt_t = math.sqrt(1.0 + self.T)
        rows = []
        for i, s in enumerate(self.states):
            n = self.n.get(s.id, 0)
            q = self.m.get(s.id, vals[i]) if n > 0 else vals[i]
            rows.append((q + self.c * scale * (weights[i] / total) * sqrt_t / (1.0 + n), vals[i], i))
        rows.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return rows

    def select(self, k: int = 1) -> list[State]:
        """The k start states for the next rollout groups."""
        rows = self.scores()
        if k <= 1:
            return [self.states[i] for _, _, i in rows[:k]]
        children: dict[int, set[int]] = {}
        for s in self.states:
            for p in s.parents:
                children.setdefault(p, set()).add(s.id)
        picked, blocked = [], set()
        for _, _, i in rows:
            s = self.states[i]
            if s.id in blocked:
                continue
            picked.append(s)
            blocked |= self._lineage(s, children)
            if len(picked) >= k:
                break
        return picked

    def _lineage(self, s: State, children: dict[int, set[int]]) -> set[int]:
        out, queue = {s.id, *s.parents}, [s.id]
        while queue:
            for c in children.get(queue.pop(0), ()):
                if c not in out:
                    out.add(c)
                    queue.append(c)
        return out

    # -- updates (sampler.py:529-583, 619-623) --------------------------------------------------
    def _visit(self, parent: State) -> None:
        for a in [parent.id, *parent.parents]:
            self.n[a] = self.n.get(a, 0) + 1
        self.T += 1

    def add(self, parent: State, text: str, value: float, timestep: int) -> State | None:
        """A valid child of `parent`: back up its value and visit, then archive it unless its text
        is already there. Returns the new state (None when a duplicate)."""
        self.m[parent.id] = max(self.m.get(parent.id, value), value)
        self._visit(parent)
        if any(s.text == text for s in self.states if s.text):
            return None
        child = State(self.next_id, text, float(value), timestep, [parent.id, *parent.parents],
                      [parent.value, *parent.parent_values])
        self.next_id += 1
        self.states.append(child)
        return child

    def failed(self, parent: State) -> None:
        """An invalid child of `parent`: a visit without a value."""
        self._visit(parent)

    def flush(self) -> None:
        """End of a step: the best topk_children per parent, then the best max_size states."""
        if self.topk_children > 0:
            roots, by_parent = [], {}
            for s in self.states:
                if s.parents:
                    by_parent.setdefault(s.parents[0], []).append(s)
                else:
                    roots.append(s)
            kept = []
            for kids in by_parent.values():
                kept += sorted(kids, key=lambda s: s.value, reverse=True)[:self.topk_children]
            self.states = roots + kept
        if len(self.states) > self.max_size:
            keep = {i for i, s in enumerate(self.states) if s.id in self.initial}
            # ascending, then reversed (np.argsort(v)[::-1], sampler.py:588): later wins a tie
            for i in sorted(range(len(self.states)), key=lambda i: self.states[i].value)[::-1]:
                if len(keep) >= self.max_size:
                    break
                keep.add(i)
            self.states = [self.states[i] for i in sorted(keep)]

    def best(self) -> State:
        return max(self.states, key=lambda s: s.value)

    # -- checkpoint state -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"c": self.c, "topk_children": self.topk_children, "max_size": self.max_size,
                "states": [asdict(s) for s in self.states], "initial": sorted(self.initial),
                "next_id": self.next_id, "n": [[k, v] for k, v in self.n.items()],
                "m": [[k, v] for k, v in self.m.items()], "T": self.T}

    @classmethod
    def from_dict(cls, d: dict) -> PUCTBuffer:
        b = cls(d["c"], d["topk_children"], d["max_size"], n_initial=0)
        b.states = [State(**s) for s in d["states"]]
        b.initial, b.next_id, b.T = set(d["initial"]), d["next_id"], d["T"]
        b.n = {int(k): int(v) for k, v in d["n"]}
        b.m = {int(k): float(v) for k, v in d["m"]}
        return b
