"""DORA: direction-oriented resource allocation (Wang et al. 2025, arXiv 2506.15707).

Beam search whose n rollouts per iteration are split among the open paths by quality and
semantic uniqueness (the paper's eq. 10-13), as its code means it (WangXinglin/DORA@eda87c0
scripts/sal/search/dora.py; that file does not run as published: `all_cos_matrix` (line 302) is
never assigned and `choose_indices` is used (302) before it is set (310); we follow the evident
intent, the sub-matrix of the paths kept at 298):
  - every open path is a candidate (no top-n/M cut, dora.py:289);
  - quality q = softmax(r / tau) over the PRM scores r (dora.py:87-92, float64);
  - `--dora-rule code` (default): a path whose rounded share round(n q) is 0 is dropped first,
    and q is recomputed over the rest (dora.py:294-300); `paper`: no such step, eq. 10-13 over
    every open path (the same repository's compiled rebase_diverse module, lines 336-348);
  - uniqueness d_i = [rowsoftmax(S / alpha)]_ii over the cosine similarities S of the paths'
    embeddings (eq. 10-11; dora.py:302-303), S and the row-softmax cast to float32 as the code
    does (dora.py:58, 85);
  - rollouts B_i = round(n d_i q_i / sum_j d_j q_j) (eq. 12-13; dora.py:305-308), computed in
    float32 as the code computes it under NumPy 2's promotion (a float32 d_i times a Python
    float stays float32), summed in order, np.round (half to even): ties round as the code's do;
  - the next population is each path B_i times, refilled cyclically to n (dora.py:180-202).
A step is capped at --step-tokens (DORA's max_tokens_per_step, default 64 here) and a path at
--max-new-tokens (its max_tokens); before the last iteration a finished step (EOS, a --stop
string, empty, or the path's budget spent) whose token count equals the cap is dropped, whatever
ended it (dora.py:249-261; when no path completes at all, the best of those dropped answer rather
than none). The search stops once n paths completed (321-322); the answer is
search-and-learn's: of the first n completed paths (or the n best), the best scored.
Embeddings: the policy's mean-pooled last hidden states (hf engine), or --embedder PATH (DORA
uses BGE-M3, unavailable offline).
"""

from __future__ import annotations

from dataclasses import replace

from ttx.errors import TtxError
from ttx.tts.beam import TREE_KNOBS, StepSearch, _outcome, expand
from ttx.tts.paths import Path, argmax, cyclic, final_selection, rescore
from ttx.tts.search import Account, templated
from ttx.tts.strategy import register


def _quality(scores, tau: float):
    """softmax(r / tau) in float64 (dora.py:87-92)."""
    import numpy as np

    x = np.asarray(scores, dtype=np.float64) / tau
    x = np.exp(x - np.max(x))
    return x / np.sum(x)


def _similarity(embeddings):
    """Cosine similarities in float64, cast to float32 (dora.py:52-58), over every open path
    (dora.py:291): the kept paths' entries are read from this matrix (302)."""
    import numpy as np

    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms < 1e-12, 1e-12, norms)
    return np.dot(e, e.T).astype(np.float32)


def _uniqueness(similarity, alpha: float):
    """diag(rowsoftmax(S / alpha)): the softmax in float64, cast to float32 (dora.py:80-85,
    95-98)."""
    import numpy as np

    x = similarity.astype(np.float64) / alpha
    x = np.exp(x - np.max(x, axis=1, keepdims=True))
    return np.diag((x / x.sum(axis=1, keepdims=True)).astype(np.float32))


def _rollouts(d, q, n: int) -> list[int]:
    """round(n d q / sum(d q)) in float32 (dora.py:305-308): the product, its running sum (the
    builtin sum adds in order: cumsum, not numpy's pairwise sum), the share and n times it."""
    import numpy as np

    b = d.astype(np.float32) * np.asarray(q, dtype=np.float64).astype(np.float32)
    share = b / np.cumsum(b, dtype=np.float32)[-1]
    return [int(x) for x in np.round(share * np.float32(n))]


def dora_allocation(scores, embeddings, n: int, tau: float = 0.1, alpha: float = 0.01,
                    rule: str = "code") -> list[int]:
    """Rollouts per candidate (module docstring): 0 for the pruned ones."""
    import numpy as np

    kept = list(range(len(scores)))
    if rule == "code":                   # dora.py:294-300: zero shares dropped first
        first = np.round(_quality(scores, tau) * n)
        kept = [i for i in kept if int(first[i]) > 0]
    if not kept:
        return [0] * len(scores)
    q = _quality([scores[i] for i in kept], tau)
    d = _uniqueness(_similarity(embeddings)[np.ix_(kept, kept)], alpha)
    out = [0] * len(scores)
    for i, b in zip(kept, _rollouts(d, q, n)):
        out[i] = b
    return out


