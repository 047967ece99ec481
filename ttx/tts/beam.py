"""Step-level beam search (Snell et al. 2024, arXiv 2408.03314; search-and-learn) and DORA
(direction-oriented resource allocation, arXiv 2506.15707).

A step ends at a blank line or after --step-tokens tokens. Iteration 1 samples n first steps from
the prompt; each later iteration keeps the top n/M open beams by their aggregated step score
(--agg last|min|prod) and expands each M ways; the last iteration (--max-steps) runs to EOS. A
beam that ends (EOS, a --stop string, or the token budget) is complete and no longer expanded.
Generating one step for all beams of a chunk is one batched engine call (per-prompt trace counts).

DORA keeps the same n/M survivors but splits the n rollouts among them by
    w_i = softmax(r / tau)_i * diag(rowsoftmax(S / alpha))_i,   normalised,  rollouts = n w
with S the cosine similarity of the candidates' embeddings: a candidate with near-duplicates
shares its diversity weight with them (eq. 5-7 of the paper), so n rollouts go to directions
rather than to copies. Embeddings: the policy's mean-pooled last hidden states (hf engine), or
--embedder PATH.

Budget forcing inside steps: with --min-thinking-tokens a beam that ends early is continued with
the ignore string (at most --num-ignore times); with --max-thinking-tokens a beam cut at the
maximum gets the end-of-thinking text and "Final Answer:" and a short answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ttx.engines.base import Engine
from ttx.tts.search import STEP_SEPARATOR, Account, round_seed, templated


@dataclass
class Beam:
    problem: int
    text: str = ""
    steps: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)     # one per step
    tokens: int = 0                  # generated tokens along this path
    ignored: int = 0
    waiting: bool = False            # the ignore string was just appended: suppress EOS next
    open: bool = True
    finish_reason: str = "stop"
    forced_end: bool = False

    def score(self, agg: str) -> float:
        """The path score from step scores (search-and-learn's agg_strategy)."""
        if not self.scores:
            return -math.inf
        if agg == "last":
            return self.scores[-1]
        if agg == "min":
            return min(self.scores)
        return math.prod(self.scores)


def dora_allocation(scores, embeddings, n: int, tau: float = 0.1, alpha: float = 0.01) -> list[int]:
    """Rollouts per candidate, summing to n: softmax(r/tau) times the diversity weight
    diag(rowsoftmax(S/alpha)), S the cosine similarity of the embeddings (DORA, eq. 5-7)."""
    import torch

    r = torch.as_tensor(scores, dtype=torch.float64)
    quality = torch.softmax(r / tau, dim=0)
    e = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float64), dim=-1)
    similarity = e @ e.T
    diversity = torch.softmax(similarity / alpha, dim=1).diagonal()
    weights = quality * diversity
    weights = weights / weights.sum()
    return largest_remainder((weights * n).tolist(), n)


