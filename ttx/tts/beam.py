"""Step-level beam search (Snell et al. 2024, arXiv 2408.03314), in two styles.

`--beam-style search-and-learn` (the default with --reward-model) is search-and-learn's
beam_search.py (huggingface/search-and-learn@6f81cac src/sal/search/beam_search.py, "BS"):
  - n beams; every iteration each active beam gets one new step (BS:112-114) after the active
    beams are copied back up to n in order, cyclically (BS:71-84);
  - a step that did not stop at the blank line (EOS, length) or is empty completes its beam
    (BS:125-131); the last iteration runs to EOS (BS:86-93);
  - the reward model rescores every active path whole, every iteration (BS:135-143), its step
    scores aggregated by --agg;
  - --filter-duplicates keeps the first beam of each text (BS:155-165); the n // M best open
    beams survive (numpy argsort, BS:167-174): any n runs (n < M: the slice [-0:], all of them);
  - the answer: of the first n completed beams (--sort-completed: the n best), refilled
    cyclically to n (BS:176-197), the best scored (np.argmax, the first maximum).
  --lookahead K rolls each new step K greedy steps further (search-and-learn's generate_k_steps,
  utils.py:80-158). --lookahead-scoring path (the default) is beam_search.py's rule: the rollout
  is generated but the PRM scores current_text alone (BS:133-135); `rollout` scores the path with
  its rollout, the lookahead search of Snell et al. (section 5.2) and search-and-learn's DVTS. A
  step's cap is --step-tokens, by default the whole --max-new-tokens, as its max_tokens.

`--beam-style ttx` (the default with the policy's own scores): iteration 1 samples n first steps;
each later one keeps the n/M best open beams and expands each M ways (survivors in score order);
a step ends at a blank line or after --step-tokens (default 64) and a path at --max-new-tokens;
every completed beam is a candidate and the best scored one answers. With --min-thinking-tokens
a beam that ends early is continued with the ignore string; with --max-thinking-tokens a beam cut
at the maximum gets "Final Answer:" and a short answer (budget forcing's ttx style).
"""

from __future__ import annotations

from dataclasses import replace

from ttx.errors import TtxError
from ttx.tts.paths import Path, argmax, cyclic, final_selection, grow, look_ahead, rescore
from ttx.tts.sampling import REWARD_KNOBS
from ttx.tts.search import STEP_SEPARATOR, Account, templated
from ttx.tts.strategy import Outcome, Strategy, register

TREE_KNOBS = ("beam_width", "step_tokens", "max_steps", "lookahead", "filter_duplicates",
              "sort_completed") + REWARD_KNOBS


class StepSearch(Strategy):
    """What beam, dvts and dora share: a scorer loaded once, n a multiple of M, step params."""

    scored = True
    continues = True

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        s = cfg.search
        cls.check_n(cfg.n, s)
        if s.lookahead and not s.reward_model:
            raise TtxError("--lookahead scores a greedy rollout past each step, which needs "
                           "--reward-model (the policy's own score has no rollout to read)")
        if cfg.scorer == "self-certainty" and engine == "openai" and not s.reward_model:
            raise TtxError("--scorer self-certainty needs the full token distribution, which a "
                           "server does not return: use --scorer logprob with --engine openai")

    @classmethod
    def check_n(cls, n: int, search) -> None:
        m = search.beam_width
        if n < m or n % m:
            raise TtxError(f"{cls.name}: --n {n} must be a multiple of --beam-width {m} "
                           "(n beams, n/M kept, each expanded M ways)")

    @classmethod
    def at_level(cls, cfg, key, value):
        if key == "n":
            cls.check_n(value, cfg.search)
        return super().at_level(cfg, key, value)

    @classmethod
    def default_prm_input(cls, cfg) -> str:
        """How PRM inputs are built unless --prm-input (or ttx_reward.json) says: dvts and
        dora score with search-and-learn's PRM classes (DORA's copy of them is the same)."""
        return "search-and-learn"

    def setup(self, engine):
        from ttx.tts.reward import make_scorer

        self.scorer = make_scorer(engine, self.cfg, self.default_prm_input(self.cfg))

    def construction(self, cfg) -> str:
        """The PRM input construction in force: the reward model's own choice, else the
        option's, else this strategy's default."""
        return (getattr(self.scorer, "prm_input", None) or cfg.search.prm_input
                or self.default_prm_input(cfg))

    def close(self):
        self.stats.update(self.scorer.stats())
        self.scorer.close()

    def step_params(self, cfg, cap: int):
        """(params of an inner step, params of the last step to EOS)."""
        base = replace(cfg.params, logprobs=cfg.params.logprobs or self.scorer.needs_logprobs,
                       max_new_tokens=cap)
        return (replace(base, stop=(STEP_SEPARATOR,) + tuple(cfg.params.stop)),
                replace(base, stop=tuple(cfg.params.stop)))

    @classmethod
    def aggregate(cls, record, preds, invalid):
        """The best-scored trace's answer (np.argmax: the first maximum)."""
        traces = record["traces"]
        scores = [t.get("score") if t.get("score") is not None else float("-inf") for t in traces]
        return preds[argmax(scores)] if traces else None


