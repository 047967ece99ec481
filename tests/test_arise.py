"""ARISE on hand-made cases, its classes and severe degradations, the slope metric, s1, TTSPM."""

import pytest

from ttx.scoring.arise import (
    arise_score,
    arise_summary,
    classify,
    fit_ttspm,
    level_axis,
    level_means,
    problem_curves,
    s1_metrics,
    saturation_n,
    severe_degradations,
    slope_score,
)

TOL = 1e-9


def test_gain_with_growing_tokens_is_discounted():
    # Δa = 1, W = (100/200)^1
    assert arise_score([0, 1], [100, 200]) == pytest.approx(0.5, abs=TOL)
    # two gains of 0.5, each at a token ratio of 1/2: 0.25 + 0.25
    assert arise_score([0, 0.5, 1], [100, 200, 400]) == pytest.approx(0.5, abs=TOL)


def test_loss_with_growing_tokens_is_amplified():
    # Δa = -1, W = (100/300)^-1 = 3: the negative-scaling penalty
    assert arise_score([1, 0], [100, 300]) == pytest.approx(-3.0, abs=TOL)
    # a loss that saved tokens is softened: W = (200/100)^-1 = 0.5
    assert arise_score([1, 0], [200, 100]) == pytest.approx(-0.5, abs=TOL)
    # a gain that saved tokens is rewarded: W = 200/100
    assert arise_score([0, 1], [200, 100]) == pytest.approx(2.0, abs=TOL)


def test_flat_accuracy_contributes_nothing():
    assert arise_score([1, 1, 1], [100, 200, 400]) == 0.0
    assert arise_score([0.5, 0.5], [100, 900]) == 0.0
    assert arise_score([0, 0, 0], [10, 20, 40]) == 0.0


def test_fractional_accuracies_from_repeats():
    # level 1: repeats right/wrong/wrong, tokens 90/100/110   -> a = 1/3, t = 100
    # level 2: right/right/wrong, tokens 150/210/240           -> a = 2/3, t = 200
    # level 3: wrong/right/wrong/right, tokens 400 each         -> a = 1/2, t = 400
    # ARISE = (1/3)(100/200) + (-1/6)(400/200) = 1/6 - 1/3 = -1/6
    rows = [(1, True, 90), (1, False, 100), (1, False, 110),
            (2, True, 150), (2, True, 210), (2, False, 240),
            (3, False, 400), (3, True, 400), (3, False, 400), (3, True, 400)]
    records = [{"completion_tokens": t} for _, _, t in rows]
    curves = problem_curves(records, [ok for _, ok, _ in rows], [lv for lv, _, _ in rows],
                            ["p"] * len(rows))
    c = curves["p"]
    assert c["levels"] == [1, 2, 3] and c["repeats"] == [3, 3, 4]
    assert c["a"] == pytest.approx([1 / 3, 2 / 3, 1 / 2], abs=TOL)
    assert c["t"] == pytest.approx([100, 200, 400], abs=TOL)
    assert arise_score(c["a"], c["t"]) == pytest.approx(-1 / 6, abs=TOL)
    assert arise_summary(curves)["arise"] == pytest.approx(-1 / 6, abs=TOL)


def test_pairs_with_zero_or_negative_tokens_are_skipped():
    # pair 1 skipped (t = 0); pair 2: Δa = -0.5, W = (100/200)^-1 = 2 -> -1
    assert arise_score([0, 1, 0.5], [0, 100, 200]) == pytest.approx(-1.0, abs=TOL)
    assert arise_score([0, 1], [-5, 100]) == 0.0
    assert arise_score([0, 1, 1], [100, 0, 50]) == 0.0


def test_fewer_than_two_levels_gives_zero():
    assert arise_score([1], [100]) == 0.0
    assert arise_score([], []) == 0.0
    assert arise_summary({"p": {"levels": [1], "a": [1.0], "t": [10.0], "s": [10.0]}})["arise"] == 0


