"""adaptive-consistency against its references, on scripted votes and a scripted engine, and end
to end on the tiny model.

References (rules written out below from their code, not imported):
  SC  = pranjal2041/AdaptiveConsistency@899ab56 adaptive_consistency/stopping_criterias.py
  IF  = the same repository, scripts/pal/core/interface.py (AdaptiveTextInterface.run)
  BSC = Red-Hat-AI-Innovation-Team/its_hub@37fa0c3 its_hub/core/algorithms/beta_self_consistency.py
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.engines.base import Generation, SamplingParams, Trace
from ttx.scoring.answers import majority_vote
from ttx.tts.adaptive import AdaptiveConsistency, _counts
from ttx.tts.registry import regrade_record
from ttx.tts.search import ADAPTIVE_RULES, SearchConfig, round_seed
from ttx.tts.stopping import DEFAULT_THRESHOLDS, RULES, decide, dirichlet_confidence
from ttx.tts.strategy import StrategyConfig


# --- the references' rules, written out -------------------------------------------------------
def ref_beta(answers, conf_thresh=0.95):
    """SC:23-53 BetaStoppingCriteria.should_stop: the two leading counts (SC:28-34), the ratio of
    quad integrals (SC:44), stop at prob >= threshold (SC:52)."""
    most_common = Counter(answers).most_common(2)
    a = float(most_common[0][1])
    b = float(most_common[1][1]) if len(most_common) > 1 else 0.0
    f = lambda x: x ** a * (1 - x) ** b  # noqa: E731
    prob = float(mpmath.quad(f, [0.5, 1]) / mpmath.quad(f, [0, 1]))
    return prob, prob >= conf_thresh


def ref_dirichlet(answers, conf_thresh=0.95, top_k_elements=5, seed=0):
    """SC:149-218 DirichletStoppingCriteria.should_stop with use_markov=True (SC:121): under 3
    classes the Beta rule (SC:154-155); else the top_k_elements largest counts in ascending order
    (SC:158), the nested limits of the numerator (SC:161-174, the leader 1 - sum(others) largest)
    and of the simplex (SC:176-182), each integrated by integrate_mcs (SC:127-146) with
    N = 50000 (SC:207), prob = ratio, stop at prob >= threshold (SC:212). np.random is a seeded
    Generator here."""
    counts = dict(Counter(answers))
    if len(counts) < 3:
        return ref_beta(answers, conf_thresh)
    counts = {k: v for k, v in sorted(counts.items(), key=lambda kv: kv[1])[-top_k_elements:]}
    values = list(counts.values())
    nvars = len(values) - 1
    rng = np.random.default_rng(seed)
    n = 50000 * 1 if nvars <= 4 else 50000 * (2 ** ((nvars - 3) // 2))

    def integrand(*args):
        return np.prod([args[i] ** values[i] for i in range(nvars)], axis=0) \
            * (1 - np.sum(args, axis=0)) ** values[-1]

    def mcs(limits):                       # SC:127-146, the outermost limit first
        samples, widths = [], []
        for lim in limits:
            lo, hi = lim(samples)
            samples.append(rng.uniform(lo, hi, size=n))
            widths.append(np.broadcast_to(hi - lo, (n,)))
        return np.sum(integrand(*samples) * np.prod(widths, axis=0)) / n

    def inner(args):                       # SC:167 (use_markov)
        s, m = np.sum(args, axis=0), np.max(args, axis=0)
        return 0.0, np.maximum(0, np.minimum(np.minimum(0.5, 1 - s - m), (1 - s) / 2))

    numerator = [lambda args: (0.0, 0.5)] + [inner] * (nvars - 1)        # SC:173
    simplex = [lambda args: (0.0, 1.0)] + [
        lambda args: (0.0, 1 - np.sum(args, axis=0))] * (nvars - 1)      # SC:180-182
    prob = mcs(numerator) / mcs(simplex)
    return prob, prob >= conf_thresh


def ref_entropy(answers, conf_thresh=0.75):
    """SC:78-96: base-2 entropy of the counts (a phantom 1 for a single class) over
    log2(classes), stop at <= threshold, never on a single answer."""
    lis = list(Counter(answers).values())
    if len(lis) < 2:
        lis.append(1)
    p = np.array(lis, dtype=float) / sum(lis)
    ratio = float(-(p * np.log2(p)).sum() / np.log2(len(lis)))
    return (ratio, ratio <= conf_thresh) if len(answers) != 1 else (-1, False)


def ref_majority(answers, conf_thresh=0.8):
    """SC:104-117: the leader's share, stop at >= threshold, never on a single answer."""
    share = Counter(answers).most_common(1)[0][1] / len(answers)
    return (share, share >= conf_thresh) if len(answers) != 1 else (-1, False)


