"""The search tree of one beam / DORA record, rebuilt from what the record keeps.

A record keeps every complete beam as a trace with its `step_scores` (one per step, the path's
scores copied from its parent, so two traces with a common ancestor share the same leading
floats; a trace's `nodes`, where the search records them (tot), name the steps' nodes
instead) and the iteration log `iterations: [{step, candidates, survivors, rollouts}]`
(ttx.tts.beam.run_beam): iteration d expands `survivors` open beams of depth d-1, the k-th best
by path score getting rollouts[k] children at depth d.

The tree has one node per generated step: the root (the prompt) plus sum(rollouts) over the
iterations. Nodes on the path of a recorded trace are known (their step score is the trace's);
the others were pruned, or expanded without any descendant finishing, and the record keeps
neither their text nor their score. Which of those unknown beams a survivor was is not recorded
either: the rebuild hands the known survivors their rollout counts in rank order (the best path
score first) and gives the remaining counts to unknown open beams in the order they were made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _path_score(scores: Sequence[float], agg: str) -> float:
    """ttx.tts.beam.Beam.score: the path score the search ranked by."""
    if not scores:
        return -math.inf
    if agg == "min":
        return min(scores)
    if agg == "prod":
        return math.prod(scores)
    return scores[-1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _valid_log(iterations) -> bool:
    if not isinstance(iterations, list) or not iterations:
        return False
    for it in iterations:
        if not isinstance(it, dict) or not isinstance(it.get("rollouts"), list):
            return False
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in it["rollouts"]):
            return False
    return True


# The page draws at most this many nodes per tree, and this deep (an SVG column per step): a
# record is a few KB, and a log that claims more (`"rollouts": [1000000000]`) is not drawn.
MAX_NODES = 5000
MAX_DEPTH = 400


def search_tree(iterations, traces, agg: str = "last", tokens=None) -> dict | None:
    """{"nodes": [...], "consistent": bool, "note": str, "limited": bool} or None when the
    record holds no iteration log or no trace with step scores.

    Each node: {"parent": index or None, "depth": d, "score": the step score or None (not
    recorded), "path": the path score or None, "status": "root" | "complete" | "expanded" |
    "pruned", "trace": the trace's index for a complete beam, else None}. "expanded": chosen
    and given rollouts; "pruned": open but not chosen (or chosen with no rollouts). With
    `consistent` False the log and the traces disagree (a record of another shape): the nodes
    are then only the recorded paths. `limited`: the log claims more steps than the record can
    justify (each step is at least one of its `tokens`, the record's completion tokens) or
    than the page draws (MAX_NODES, MAX_DEPTH): the nodes are only the recorded paths, or none
    when those alone are too many.
    """
    if not _valid_log(iterations) or not isinstance(traces, list):
        return None
    paths = []
    for ti, t in enumerate(traces):
        s = t.get("step_scores") if isinstance(t, dict) else None
        if isinstance(s, list) and s and all(_is_number(x) for x in s):
            ids = t.get("nodes")            # tot: the path's node ids (equal values are common)
            ids = ids if isinstance(ids, list) and len(ids) == len(s) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids) else None
            paths.append((ti, [float(x) for x in s], ids))
    if not paths:
        return None
    steps = sum(len(s) for _, s, _ in paths)
    longest = max(len(s) for _, s, _ in paths)
    if steps >= MAX_NODES or longest > MAX_DEPTH:
        return {"nodes": [], "consistent": False, "limited": True,
                "note": f"the recorded paths alone are {steps} steps, up to {longest} deep: more "
                        f"than the page draws ({MAX_NODES} nodes, {MAX_DEPTH} deep)"}

    nodes: list[dict] = [{"parent": None, "depth": 0, "score": None, "path": None,
                          "status": "root", "trace": None}]
    index: dict[tuple, int] = {}                   # known internal nodes by (parent, score)
    children: dict[int, list[int]] = {0: []}
    at_depth: dict[int, list[int]] = {0: [0]}      # the recorded nodes of each depth

    def add(parent: int, depth: int, score, path, status: str, trace=None) -> int:
        nodes.append({"parent": parent, "depth": depth, "score": score, "path": path,
                      "status": status, "trace": trace})
        i = len(nodes) - 1
        children.setdefault(parent, []).append(i)
        children[i] = []
        return i

    for ti, s, ids in paths:                       # the recorded paths, one leaf per trace
        parent = 0
        for d in range(1, len(s)):
            key = (parent, s[d - 1] if ids is None else ("node", ids[d - 1]))
            if key not in index:
                index[key] = add(parent, d, s[d - 1], _path_score(s[:d], agg), "expanded")
                at_depth.setdefault(d, []).append(index[key])
            parent = index[key]
        at_depth.setdefault(len(s), []).append(add(parent, len(s), s[-1], _path_score(s, agg),
                                                   "complete", ti))

    known = len(nodes)
    depth_max = len(iterations)
    claimed = sum(sum(it["rollouts"]) for it in iterations)
    consistent, limited, note = True, False, ""
    if longest > depth_max:
        consistent, note = False, "a trace has more steps than the log has iterations"
    elif depth_max > MAX_DEPTH or claimed >= MAX_NODES:
        consistent, limited = False, True
        note = (f"the log lists {claimed} steps in {depth_max} iterations, more than the page "
                f"draws ({MAX_NODES} nodes, {MAX_DEPTH} deep)")
    elif _is_number(tokens) and claimed > tokens:
        consistent, limited = False, True
        note = (f"the log lists {claimed} generated steps, more than the record's {tokens:g} "
                "completion tokens (a step is at least one token)")
    unknown_open: dict[int, list[int]] = {0: []}   # unrecorded open nodes per depth, in order
    if consistent:
        for d, it in enumerate(iterations, start=1):
            alloc = it["rollouts"]
            parents = [i for i in at_depth.get(d - 1, [])
                       if nodes[i]["status"] in ("root", "expanded")]
            parents.sort(key=lambda i: -(nodes[i]["path"] if nodes[i]["path"] is not None
                                         else math.inf))
            slots = _assign(parents, [len(children[i]) for i in parents], alloc)
            if slots is None:
                consistent, note = False, f"iteration {d}: rollouts do not cover the recorded beams"
                break
            taken = set(slots.values())
            spare = [p for p in range(len(alloc)) if p not in taken]
            pool = unknown_open.get(d - 1, [])
            if len(spare) > len(pool):
                consistent = False
                note = f"iteration {d}: more survivors than open beams the log accounts for"
                break
            owner = dict(slots)
            for p, node in zip(spare, pool):
                owner[node] = p
            unknown_open[d] = []
            for node, p in sorted(owner.items(), key=lambda kv: kv[1]):
                if alloc[p] > 0:
                    nodes[node]["status"] = "expanded" if node else "root"
                for _ in range(alloc[p] - len(children[node])):
                    unknown_open[d].append(add(node, d, None, None, "pruned"))
        if consistent:
            open_at: dict[int, int] = {}
            for n in nodes:
                if n["status"] != "complete":
                    open_at[n["depth"]] = open_at.get(n["depth"], 0) + 1
            for d in range(1, depth_max):
                nxt = iterations[d]
                if isinstance(nxt.get("candidates"), int) and nxt["candidates"] != open_at.get(d, 0):
                    consistent = False
                    note = (f"iteration {d + 1} lists {nxt['candidates']} candidates; the tree has "
                            f"{open_at.get(d, 0)} open beams at depth {d}")
                    break
    if not consistent:
        nodes = nodes[:known]
    return {"nodes": nodes, "consistent": consistent, "note": note, "limited": limited}


def _assign(parents: list[int], need: list[int], alloc: list[int]) -> dict[int, int] | None:
    """Rank-ordered positions in `alloc` for the known parents (each needs alloc >= its known
    children); earliest fit keeps the order the search ranked them in. None if impossible."""
    out, p = {}, 0
    for j, (node, k) in enumerate(zip(parents, need)):
        left = len(parents) - j - 1
        while p < len(alloc) and alloc[p] < k:
            p += 1
        if p >= len(alloc) or len(alloc) - p - 1 < left:
            return None
        out[node] = p
        p += 1
    return out


def kept_tree(nodes, traces) -> dict | None:
    """The tree a record keeps whole (mcts: ttx.tts.mcts), in search_tree's node shape plus
    "visits" and "value": each node {"parent", "step", "value0" (its reward when made),
    "visits", "value" (its mean backed-up value), "terminal"}, a parent before its children.
    "score" is value0 and "path" the mean value; a node with children is "expanded", one where
    a path ended "complete" (its trace: the first path that ended there, the traces' "node"),
    as is a terminal one, the others "pruned" (made, never expanded). None when `nodes` is not such a list."""
    if not isinstance(nodes, list) or not nodes:
        return None
    if len(nodes) >= MAX_NODES:
        return {"nodes": [], "consistent": False, "limited": True,
                "note": f"the tree has {len(nodes)} nodes: more than the page draws ({MAX_NODES})"}
    ends: dict[int, int] = {}
    for ti, t in enumerate(traces if isinstance(traces, list) else []):
        k = t.get("node") if isinstance(t, dict) else None
        if isinstance(k, int) and not isinstance(k, bool):
            ends.setdefault(k, ti)
    out, parents = [], set()
    for i, nd in enumerate(nodes):
        p = nd.get("parent") if isinstance(nd, dict) else "bad"
        ok = (p is None) == (i == 0) and (p is None or (isinstance(p, int)
                                                        and not isinstance(p, bool) and 0 <= p < i))
        visits = nd.get("visits") if isinstance(nd, dict) else None
        if not ok or not (isinstance(visits, int) and not isinstance(visits, bool) and visits >= 0):
            return {"nodes": [], "consistent": False, "limited": False,
                    "note": f"node {i} has no valid parent or visit count"}
        depth = 0 if p is None else out[p]["depth"] + 1
        if depth > MAX_DEPTH:
            return {"nodes": [], "consistent": False, "limited": True,
                    "note": f"the tree is deeper than the page draws ({MAX_DEPTH})"}
        parents.add(p)
        out.append({"parent": p, "depth": depth,
                    "score": float(nd["value0"]) if _is_number(nd.get("value0")) else None,
                    "path": float(nd["value"]) if _is_number(nd.get("value")) else None,
                    "status": "root" if p is None else "complete"
                    if nd.get("terminal") is True or i in ends else "pruned",
                    "trace": ends.get(i), "visits": visits})
    for i in parents - {None, 0}:                   # a path cut short may end at an inner node
        out[i]["status"] = "expanded"
    for n in out:                                   # the page prints both or neither
        if n["score"] is None or n["path"] is None:
            n["score"] = n["path"] = None
    return {"nodes": out, "consistent": True, "note": "", "limited": False}