def test_slope_and_arise_disagree_on_a_costly_degradation():
    """ARISE (arXiv 2510.06014) argues that slope-style metrics, which only look at the ends,
    hide negative scaling in between; ARISE charges it, amplified by the extra tokens."""
    steady = ([0, 0.5, 0.5, 1], [100, 200, 300, 400])
    # right at level 2, then wrong at level 3 while tokens almost triple, then right again
    costly = ([0, 1, 0, 1], [100, 110, 300, 350])
    assert slope_score(*costly) > slope_score(*steady)          # slope: 1/250 vs 1/300
    # steady: 0.5 (100/200) + 0 + 0.5 (300/400) = 0.625
    assert arise_score(*steady) == pytest.approx(0.625, abs=TOL)
    # costly: 1 (100/110) - 1 (300/110) + 1 (300/350)
    want = 100 / 110 - 300 / 110 + 300 / 350
    assert arise_score(*costly) == pytest.approx(want, abs=TOL)
    assert arise_score(*costly) < 0 < arise_score(*steady)     # ARISE ranks the other way
    sev = severe_degradations(costly[0], costly[1], [1, 2, 3, 4])
    assert [(d["from_level"], d["to_level"]) for d in sev] == [(2, 3)]
    assert sev[0]["token_ratio"] == pytest.approx(300 / 110)


def test_severe_needs_ratio_above_1_5():
    for rule in ("reference", "1-to-0"):
        assert severe_degradations([1, 0], [100, 150], [1, 2], rule=rule) == []   # exactly 1.5
        assert len(severe_degradations([1, 0], [100, 151], [1, 2], rule=rule)) == 1
    # the 1 -> 0 rule skips a fractional drop; the reference counts it
    assert severe_degradations([1, 0.5], [100, 400], [1, 2], rule="1-to-0") == []
    assert len(severe_degradations([1, 0.5], [100, 400], [1, 2])) == 1


def _reference_severe(accs, tokens, ratio=1.5):
    """yinzhangyue/ARISE@fe773f0 code/arise_metric.py:176-186, written out: every j with
    accs[j] < accs[j-1] and tokens[j] / tokens[j-1] > 1.5 is one severe degradation."""
    return [j for j in range(1, len(accs))
            if accs[j] < accs[j - 1] and tokens[j] / tokens[j - 1] > ratio]