def ref_its_hub_beta(answers, confidence_threshold=0.95):
    """BSC:118-131: checked once 2 answers are in; v1, v2 the two leading counts, prob =
    1 - I_0.5(v1 + 1, v2 + 1) (BSC:78), stop at prob >= threshold."""
    if len(answers) < 2:
        return None, False
    most_common = Counter(answers).most_common(2)
    v1 = most_common[0][1]
    v2 = most_common[1][1] if len(most_common) > 1 else 0
    prob = float(1 - mpmath.betainc(v1 + 1, v2 + 1, 0, 0.5, regularized=True))
    return prob, prob >= confidence_threshold


REFS = {"beta": ref_beta, "dirichlet": ref_dirichlet, "entropy": ref_entropy,
        "majority": ref_majority, "its-hub-beta": ref_its_hub_beta}

# scripted vote sequences: unanimous, a slow leader, an even split, many classes
SEQUENCES = [
    list("aaaaaaaa"),
    list("abaaabaaaaaaaaaa"),
    list("ababababab"),
    list("abcaaadaaeaaaaaaaa"),
    list("abcdefaabbaaaaaaaaaaaaaa"),
    list("aabbccaaaabaaaaaaa"),
]


def _ttx(rule, answers, threshold):
    return decide(rule, _counts(answers, "lm-eval"), threshold)


@pytest.mark.parametrize("rule", ["beta", "its-hub-beta", "entropy", "majority"])
@pytest.mark.parametrize("threshold", [None, 0.7, 0.9, 0.99])
def test_rules_stop_where_the_references_stop(rule, threshold):
    """After every answer of every sequence, ttx's decision is the reference's (and the
    confidence the same number where the reference computes one)."""
    thr = DEFAULT_THRESHOLDS[rule] if threshold is None else threshold
    if rule == "its-hub-beta" and thr <= 0.5:
        return
    for seq in SEQUENCES:
        for k in range(1, len(seq) + 1):
            ref_p, ref_stop = REFS[rule](seq[:k], thr)
            p, stop = _ttx(rule, seq[:k], thr)
            assert stop == ref_stop, (rule, thr, seq[:k])
            if ref_p not in (None, -1):
                assert p == pytest.approx(ref_p, abs=1e-9), (rule, seq[:k])


def test_beta_defaults_match_the_references():
    # SC:19 and README "BetaStoppingCriteria with confidence threshold = 0.95"; BSC:48; the
    # reference stops a unanimous run at 4 answers (P = 31/32), its_hub's tests say the same
    assert DEFAULT_THRESHOLDS == {"beta": 0.95, "dirichlet": 0.95, "entropy": 0.75,
                                  "majority": 0.8, "random": 0.1, "its-hub-beta": 0.95}
    assert RULES == ADAPTIVE_RULES
    assert [_ttx("beta", ["x"] * k, 0.95)[1] for k in range(1, 6)] == [False] * 3 + [True] * 2
    assert _ttx("beta", ["x"], 0.75) == (0.75, True)          # SC checks a single answer
    assert _ttx("its-hub-beta", ["x"], 0.75) == (None, False)  # BSC:118: not before 2


