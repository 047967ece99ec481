"""Monte Carlo tree search over reasoning steps: openr's vanila_mcts (openreasoner/openr@54ae004,
reason/guided_search/tree.py, "T" below; envs/base_env.py, "E"; reason/evaluation/, "EV").

A node is a step (ending at the blank line, as ttx's beam defines steps); the root is the prompt.
--n paths ("num_path", EV evaluate.py:203-211) are walked from the root, one after the other:
  - selection (T:355-367): the child with the highest PUCT score (T:759-778)
        value(child) + prior(child) * sqrt(N(parent)) / (N(child) + 1)
                     * (c_puct + log((N(parent) + c_base + 1) / c_base)),
    the first maximum in the order the children were made; an unvisited parent has
    sqrt(0) = 0, so the walk below a new node is greedy by value (select_by_prior False);
  - expansion (T:381-382, T:649-757, E:194-254): a node reached that is not finished gets
    --mcts-width sampled steps from one prefill; steps cut off by the token cap, empty ones and
    repeats are dropped (E:211-229); if none is left the call is tried again, three times in all
    (E:160-177), and then the path ends there. A child's prior is its exp(mean token log-prob)
    normalised over its siblings (E:236-239); its value is the reward model's score of the path
    through it (init_critic_value: PRM "last", T:712-714; here --agg, default last), or without
    --reward-model the policy's own step score;
  - a path ends at a step that did not stop at the blank line (EOS or a --stop string: terminal,
    E:216 and E:272-282), at --mcts-depth steps (truncated, E:284), or where expansion failed;
  - backup (T:386-394, T:81-90 play_with_bot_mode): the ended node's value (its mean if visited,
    else its initial value) is added to every node on the path, the root included.
Each path is a trace (its text, its value, the PRM's step scores of the whole path, as EV
evaluator.py:136-164 rescores them). The answer, as openr's reranking (reason/reranking/
vote_utils.py): `majority` (MAJORITY_VOTE, :13-16; ttx's vote with --invalid-votes), `max` (the
best path score, PRM_*_MAX, :34-43) or `vote` (path scores summed per answer, PRM_*_VOTE, :46-53).

Batching: every problem walks its own tree; each engine call expands one node of each problem
whose walk needs one, so a round's sequential tokens are the longest step of that call.
What ttx does differently: the step text is kept as generated (openr strips a final step and
appends the separator, envs/MATH/env.py post_process_act), no Dirichlet noise is added
(vanila_mcts adds none; T:291-292 is get_next_action's), and the root's steps are sampled once
(openr samples them twice, in the Env's constructor and again in vanila_mcts' reset, T:338, and
keeps the second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ttx.scoring.answers import majority_vote
from ttx.tts.beam import StepSearch, _outcome
from ttx.tts.paths import Path, grow, rescore
from ttx.tts.sampling import REWARD_KNOBS, best_of
from ttx.tts.search import STEP_SEPARATOR, Account, templated
from ttx.tts.strategy import register

TRIES = 3               # E:141-151, E:162-177: legal actions asked for three times at most


@dataclass
class Node:
    parent: int | None
    path: Path
    prior: float = 1.0
    value0: float = 0.0               # initial_value: the reward when the node was made
    visits: int = 0
    total: float = 0.0
    terminal: bool = False
    children: list[int] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.path.steps)

    @property
    def value(self) -> float:
        """T:51-62: the initial value until visited, then the mean backed-up value."""
        return self.value0 if self.visits == 0 else self.total / self.visits


def puct(parent: Node, child: Node, c_puct: float, c_base: float) -> float:
    """T:759-778."""
    c = math.log((parent.visits + c_base + 1) / c_base) + c_puct
    c *= math.sqrt(parent.visits) / (child.visits + 1)
    return c * child.prior + child.value


def select(nodes: list[Node], at: int, c_puct: float, c_base: float) -> int:
    """T:609-637: the first child with the highest score (strict >)."""
    best, score = None, -9999999.0
    for k in nodes[at].children:
        s = puct(nodes[at], nodes[k], c_puct, c_base)
        if s > score:
            best, score = k, s
    return at if best is None else best


def legal(children: list[Path]) -> list[Path]:
    """E:211-229: steps that stopped (EOS, a stop string or the blank line), non-empty, each
    text once. The key is openr's processed action: a final step stripped, the separator added."""
    seen, out = set(), []
    for c in children:
        trace = c.segment
        ended_at_sep = trace.stop_string == STEP_SEPARATOR
        key = c.steps[-1] if ended_at_sep else c.steps[-1].strip() + STEP_SEPARATOR
        if trace.finish_reason == "stop" and key and key not in seen:
            seen.add(key)
            c.completed = not ended_at_sep
            out.append(c)
    return out


def priors(children: list[Path]) -> list[float]:
    """E:236-239: exp(mean token log-prob) of each step, normalised over the siblings."""
    raw = []
    for c in children:
        lp = c.segment.logprobs or []
        raw.append(math.exp(sum(lp) / len(lp)) if lp else 1.0)
    total = sum(raw)
    return [r / total for r in raw]


