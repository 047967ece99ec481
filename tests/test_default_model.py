"""End to end on the real default model (SmolLM2-135M-Instruct from its GGUF), kept small."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli
from ttx.data.arith import generate
from ttx.scoring.answers import answers_equal, extract_answer

pytestmark = pytest.mark.model


def test_gguf_converts_once_to_a_plain_transformers_checkpoint(default_model_dir):
    from transformers import AutoConfig

    from ttx.models import resolve_model

    assert (default_model_dir / "model.safetensors").is_file()
    assert not any(default_model_dir.glob("*.bin")) and not any(default_model_dir.glob("*.pt"))
    config = AutoConfig.from_pretrained(default_model_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (30, 576, 3)
    assert not hasattr(config, "quantization_config")
    assert resolve_model("smollm2-135m-instruct") == default_model_dir   # cached, not redone
    from ttx.models import _alias_gguf
    gguf = _alias_gguf("smollm2-135m-instruct")
    assert resolve_model(str(gguf)) == default_model_dir      # a .gguf path: the same cache
    assert resolve_model(str(default_model_dir)) == default_model_dir   # an HF folder as it is


def test_majority_on_unseen_problems_agrees_with_score(tmp_path):
    problems = tmp_path / "unseen.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(4, seed=2026)))
    out = tmp_path / "maj.jsonl"
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", "majority", "--n", "4",
                      "--max-new-tokens", "96", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert len(r["traces"]) == 4
        assert all(t["completion_tokens"] > 0 and "pred" in t for t in r["traces"])
        assert r["model"] == "smollm2-135m-instruct"
    # a 135M chat model answers these in plain English, with numbers in them
    assert sum(t["pred"] is not None for r in records for t in r["traces"]) >= 12
    scored = run_cli(["score", "-i", out, "--json"])
    summary = json.loads(scored.stdout)["runs"][0]["summary"]
    want = sum(answers_equal(r["pred"], extract_answer(r["answer"])) for r in records) / 4
    assert summary["accuracy"] == pytest.approx(want)


def test_pipeline_script_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    """recipes/pipelines/tts-and-score.sh chains tts-run and score as a user would run it."""
    import os
    import subprocess
    import sys

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(3, seed=3)))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/tts-and-score.sh"), problems, out,
                           "--model", tiny_model_dir, "--max-new-tokens", "4", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ARISE" in proc.stdout and (out / "scaling.png").stat().st_size > 10_000
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["runs"]} == {"greedy", "majority"}
    majority = next(r for r in score["runs"] if r["name"] == "majority")
    assert [lv["value"] for lv in majority["levels"]] == [1, 2, 4, 8]


def test_dynamic_repeats_on_the_default_model(tmp_path):
    """The real engine path of ARISE's dynamic sampling, with tiny budgets; score reads it back."""
    from ttx.tts.levels import RepeatRule

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, seed=77)))
    out = tmp_path / "dyn.jsonl"
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", "majority", "--n", "2",
                      "--levels", "max_new_tokens=16,48", "--repeats-min", "2", "--repeats-max",
                      "3", "--temperature", "0.7", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    rule = RepeatRule(2, 3, 0.5)
    groups: dict = {}
    for r in records:
        groups.setdefault((r["id"], r["level"]), []).append(r)
    assert len(groups) == 4
    for rs in groups.values():
        rs.sort(key=lambda r: r["repeat"])
        assert [r["repeat"] for r in rs] == list(range(len(rs)))
        accs = [float(answers_equal(r["pred"], extract_answer(r["answer"]))) for r in rs]
        tokens = [float(r["completion_tokens"]) for r in rs]
        assert all(rule.wants_more(accs[:k], tokens[:k]) for k in range(len(rs)))
        assert len(rs) == 3 or not rule.wants_more(accs, tokens)
    scored = json.loads(run_cli(["score", "-i", out, "--json"]).stdout)["runs"][0]
    assert scored["level_key"] == "max_new_tokens" and scored["arise"]["n_levels"] == 2


# Step searches end a step at a blank line and complete a path whose step ran to the cap
# (search-and-learn), so the model is asked for blank-line separated steps, as SAL's prompt does.
STEPS = ["--system", "Solve the problem step by step. Use this format:\n\n## Step 1: [Concise "
         "description]\n[Brief calculation]\n\n## Step 2: [Concise description]\n[Brief "
         "calculation]\n\nTherefore, the final answer is: $\\boxed{answer}$.",
         "--n", "4", "--step-tokens", "32", "--max-steps", "2"]


