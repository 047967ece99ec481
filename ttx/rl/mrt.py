"""MRT, Meta Reinforcement fine-Tuning (Qu et al. 2025, arXiv 2503.07572): episodes, progress,
per-episode advantages and the cumulative-regret measurement. Pure functions; the reward plug-in
(ttx.rl.rewards.mrt) samples the forced answers and calls these.

The output stream z is cut into episodes z_0..z_{n-1}; J(c) is the success rate of an answer forced
after the prefix c (the meta-prover μ: the reference's "Time is up" text, then m sampled answers
graded against gold). Progress of episode j (paper §6, Definition 6.1):

    r_prg(z_j) = J(z_{0:j}) − J(z_{0:j−1})

and MRT's reward is the outcome plus α times progress (paper eq. 6.2, ℓ_MRT = ℓ_FT + α Σ_j r_prg).
Episode cutting, forced-answer text and regret follow the authors' analysis code
(CMU-AIRe/MRT@1815a8c analysis/code/); the RL recipe in train/rl/README.md gives no code.
"""

from __future__ import annotations

from collections.abc import Sequence

# analysis/code/break_into_meta_steps_batched.ipynb cell 5: a paragraph ("\n\n"-separated) that
# starts with one of these opens a new episode, if at least 3 paragraphs passed since the last one.
EPISODE_MARKERS = ("Wait", "But wait", "Alternatively", "Is there another way to think about this?",
                   "But let me double-check", "But hold on")
MIN_GAP = 3
MAX_EPISODES = 99        # the notebook's max_steps (cell 1): boundaries after which the rest is one
REGRET_GROUP = 10        # the notebook's group_size (cell 1): episodes merged for the regret curve

# analysis/code/pass_at_k_given_prefix.py:27-34 (apply_stop_template): the forced-answer text.
FORCED_ANSWER = ("Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should "
                 "stop thinking and formulate a final answer based on what I already have.\n</think>"
                 "\n\n**Step-by-Step Explanation and Answer:**\n\n1. **")

# analysis/scripts/regret/pass_at_k_given_prefix.sh: -K 8 forced answers, temperature 0.6.
FORCED_SAMPLES = 8
FORCED_TEMPERATURE = 0.6
# analysis/code/regret.ipynb cell 10: a point's cost = its prompt tokens + answer tokens / 16.
ANSWER_COST_DIVISOR = 16


def episode_starts(text: str, max_episodes: int = MAX_EPISODES, group: int = 1) -> list[int]:
    """Character offsets where the episodes of `text` start (the first is 0).

    A boundary sits at the start of a paragraph opening with an EPISODE_MARKERS phrase, at least
    MIN_GAP paragraphs after the previous boundary; after `max_episodes` boundaries the rest is one
    episode. `group` > 1 merges consecutive episodes group at a time (the notebook's cell 11)."""
    if max_episodes < 0 or group < 1:
        raise ValueError("max_episodes must be >= 0 and group >= 1")
    paragraphs = text.split("\n\n")
    offsets, pos = [], 0
    for p in paragraphs:
        offsets.append(pos)
        pos += len(p) + 2
    starts, last = [0], 0
    for i, p in enumerate(paragraphs):
        if len(starts) > max_episodes:
            break
        if p.startswith(EPISODE_MARKERS) and i - last >= MIN_GAP:
            starts.append(i)
            last = i
    return [offsets[i] for i in starts[::group]]


def episodes(text: str, max_episodes: int = MAX_EPISODES, group: int = 1) -> list[str]:
    """The episodes as the reference writes them: each stripped of its trailing newlines, then
    merged `group` at a time with "\\n\\n" (the notebook's cells 5 and 11)."""
    s = episode_starts(text, max_episodes) + [len(text)]
    single = [text[a:b].rstrip("\n") for a, b in zip(s, s[1:])]
    return ["\n\n".join(single[i:i + group]) for i in range(0, len(single), group)]


def forced_prefixes(eps: Sequence[str]) -> list[str]:
    """The texts after which an answer is forced, J_0..J_{n-1}: nothing, then the episodes so far
    and a blank line (analysis/code/pass_at_k_given_prefix.py:74-76)."""
    return [""] + ["\n\n".join(eps[:i + 1]) + "\n\n" for i in range(len(eps) - 1)]


def progress(j_values: Sequence[float]) -> list[float]:
    """r_prg of each episode from J at the prefixes 0..n (J_0: nothing generated yet)."""
    return [b - a for a, b in zip(j_values, j_values[1:])]


def mrt_reward(outcome: float, j_values: Sequence[float], alpha: float) -> float:
    """r(x, y) + α Σ_j r_prg(z_j): the outcome plus α times the total progress (eq. 6.2)."""
    return outcome + alpha * sum(progress(j_values))


def token_advantages(advantage: float, token_starts: Sequence[int], n_tokens: int,
                     j_values: Sequence[float], alpha: float) -> list[float]:
    """Per response token: the outcome's group advantage plus α times its episode's progress.

    token_starts[j] is the first token of episode j (token_starts[0] == 0); len(j_values) must be
    len(token_starts) + 1."""
    if len(j_values) != len(token_starts) + 1:
        raise ValueError(f"{len(token_starts)} episodes need {len(token_starts) + 1} J values, "
                         f"got {len(j_values)}")
    prg = progress(j_values)
    bounds = list(token_starts) + [n_tokens]
    out: list[float] = []
    for j in range(len(token_starts)):
        out += [advantage + alpha * prg[j]] * max(0, bounds[j + 1] - bounds[j])
    return out


def normalized_regret(j_values: Sequence[float], costs: Sequence[float], budget: float) -> float:
    """1 − the area under J against tokens spent, up to `budget`, over the budget (J* = 1).

    The curve starts at (0, 0), passes through (costs[k], j_values[k]) and stays flat after its last
    point; past the budget it is cut by linear interpolation (analysis/code/regret.ipynb cell 14,
    "cutoff areas"; the plot's y is 1 − area)."""
    import numpy as np

    if budget <= 0:
        raise ValueError("the budget must be positive")
    if len(j_values) != len(costs) or not len(costs):
        raise ValueError("one cost per J value, at least one")
    y = [0.0] + [float(v) for v in j_values]
    x = [0.0] + [float(c) for c in costs]
    below = [c for c in x if c < budget]
    if len(below) == len(x):
        area = np.trapezoid(y + [y[-1]], x + [budget])
    else:
        k = len(below) - 1
        y_cut = y[k] + (budget - x[k]) / (x[k + 1] - x[k]) * (y[k + 1] - y[k])
        area = np.trapezoid(y[:k + 1] + [y_cut], x[:k + 1] + [budget])
    return float(1.0 - area / budget)


def cumulative_regret(curves: Sequence[tuple[Sequence[float], Sequence[float], float]]) -> float:
    """Mean normalized regret over (J values, costs, budget) curves: what the train log records
    per step and bench/rl.py compares before and after training."""
    if not curves:
        return 0.0
    return sum(normalized_regret(j, c, b) for j, c, b in curves) / len(curves)
