"""pass@k, maj@k and the flat per-run summary."""

import math
import random

import pytest

from ttx.scoring.metrics import default_ks, maj_at_k, pass_at_k, record_correct, summarize


def test_pass_at_k_matches_combinatorial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every k-subset holds a correct sample
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_maj_at_k_first_k_and_ties():
    preds = ["7", "18", "18.0", "7"]
    assert maj_at_k(preds, "7", 4) == 1.0   # 2-2 tie: "7" was seen first
    assert maj_at_k(preds, "18", 4) == 0.0
    assert maj_at_k(preds, "18", 3) == 1.0  # 18 and 18.0 vote together
    assert maj_at_k(preds, "7", 1) == 1.0
    # lm-eval (default): a trace without an answer votes "[invalid]", which wins here
    assert maj_at_k([None, None, "3"], "3", 3) == 0.0
    assert maj_at_k([None, None, "3"], "3", 3, invalid="skip") == 1.0   # None does not vote
    assert maj_at_k([None, "3", "3"], "3", 3) == 1.0
    assert maj_at_k([None, "3"], "3", 2) == 0.0                          # tie: seen first
    with pytest.raises(ValueError):
        maj_at_k(preds, "7", 5)


def _lm_eval_majority(preds):
    """EleutherAI/lm-evaluation-harness@4e7e0d4 lm_eval/filters/extraction.py:28,58 (no match ->
    "[invalid]") and lm_eval/filters/selection.py:57-58 (Counter(resp).most_common(1)[0][0]),
    written out."""
    from collections import Counter

    return Counter(["[invalid]" if p is None else p for p in preds]).most_common(1)[0][0]


def test_majority_vote_is_lm_evals_rule():
    from ttx.scoring.answers import majority_vote

    rng = random.Random(5)
    for _ in range(500):
        preds = [rng.choice([None, "1", "2", "3"]) for _ in range(rng.randint(1, 9))]
        want = _lm_eval_majority(preds)
        got = majority_vote(preds)
        assert (got if got is not None else "[invalid]") == want, preds


def test_maj_at_k_bootstrap():
    # k=2 subsets of ["1", "1", "2"] (kept in trace order): {0,1} -> 1, {0,2} tie -> 1,
    # {1,2} tie -> 1: always right
    assert maj_at_k(["1", "1", "2"], "1", 2, bootstrap=50) == 1.0
    # ["2", "1", "1"], k=2: {0,1} tie -> 2, {0,2} tie -> 2, {1,2} -> 1: right 1/3 of the time
    # sampled (C(12, 2) = 66 < B): six "2" then six "1"; a pair is right only when both are
    # "1" (a mixed pair ties and the earlier "2" wins): P = C(6, 2) / C(12, 2) = 15/66
    preds = ["2"] * 6 + ["1"] * 6
    got = maj_at_k(preds, "1", 2, bootstrap=3000, rng=random.Random(0))
    assert got == pytest.approx(15 / 66, abs=0.03)
    again = maj_at_k(preds, "1", 2, bootstrap=3000, rng=random.Random(0))
    assert got == again  # seeded: repeatable
    assert maj_at_k(["2", "1", "1"], "1", 3, bootstrap=20) == 1.0
    # C(3, 2) = 3 <= B: the exact mean over all subsets, no sampling noise
    assert maj_at_k(["2", "1", "1"], "1", 2, bootstrap=3) == pytest.approx(1 / 3, abs=1e-12)


def test_default_ks():
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6, [3, 5]) == [1, 2, 3, 4, 5]
    assert default_ks(0) == []


def _rec(gold, pred, trace_preds, tokens=100, **kw):
    traces = [{"text": f"... {p}", "pred": p, "completion_tokens": tokens // max(len(trace_preds), 1),
               "finish_reason": "stop", "score": None} for p in trace_preds]
    return {"id": kw.pop("id", "x"), "question": "q", "answer": gold, "pred": pred,
            "traces": traces, "completion_tokens": tokens, "sequential_tokens": tokens // 2,
            "prompt_tokens": 20, "wall_s": 0.5, **kw}


def test_record_correct_recomputes_and_reads_gsm8k_gold():
    assert record_correct({"answer": "blah\n#### 1,000", "pred": "1000", "correct": False})
    assert not record_correct({"answer": "#### 18", "pred": "17", "correct": True})
    assert not record_correct({"answer": "#### 18", "pred": None})


def test_summarize_by_hand():
    records = [
        _rec("#### 18", "18", ["18", "3", "18", "18"], tokens=400),
        _rec("#### 5", "4", ["4", "5", "4", "4"], tokens=200),
        _rec("\\frac{1}{2}", "0.5", ["0.5", "1/2"], tokens=120),
    ]
    s = summarize(records)
    assert s["n_records"] == 3
    assert s["accuracy"] == pytest.approx(2 / 3)
    # pass@1 = mean of c/n: 3/4, 1/4, 2/2
    assert s["pass@1"] == pytest.approx((0.75 + 0.25 + 1.0) / 3)
    # pass@2: 1 - C(n-c,2)/C(n,2): 1 - 0/6, 1 - 3/6, 1 - 0/1
    assert s["pass@2"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    # pass@4 only over the two records with 4 traces: 1, 1
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["maj@1"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["maj@2"] == pytest.approx((1 + 0 + 1) / 3)  # [4, 5] tie -> 4 (seen first)
    assert s["maj@4"] == pytest.approx(0.5)
    assert s["mean_completion_tokens"] == pytest.approx(240.0)
    assert s["mean_sequential_tokens"] == pytest.approx(120.0)
    assert s["mean_prompt_tokens"] == pytest.approx(20.0)
    assert s["accuracy_per_1k_tokens"] == pytest.approx((2 / 3) / 240 * 1000)
    assert s["mean_wall_s"] == pytest.approx(0.5)
    assert s["total_wall_s"] == pytest.approx(0.5 * s["n_records"])
    assert s["mean_traces"] == pytest.approx(10 / 3)


def test_summarize_extra_k_and_missing_fields():
    records = [{"answer": "3", "pred": "3"}, {"answer": "4", "pred": "5"}]
    s = summarize(records, ks=[3])
    assert s["accuracy"] == 0.5
    assert s["pass@3"] is None and s["maj@3"] is None  # asked for, but no record has 3 traces
    assert s["mean_completion_tokens"] is None and s["accuracy_per_1k_tokens"] is None


def test_summarize_traces_without_pred_use_text():
    rec = {"answer": "#### 18", "pred": "18",
           "traces": [{"text": "so \\boxed{18}"}, {"text": "The answer is 17."}]}
    s = summarize([rec])
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["maj@2"] == 1.0  # tie: 18 first


def test_repeats_of_a_problem_weigh_as_one_problem():
    """Problem a has 3 repeats (all right), problem b one (wrong): accuracy over problems is 0.5,
    not 0.75 over records."""
    def rec(pid, pred, tokens):
        return {"id": pid, "answer": "1", "pred": pred, "completion_tokens": tokens,
                "traces": [{"pred": pred}]}
    records = [rec("a", "1", 10), rec("a", "1", 20), rec("a", "1", 30), rec("b", "2", 100)]
    ids = [r["id"] for r in records]
    s = summarize(records, ids=ids)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["mean_completion_tokens"] == pytest.approx((20 + 100) / 2)
    assert summarize(records)["accuracy"] == pytest.approx(0.75)     # per record without ids
