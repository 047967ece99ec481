"""particle-filter and particle-gibbs on tiny models end to end through the CLI: the record's
particles, weights and ancestry, --levels, --resume, `aggregate`, and bad input refused before a
model loads (the algorithm is pinned to its_hub in test_particles_reference.py)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate


def _problems(tmp_path, n=3):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, 3)))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


ARGS = ("--temperature", "1.0", "--seed", "5", "--step-tokens", "3", "--max-steps", "3",
        "--max-new-tokens", "12", "--no-progress")


def _check(r, n, sweeps, refs):
    info = r["particles"]
    assert len(r["traces"]) == n and len(info["sweeps"]) == sweeps
    for k, sweep in enumerate(info["sweeps"]):
        free = n - (refs if k else 0)
        assert 1 <= len(sweep["iterations"]) <= 3
        for it in sweep["iterations"]:
            assert len(it["log_weights"]) == len(it["weights"]) == n
            assert math.isclose(sum(it["weights"]), 1.0, rel_tol=1e-9)
            assert len(it["ancestors"]) == free and all(0 <= a < n for a in it["ancestors"])
        assert len(sweep["references"]) == refs
        assert len(sweep["preds"]) == len(sweep["steps"]) == n
        assert all(1 <= s <= 3 for s in sweep["steps"])
    assert [t["reference"] for t in r["traces"]] == [k >= n - (refs if sweeps > 1 else 0)
                                                     for k in range(n)]
    for t in r["traces"]:
        assert t["log_weight"] == t["log_weights"][-1] and len(t["log_weights"]) == t["steps"]
        assert t["log_weight"] == pytest.approx(math.log(t["score"] / (1 - t["score"])))
        assert t["completion_tokens"] <= 12
    best = max(range(n), key=lambda k: (r["traces"][k]["log_weight"], -k))
    assert info["selected"] == best and r["pred"] == r["traces"][best]["pred"]
    assert r["completion_tokens"] >= r["sequential_tokens"] > 0
    assert r["prefill_tokens"] >= r["prompt_tokens"] > 0


def test_particle_gibbs_levels_and_resume(tmp_path, eos_model_dir):
    from ttx.tts.registry import regrade_record

    problems = _problems(tmp_path)
    args = ["tts-run", "--model", eos_model_dir, "-i", problems, "--strategy", "particle-gibbs",
            "--levels", "n=2,3", "--pg-sweeps", "2", "--batch-rows", "3", *ARGS]
    whole = tmp_path / "whole.jsonl"
    result = run_cli([*args, "-o", whole])
    assert result.exit_code == 0, result.output
    records = _records(whole)
    assert len(records) == 3 * 2
    for r in records:
        assert r["strategy"] == "particle-gibbs" and r["level_key"] == "n"
        _check(r, r["n"], 2, 1)
        assert regrade_record(r)["pred"] == r["pred"]          # aggregate: from the record
    # interrupted after 4 records with a torn line, then resumed: the same records
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:4]) + lines[4][:30])
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = run_cli([*args, "-o", part, "--resume"])
    assert result.exit_code == 0, result.output
    # cached_prefill_tokens depends on what the engine's prefix cache kept from the call
    # before (a resumed session starts cold): the one field that may differ
    strip = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                         if k not in ("wall_s", "cached_prefill_tokens")} for r in rs]
    assert strip(_records(part)) == strip(records)


def test_particle_filter_with_the_policy_score(tmp_path, eos_model_dir):
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", eos_model_dir, "-i", _problems(tmp_path, 2), "-o",
                      out, "--strategy", "particle-filter", "--n", "4", "--pf-temperature", "0.5",
                      *ARGS])
    assert result.exit_code == 0, result.output
    for r in _records(out):
        _check(r, 4, 1, 0)
        assert r["particles"]["temperature"] == 0.5 and r["particles"]["select"] == "argmax"


@pytest.mark.parametrize("args, message", [
    (["--strategy", "particle-filter", "--pg-sweeps", "2"],
     "--pg-sweeps does not apply to --strategy particle-filter (it applies to particle-gibbs)"),
    (["--strategy", "particle-gibbs", "--n", "2", "--pg-ref-particles", "2"],
     "--n 2 must exceed --pg-ref-particles 2"),
    (["--strategy", "particle-gibbs", "--n", "3", "--levels", "n=1,3"],
     "--n 1 must exceed --pg-ref-particles 1"),
    (["--strategy", "particle-filter", "--pf-temperature", "0"], "--pf-temperature"),
    (["--strategy", "particle-filter", "--pf-select", "vote"], "--pf-select"),
    (["--strategy", "particle-gibbs", "--pg-sweeps", "0"], "--pg-sweeps"),
    (["--strategy", "particle-filter", "--scorer", "self-certainty"],
     "--scorer self-certainty is not one"),
    (["--strategy", "particle-filter", "--beam-width", "2"],
     "--beam-width does not apply to --strategy particle-filter"),
    (["--strategy", "beam", "--pf-temperature", "2"],
     "--pf-temperature does not apply to --strategy beam"),
])
def test_bad_input_is_refused_before_a_model_loads(tmp_path, args, message):
    out = tmp_path / "o.jsonl"
    out.write_text('{"keep": 1}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "no-model-needed", "-i",
                      _problems(tmp_path, 1), "-o", out, "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert out.read_text() == '{"keep": 1}\n'


def test_particle_gibbs_with_a_process_reward_model(tmp_path, eos_model_dir, tiny_model_dir):
    """A PRM weighs the particles (the tiny model read as a Math-Shepherd PRM, model-card
    input)."""
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", eos_model_dir, "-i", _problems(tmp_path, 2), "-o",
                      out, "--strategy", "particle-gibbs", "--n", "3", "--reward-model",
                      tiny_model_dir, "--prm-good-token", "+", "--prm-input", "model-card",
                      *ARGS])
    assert result.exit_code == 0, result.output
    for r in _records(out):
        for t in r["traces"]:
            if t["score"] is None:                             # nothing to score: weight 0
                assert t["log_weight"] == pytest.approx(math.log(1e-7 / (1 - 1e-7)))
            else:
                assert t["score"] == t["step_scores"][-1]      # --agg last
                assert t["log_weight"] == pytest.approx(math.log(t["score"] / (1 - t["score"])))
        assert len(r["particles"]["sweeps"]) == 2
        best = max(range(3), key=lambda k: (r["traces"][k]["log_weight"], -k))
        assert r["pred"] == r["traces"][best]["pred"]


def test_a_path_with_no_scored_step_gets_the_lowest_weight():
    """A reward model that returns no step score for a path (a model-card PRM input of an empty
    path): the particle's score is none and its weight that of score 0, clipped."""
    from tests.search_script import ScriptedEngine, ScriptedPRM, unit
    from ttx.engines.base import SamplingParams
    from ttx.tts.particles import ParticleFilter
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    class Silent(ScriptedPRM):
        def score_paths(self, paths):
            scores = super().score_paths(paths)
            return [[] if unit("".join(steps)) < 0.5 else s for (_, steps), s in zip(paths, scores)]

    cfg = StrategyConfig(strategy="particle-filter", n=6,
                         params=SamplingParams(max_new_tokens=64, temperature=1.0, seed=1),
                         search=SearchConfig(max_steps=3))
    runner = ParticleFilter(cfg)
    runner.scorer = Silent()
    [out] = runner.run(ScriptedEngine(), ["P|"], cfg)
    low = math.log(1e-7 / (1 - 1e-7))
    first = out.extra["particles"]["sweeps"][0]["iterations"][0]["log_weights"]
    assert first.count(pytest.approx(low)) == sum(unit(f"s1.{j}") < 0.5 for j in range(6))
    assert 0 < first.count(pytest.approx(low)) < 6
    assert all(t["log_weight"] == pytest.approx(low) for t in out.traces if t["score"] is None)
