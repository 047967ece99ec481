"""refine: T turns of check-and-correct, every turn's answer kept, votes per turn with --n."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.scoring.answers import majority_vote
from ttx.tts.refine import REFINE_REQUEST, next_prompt


def _problems(tmp_path, n=3):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, 4)))
    return path


def _run(model, tmp_path, *extra):
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", model, "-i", _problems(tmp_path), "-o", out,
                      "--strategy", "refine", "--temperature", "1.0", "--max-new-tokens", "6",
                      "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_next_turn_shows_the_previous_solution():
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    turn2 = next_prompt(messages, "2 + 3 = 6. The answer is 6.  ")
    assert turn2[:1] == messages and messages == [{"role": "user", "content": "What is 2 + 3?"}]
    assert turn2[1] == {"role": "assistant", "content": "2 + 3 = 6. The answer is 6."}
    assert turn2[2] == {"role": "user", "content": REFINE_REQUEST}
    plain = next_prompt("Question: What is 2 + 3?\nAnswer:", "6")
    assert plain.startswith("Question: What is 2 + 3?\nAnswer: 6\n\n") and plain.endswith("Answer:")


def test_t_turns_give_t_answers_and_honest_tokens(tmp_path, tiny_model_dir):
    records = _run(tiny_model_dir, tmp_path, "--turns", "3", "--n", "2")
    for r in records:
        turns = r["refine"]["turns"]
        assert [t["turn"] for t in turns] == [1, 2, 3]
        assert all(len(t["preds"]) == 2 and t["pred"] == majority_vote(t["preds"]) for t in turns)
        assert r["pred"] == turns[-1]["pred"]                   # --turn-aggregate last
        assert [t["pred"] for t in r["traces"]] == turns[-1]["preds"]
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in turns)
        assert r["sequential_tokens"] == sum(t["sequential_tokens"] for t in turns)
        assert r["rounds"] == 3 and r["prefill_tokens"] > 3 * r["prompt_tokens"]   # it grows


def test_majority_over_turns_and_turn_levels(tmp_path, tiny_model_dir):
    records = _run(tiny_model_dir, tmp_path, "--turn-aggregate", "majority", "--levels",
                   "turns=1,2")
    assert [(r["level"], r["level_key"], r["turns"]) for r in records] == \
        [(1, "turns", 1)] * 3 + [(2, "turns", 2)] * 3
    for r in records:
        turns = r["refine"]["turns"]
        assert len(turns) == r["turns"]
        assert r["pred"] == majority_vote([t["pred"] for t in turns])
    # score reads the records, levels included
    result = run_cli(["score", "-i", tmp_path / "o.jsonl", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["level_key"] == "turns"