def walk(tree: list[Node], n: int, depth: int, c_puct: float, c_base: float, log: list):
    """One problem's search (T:330-409), as a generator: it yields the node it needs expanded
    and is sent back that node's legal children (a list of (Path, value, prior)), or [] when
    the engine gave none. Appends each path's record to `log`."""
    if not (yield from _expand(tree, 0)):              # the root first (T:340-343); openr
        return                                         # raises ResetException (E:149-151)
    for k in range(n):
        at, visited = 0, [0]
        while True:
            at = select(tree, at, c_puct, c_base)
            visited.append(at)
            node = tree[at]
            if node.terminal or node.depth >= depth:   # E:272-284: terminated or truncated
                break
            if not node.children and not (yield from _expand(tree, at)):   # T:375-382
                break                                  # E:170-175: no step, the path ends
        leaf = tree[at]
        value = leaf.value                             # T:386-393 (init_critic_value)
        for i in visited:                              # T:394, T:81-90
            tree[i].visits += 1
            tree[i].total += value
        log.append({"path": k + 1, "nodes": visited, "value": value})


def _expand(tree: list[Node], at: int):
    """Ask for the node's children up to TRIES times (E:160-177); True once it has some."""
    for _ in range(TRIES):
        kids = yield at
        if kids:
            for path, value, prior in kids:
                tree.append(Node(parent=at, path=path, prior=prior, value0=value,
                                 terminal=path.completed))
                tree[at].children.append(len(tree) - 1)
            return True
    return False


@register
class MCTS(StepSearch):
    name = "mcts"
    rank = 13
    summary = ("Monte Carlo tree search over steps: --n paths by PUCT, values from a PRM (or "
               "the policy), the answer voted or best-valued (openr's vanila_mcts).")
    knobs = ("mcts_width", "mcts_depth", "mcts_c_puct", "mcts_c_base", "mcts_answer",
             "step_tokens") + REWARD_KNOBS

    @classmethod
    def check_n(cls, n, search):
        """--n is the number of paths (openr's num_path): any positive n."""

    @classmethod
    def default_prm_input(cls, cfg) -> str:
        return "model-card"

    @classmethod
    def rows(cls, cfg) -> int:
        return cfg.search.mcts_width

    def run(self, engine, prompts, cfg):
        s = cfg.search
        prefixes = [templated(engine, p, s) for p in prompts]
        accounts = [Account() for _ in prompts]
        inner, _ = self.step_params(cfg, s.step_tokens or cfg.params.max_new_tokens)
        inner = replace(inner, logprobs=True)          # the priors need them (E:205, :236)
        trees = [[Node(parent=None, path=Path(problem=i))] for i in range(len(prompts))]
        logs: list[list[dict]] = [[] for _ in prompts]
        walks = [walk(t, cfg.n, s.mcts_depth, s.mcts_c_puct, s.mcts_c_base, lg)
                 for t, lg in zip(trees, logs)]
        pending: dict[int, int] = {}
        for i, w in enumerate(walks):
            pending[i] = next(w)
        rounds = 0
        while pending:
            order = list(pending)
            parents = [trees[i][pending[i]].path for i in order]
            kids = grow(engine, prefixes, parents, [s.mcts_width] * len(order),
                        [inner] * len(order), cfg.params.seed, rounds, accounts, False)
            if rounds == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            rounds += 1
            kept = [legal(children) for children in kids]
            flat = [c for group in kept for c in group]
            if flat:
                rescore(self.scorer, prompts, flat, s.agg, self.construction(cfg))
            for i, children in zip(order, kept):
                answer = [(c, _value(c, s.agg), p) for c, p in zip(children, priors(children))]
                try:
                    pending[i] = walks[i].send(answer)
                except StopIteration:
                    del pending[i]
        return [self._outcome(trees[i], logs[i], accounts[i], cfg) for i in range(len(prompts))]

    def _outcome(self, tree: list[Node], log: list[dict], account: Account, cfg):
        s = cfg.search
        traces = []
        for entry in log:
            leaf = tree[entry["nodes"][-1]]
            ended = "final" if leaf.terminal else "depth" if leaf.depth >= s.mcts_depth \
                else "no-step"
            traces.append(leaf.path.trace(s.agg, value=entry["value"], node=entry["nodes"][-1],
                                          ended=ended))
        info = {"answer": s.mcts_answer, "agg": s.agg, "width": s.mcts_width,
                "depth": s.mcts_depth, "c_puct": s.mcts_c_puct, "c_base": s.mcts_c_base,
                "nodes": [_node_record(nd) for nd in tree],
                "paths": [{"nodes": e["nodes"], "value": e["value"]} for e in log]}
        pred = answer_of(traces, s.mcts_answer, cfg.invalid_votes)
        return _outcome(traces, pred, account, {"mcts": info})

    @classmethod
    def aggregate(cls, record, preds, invalid):
        info = record.get("mcts") or {}
        traces = [{**t, "pred": p} for t, p in zip(record["traces"], preds)]
        return answer_of(traces, info.get("answer", "majority"), invalid)


def _value(path: Path, agg: str) -> float:
    """T:690-714: the last PRM score (here --agg), 0.0 when the PRM gave none (T:705-711)."""
    v = path.score(agg)
    return 0.0 if v == -math.inf else v


def _node_record(nd: Node) -> dict:
    return {"parent": nd.parent, "step": nd.path.steps[-1] if nd.path.steps else None,
            "prior": nd.prior, "value0": nd.value0, "visits": nd.visits, "value": nd.value,
            "terminal": nd.terminal}


def answer_of(traces: list[dict], rule: str, invalid: str):
    """openr's reranking (reason/reranking/vote_utils.py)."""
    if rule == "majority":
        return majority_vote([t.get("pred") for t in traces], invalid)
    return best_of(traces, rule == "vote", float)
