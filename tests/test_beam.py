"""Step-level beam search and DORA on tiny models: survivors, EOS, allocation; bad combinations."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.tts.beam import dora_allocation, largest_remainder


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


def test_dora_allocation_sums_to_n_and_penalises_a_duplicate():
    a, b = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    # candidates 0 and 1 are the same direction, 2 is distinct; all score the same
    alloc = dora_allocation([0.5, 0.5, 0.5], [a, a, b], n=8)
    assert sum(alloc) == 8
    assert alloc[2] > alloc[0] and alloc[0] == alloc[1]
    # a distinct candidate is worth about as much as the two copies together
    assert alloc == [2, 2, 4]
    # quality still counts: a better score gets more at equal diversity (tau = 0.1)
    alloc = dora_allocation([0.9, 0.5, 0.5], [a, b, [0.0, 0.0, 1.0]], n=8)
    assert sum(alloc) == 8 and alloc[0] > alloc[1] == alloc[2]
    for n in (1, 3, 7, 16):
        assert sum(dora_allocation([0.1, 0.4, 0.3, 0.2], [a, b, a, [0.5, 0.5, 0.0]], n)) == n


def test_largest_remainder_rounds_to_the_total():
    assert largest_remainder([1.5, 1.5, 1.0], 4) == [2, 1, 1]
    assert sum(largest_remainder([0.3] * 10, 3)) == 3


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
            assert sum(it["rollouts"]) == 4 and len(it["rollouts"]) == it["survivors"]
        assert all(t["score"] is not None for t in r["traces"])


@pytest.mark.parametrize("args, message", [
    (["--strategy", "beam", "--n", "6", "--beam-width", "4"], "multiple of --beam-width"),
    (["--strategy", "majority", "--turns", "3"], "--turns applies to --strategy refine"),
    (["--strategy", "majority", "--min-thinking-tokens", "9"], "--min-thinking-tokens applies"),
    (["--strategy", "beam", "--dora-tau", "0.2"], "--dora-tau applies to --strategy dora"),
    (["--strategy", "refine", "--agg", "min"], "--agg applies to --strategy beam or dora"),
    (["--strategy", "budget-forcing", "--min-thinking-tokens", "300", "--max-new-tokens", "64"],
     "exceeds the maximum"),
    (["--strategy", "greedy", "--levels", "turns=1,2"], "needs --strategy refine"),
    (["--strategy", "beam", "--n", "4", "--levels", "n=2,3"], "--n 3 must be a multiple"),
])
def test_invalid_combinations_fail_before_any_output(tmp_path, args, message):
    out = tmp_path / "o.jsonl"
    out.write_text('{"keep": 1}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "no-model-needed", "-i",
                      _problems(tmp_path, 1), "-o", out, "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert out.read_text() == '{"keep": 1}\n'
