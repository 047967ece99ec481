"""The LLM judge (`--reward-model judge:URL`, ttx/tts/judge.py) through a real vLLM server: the
constrained answers come back parsed, with the judge's tokens counted."""

from __future__ import annotations

import json

from ttx.tts import judge as J

PAIRS = [("What is 2+3?", "2+3 = 5. The answer is 5."), ("What is 2+3?", "The answer is 7.")]


def test_judge_through_the_server(base_url):
    from types import SimpleNamespace

    for scale in J.SCALES:
        judge = J.open_judge(None, SimpleNamespace(reward_model=f"judge:{base_url}",
                                                   judge_scale=scale))
        scores = [s for s, _ in judge.score_texts(PAIRS)]
        stats = judge.stats()
        judge.close()
        assert all(0 <= s <= 1 for s in scores)
        assert stats["judge_unparsed"] == 0 and stats["judge_calls"] == 2
        assert stats["judge_prompt_tokens"] > 0 and stats["judge_completion_tokens"] > 0
        if scale == "0-10":
            assert all(round(s * 10, 9) == int(round(s * 10)) for s in scores)


def test_best_of_n_with_a_server_judge(base_url, tmp_path, tiny_model_dir):
    from tests.conftest import run_cli
    from ttx.data.arith import generate

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 6)))
    out = tmp_path / "bon.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "best-of-n", "--n", "2", "--temperature", "1.0",
                      "--max-new-tokens", "8", "--reward-model", f"judge:{base_url}",
                      "--judge-scale", "yes-no", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "bon.jsonl.manifest.json").read_text())["summary"]
    assert summary["judge_calls"] == 4 and summary["judge_unparsed"] == 0
    for r in map(json.loads, out.read_text().splitlines()):
        assert all(0 <= t["score"] <= 1 for t in r["traces"])
