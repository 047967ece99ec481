"""Particle filtering and particle Gibbs (Puri et al. 2025, arXiv 2502.01618), as its_hub's
ParticleGibbs (Red-Hat-AI-Innovation-Team/its_hub@e4d00d1 its_hub/algorithms/particle_gibbs.py,
"PG" below); the softmax temperature is the paper's own code's (probabilistic-inference-scaling
@f75d461 src/sal/search/particle_gibbs.py, "PIS").

A particle is a partial solution grown one step at a time (a step ends at a blank line, as beam's).
Every iteration, each unstopped particle gets one new step and its whole path is scored (PG:98-172:
a stopped particle is neither extended nor rescored); its log weight is the inverse sigmoid of that
score (PG:52-56, clipped to [1e-7, 1 - 1e-7]), the scores of a path's steps aggregated by --agg
(a path with no step to score, an empty one, weighs as score 0).
Then --n less the reference particles are drawn, with replacement, from all particles (stopped
ones included, with their final weight) by softmax(log weight / --pf-temperature) (PG:207-221,
PIS:310; random.choices); a drawn reference particle longer than the iteration is cut back to it
and runs on (PG:229-236); the reference particles are appended unchanged (PG:238-239). A sweep ends
once every particle has stopped (PG:203), after that last draw. A particle stops when its step did
not end at the blank line (EOS, a --stop string, the step's cap) or was empty, or at --max-steps,
whose step runs to EOS (beam's rule; its_hub's StepGeneration cuts there instead).

particle-gibbs runs --pg-sweeps sweeps; after each, --pg-ref-particles particles are drawn by the
same softmax of their final log weights (PG:241-247) and kept, unchanged, in the next sweep.
The answer (PG:256-264): the last sweep's particle with the highest final log weight (argmax, the
first maximum) or, with --pf-select sample, one drawn by the weights of the reference draw.

The draws come from one random.Random per problem, seeded by --seed and the problem's prompt.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ttx.errors import TtxError
from ttx.scoring.answers import extract_answer
from ttx.tts.beam import StepSearch, _outcome, expand
from ttx.tts.paths import Path, argmax, rescore
from ttx.tts.sampling import REWARD_KNOBS
from ttx.tts.search import Account, templated
from ttx.tts.strategy import register

CLIP = 1e-7                  # PG:55


def log_weight(score: float) -> float:
    """PG:52-56: the inverse sigmoid of a score in [0, 1], clipped to [1e-7, 1 - 1e-7]."""
    if not 0.0 <= score <= 1.0:
        raise TtxError(f"particle weights read a score in [0, 1] (its inverse sigmoid), got "
                       f"{score}: use a probability-valued scorer", field="--scorer")
    x = min(max(score, CLIP), 1 - CLIP)
    return math.log(x / (1 - x))


def softmax(log_weights: list[float], temperature: float = 1.0) -> list[float]:
    """PG:59-62 of log_weights / temperature (PIS:310)."""
    import numpy as np

    x = np.asarray(log_weights, dtype=float) / temperature
    e = np.exp(x - np.max(x))
    return (e / np.sum(e)).tolist()


def draws(seed, prompt_text: str) -> random.Random:
    """The generator of one problem's resampling draws."""
    return random.Random(f"ttx-particles:{seed}:{prompt_text}") if seed is not None \
        else random.Random()


@dataclass(eq=False)
class Particle:
    """PG:30-49: a path, its log weight after each of its steps, its steps' generated tokens."""

    path: Path
    log_weights: list
    step_tokens: list

    @property
    def stopped(self) -> bool:
        return self.path.completed

    @property
    def log_weight(self) -> float:
        """PG:37-41: the newest log weight (0 before any step)."""
        return self.log_weights[-1] if self.log_weights else 0.0

    def copy(self) -> "Particle":
        return Particle(self.path.copy(), list(self.log_weights), list(self.step_tokens))

    def cut(self, steps: int) -> None:
        """PG:232-236: back to its first `steps` steps, running again."""
        p = self.path
        p.steps = p.steps[:steps]
        p.text = "".join(p.steps)
        p.step_scores = p.step_scores[:steps]
        self.log_weights = self.log_weights[:steps]
        self.step_tokens = self.step_tokens[:steps]
        p.tokens = sum(self.step_tokens)
        p.completed = False


@dataclass
class _Problem:
    rng: random.Random
    refs: list                    # reference particles of this sweep (PG:187)
    particles: list
    free: int                     # particles drawn each iteration (PG:194)
    log: list                     # this sweep's iterations
    sweeps: list                  # finished sweeps