def _exact_dirichlet(counts):
    """P(leader largest) under Dirichlet(c + 1), exactly: Gamma(a) variables, the CDF of an
    integer a is 1 - e^-x sum_k<a x^k/k!, the product expanded over subsets and integrated
    term by term (int x^m e^-sx dx = m!/s^(m+1))."""
    a = sorted((c + 1 for c in counts), reverse=True)[:5]
    top, others = a[0], a[1:]
    total = Fraction(0)
    for mask in range(1 << len(others)):
        poly = [Fraction(1)]
        chosen = [others[j] for j in range(len(others)) if mask >> j & 1]
        for aj in chosen:
            s = [Fraction(1, math.factorial(k)) for k in range(aj)]
            poly = [sum(poly[i] * s[m - i] for i in range(len(poly)) if 0 <= m - i < len(s))
                    for m in range(len(poly) + len(s) - 1)]
        rate = 1 + len(chosen)
        term = sum(c * Fraction(math.factorial(top - 1 + m), math.factorial(top - 1)
                                * rate ** (top + m)) for m, c in enumerate(poly))
        total += (-1) ** len(chosen) * term
    return float(total)


@pytest.mark.parametrize("counts", [[1, 1, 1], [3, 1, 1], [5, 2, 1], [4, 4, 1], [7, 2, 2, 1],
                                    [9, 3, 1, 1, 1], [12, 2, 1, 1, 1, 1, 1]])
def test_dirichlet_confidence_is_the_exact_integral(counts):
    assert dirichlet_confidence(counts) == pytest.approx(_exact_dirichlet(counts), abs=1e-9)


def test_dirichlet_stops_where_the_reference_stops():
    """The reference integrates by Monte Carlo (SC:208), whose spread is large (a standard
    deviation up to 0.1 with 4-5 classes): over 10 seeds its mean probability is ttx's within
    the standard error, and its most frequent decision is ttx's wherever the spread cannot
    straddle the threshold. Under 3 classes both are the exact Beta rule."""
    checked = 0
    for seq in SEQUENCES:
        for k in range(1, len(seq) + 1):
            p, stop = _ttx("dirichlet", seq[:k], 0.95)
            if len(set(seq[:k])) < 3:
                assert (p, stop) == pytest.approx(ref_dirichlet(seq[:k]), abs=1e-9)
                continue
            runs = [ref_dirichlet(seq[:k], 0.95, seed=s) for s in range(10)]
            probs = np.array([r[0] for r in runs])
            sd = probs.std()
            assert abs(p - probs.mean()) <= 4 * sd / math.sqrt(10) + 1e-3, seq[:k]
            if abs(p - 0.95) > 3 * sd + 0.005:
                votes = sum(r[1] for r in runs)
                assert stop == (votes > 5), seq[:k]
                checked += 1
    assert checked >= 20


# --- a scripted engine: problems stop independently ---------------------------------------------
class VoteEngine:
    """Prompt `q` answers the next item of ANSWERS[q] on every trace it is asked for."""

    name = model_name = "votes"

    def __init__(self, answers):
        self.answers = {q: list(a) for q, a in answers.items()}
        self.drawn = {q: 0 for q in answers}
        self.calls = []

    def generate(self, prompts, n, params):
        sizes = [n] * len(prompts) if isinstance(n, int) else list(n)
        self.calls.append((list(prompts), sizes, params.seed))
        out = []
        for q, k in zip(prompts, sizes):
            traces = []
            for _ in range(k):
                a = self.answers[q][self.drawn[q]]
                self.drawn[q] += 1
                traces.append(Trace(text=f"so \\boxed{{{a}}}", completion_tokens=len(a) + 2,
                                    finish_reason="stop"))
            out.append(Generation(traces=traces, prompt_tokens=5))
        return out