@register
class DORA(StepSearch):
    name = "dora"
    rank = 10
    summary = ("DORA: n rollouts per step split among all open paths by PRM quality x "
               "semantic uniqueness.")
    knobs = ("agg", "dora_tau", "dora_alpha", "dora_rule", "embedder") + tuple(
        k for k in TREE_KNOBS if k not in ("lookahead", "filter_duplicates"))

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        if engine == "openai" and not cfg.search.embedder:
            raise TtxError("dora on --engine openai needs --embedder PATH (a local embedding "
                           "model): the policy's hidden states are not reachable through a server")

    @classmethod
    def check_n(cls, n, search):
        """DORA allocates n rollouts freely: --beam-width does not constrain n."""

    def setup(self, engine):
        super().setup(engine)
        from ttx.tts.embed import make_embedder

        self.embed = make_embedder(engine, self.cfg.search.embedder)

    def run(self, engine, prompts, cfg):
        s, n = cfg.search, cfg.n
        prefixes = [templated(engine, p, s) for p in prompts]
        accounts = [Account() for _ in prompts]
        cap, total = s.step_tokens or 64, cfg.params.max_new_tokens
        inner, final = self.step_params(cfg, cap)
        population = [[Path(problem=i) for _ in range(n)] for i in range(len(prompts))]
        completed: list[list[Path]] = [[] for _ in prompts]
        runaways: list[list[Path]] = [[] for _ in prompts]   # the answer if nothing completes
        log: list[list[dict]] = [[] for _ in prompts]
        for it in range(s.max_steps):
            last = it == s.max_steps - 1
            population = [cyclic(p, n) if p and len(p) != n else p for p in population]
            beams = [b for group in population for b in group]
            if not beams:
                break
            by_budget: dict[int, list[int]] = {}
            for k, b in enumerate(beams):     # DORA utils.py:107-114: min(left, the step cap)
                left = max(1, total - b.tokens)
                by_budget.setdefault(left if last else min(cap, left), []).append(k)
            children: list[Path | None] = [None] * len(beams)
            for budget, ks in by_budget.items():
                params = replace(final if last else inner, max_new_tokens=budget)
                for k, child in zip(ks, expand(engine, prefixes, [beams[k] for k in ks], params,
                                               cfg.params.seed, it, accounts, last)):
                    children[k] = child
            if it == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            for child in children:
                child.completed = child.completed or child.tokens >= total
            scores = rescore(self.scorer, prompts, children, s.agg, self.construction(cfg))
            groups: list[list[tuple[Path, float]]] = [[] for _ in prompts]
            for child, score in zip(children, scores):
                groups[child.problem].append((child, score))
            for i, pairs in enumerate(groups):
                if not pairs:
                    continue
                dropped = 0
                for c, _ in pairs:
                    if not c.completed:
                        continue
                    runaway = not last and c.segment is not None and \
                        c.segment.completion_tokens == cap
                    if runaway:
                        dropped += 1             # dora.py:259-261: whatever ended the step
                        runaways[i].append(c)
                    else:
                        completed[i].append(c)
                open_ = [(c, sc) for c, sc in pairs if not c.completed]
                alloc = []
                if open_ and len(completed[i]) < n:
                    alloc = dora_allocation([sc for _, sc in open_],
                                            self.embed([c.text for c, _ in open_]).tolist(), n,
                                            s.dora_tau, s.dora_alpha, s.dora_rule)
                population[i] = [c for (c, _), k in zip(open_, alloc) for _ in range(k)]
                log[i].append({"step": it + 1, "candidates": len(open_),
                               "completed": len(completed[i]), "runaway": dropped,
                               "survivors": sum(k > 0 for k in alloc), "rollouts": alloc})
        outcomes = []
        for i in range(len(prompts)):
            chosen = (final_selection(completed[i], n, s.sort_completed, s.agg)
                      or final_selection(runaways[i], n, True, s.agg) or cyclic(population[i], n))
            traces = [b.trace(s.agg) for b in chosen]
            scores = [t["score"] if t["score"] is not None else float("-inf") for t in traces]
            pred = traces[argmax(scores)]["pred"] if traces else None
            outcomes.append(_outcome(traces, pred, accounts[i], {"dora": {
                "rule": s.dora_rule, "tau": s.dora_tau, "alpha": s.dora_alpha, "agg": s.agg,
                "iterations": log[i]}}))
        return outcomes