class ParticleSearch(StepSearch):
    """particle-filter (one sweep, no reference particle: PG:277-296) and particle-gibbs."""

    knobs = ("step_tokens", "max_steps", "pf_temperature", "pf_select") + REWARD_KNOBS

    @classmethod
    def sweeps(cls, search) -> tuple[int, int]:
        """(sweeps, reference particles)."""
        return 1, 0

    @classmethod
    def check_n(cls, n, search):
        _, refs = cls.sweeps(search)
        if n <= refs:
            raise TtxError(f"{cls.name}: --n {n} must exceed --pg-ref-particles {refs} (the "
                           "reference particles are kept, the others drawn)")

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        if cfg.scorer == "self-certainty" and not cfg.search.reward_model:
            raise TtxError(f"{cls.name} weighs a particle by the inverse sigmoid of a score in "
                           "[0, 1]: --scorer self-certainty is not one (use --scorer logprob or "
                           "--reward-model)", field="--scorer")

    def run(self, engine, prompts, cfg):
        s, n = cfg.search, cfg.n
        n_sweeps, n_refs = self.sweeps(s)
        prefixes = [templated(engine, p, s) for p in prompts]
        accounts = [Account() for _ in prompts]
        inner, final = self.step_params(cfg, s.step_tokens or cfg.params.max_new_tokens)
        states = [_Problem(rng=draws(cfg.params.seed, prefix), refs=[], particles=[], free=n,
                           log=[], sweeps=[]) for prefix in prefixes]
        rounds = 0
        for sweep in range(n_sweeps):
            for i, st in enumerate(states):                                   # PG:193-199
                st.free = n - len(st.refs)
                st.particles = [Particle(Path(problem=i), [], []) for _ in range(st.free)] \
                    + st.refs
                st.log = []
            for it in range(s.max_steps):
                live = [p for st in states for p in st.particles if not p.stopped]
                if not live:
                    break
                last = it == s.max_steps - 1
                children = expand(engine, prefixes, [p.path for p in live],
                                  final if last else inner, cfg.params.seed, rounds, accounts,
                                  last)
                if rounds == 0:
                    for i in range(len(prompts)):
                        accounts[i].prompt_tokens = accounts[i].prefill
                rounds += 1
                scores = rescore(self.scorer, prompts, children, s.agg, self.construction(cfg))
                for p, child, score in zip(live, children, scores):          # PG:136-170
                    p.path = child
                    p.step_tokens.append(child.segment.completion_tokens)
                    # a path with no step to score (empty): the lowest weight, as the
                    # policy scorer's 0 for an empty step
                    p.log_weights.append(log_weight(0.0 if score == -math.inf else score))
                for i in sorted({p.path.problem for p in live}):   # PG:203: not all stopped
                    self._resample(states[i], it + 1, s.pf_temperature)
            for st in states:
                self._end_sweep(st, sweep, n_refs, s.pf_temperature)
        outcomes = []
        for i, st in enumerate(states):
            last = st.sweeps[-1]
            if s.pf_select == "argmax":                                        # PG:263-264
                chosen = argmax(last["log_weights"])
            else:                                                              # PG:259-262
                chosen = st.rng.choices(range(len(st.particles)), weights=last["weights"],
                                        k=1)[0]
            traces = [p.path.trace(s.agg, log_weight=p.log_weight,
                                   log_weights=list(p.log_weights)) for p in st.particles]
            for k, t in enumerate(traces):         # the last sweep's reference particles
                t["reference"] = k >= st.free
            outcomes.append(_outcome(traces, traces[chosen]["pred"], accounts[i], {"particles": {
                "sweeps": st.sweeps, "particles": n, "reference_particles": n_refs,
                "temperature": s.pf_temperature, "agg": s.agg, "select": s.pf_select,
                "selected": chosen}}))
        return outcomes

    @staticmethod
    def _resample(st: _Problem, step: int, temperature: float) -> None:
        """PG:207-239 after iteration `step` (1-based)."""
        before = st.particles
        logw = [p.log_weight if p.stopped else p.log_weights[step - 1] for p in before]
        weights = softmax(logw, temperature)
        ancestors = st.rng.choices(range(len(before)), weights=weights, k=st.free)
        drawn = [before[a].copy() for a in ancestors]
        for p in drawn:
            if len(p.path.steps) > step:           # a reference particle drawn: cut back
                p.cut(step)
        st.particles = drawn + st.refs
        st.log.append({"step": step, "stopped": [p.stopped for p in before],
                       "log_weights": logw, "weights": weights, "ancestors": ancestors})

    @staticmethod
    def _end_sweep(st: _Problem, sweep: int, n_refs: int, temperature: float) -> None:
        """PG:241-254: the reference particles of the next sweep, by the final weights."""
        logw = [p.log_weight for p in st.particles]
        weights = softmax(logw, temperature)
        refs = st.rng.choices(range(len(st.particles)), weights=weights, k=n_refs)
        st.sweeps.append({"sweep": sweep + 1, "iterations": st.log, "log_weights": logw,
                          "weights": weights, "references": refs,
                          "preds": [extract_answer(p.path.text) for p in st.particles],
                          "steps": [len(p.path.steps) for p in st.particles]})
        st.refs = [st.particles[k] for k in refs]

    @classmethod
    def aggregate(cls, record, preds, invalid):
        """The record's selected particle: argmax recomputed from the traces' final log
        weights (the first maximum), a sampled one as recorded."""
        info = record.get("particles") or {}
        traces = record["traces"]
        if not traces:
            return None
        if info.get("select", "argmax") == "argmax":
            return preds[argmax([t.get("log_weight", float("-inf")) for t in traces])]
        return preds[info["selected"]]


@register
class ParticleFilter(ParticleSearch):
    name = "particle-filter"
    rank = 11
    summary = ("Particle filtering: n partial solutions extended a step at a time, resampled "
               "by softmax of their PRM (or policy) scores' logits (its_hub).")


@register
class ParticleGibbs(ParticleSearch):
    name = "particle-gibbs"
    rank = 12
    summary = ("Particle Gibbs: particle-filter sweeps, each conditioned on reference "
               "particles drawn from the previous one (its_hub).")
    knobs = ParticleSearch.knobs + ("pg_sweeps", "pg_ref_particles")

    @classmethod
    def sweeps(cls, search):
        return search.pg_sweeps, search.pg_ref_particles
