"""MRT's episodes, forced-answer prefixes, progress and regret against the authors' analysis code
(CMU-AIRe/MRT@1815a8c, analysis/code/), its rules written out here with file and cell or line, and
driven with ttx.rl.mrt on the same scripted texts and J curves."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from ttx.rl import mrt

# --- the reference, written out --------------------------------------------------------------

def ref_break_into_meta_steps(texts, max_steps):
    """analysis/code/break_into_meta_steps_batched.ipynb cell 5 (break_into_meta_steps)."""
    out = []
    for text in texts:
        meta_steps = []
        steps = text.split('\n\n')
        prev_i = 0
        num_s_steps = max_steps
        for i, step in enumerate(steps):
            if num_s_steps == 0:
                break
            if (step.startswith("Wait") or step.startswith("But wait") or step.startswith("Alternatively")
                    or step.startswith("Is there another way to think about this?")
                    or step.startswith("But let me double-check") or step.startswith("But hold on")):
                if prev_i == i or prev_i == i - 1 or prev_i == i - 2:
                    continue
                elif prev_i < i:
                    meta_steps.append("\n\n".join(steps[prev_i:i]).rstrip('\n'))
                    num_s_steps -= 1
                prev_i = i
        if prev_i < len(steps):
            meta_steps.append("\n\n".join(steps[prev_i:]).rstrip('\n'))
        out.append(meta_steps)
    return out


def ref_merge_meta_steps(k_meta_steps, group_size):
    """The same notebook, cell 11 (merge_meta_steps)."""
    return ["\n\n".join(k_meta_steps[i:i + group_size]) for i in range(0, len(k_meta_steps), group_size)]


def ref_prefixes(meta_steps):
    """analysis/code/pass_at_k_given_prefix.py:74-77: the texts after which answers are forced
    (the last one, the whole response, is continued with "\\n</think>" instead)."""
    texts = [""]
    for i in range(len(meta_steps) - 1):
        texts.append("\n\n".join(meta_steps[:i + 1]) + "\n\n")
    return texts


def ref_area(pass_at_1, flops, cutoff):
    """analysis/code/regret.ipynb cell 14, "cutoff areas", for one trace (np.trapz written out)."""
    def trapz(y, x):
        return sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))

    y = [0] + list(pass_at_1)
    x = [0] + list(flops)
    filtered_x = [v for v in x if v < cutoff]
    if len(filtered_x) == len(x):
        return trapz(y + [y[-1]], list(x) + [cutoff]) / cutoff
    cutoff_index = len(filtered_x) - 1
    interpolate_y = y[cutoff_index] + (cutoff - x[cutoff_index]) / (x[cutoff_index + 1] - x[cutoff_index]) \
        * (y[cutoff_index + 1] - y[cutoff_index])
    return trapz(y[:cutoff_index + 1] + [interpolate_y], filtered_x + [cutoff]) / cutoff


# --- scripted texts ---------------------------------------------------------------------------

MARKS = ["Wait, let me check.", "But wait, 3 + 4 is 7.", "Alternatively, count again.",
         "Is there another way to think about this? Yes.", "But let me double-check the sum.",
         "But hold on, the units.", "Waiting is not a marker? It is: it starts with Wait.",
         "So the answer is 7.", "Let x = 3.", "Then 2x = 6.", " Wait (a leading space is no marker).",
         "\\boxed{7}", ""]


def scripted_texts(seed: int, count: int = 60):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        paras = [rng.choice(MARKS) for _ in range(rng.randint(1, 30))]
        out.append("\n\n".join(paras))
    return out


@pytest.mark.parametrize("max_steps", [99, 3, 1, 0])
def test_episodes_match_the_reference_split(max_steps):
    texts = scripted_texts(max_steps)
    for text, ref in zip(texts, ref_break_into_meta_steps(texts, max_steps)):
        assert mrt.episodes(text, max_episodes=max_steps) == ref
        starts = mrt.episode_starts(text, max_episodes=max_steps) + [len(text)]
        assert [text[a:b].rstrip("\n") for a, b in zip(starts, starts[1:])] == ref


@pytest.mark.parametrize("group", [1, 2, 3, 10])
def test_grouped_episodes_match_the_reference_merge(group):
    texts = scripted_texts(100 + group)
    for text, ref in zip(texts, ref_break_into_meta_steps(texts, 99)):
        merged = ref_merge_meta_steps(ref, group)
        assert mrt.episodes(text, group=group) == merged
        assert len(mrt.episode_starts(text, group=group)) == len(merged)


def test_forced_prefixes_match_the_reference():
    for text in scripted_texts(7):
        for group in (1, 2, 10):
            ref = ref_prefixes(ref_merge_meta_steps(ref_break_into_meta_steps([text], 99)[0], group))
            assert mrt.forced_prefixes(mrt.episodes(text, group=group)) == ref


def test_forced_answer_text_is_the_references():
    # analysis/code/pass_at_k_given_prefix.py:27-34
    assert mrt.FORCED_ANSWER == """Time is up.

