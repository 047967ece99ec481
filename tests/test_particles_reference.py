"""particle-filter and particle-gibbs against its_hub's ParticleGibbs on the scripted world of
tests/search_script.py: its_hub's rule is written out here from
Red-Hat-AI-Innovation-Team/its_hub@e4d00d1 its_hub/algorithms/particle_gibbs.py ("PG", lines
cited), with the softmax temperature of the paper's code (probabilistic-inference-scaling@f75d461
src/sal/search/particle_gibbs.py, "PIS"). Both sides draw from the same seeded random.Random, so
they must give the same weights, the same ancestors, the same reference particles and the same
answer, iteration by iteration."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.search_script import SEP, ScriptedEngine, ScriptedPRM, step_scores, unit
from ttx.engines.base import SamplingParams
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig


def aggregate(scores, agg):
    """search-and-learn@6f81cac src/sal/utils/score.py:33-43 (PIS's copy is the same)."""
    return {"last": lambda s: s[-1], "min": min, "prod": lambda s: float(np.prod(s))}[agg](scores)


def inv_sigmoid(x):
    """PG:52-56."""
    assert 0 <= x <= 1
    x = np.clip(x, 1e-7, 1 - 1e-7)
    return np.log(x / (1 - x))


def softmax(x):
    """PG:59-62."""
    x_shifted = x - np.max(x)
    return np.exp(x_shifted) / np.sum(np.exp(x_shifted))


def policy_scores(steps):
    """The logprob scorer on the scripted engine: a step's exp(mean log p), the engine's log p
    being -unit(text before the step + step) (tests/search_script.py)."""
    out, text = [], ""
    for s in steps:
        bare = s[:-len(SEP)] if s.endswith(SEP) else s
        out.append(math.exp(-unit(text + bare)))
        text += s
    return out


def its_hub(engine, rng, n, sweeps, n_refs, max_steps, agg, temperature=1.0, select="argmax",
            scorer="prm"):
    """PG:174-274 (ParticleGibbs.infer; ParticleFiltering, PG:277-296, is sweeps=1, n_refs=0)
    with budget = n * sweeps, the steps drawn from the scripted engine in particle order (PG:
    121-144, batched). Stop rule: ttx's (a step not ending at the blank line, or the
    max_steps-th, which runs to EOS) in place of StepGeneration's (lms.py:147-149). Weights:
    softmax(log_weights / temperature) (PIS:310; PG:218 is temperature 1)."""
    ref_particles, sweeps_log, cuts = [], [], 0
    for _ in range(sweeps):                                                   # PG:193
        num_free = n - len(ref_particles)                                    # PG:194
        particles = [{"steps": [], "stopped": False, "w": []}
                     for _ in range(num_free)] + ref_particles                 # PG:196-199
        current_step, iterations = 0, []                                     # PG:201
        while not all(p["stopped"] for p in particles):                      # PG:203
            at_start = [p["stopped"] for p in particles]                     # PG:121
            for p, stopped in zip(particles, at_start):                      # PG:136-144
                if stopped:
                    continue
                step, eos = engine.step("".join(p["steps"]))
                done = len(p["steps"]) == max_steps - 1 or eos or step == ""
                p["steps"].append(step + ("" if done else SEP))
                p["stopped"] = done
            for p, stopped in zip(particles, at_start):                      # PG:147-170
                if stopped:
                    continue
                scores = step_scores("".join(p["steps"])) if scorer == "prm" \
                    else policy_scores(p["steps"])
                p["w"].append(inv_sigmoid(aggregate(scores, agg)))
            current_step += 1                                                # PG:205
            log_weights = [p["w"][-1] if p["stopped"] else p["w"][current_step - 1]
                           for p in particles]                               # PG:209-216
            probabilities = softmax(np.array(log_weights) / temperature)     # PG:218, PIS:310
            ancestors = rng.choices(range(len(particles)), weights=probabilities,
                                    k=num_free)                              # PG:219-221
            resampled = [{"steps": list(particles[a]["steps"]), "stopped": particles[a]["stopped"],
                          "w": list(particles[a]["w"])} for a in ancestors]  # PG:227
            for p in resampled:                                              # PG:231-236
                if len(p["steps"]) > current_step:
                    cuts += 1
                    p["steps"] = p["steps"][:current_step]
                    p["w"] = p["w"][:current_step]
                    p["stopped"] = False
            iterations.append((log_weights, ancestors))
            particles = resampled + ref_particles                            # PG:239
        log_weights = [p["w"][-1] if p["w"] else 0.0 for p in particles]     # PG:242, 37-41
        probabilities = softmax(np.array(log_weights) / temperature)         # PG:243
        ref_indices = rng.choices(range(len(particles)), weights=probabilities,
                                  k=n_refs)                                  # PG:244-246
        ref_particles = [particles[i] for i in ref_indices]                  # PG:247
        sweeps_log.append({"iterations": iterations, "log_weights": log_weights,
                           "refs": ref_indices,
                           "texts": ["".join(p["steps"]) for p in particles]})
    if select == "sample":                                                   # PG:259-262
        selected = rng.choices(range(len(particles)), weights=probabilities, k=1)[0]
    else:                                                                    # PG:263-264
        selected = int(np.argmax(log_weights))
    return sweeps_log, selected, cuts


def _cfg(strategy, n, seed=0, **search):
    return StrategyConfig(strategy=strategy, n=n,
                          params=SamplingParams(max_new_tokens=64, temperature=1.0, seed=seed),
                          search=SearchConfig(**search))


CASES = [
    # strategy, n, sweeps, refs, max_steps, agg, eos_rate, temperature, select, scorer, seed
    ("particle-filter", 4, 1, 0, 4, "last", 0.0, 1.0, "argmax", "prm", 0),
    ("particle-filter", 6, 1, 0, 5, "min", 0.25, 0.5, "argmax", "prm", 1),
    ("particle-filter", 5, 1, 0, 4, "prod", 0.2, 2.0, "sample", "prm", 2),
    ("particle-filter", 4, 1, 0, 4, "last", 0.2, 1.0, "argmax", "logprob", 3),
    ("particle-gibbs", 4, 3, 1, 5, "last", 0.2, 1.0, "argmax", "prm", 4),
    ("particle-gibbs", 6, 4, 2, 6, "min", 0.15, 0.7, "sample", "prm", 5),
    ("particle-gibbs", 3, 3, 1, 4, "prod", 0.3, 1.0, "argmax", "logprob", 6),
    ("particle-gibbs", 4, 2, 1, 3, "last", 0.0, 1.0, "argmax", "prm", 7),
]


@pytest.mark.parametrize("strategy,n,sweeps,refs,max_steps,agg,eos_rate,temperature,select,"
                         "scorer,seed", CASES)
def test_particles_follow_its_hub(strategy, n, sweeps, refs, max_steps, agg, eos_rate,
                                  temperature, select, scorer, seed):
    from ttx.tts.particles import ParticleFilter, ParticleGibbs, draws
    from ttx.tts.reward import PolicyScorer

    ref_engine = ScriptedEngine(eos_rate=eos_rate)
    expected, selected, _ = its_hub(ref_engine, draws(seed, "P|"), n, sweeps, refs, max_steps,
                                    agg, temperature, select, scorer)
    knobs = {"pg_sweeps": sweeps, "pg_ref_particles": refs} if strategy == "particle-gibbs" \
        else {}
    cfg = _cfg(strategy, n, seed=seed, max_steps=max_steps, agg=agg, pf_temperature=temperature,
               pf_select=select, **knobs)
    runner = (ParticleGibbs if strategy == "particle-gibbs" else ParticleFilter)(cfg)
    runner.scorer = ScriptedPRM() if scorer == "prm" else PolicyScorer("logprob")
    [out] = runner.run(ScriptedEngine(eos_rate=eos_rate), ["P|"], cfg)
    got = out.extra["particles"]["sweeps"]
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert len(mine["iterations"]) == len(theirs["iterations"])
        for it, (log_weights, ancestors) in zip(mine["iterations"], theirs["iterations"]):
            assert it["log_weights"] == pytest.approx(log_weights, abs=1e-12)
            assert it["ancestors"] == ancestors                   # the same draws
        assert mine["log_weights"] == pytest.approx(theirs["log_weights"], abs=1e-12)
        assert mine["references"] == theirs["refs"][:refs]
    assert [t["text"] for t in out.traces] == expected[-1]["texts"]   # the last sweep's particles
    assert out.extra["particles"]["selected"] == selected
    assert out.traces[selected]["pred"] == out.pred
    assert [t["log_weight"] for t in out.traces] == pytest.approx(expected[-1]["log_weights"])


def test_a_drawn_reference_particle_is_cut_back_and_runs_on():
    """The PG:231-236 branch is exercised by the cases above (else they would not pin it)."""
    from ttx.tts.particles import draws

    cuts = sum(its_hub(ScriptedEngine(eos_rate=eos), draws(seed, "P|"), n, sweeps, refs, steps,
                       agg, temperature, select, scorer)[2]
               for _, n, sweeps, refs, steps, agg, eos, temperature, select, scorer, seed in CASES
               if sweeps > 1)
    assert cuts > 0


def test_weights_are_the_softmax_of_inverse_sigmoids():
    """PG:52-62 and PIS:49-66, 310 on hand values, clipping included."""
    from ttx.tts.particles import log_weight
    from ttx.tts.particles import softmax as ttx_softmax

    for score in (0.0, 1e-9, 0.3, 0.5, 0.9, 1.0):
        assert log_weight(score) == pytest.approx(float(inv_sigmoid(score)), abs=1e-12)
    lw = [log_weight(s) for s in (0.2, 0.7, 0.95)]
    for t in (0.5, 1.0, 3.0):
        assert ttx_softmax(lw, t) == pytest.approx(softmax(np.array(lw) / t).tolist(), abs=1e-15)
    assert ttx_softmax([0.0, math.log(3.0)]) == pytest.approx([0.25, 0.75])


def test_resampling_follows_the_weights_in_distribution():
    """A draw's frequencies match softmax(log w / T) (a check independent of the shared RNG)."""
    from ttx.tts.particles import softmax as ttx_softmax

    rng = random.Random(11)
    w = ttx_softmax([0.0, 1.0, 2.0], 0.5)
    draws_ = rng.choices(range(3), weights=w, k=40000)
    freq = [draws_.count(k) / len(draws_) for k in range(3)]
    assert freq == pytest.approx(w, abs=0.01)
