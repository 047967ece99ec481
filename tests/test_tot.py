"""--strategy tot end to end on the tiny model (levels, resume, the value constraint through the
hf engine) and its bad input. The reference comparison is tests/test_search_reference_tot.py."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.conftest import GSM8K, run_cli
from ttx.tts.tot_value import VALUE_MAP

TOT = ("--strategy", "tot", "--tot-breadth", "2", "--tot-evaluations", "2", "--tot-depth", "2",
       "--tot-step-tokens", "3", "--max-new-tokens", "8", "--temperature", "1.0", "--seed", "0",
       "--no-progress")


def _problems(tmp_path, n=2):
    path = tmp_path / "gsm8k.jsonl"
    rows = (GSM8K / "test.jsonl").read_text().splitlines()[:n]
    path.write_text("".join(line + "\n" for line in rows))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _judged(e: int) -> set[float]:
    """Every value e constrained judgements can sum to (G24:89-91), and 0 (a duplicate state, a
    finished state with no answer)."""
    return {round(sum(VALUE_MAP[w] for w in ws), 6)
            for ws in itertools.combinations_with_replacement(VALUE_MAP, e)} | {0}


def test_tot_levels_and_resume(tmp_path, tiny_model_dir):
    problems = _problems(tmp_path, n=1)
    whole = tmp_path / "whole.jsonl"
    args = ("--model", tiny_model_dir, "-i", problems, "--levels", "n=1,2", *TOT)
    result = run_cli(["tts-run", *args, "-o", whole])
    assert result.exit_code == 0, result.output
    records = _records(whole)
    assert len(records) == 2
    for r in records:
        tot = r["tot"]
        k = {1: 1, 2: 2}[r["level"]]
        assert r["level_key"] == "n" and r["n"] == k and tot["samples"] == k
        log = tot["iterations"]
        assert 1 <= len(log) <= 2 and log[0]["rollouts"] == [k]
        for it in log:               # the hf engine held every judgement to the words
            assert {round(v, 6) for v in it["values"]} <= _judged(2)
            assert len(it["kept"]) == min(2, len(it["values"]))
        assert any(v > 0 for it in log for v in it["values"])      # words, not prose
        ranked = sorted((t for t in r["traces"] if t["rank"] is not None), key=lambda t: t["rank"])
        assert 1 <= len(ranked) <= 2 and r["pred"] == ranked[0]["pred"]
        assert tot["value_prompts"] >= len(log) and tot["value_completion_tokens"] >= 2
        # every step and every judgement (a trace's tokens are its whole path's)
        assert r["completion_tokens"] >= tot["value_completion_tokens"] + max(
            t["completion_tokens"] for t in r["traces"])
        assert r["prefill_tokens"] >= tot["value_prompt_tokens"] + r["prompt_tokens"]
        assert r["sequential_tokens"] <= r["completion_tokens"]
    # an interruption after the first level's record, with a torn last line, resumes to the same records
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text(lines[0] + lines[1][:50])
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = run_cli(["tts-run", *args, "-o", part, "--resume"])
    assert result.exit_code == 0, result.output
    # measurements, not choices: wall time, and the K/V the engine kept from an earlier level
    # (a resumed session starts cold)
    strip = lambda rs: [{k: v for k, v in r.items()  # noqa: E731
                         if k not in ("wall_s", "cached_prefill_tokens")} for r in rs]
    assert strip(_records(part)) == strip(records)
    score = run_cli(["score", "-i", whole, "--regrade", "--json"])
    assert score.exit_code == 0, score.output


@pytest.mark.parametrize("extra,words", [
    (("--strategy", "tot", "--beam-width", "2"), "--beam-width does not apply to --strategy tot"),
    (("--strategy", "beam", "--tot-depth", "2"), "--tot-depth does not apply to --strategy beam"),
    (("--strategy", "tot", "--tot-breadth", "0"), "--tot-breadth"),
    (("--strategy", "tot", "--tot-evaluations", "-1"), "--tot-evaluations"),
    (("--strategy", "tot", "--levels", "max_thinking_tokens=8,16"), "does not apply to --strategy tot"),
    (("--strategy", "tot", "--reward-model", "."), "--reward-model does not apply"),
])
def test_tot_bad_input_is_refused(tmp_path, extra, words):
    problems = _problems(tmp_path, n=1)
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tmp_path / "no-such-model", "-i", problems, "-o", out,
                      *extra])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not out.exists()


def test_value_prompt_replaces_the_user_turn():
    """A chat problem's value prompt keeps its system turn and replaces the user turn with the
    judge's prompt (the question and the state's steps); a raw-text problem's is the text."""
    from ttx.tts.paths import Path
    from ttx.tts.search import question_of
    from ttx.tts.tot import _value_request
    from ttx.tts.tot_value import FINAL_PROMPT, PARTIAL_PROMPT

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3+4?"}]
    state = Path(problem=0, text="3 + 4 = 7.\n\n")
    key, request = _value_request(chat, question_of(chat), state)
    assert request[0] == chat[0] and request[1]["role"] == "user" and len(request) == 2
    assert request[1]["content"] == key == PARTIAL_PROMPT.format(question="What is 3+4?",
                                                                 steps="3 + 4 = 7.")
    assert key.endswith("Judge:\n")
    state.completed = True
    key, request = _value_request("Question: What is 3+4?\nAnswer:", "What is 3+4?", state)
    assert request == key == FINAL_PROMPT.format(question="What is 3+4?", steps="3 + 4 = 7.")