Given the time I've spent and the approaches I've tried, I should stop thinking and formulate a final \
answer based on what I already have.
</think>

**Step-by-Step Explanation and Answer:**

1. **"""


def test_a_short_text_is_one_episode():
    assert mrt.episodes("Wait.\n\nWait.\n\nWait.") == ["Wait.\n\nWait.\n\nWait."]
    assert mrt.forced_prefixes(["a"]) == [""]
    assert mrt.episodes("") == [""]
    assert mrt.episode_starts("a\n\nb\n\nc\n\nWait, no.") == [0, 9]


# --- progress, reward, advantages on a scripted J ---------------------------------------------

def test_progress_and_reward_on_a_scripted_j():
    j = [0.25, 0.5, 0.375, 1.0]      # J_0 (nothing yet), after episodes 1, 2, and the outcome
    assert mrt.progress(j) == [0.25, -0.125, 0.625]
    # reward = outcome + α Σ_j r_prg = outcome + α (J_n − J_0)
    assert mrt.mrt_reward(1.0, j, alpha=0.5) == pytest.approx(1.0 + 0.5 * 0.75)
    adv = mrt.token_advantages(0.4, [0, 3, 5], 9, j, alpha=2.0)
    assert adv == pytest.approx([0.9] * 3 + [0.15] * 2 + [1.65] * 4)
    with pytest.raises(ValueError):
        mrt.token_advantages(0.0, [0, 3], 9, j, alpha=1.0)


def test_termination_baseline_reading():
    """train/rl/README.md: A = R − R_termination. With α = 1 and outcome-free advantages, an
    episode's bonus is J after it minus J when terminating before it (the termination reward)."""
    j = [0.0, 0.125, 0.75]
    adv = mrt.token_advantages(0.0, [0, 2], 4, j, alpha=1.0)
    assert adv[:2] == [j[1] - j[0]] * 2 and adv[2:] == [j[2] - j[1]] * 2


# --- cumulative regret ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_regret_matches_the_reference_area(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    j = [rng.choice([0, 0.125, 0.25, 0.5, 0.875, 1.0]) for _ in range(n)]
    x = sorted(rng.uniform(10, 500) for _ in range(n))
    for cutoff in (50.0, 200.0, 600.0, x[-1], x[0]):
        assert mrt.normalized_regret(j, x, cutoff) == pytest.approx(1 - ref_area(j, x, cutoff))


def test_regret_extremes():
    assert mrt.normalized_regret([1.0], [1e-9], 100.0) == pytest.approx(0.0, abs=1e-9)
    assert mrt.normalized_regret([0.0, 0.0], [10.0, 20.0], 100.0) == 1.0
    curves = [([1.0], [50.0], 100.0), ([0.0], [50.0], 100.0)]
    assert mrt.cumulative_regret(curves) == pytest.approx((0.25 + 1.0) / 2)   # area 25 + 50 of 100, and 0
    with pytest.raises(ValueError):
        mrt.normalized_regret([1.0], [1.0], 0)


def test_regret_by_problem_as_the_notebook_averages():
    """regret.ipynb cell 14 averages areas over the traces of a problem, then over problems; with
    equal traces per problem that is the mean over all traces, which cumulative_regret takes."""
    rng = random.Random(3)
    per_problem = defaultdict(list)
    for p in range(3):
        for _ in range(4):
            per_problem[p].append(([rng.random()], [rng.uniform(1, 99)], 100.0))
    ref = sum(sum(1 - ref_area(j, x, b) for j, x, b in tr) / len(tr) for tr in per_problem.values()) / 3
    flat = [c for tr in per_problem.values() for c in tr]
    assert mrt.cumulative_regret(flat) == pytest.approx(ref)
