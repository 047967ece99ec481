"""Adaptive-Consistency's stopping rules (Aggarwal et al. 2023, arXiv 2305.11860): after each
batch of samples, is the majority answer settled?

Each rule reads the vote counts so far (one per answer class, in any order) and gives
(confidence, stop). The reference is pranjal2041/AdaptiveConsistency@899ab56
adaptive_consistency/stopping_criterias.py ("SC"); its_hub's Beta variant is
Red-Hat-AI-Innovation-Team/its_hub@37fa0c3 its_hub/core/algorithms/beta_self_consistency.py
("BSC"). ttx computes the same quantities exactly where the reference integrates numerically
(SC:44 quad, SC:208 Monte Carlo), so a decision can differ only when the reference's numerical
error straddles the threshold.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

# rule -> the reference's default threshold (SC:19, :121, :74, :100, :57; BSC:48)
DEFAULT_THRESHOLDS = {"beta": 0.95, "dirichlet": 0.95, "entropy": 0.75, "majority": 0.8,
                      "random": 0.1, "its-hub-beta": 0.95}
RULES = tuple(DEFAULT_THRESHOLDS)
DIRICHLET_TOP_K = 5          # SC:121 top_k_elements: only the 5 largest classes are modelled


def beta_confidence(top: int, second: int) -> float:
    """P(p_top > 1/2) under the Beta(top + 1, second + 1) posterior of the two leading classes
    (SC:44; BSC:78 writes it 1 - I_0.5(v1 + 1, v2 + 1)). For integer counts this is
    P(Binomial(top + second + 1, 1/2) <= top), summed exactly."""
    m = top + second + 1
    return float(Fraction(sum(math.comb(m, k) for k in range(top + 1)), 1 << m))


def dirichlet_confidence(counts: list[int], grid: int = 4096) -> float:
    """P(the leading class has the largest probability) under the Dirichlet(c + 1) posterior of
    the DIRICHLET_TOP_K largest classes (SC:153-212: the integrand prod p_i^c_i, SC:189, over the
    region where the leader is largest, SC:163-174, against the whole simplex, SC:176-182).

    With p_i = G_i / sum G and G_i ~ Gamma(c_i + 1) independent, the region is G_top > G_j for
    all j: P = int_0^inf gamma_pdf(x; a_top) prod_j gamma_cdf(x; a_j) dx, one smooth integral
    taken by Simpson's rule on a fixed grid (deterministic, error far below the reference's
    Monte Carlo noise)."""
    import numpy as np

    alphas = sorted((c + 1 for c in counts if c > 0), reverse=True)[:DIRICHLET_TOP_K]
    top, others = alphas[0], alphas[1:]
    end = top + 12 * math.sqrt(top) + 40           # beyond it the Gamma(top) tail is < 1e-20
    x = np.linspace(0.0, end, grid + 1)[1:]        # x = 0 contributes 0 (top >= 2)
    logx = np.log(x)
    f = np.exp((top - 1) * logx - x - math.lgamma(top))
    for a in others:
        k = np.arange(a)[:, None]                  # P(G_a > x) = P(Poisson(x) < a)
        log_terms = k * logx[None, :] - x[None, :] - np.array(
            [math.lgamma(i + 1) for i in range(a)])[:, None]
        high = log_terms.max(axis=0)
        survive = np.exp(high) * np.exp(log_terms - high).sum(axis=0)
        f = f * np.clip(1.0 - survive, 0.0, 1.0)
    f = np.concatenate([[0.0], f])
    h = end / grid
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


def entropy_ratio(counts: list[int]) -> float:
    """Entropy (base 2) of the vote shares over its maximum log2(classes); a single class is
    given a phantom second class of one vote (SC:82-94)."""
    values = list(counts) if len(counts) >= 2 else list(counts) + [1]
    total = sum(values)
    h = -sum(v / total * math.log2(v / total) for v in values if v)
    return h / math.log2(len(values))


def decide(rule: str, counts: list[int], threshold: float,
           rng: random.Random | None = None) -> tuple[float | None, bool]:
    """(confidence, stop) of `rule` on the vote counts of the answers drawn so far."""
    counts = sorted((c for c in counts if c > 0), reverse=True)
    votes = sum(counts)
    if not votes:
        return None, False                         # no answer yet: draw on (interface.py:270)
    if rule == "dirichlet" and len(counts) >= 3:
        p = dirichlet_confidence(counts)
        return p, p >= threshold                   # SC:212
    if rule in ("beta", "dirichlet", "its-hub-beta"):   # SC:154-155: < 3 classes: Beta
        if rule == "its-hub-beta" and votes < 2:
            return None, False                     # BSC:118-123: checked from 2 answers on
        p = beta_confidence(counts[0], counts[1] if len(counts) > 1 else 0)
        return p, p >= threshold                   # SC:52, BSC:131
    if rule == "entropy":
        if votes == 1:
            return None, False                     # SC:92
        r = entropy_ratio(counts)
        return r, r <= threshold                   # SC:93
    if rule == "majority":
        if votes == 1:
            return None, False                     # SC:113
        share = counts[0] / votes
        return share, share >= threshold           # SC:114
    if rule == "random":
        return None, (rng or random.Random()).random() < threshold     # SC:68
    raise ValueError(f"unknown stopping rule {rule!r}")
