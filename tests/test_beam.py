"""Step-level beam search, DVTS and DORA on tiny models end to end: survivors, EOS, bookkeeping;
bad combinations (the algorithms are pinned to their references in test_search_reference.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate


def _problems(tmp_path, n=3):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, 3)))
    return path


def _run(model, tmp_path, strategy, *extra):
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", model, "-i", _problems(tmp_path), "-o", out,
                      "--strategy", strategy, "--temperature", "1.0", "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_beam_keeps_n_over_m_survivors_and_ends_beams_at_eos(tmp_path, eos_model_dir):
    n, m, steps, budget = 8, 2, 4, 24
    records = _run(eos_model_dir, tmp_path, "beam", "--n", str(n), "--beam-width", str(m),
                   "--step-tokens", "3", "--max-steps", str(steps), "--max-new-tokens", str(budget))
    early_eos = 0
    for r in records:
        log = r["beam"]["iterations"]
        assert log[0]["survivors"] == 1 and log[0]["rollouts"] == [n]       # n first steps
        for it in log[1:]:
            assert it["survivors"] == min(n // m, it["candidates"])
            assert sum(it["rollouts"]) == n
            if it["survivors"] == n // m:
                assert it["rollouts"] == [m] * (n // m)                    # M ways each
        # every rollout is either a finished beam (a trace) or a candidate of the next step:
        # a beam that ended is never expanded again
        rollouts = sum(sum(it["rollouts"]) for it in log)
        assert rollouts == len(r["traces"]) + sum(it["candidates"] for it in log[1:])
        for t in r["traces"]:
            assert t["completion_tokens"] <= budget
            assert len(t["step_scores"]) == t["steps"] <= steps
            if t["steps"] < steps:          # ended before the last step: EOS or the budget
                assert t["finish_reason"] == "stop" or t["completion_tokens"] == budget
            early_eos += t["steps"] < steps and t["finish_reason"] == "stop"
        best = max(r["traces"], key=lambda t: t["score"])
        assert r["pred"] == best["pred"]
        assert r["completion_tokens"] >= r["sequential_tokens"] >= max(
            t["completion_tokens"] for t in r["traces"])
    assert early_eos > 0


def test_dora_splits_n_rollouts_by_score_and_diversity(tmp_path, tiny_model_dir):
    records = _run(tiny_model_dir, tmp_path, "dora", "--n", "4", "--beam-width", "2",
                   "--step-tokens", "3", "--max-steps", "3", "--max-new-tokens", "12",
                   "--embedder", tiny_model_dir)
    for r in records:
        for it in r["dora"]["iterations"]:
            assert len(it["rollouts"]) == it["candidates"]
            assert sum(k > 0 for k in it["rollouts"]) == it["survivors"]
        assert len(r["traces"]) == 4 and all(t["score"] is not None for t in r["traces"])
        assert r["prefill_tokens"] >= r["prompt_tokens"] > 0


def test_dvts_gives_n_solutions_from_n_over_m_subtrees(tmp_path, eos_model_dir):
    records = _run(eos_model_dir, tmp_path, "dvts", "--n", "4", "--beam-width", "2",
                   "--step-tokens", "3", "--max-steps", "3", "--max-new-tokens", "12")
    for r in records:
        assert len(r["traces"]) == 4 and r["dvts"]["subtrees"] == 2
        best = max(r["traces"], key=lambda t: t["score"])
        assert r["pred"] == best["pred"]
        assert r["completion_tokens"] >= sum(t["completion_tokens"] for t in r["traces"]) / 2


@pytest.mark.parametrize("args, message", [
    (["--strategy", "beam", "--n", "6", "--beam-width", "4"], "multiple of --beam-width"),
    (["--strategy", "majority", "--turns", "3"], "--turns does not apply to --strategy majority"
                                                 " (it applies to refine)"),
    (["--strategy", "majority", "--min-thinking-tokens", "9"],
     "--min-thinking-tokens does not apply to --strategy majority"),
    (["--strategy", "beam", "--dora-tau", "0.2"], "(it applies to dora)"),
    (["--strategy", "refine", "--agg", "min"], "--agg does not apply to --strategy refine"),
    (["--strategy", "budget-forcing", "--min-thinking-tokens", "300", "--max-new-tokens", "64"],
     "exceeds the maximum"),
    (["--strategy", "greedy", "--levels", "turns=1,2"], "--levels turns=... does not apply"),
    (["--strategy", "beam", "--n", "4", "--levels", "n=2,3"], "--n 3 must be a multiple"),
    (["--strategy", "dvts", "--n", "6", "--beam-width", "4"], "multiple of --beam-width"),
    (["--strategy", "beam", "--lookahead", "1"], "needs --reward-model"),
    (["--strategy", "beam", "--filter-duplicates"], "applies to --beam-style search-and-learn"),
    (["--strategy", "budget-forcing", "--min-thinking-tokens", "5"], "--num-ignore 0"),
])
def test_invalid_combinations_fail_before_any_output(tmp_path, args, message):
    out = tmp_path / "o.jsonl"
    out.write_text('{"keep": 1}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "no-model-needed", "-i",
                      _problems(tmp_path, 1), "-o", out, "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert out.read_text() == '{"keep": 1}\n'