def _reference_slope(curves):
    """code/arise_metric.py:205-215: the first and last levels' mean accuracy and tokens."""
    a0 = sum(c["a"][0] for c in curves.values()) / len(curves)
    a1 = sum(c["a"][-1] for c in curves.values()) / len(curves)
    t0 = sum(c["t"][0] for c in curves.values()) / len(curves)
    t1 = sum(c["t"][-1] for c in curves.values()) / len(curves)
    return (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0


def test_severe_and_slope_reproduce_the_reference():
    import random

    rng = random.Random(3)
    curves = {}
    for i in range(60):
        levels = 4
        accs = [rng.choice([0, 1 / 3, 0.5, 2 / 3, 1]) for _ in range(levels)]
        tokens = [rng.uniform(50, 400) for _ in range(levels)]
        curves[f"p{i}"] = {"levels": list(range(1, levels + 1)), "a": accs, "t": tokens,
                           "s": tokens}
    s = arise_summary(curves)
    want = sum(len(_reference_severe(c["a"], c["t"])) for c in curves.values())
    assert want > 10 and s["n_severe"] == want       # one per (problem, transition), as theirs
    assert s["n_severe_1_to_0"] < s["n_severe"]
    assert s["slope"] == pytest.approx(_reference_slope(curves), abs=1e-15)
    assert s["slope_per_problem"] == pytest.approx(
        sum(slope_score(c["a"], c["t"]) for c in curves.values()) / len(curves))
    assert s["per_problem"] == {pid: arise_score(c["a"], c["t"]) for pid, c in curves.items()}


@pytest.mark.parametrize("acc,want", [
    ([1, 1, 1], "always_correct"), ([0, 0], "always_wrong"), ([1], "always_correct"),
    ([0, 0.5, 1], "improved"), ([0, 0, 1], "improved"), ([1, 0.5, 0.5], "degraded"),
    ([0, 1, 0], "mixed"), ([0.5, 0.5], "mixed"), ([0.3], "mixed"),
])
def test_classify(acc, want):
    assert classify(acc) == want


def test_arise_summary_counts_and_spread():
    curves = {
        "a": {"levels": [1, 2], "a": [0.0, 1.0], "t": [100.0, 200.0], "s": [100.0, 200.0]},
        "b": {"levels": [1, 2], "a": [1.0, 0.0], "t": [100.0, 200.0], "s": [100.0, 200.0]},
        "c": {"levels": [1, 2], "a": [1.0, 1.0], "t": [100.0, 200.0], "s": [100.0, 200.0]},
        "d": {"levels": [1, 2], "a": [0.0, 0.0], "t": [100.0, 100.0], "s": [100.0, 100.0]},
    }
    s = arise_summary(curves)
    values = [0.5, -2.0, 0.0, 0.0]
    mean = sum(values) / 4
    assert s["arise"] == pytest.approx(mean, abs=TOL)
    assert s["arise_std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 4) ** 0.5)
    assert (s["arise_min"], s["arise_max"]) == (-2.0, 0.5)
    assert (s["always_correct"], s["always_wrong"], s["improved"], s["degraded"], s["mixed"]) \
        == (1, 1, 1, 1, 0)
    assert s["n_severe"] == 1 and s["severe_degradations"][0]["id"] == "b"
    # per-problem slopes: (1/100 - 1/100 + 0 + 0) / 4; the dataset's: mean accuracy 0.5 -> 0.5
    assert s["slope_per_problem"] == pytest.approx(0.0, abs=TOL)
    assert s["slope"] == pytest.approx(0.0, abs=TOL)
    assert s["per_problem"] == {"a": 0.5, "b": -2.0, "c": 0.0, "d": 0.0}


def test_s1_metrics_by_hand():
    means = [{"accuracy": 0.2, "cost": 100, "sequential_tokens": 100},
             {"accuracy": 0.4, "cost": 200, "sequential_tokens": 300},
             {"accuracy": 0.5, "cost": 400, "sequential_tokens": 400}]
    s = s1_metrics(means, "max_new_tokens", [128, 256, 512])
    assert s["control"] == pytest.approx(2 / 3)          # level 2 overran its budget
    assert s["scaling"] == pytest.approx((0.2 / 100 + 0.3 / 300 + 0.1 / 200) / 3)
    assert s["performance"] == 0.5
    assert s1_metrics(means, "n", [1, 2, 4])["control"] is None


def test_ttspm_fit_recovers_the_curve():
    ns = [1, 2, 4, 8, 16, 32]
    acc = [0.8 * (1 - 0.7 ** n) for n in ns]
    fit = fit_ttspm(ns, acc, eps=1e-3)
    assert fit["f_max"] == pytest.approx(0.8, abs=1e-4)
    assert fit["p"] == pytest.approx(0.3, abs=1e-4)
    # 0.24 * 0.7^15 = 1.14e-3 >= eps > 0.24 * 0.7^16 = 7.97e-4
    assert fit["saturation_n"] == 16
    assert fit_ttspm([4, 4], [0.1, 0.2]) is None


def test_saturation_n_edges():
    assert saturation_n(0.5, 0.001, 1e-3) == 0   # gain already below eps
    assert saturation_n(1.0, 1.0, 1e-3) == 1


def test_level_axis_and_level_means():
    recs = [{"n": 1}, {"n": 1}, {"n": 4}, {"n": 4}]
    assert level_axis(recs, [1, 1, 2, 2]) == ("n", {1: 1, 2: 4})
    recs = [{"max_new_tokens": 512, "n": 1}, {"max_new_tokens": 1024, "n": 1}]
    assert level_axis(recs, [1, 2]) == ("max_new_tokens", {1: 512, 2: 1024})
    assert level_axis([{"n": 2}, {"n": 1}], [1, 2]) == (None, {})  # does not grow
    recs = [{"level_key": "turns", "turns": 1}, {"level_key": "turns", "turns": 3}]
    assert level_axis(recs, [1, 2]) == ("turns", {1: 1, 2: 3})
    curves = {"p": {"levels": [1, 2], "a": [0.0, 1.0], "t": [10.0, 30.0], "s": [10.0, 20.0]},
              "q": {"levels": [2], "a": [0.5], "t": [50.0], "s": [50.0]}}
    means = level_means(curves)
    assert [m["n_problems"] for m in means] == [1, 2]
    assert means[1]["accuracy"] == pytest.approx(0.75)
    assert means[1]["cost"] == pytest.approx(40.0)
