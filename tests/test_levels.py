"""Compute levels and ARISE's dynamic repeat rule, unit and end to end."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.scoring.answers import answers_equal, extract_answer
from ttx.tts.levels import Levels, RepeatRule, cv, parse_levels


def test_parse_levels():
    assert parse_levels("n=1,2,4,8") == Levels("n", (1, 2, 4, 8))
    assert parse_levels("max-new-tokens=64,128") == Levels("max_new_tokens", (64, 128))
    for bad in ("n", "x=1,2", "n=1,a", "n=0,2", "n="):
        with pytest.raises(ValueError):
            parse_levels(bad)


def test_cv_uses_the_population_std():
    assert cv([1, 1, 1]) == 0
    assert cv([0, 1]) == pytest.approx(0.5 / (0.5 + 1e-8))
    assert cv([2, 4, 6]) == pytest.approx(math.sqrt(8 / 3) / 4)


def _drive(rule: RepeatRule, outcomes):
    """Feed a fixed sequence of (correct, tokens) outcomes; return how many repeats were run."""
    accs, tokens = [], []
    for acc, tok in outcomes:
        if not rule.wants_more(accs, tokens):
            break
        accs.append(acc)
        tokens.append(tok)
    return len(accs)


def test_dynamic_repeats_stop_where_the_rule_says():
    rule = RepeatRule(3, 10, 0.5)
    # stable outcomes: CV 0 + CV 0 after the minimum of 3
    assert _drive(rule, [(1, 100)] * 20) == 3
    # always wrong, tokens steady: CV(acc) of all zeros is 0
    assert _drive(rule, [(0, 100), (0, 110), (0, 90)] + [(0, 100)] * 20) == 3
    # alternating right/wrong: CV(acc) = 1 forever -> runs to the maximum
    assert _drive(rule, [(1, 100), (0, 100)] * 10) == 10
    # unstable at first, then settles: [1,0,1] has CV 0.707; adding 1s brings it under 0.5
    seq = [(1, 100), (0, 100), (1, 100)] + [(1, 100)] * 10
    accs = [1, 0, 1]
    n = 3
    while cv(accs) > 0.5:
        accs.append(1)
        n += 1
    assert _drive(rule, seq) == n == 5
    # token spread alone keeps it going: CV(tokens) of [10, 200, 10] > 0.5
    assert _drive(rule, [(1, 10), (1, 200), (1, 10)] + [(1, 10)] * 10) > 3
    assert _drive(RepeatRule.fixed(4), [(1, 100), (0, 5)] * 5) == 4


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_levels_write_one_record_per_problem_level_and_repeat(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(3, 5)))
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "majority", "--levels", "n=1,2,4", "--repeats", "2",
                      "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert len(records) == 3 * 3 * 2
    for r in records:
        assert r["level_key"] == "n" and r["n"] == {1: 1, 2: 2, 3: 4}[r["level"]]
        assert len(r["traces"]) == r["n"] and r["repeat"] in (0, 1)
    # the two repeats of a (problem, level) are different samples
    by_key = {(r["id"], r["level"], r["repeat"]): r for r in records}
    assert any(by_key[(pid, 3, 0)]["traces"] != by_key[(pid, 3, 1)]["traces"]
               for pid in {r["id"] for r in records})
    score = run_cli(["score", "-i", out, "--json"])
    run = json.loads(score.stdout)["runs"][0]
    assert run["level_key"] == "n" and [lv["value"] for lv in run["levels"]] == [1, 2, 4]
    assert run["arise"]["n_levels"] == 3


def test_dynamic_repeats_end_to_end(tmp_path, tiny_model_dir):
    """Every (problem, level) gets between min and max repeats, each wanted by the rule given
    the outcomes before it, and no more once the rule is satisfied."""
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 5)))
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "sample", "--levels", "max_new_tokens=2,4", "--n", "2",
                      "--repeats-min", "2", "--repeats-max", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    counts: dict = {}
    for r in _records(out):
        counts.setdefault((r["id"], r["level"]), []).append(r)
        assert r["max_new_tokens"] == {1: 2, 2: 4}[r["level"]]
    for rs in counts.values():
        rs.sort(key=lambda r: r["repeat"])
        accs = [float(answers_equal(r["pred"], extract_answer(r["answer"]))) for r in rs]
        tokens = [float(r["completion_tokens"]) for r in rs]
        assert 2 <= len(rs) <= 4
        rule = RepeatRule(2, 4, 0.5)
        # the rule wanted every repeat that ran, and no more after the last
        assert all(rule.wants_more(accs[:k], tokens[:k]) for k in range(len(rs)))
        assert len(rs) == 4 or not rule.wants_more(accs, tokens)