def ref_loop(answers, max_gens, step_size, rule):
    """IF:289-312: draw step_size answers per round, check every answer so far, stop when the
    rule says so (or at max_gens); return the majority and how many were drawn."""
    drawn = []
    for _ in range(0, max_gens, step_size):
        drawn += answers[len(drawn):len(drawn) + min(step_size, max_gens - len(drawn))]
        if REFS[rule](drawn, DEFAULT_THRESHOLDS[rule])[1]:
            break
    return Counter(drawn).most_common(1)[0][0], len(drawn)


@pytest.mark.parametrize("rule,batch", [("beta", 1), ("beta", 2), ("entropy", 1),
                                        ("majority", 3), ("its-hub-beta", 1)])
def test_a_settled_problem_stops_drawing_and_an_open_one_goes_on(rule, batch):
    script = {"settled": ["7"] * 12, "split": ["1", "2"] * 6, "late": list("5655555555555")}
    engine = VoteEngine(script)
    n = 10
    cfg = StrategyConfig(strategy="adaptive-consistency", n=n,
                         params=SamplingParams(max_new_tokens=8, temperature=0.7, seed=11),
                         search=SearchConfig(adaptive_rule=rule, adaptive_batch=batch))
    outcomes = AdaptiveConsistency(cfg).run(engine, list(script), cfg)
    for (q, answers), o in zip(script.items(), outcomes):
        pred, drawn = ref_loop(answers, n, batch, rule)
        assert o.pred == pred and o.extra["drawn"] == drawn == len(o.traces) == engine.drawn[q]
        assert o.extra["stopped"] == ("max-n" if drawn == n and not REFS[rule](
            answers[:n], DEFAULT_THRESHOLDS[rule])[1] else "settled")
        assert o.completion_tokens == sum(t["completion_tokens"] for t in o.traces)
        rounds = [[t for t in o.traces if t["round"] == r] for r in range(o.extra["rounds"])]
        assert o.sequential_tokens == sum(max(t["completion_tokens"] for t in ts)
                                          for ts in rounds)
        assert o.prompt_tokens == 5 and o.extra["prefill_tokens"] == 5 * len(rounds)
        record = {"strategy": "adaptive-consistency", "traces": o.traces}
        assert regrade_record(record)["pred"] == o.pred
    # the split problem never settles: it alone is in the last calls
    assert outcomes[1].extra["stopped"] == "max-n" and outcomes[1].extra["drawn"] == n
    assert outcomes[0].extra["drawn"] < n
    for r, (prompts, sizes, seed) in enumerate(engine.calls):
        assert seed == round_seed(11, r)                   # each round its own seed
        open_ = [q for q, o in zip(script, outcomes) if o.extra["rounds"] > r]
        assert prompts == open_                            # only the unsettled are asked
        assert all(1 <= k <= batch for k in sizes)
    for q, o in zip(script, outcomes):
        assert sum(k for ps, ks, _ in engine.calls for p, k in zip(ps, ks) if p == q) \
            == o.extra["drawn"]
    assert engine.calls[-1][0] == ["split"]
    assert len({seed for _, _, seed in engine.calls}) == len(engine.calls)


def test_random_rule_is_reproducible():
    script = {"q": ["3"] * 40}
    runs = []
    for _ in range(2):
        cfg = StrategyConfig(strategy="adaptive-consistency", n=40,
                             params=SamplingParams(temperature=0.7, seed=4),
                             search=SearchConfig(adaptive_rule="random", adaptive_threshold=0.2))
        [o] = AdaptiveConsistency(cfg).run(VoteEngine(script), ["q"], cfg)
        runs.append(o.extra["drawn"])
    assert runs[0] == runs[1]
    rng = random.Random()
    assert decide("random", [1], 1.0, rng)[1] and not decide("random", [1], 0.0, rng)[1]