def expand(engine, prefixes, beams: list[Path], params, seed, it, accounts, last) -> list[Path]:
    """One step for every beam; beams with the same text share one prefill (their samples are
    drawn together), and each beam gets its own child, in the beams' order."""
    groups: dict[tuple[int, str], list[int]] = {}
    for k, b in enumerate(beams):
        groups.setdefault((b.problem, b.text), []).append(k)
    parents = [beams[ks[0]] for ks in groups.values()]
    counts = [len(ks) for ks in groups.values()]
    kids = grow(engine, prefixes, parents, counts, [params] * len(parents), seed, it, accounts,
                last)
    out: list[Path | None] = [None] * len(beams)
    for ks, children in zip(groups.values(), kids):
        for k, child in zip(ks, children):
            out[k] = child
    return out


@register
class Beam(StepSearch):
    name = "beam"
    rank = 8
    summary = ("Step-level beam search: n beams, the n/M best by a PRM (or the policy) "
               "continue (search-and-learn, or ttx's expansion).")
    knobs = ("beam_style", "agg", "lookahead_scoring") + TREE_KNOBS + (
        "min_thinking_tokens", "max_thinking_tokens", "num_ignore", "ignore_str", "think_end",
        "answer_tokens")

    @classmethod
    def style(cls, search) -> str:
        return search.beam_style or ("search-and-learn" if search.reward_model else "ttx")

    @classmethod
    def default_prm_input(cls, cfg) -> str:
        return "search-and-learn" if cls.style(cfg.search) == "search-and-learn" else "model-card"

    @classmethod
    def check_n(cls, n, search):
        """search-and-learn runs any n: it keeps the n // M best open beams (BS:167-170; with
        n < M that slice is [-0:], every open beam) and refills them cyclically to n."""
        if cls.style(search) != "search-and-learn":
            super().check_n(n, search)

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        if "lookahead_scoring" in given and not cfg.search.lookahead:
            raise TtxError("--lookahead-scoring says how a --lookahead rollout is scored: it "
                           "needs --lookahead K")
        sal_only = given & {"lookahead", "lookahead_scoring", "filter_duplicates",
                            "sort_completed"}
        thinking = given & {"min_thinking_tokens", "max_thinking_tokens", "num_ignore",
                            "ignore_str", "think_end", "answer_tokens"}
        style = cls.style(cfg.search)
        if style == "ttx" and sal_only:
            raise TtxError(f"{', '.join('--' + k.replace('_', '-') for k in sorted(sal_only))} "
                           "applies to --beam-style search-and-learn")
        if style == "search-and-learn" and thinking:
            raise TtxError(f"{', '.join('--' + k.replace('_', '-') for k in sorted(thinking))} "
                           "(budget forcing inside beams) applies to --beam-style ttx")

    def run(self, engine, prompts, cfg):
        if self.style(cfg.search) == "search-and-learn":
            return self._search_and_learn(engine, prompts, cfg)
        return self._ttx(engine, prompts, cfg)

    # ------------------------------------------------------------------ search-and-learn
    def _search_and_learn(self, engine, prompts, cfg):
        import numpy as np

        s, n, m = cfg.search, cfg.n, cfg.search.beam_width
        prefixes = [templated(engine, p, s) for p in prompts]
        accounts = [Account() for _ in prompts]
        inner, final = self.step_params(cfg, s.step_tokens or cfg.params.max_new_tokens)
        active = [[Path(problem=i) for _ in range(n)] for i in range(len(prompts))]
        completed: list[list[Path]] = [[] for _ in prompts]
        log: list[list[dict]] = [[] for _ in prompts]
        rounds = 0
        for it in range(s.max_steps):
            last = it == s.max_steps - 1
            active = [cyclic(beams, n) if beams and len(beams) != n else beams
                      for beams in active]
            beams = [b for group in active for b in group]
            if not beams:
                break
            children = expand(engine, prefixes, beams, final if last else inner,
                              cfg.params.seed, rounds, accounts, last)
            rounds += 1
            if it == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            if s.lookahead and not last:      # BS:111-114: generated either way
                look_ahead(engine, prefixes, children, s.lookahead, inner, cfg.params.seed,
                           rounds, accounts)
                rounds += s.lookahead
            # BS:133-135 scores current_text alone; `rollout` reads the rollout too
            scores = rescore(self.scorer, prompts, children, s.agg, self.construction(cfg),
                             rollout=s.lookahead_scoring == "rollout")
            by_problem: list[list[tuple[Path, float]]] = [[] for _ in prompts]
            for child, score in zip(children, scores):
                by_problem[child.problem].append((child, score))
            for i, pairs in enumerate(by_problem):
                if not pairs:
                    continue
                completed[i] += [c for c, _ in pairs if c.completed]
                open_ = [(c, sc) for c, sc in pairs if not c.completed]
                if s.filter_duplicates:
                    seen: dict[str, int] = {}
                    for k, (c, _) in enumerate(open_):
                        seen.setdefault(c.text, k)
                    open_ = [open_[k] for k in seen.values()]
                keep = set(np.argsort(np.array([sc for _, sc in open_], dtype=float))[-(n // m):]
                           .tolist()) if open_ else set()
                active[i] = [c for k, (c, _) in enumerate(open_) if k in keep]
                log[i].append({"step": it + 1, "beams": len(pairs),
                               "completed": len(pairs) - len(open_), "candidates": len(open_),
                               "survivors": len(active[i])})
        look = {"lookahead": s.lookahead, "lookahead_scoring": s.lookahead_scoring} \
            if s.lookahead else {}
        outcomes = []
        for i in range(len(prompts)):
            chosen = final_selection(completed[i], n, s.sort_completed, s.agg) or \
                cyclic(active[i], n)
            traces = [b.trace(s.agg) for b in chosen]
            best = argmax([t["score"] if t["score"] is not None else float("-inf")
                           for t in traces]) if traces else None
            outcomes.append(_outcome(traces, None if best is None else traces[best]["pred"],
                                     accounts[i], {"beam": {
                                         "style": "search-and-learn", "beam_width": m,
                                         "agg": s.agg, **look, "iterations": log[i]}}))
        return outcomes

    # ------------------------------------------------------------------ ttx
    def _ttx(self, engine, prompts, cfg):
        from ttx.tts.budget import Thought, TtxRules, continue_rounds

        s, params, n = cfg.search, cfg.params, cfg.n
        prefixes = [templated(engine, p, s) for p in prompts]
        budget = s.max_thinking_tokens or params.max_new_tokens
        cap = s.step_tokens or 64
        rules = TtxRules(engine, cfg)
        accounts = [Account() for _ in prompts]
        done: list[list[Path]] = [[] for _ in prompts]
        active: list[list[Path]] = [[Path(problem=i)] for i in range(len(prompts))]
        log: list[list[dict]] = [[] for _ in prompts]
        base = replace(params, logprobs=params.logprobs or self.scorer.needs_logprobs)
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
                    alloc = [n // len(chosen) + (1 if k < n % len(chosen) else 0)
                             for k in range(len(chosen))]               # M each
                log[i].append({"step": it + 1, "candidates": len(beams), "survivors": len(chosen),
                               "rollouts": alloc})
                parents += chosen
                counts += alloc
            if not parents:
                break
            call = []
            for b in parents:
                left = budget - b.tokens
                wait_min = max(1, (s.min_thinking_tokens or 0) - b.tokens) if b.waiting else 0
                step = left if last else min(cap, left)
                call.append(replace(base, max_new_tokens=step, min_new_tokens=min(step, wait_min),
                                    stop=tuple(params.stop) if last
                                    else (STEP_SEPARATOR,) + tuple(params.stop)))
            kids = grow(engine, prefixes, parents, counts, call, params.seed, it, accounts, last)
            if it == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            children = [c for group in kids for c in group]
            for child in children:
                trace = child.segment
                child.waiting = False
                if trace.stop_string == STEP_SEPARATOR:
                    child.completed = last
                elif trace.finish_reason == "stop" and trace.stop_string is None:   # EOS
                    early = s.min_thinking_tokens is not None and child.tokens < s.min_thinking_tokens
                    if early and child.ignored < s.num_ignore and child.tokens < budget and not last:
                        child.ignored += 1       # budget forcing inside the beam: "Wait"
                        child.waiting = True
                        child.completed = False
                        child.text += ("" if child.text[-1:].isspace() or not child.text
                                       else " ") + s.ignore_str
                    else:
                        child.completed = True
                elif trace.finish_reason == "stop":        # the user's own stop string
                    child.completed = True
                else:                                      # the step's cap: still open
                    child.completed = last
                if child.tokens >= budget or (last and not child.completed):
                    child.completed = True
                if child.completed:
                    child.forced_end = s.max_thinking_tokens is not None and \
                        trace.finish_reason == "length"
            rescore(self.scorer, prompts, children, s.agg, self.construction(cfg))
            active = [[] for _ in prompts]
            for child in children:
                (done if child.completed else active)[child.problem].append(child)
            if not any(active):
                break
        for i, beams in enumerate(active):          # max_steps ran out with beams still open
            done[i].extend(beams)
        forced = [b for beams in done for b in beams if b.forced_end]
        if forced:                                   # s1: end the thinking, ask for the answer
            thoughts = [Thought(problem=b.problem, text=b.text, thinking_tokens=b.tokens,
                                generated=b.tokens) for b in forced]
            for t in thoughts:
                rules.force_end(t)
            continue_rounds(engine, rules, prefixes, thoughts, accounts, params.seed,
                            first_round=s.max_steps + 1)
            for b, t in zip(forced, thoughts):
                b.text, b.tokens, b.finish_reason = t.text, t.generated, t.finish_reason
        outcomes = []
        for i, beams in enumerate(done):
            traces = [b.trace(s.agg, ignored=b.ignored, forced_end=b.forced_end) for b in beams]
            scores = [t["score"] if t["score"] is not None else float("-inf") for t in traces]
            pred = traces[argmax(scores)]["pred"] if traces else None
            outcomes.append(_outcome(traces, pred, accounts[i], {"beam": {
                "style": "ttx", "beam_width": s.beam_width, "agg": s.agg,
                "iterations": log[i]}}))
        return outcomes


def _outcome(traces: list[dict], pred, account: Account, extra: dict) -> Outcome:
    return Outcome(traces=traces, pred=pred, completion_tokens=account.completion,
                   sequential_tokens=account.sequential, prompt_tokens=account.prompt_tokens,
                   extra={**extra, **account.extra()})
