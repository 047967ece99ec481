"""Diverse verifier tree search (Beeching et al. 2024, search-and-learn's third strategy:
huggingface/search-and-learn@6f81cac src/sal/search/diverse_verifier_tree_search.py, "DV").

n/M independent subtrees (DV:46-62), each a greedy beam of width M: every iteration a subtree
samples M candidate next steps from one prefill (DV:97-99), the verifier scores each path with
its candidate (and lookahead rollout, DV:113-117), and the subtree keeps the best (np.argmax,
DV:119-126). A subtree stops when its chosen step is empty or did not stop at the blank line
(EOS, length; DV:127-132) or once its text holds "boxed{" (DV:135-137); the last iteration runs
to EOS. Its output is the M siblings of its last expansion (DV:139-159), so n solutions come
back; the answer is the best scored of them (DV:173-187).
"""

from __future__ import annotations

from ttx.tts.beam import TREE_KNOBS, StepSearch, _outcome
from ttx.tts.paths import Path, argmax, grow, look_ahead, rescore
from ttx.tts.search import Account, templated
from ttx.tts.strategy import register


@register
class DVTS(StepSearch):
    name = "dvts"
    rank = 9
    summary = ("Diverse verifier tree search: n/M independent subtrees, each a greedy beam of "
               "width M (search-and-learn).")
    knobs = ("agg",) + tuple(k for k in TREE_KNOBS if k not in ("filter_duplicates",
                                                                "sort_completed"))

    def run(self, engine, prompts, cfg):
        s, n, m = cfg.search, cfg.n, cfg.search.beam_width
        prefixes = [templated(engine, p, s) for p in prompts]
        accounts = [Account() for _ in prompts]
        inner, final = self.step_params(cfg, s.step_tokens or cfg.params.max_new_tokens)
        trees = [Path(problem=i) for i in range(len(prompts)) for _ in range(n // m)]
        siblings: list[list[Path]] = [[] for _ in trees]   # the last expansion of each subtree
        live = list(range(len(trees)))
        log: list[list[dict]] = [[] for _ in prompts]
        rounds = 0
        for it in range(s.max_steps):
            if not live:
                break
            last = it == s.max_steps - 1
            kids = grow(engine, prefixes, [trees[k] for k in live], [m] * len(live),
                        [final if last else inner] * len(live), cfg.params.seed, rounds,
                        accounts, last)
            rounds += 1
            if it == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            flat = [c for group in kids for c in group]
            if s.lookahead and not last:
                look_ahead(engine, prefixes, flat, s.lookahead, inner, cfg.params.seed, rounds,
                           accounts)
                rounds += s.lookahead
            rescore(self.scorer, prompts, flat, s.agg, self.construction(cfg),
                    rollout=True)                 # DV:113-117: with the rollout
            still = []
            for k, children in zip(live, kids):
                best = children[argmax([c.score(s.agg) for c in children])]
                siblings[k] = children
                trees[k] = best
                if not (best.completed or "boxed{" in best.text):
                    still.append(k)
            for i in range(len(prompts)):
                mine = [k for k in live if trees[k].problem == i]
                if mine:
                    log[i].append({"step": it + 1, "subtrees": len(mine),
                                   "stopped": sum(k not in still for k in mine)})
            live = still
        outcomes = []
        for i in range(len(prompts)):
            paths = [c for k, tree in enumerate(trees) if tree.problem == i for c in siblings[k]]
            traces = [p.trace(s.agg) for p in paths]
            scores = [t["score"] if t["score"] is not None else float("-inf") for t in traces]
            pred = traces[argmax(scores)]["pred"] if traces else None
            outcomes.append(_outcome(traces, pred, accounts[i], {"dvts": {
                "beam_width": m, "subtrees": n // m, "agg": s.agg, "iterations": log[i]}}))
        return outcomes