# --- the CLI: bad input before a model loads; the tiny model end to end ------------------------
@pytest.mark.parametrize("args,message", [
    (["--adaptive-rule", "its-hub-beta", "--adaptive-threshold", "0.5"],
     "--adaptive-threshold 0.5 is out of range for --adaptive-rule its-hub-beta"),
    (["--adaptive-threshold", "1.5"], "--adaptive-threshold 1.5 is out of range"),
    (["--beam-width", "2"], "--beam-width does not apply to --strategy adaptive-consistency"),
    (["--adaptive-rule", "crp"], "--adaptive-rule"),
    (["--adaptive-batch", "0"], "--adaptive-batch"),
])
def test_bad_options_fail_before_a_model_loads(tmp_path, args, message):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": 1, "question": "1+1?", "answer": "2"}) + "\n")
    result = run_cli(["tts-run", "--model", tmp_path / "no-such-model", "-i", problems, "-o",
                      tmp_path / "o.jsonl", "--strategy", "adaptive-consistency", "--no-progress",
                      *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_adaptive_knobs_refused_by_other_strategies(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": 1, "question": "1+1?", "answer": "2"}) + "\n")
    result = run_cli(["tts-run", "--model", tmp_path / "none", "-i", problems, "-o",
                      tmp_path / "o.jsonl", "--strategy", "majority", "--adaptive-batch", "2"])
    assert result.exit_code == 2
    assert "--adaptive-batch does not apply to --strategy majority" in result.output


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_model_levels_and_resume(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(4, 3)))
    args = ["--model", tiny_model_dir, "-i", problems, "--strategy", "adaptive-consistency",
            "--levels", "n=2,6", "--adaptive-batch", "2", "--max-new-tokens", "5",
            "--temperature", "1.0", "--seed", "1", "--batch-rows", "4", "--no-progress"]
    whole = tmp_path / "whole.jsonl"
    result = run_cli(["tts-run", *args, "-o", whole])
    assert result.exit_code == 0, result.output
    records = _records(whole)
    assert len(records) == 4 * 2
    for r in records:
        n = {1: 2, 2: 6}[r["level"]]
        assert r["n"] == n and r["drawn"] == len(r["traces"]) <= n
        preds = [t["pred"] for t in r["traces"]]
        assert r["pred"] == majority_vote(preds)
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
        # the rule, replayed on the record's traces, stopped it where the record says
        for k, step in enumerate(r["adaptive"]["rounds"]):
            stop = decide("beta", _counts(preds[:step["drawn"]], "lm-eval"), 0.95)[1]
            last = k == len(r["adaptive"]["rounds"]) - 1
            assert stop == (last and r["stopped"] == "settled")
        assert r["stopped"] == "settled" or r["drawn"] == n
    assert regrade_record(records[0])["pred"] == records[0]["pred"]
    # an interrupted run resumes to the same records
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:30])
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = run_cli(["tts-run", *args, "-o", part, "--resume"])
    assert result.exit_code == 0, result.output
    # wall time, and the prompt tokens the engine's prefix reuse kept from the calls before
    # (a resumed session skips the finished chunks), are not the records' content
    strip = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                         if k not in ("wall_s", "cached_prefill_tokens")} for r in rs]
    assert strip(_records(part)) == strip(records)


def test_the_documented_commands_parse():
    """docs/tts-run.md's adaptive-consistency commands and recipe name real tts-run options."""
    import re
    import shlex

    import click

    from tests.conftest import REPO
    from ttx.cli import cli

    text = (REPO / "docs" / "tts-run.md").read_text(encoding="utf-8")
    section = text[text.index("### adaptive-consistency"):text.index("### Reward models")]
    commands = re.findall(r"^(ttx tts-run .+)$", section, re.M)
    recipe = (REPO / "recipes" / "tts-run-adaptive-consistency.yaml").read_text()
    commands += [line.lstrip("# ") for line in recipe.splitlines() if "ttx tts-run" in line]
    assert len(commands) >= 5
    command = cli.get_command(click.Context(cli), "tts-run")
    flags = {o for p in command.params for o in p.opts + p.secondary_opts}
    for argv in map(shlex.split, commands):
        assert [a for a in argv[2:] if a.startswith("-") and a not in flags] == [], argv