def largest_remainder(shares: list[float], n: int) -> list[int]:
    """Integers summing to n, each floor(share) plus one for the largest remainders (ties: first)."""
    counts = [int(math.floor(s)) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _even(k: int, n: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def run_beam(engine: Engine, prompts: list, cfg) -> list:
    """Beam search (or DORA) for a chunk of prompts; one batched engine call per iteration."""
    from ttx.tts.budget import BudgetForcing, Thought, continue_rounds
    from ttx.tts.reward import make_scorer
    from ttx.tts.strategies import Outcome

    s, params, n = cfg.search, cfg.params, cfg.n
    dora = cfg.strategy == "dora"
    scorer = make_scorer(engine, cfg)
    prefixes = [templated(engine, p, s) for p in prompts]
    budget = s.max_thinking_tokens or params.max_new_tokens
    forcing = BudgetForcing(engine, cfg)
    embed = None
    if dora:
        from ttx.tts.embed import make_embedder
        embed = make_embedder(engine, s.embedder)
    accounts = [Account() for _ in prompts]
    done: list[list[Beam]] = [[] for _ in prompts]
    active: list[list[Beam]] = [[Beam(problem=i)] for i in range(len(prompts))]
    log: list[list[dict]] = [[] for _ in prompts]
    base = replace(params, logprobs=params.logprobs or scorer.needs_logprobs)
    for it in range(s.max_steps):
        last = it == s.max_steps - 1
        parents, counts = [], []
        for i, beams in enumerate(active):
            if not beams:
                continue
            if it == 0:
                chosen, alloc = beams, [n]
            else:
                ranked = sorted(beams, key=lambda b: -b.score(s.agg))
                chosen = ranked[:max(1, n // s.beam_width)]          # the n/M survivors
                if dora and len(chosen) > 1:
                    alloc = dora_allocation([b.score(s.agg) for b in chosen],
                                            embed([b.text for b in chosen]), n,
                                            s.dora_tau, s.dora_alpha)
                else:
                    alloc = _even(len(chosen), n)                    # M each
            log[i].append({"step": it + 1, "candidates": len(beams), "survivors": len(chosen),
                           "rollouts": alloc})
            for b, k in zip(chosen, alloc):
                if k > 0:
                    parents.append(b)
                    counts.append(k)
        if not parents:
            break
        call = []
        for b in parents:
            left = budget - b.tokens
            wait_min = max(1, (s.min_thinking_tokens or 0) - b.tokens) if b.waiting else 0
            if last:
                call.append(replace(base, max_new_tokens=left, stop=tuple(params.stop),
                                    min_new_tokens=min(left, wait_min)))
            else:
                step = min(s.step_tokens, left)
                call.append(replace(base, max_new_tokens=step, min_new_tokens=min(step, wait_min),
                                    stop=(STEP_SEPARATOR,) + tuple(params.stop)))
        call = [replace(p, seed=round_seed(params.seed, it)) for p in call]
        gens = engine.generate([prefixes[b.problem] + b.text for b in parents], counts, call)
        children: list[Beam] = []
        step_traces = []
        segments: dict[int, list[int]] = {}
        prefill: dict[int, int] = {}
        for b, gen in zip(parents, gens):
            if it == 0:
                accounts[b.problem].prompt_tokens = gen.prompt_tokens
            prefill[b.problem] = prefill.get(b.problem, 0) + gen.prompt_tokens
            for trace in gen.traces:
                child = Beam(problem=b.problem, text=b.text + trace.text, steps=b.steps + [trace.text],
                             scores=list(b.scores), tokens=b.tokens + trace.completion_tokens,
                             ignored=b.ignored, finish_reason=trace.finish_reason)
                step_traces.append(trace)
                segments.setdefault(b.problem, []).append(trace.completion_tokens)
                if trace.stop_string == STEP_SEPARATOR:
                    child.text += STEP_SEPARATOR
                elif trace.finish_reason == "stop" and trace.stop_string is None:   # EOS
                    early = s.min_thinking_tokens is not None and child.tokens < s.min_thinking_tokens
                    if early and child.ignored < s.num_ignore and child.tokens < budget \
                            and not last:
                        child.ignored += 1       # budget forcing inside the beam: "Wait"
                        child.waiting = True
                        child.text += ("" if child.text[-1:].isspace() or not child.text
                                       else " ") + s.ignore_str
                    else:
                        child.open = False
                elif trace.finish_reason == "stop":        # the user's own stop string
                    child.open = False
                if child.tokens >= budget or (last and child.open):
                    child.open = False
                    child.forced_end = s.max_thinking_tokens is not None and \
                        trace.finish_reason == "length"
                children.append(child)
        for problem, tokens in segments.items():
            accounts[problem].add(tokens, prefill[problem])
        for child, value in zip(children, scorer.score_steps(prompts, children, step_traces)):
            child.scores.append(value)
        active = [[] for _ in prompts]
        for child in children:
            (active if child.open else done)[child.problem].append(child)
        if not any(active):
            break
    for i, beams in enumerate(active):          # max_steps ran out with beams still open
        done[i].extend(beams)
    forced = [b for beams in done for b in beams if b.forced_end]
    if forced:                                   # s1: end the thinking, ask for the answer
        thoughts = [Thought(problem=b.problem, text=b.text, thinking_tokens=b.tokens)
                    for b in forced]
        for t in thoughts:
            forcing.force_end(t)
        continue_rounds(engine, forcing, prefixes, thoughts, accounts, params.seed,
                        first_round=s.max_steps + 1)
        for b, t in zip(forced, thoughts):
            b.text, b.tokens, b.finish_reason = t.text, t.thinking_tokens + t.answer_tokens, \
                t.finish_reason
    outcomes = []
    for i, beams in enumerate(done):
        traces = [_trace(b, s.agg) for b in beams]
        best = max(traces, key=lambda t: t["score"], default=None)   # ties: the earliest beam
        outcomes.append(Outcome(traces=traces, pred=best["pred"] if best else None,
                                completion_tokens=accounts[i].completion,
                                sequential_tokens=accounts[i].sequential,
                                prompt_tokens=accounts[i].prompt_tokens,
                                extra={cfg.strategy: {"beam_width": s.beam_width, "agg": s.agg,
                                                      "iterations": log[i]},
                                       **accounts[i].extra()}))
    return outcomes


def _trace(b: Beam, agg: str) -> dict:
    from ttx.tts.search import trace_record

    score = b.score(agg)
    return trace_record(b.text, b.tokens, b.finish_reason,
                        score=None if score == -math.inf else score, step_scores=b.scores,
                        steps=len(b.steps), ignored=b.ignored, forced_end=b.forced_end)