@pytest.mark.parametrize("strategy,args,field", [
    ("budget-forcing", ["--n", "2", "--max-thinking-tokens", "24", "--num-ignore", "1"],
     "budget_forcing"),
    ("beam", [*STEPS, "--beam-width", "2"], "beam"),
    ("dvts", [*STEPS, "--beam-width", "2"], "dvts"),
    ("dora", STEPS, "dora"),
    ("refine", ["--n", "2", "--turns", "2"], "refine"),
    ("adaptive-consistency", ["--n", "6", "--adaptive-batch", "2"], "adaptive"),
    ("particle-filter", STEPS, "particles"),
    ("particle-gibbs", [*STEPS, "--pg-sweeps", "2"], "particles"),
    ("tot", [*STEPS[:2], "--n", "2", "--tot-breadth", "2", "--tot-evaluations", "2",
             "--tot-depth", "2", "--tot-step-tokens", "32"], "tot"),
])
def test_search_strategies_answer_unseen_problems(tmp_path, strategy, args, field):
    """Each search strategy on the default model: two unseen problems, their bookkeeping."""
    problems = tmp_path / "unseen.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, seed=4242)))
    out = tmp_path / f"{strategy}.jsonl"
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", strategy,
                      "--max-new-tokens", "48", "--temperature", "0.4", "--no-progress", *args])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["strategy"] == strategy and field in r and r["traces"]
        assert r["completion_tokens"] >= r["sequential_tokens"] > 0
        assert r["prefill_tokens"] >= r["prompt_tokens"] > 0 and r["rounds"] >= 1
        assert 0 <= r["cached_prefill_tokens"] <= r["prefill_tokens"]
        assert all("pred" in t and t["completion_tokens"] >= 0 for t in r["traces"])
    continued = [r for r in records if r["rounds"] > 1]
    assert continued, "no problem reached a second round: the test no longer tests continuation"
    assert all(r["cached_prefill_tokens"] > 0 for r in continued)   # continuations reuse K/V


def test_deepconf_online_on_the_default_model(tmp_path):
    """DeepConf online on the default model: warm-up, threshold, cancelled traces counted."""
    problems = tmp_path / "unseen.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, seed=4242)))
    out = tmp_path / "deepconf.jsonl"
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", "deepconf", "--n", "4",
                      "--deepconf-warmup", "2", "--deepconf-round", "1", "--deepconf-window", "16",
                      "--deepconf-variant", "low", "--max-new-tokens", "64", "--temperature",
                      "0.6", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        info = r["deepconf"]
        assert info["warmup"] == 2 and 2 <= len(r["traces"]) <= 4 and info["threshold"] > 0
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
        for t in r["traces"]:
            assert t["stopped"] == (t["finish_reason"] == "cancelled")
            assert t["votes"] == bool(t["pred"] and not t["stopped"]
                                      and t["confidence"] >= info["threshold"])


@pytest.mark.model
def test_mcts_answers_unseen_problems(tmp_path):
    """--strategy mcts on the default model: paths deeper than one step, continued through the
    engine's prefix reuse, the tree's visits adding up to --n."""
    problems = tmp_path / "unseen.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, seed=4242)))
    out = tmp_path / "mcts.jsonl"
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", "mcts", *STEPS[:2],
                      "--n", "3", "--mcts-width", "2", "--mcts-depth", "3", "--step-tokens", "40",
                      "--max-new-tokens", "48", "--temperature", "0.4", "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        nodes = r["mcts"]["nodes"]
        assert r["strategy"] == "mcts" and nodes[0]["visits"] == 3 == len(r["traces"])
        assert sum(nd["visits"] for nd in nodes if nd["parent"] == 0) == 3
        assert r["completion_tokens"] >= r["sequential_tokens"] > 0
        assert r["prefill_tokens"] >= r["prompt_tokens"] > 0
    deep = [r for r in records if max(t["steps"] for t in r["traces"]) > 1]
    assert deep, "no path went past its first step: the test no longer tests continuation"
    assert all(r["cached_prefill_tokens"] > 0 for r in deep)       # continuations reuse K/V
