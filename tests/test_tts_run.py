"""tts-run end to end through the real CLI on a tiny model: records, resume, bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import GSM8K, run_cli
from ttx.data.arith import generate
from ttx.scoring.answers import answers_equal, extract_answer, majority_vote


def _problems(tmp_path, n=5, seed=7):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, seed)))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tts(model, problems, out, *extra):
    return run_cli(["tts-run", "--model", model, "-i", problems, "-o", out, "--max-new-tokens",
                    "6", "--no-progress", *extra])


def test_majority_records_carry_every_trace(tmp_path, tiny_model_dir):
    problems, out = _problems(tmp_path), tmp_path / "out.jsonl"
    result = _tts(tiny_model_dir, problems, out, "--strategy", "majority", "--n", "4")
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["id"] for r in records] == [p["id"] for p in generate(5, 7)]
    for r in records:
        assert r["strategy"] == "majority" and r["n"] == 4 and len(r["traces"]) == 4
        for t in r["traces"]:
            assert 1 <= t["completion_tokens"] <= 6
            assert t["pred"] == extract_answer(t["text"])
            assert t["finish_reason"] in ("stop", "length")
        assert r["pred"] == majority_vote([t["pred"] for t in r["traces"]])
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
        assert r["sequential_tokens"] == max(t["completion_tokens"] for t in r["traces"])
        assert r["prompt_tokens"] > 10 and r["wall_s"] >= 0 and r["model"] == str(tiny_model_dir)
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["stage"] == "tts-run" and manifest["summary"]["written"] == 5
    assert manifest["inputs"][0]["sha256"]


def test_interrupted_run_resumes_to_the_same_records(tmp_path, tiny_model_dir):
    problems = _problems(tmp_path, n=5)
    args = ("--strategy", "sample", "--n", "3", "--temperature", "1.0", "--batch-rows", "6")
    whole = tmp_path / "whole.jsonl"
    assert _tts(tiny_model_dir, problems, whole, *args).exit_code == 0
    # an interruption after 3 records, mid-chunk, with a torn last line
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:40])
    # the manifest a run writes when it starts (the interrupted run left it)
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = _tts(tiny_model_dir, problems, part, *args, "--resume")
    assert result.exit_code == 0, result.output
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(whole))
    manifest = json.loads((tmp_path / "part.jsonl.manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["sessions"]) == 2


@pytest.mark.parametrize("change,option", [(("--n", "2"), "--n"), (("--seed", "9"), "--seed"),
                                            (("--temperature", "0.5"), "--temperature"),
                                            (("--strategy", "majority"), "--strategy")])
def test_resume_with_other_options_is_refused(tmp_path, tiny_model_dir, change, option):
    problems = _problems(tmp_path, n=2)
    args = {"--strategy": "sample", "--n": "3", "--temperature": "1.0", "--seed": "0"}
    out = tmp_path / "o.jsonl"
    flat = [x for kv in args.items() for x in kv]
    assert _tts(tiny_model_dir, problems, out, *flat).exit_code == 0
    before = out.read_text()
    other = [x for kv in {**args, change[0]: change[1]}.items() for x in kv]
    result = _tts(tiny_model_dir, problems, out, *other, "--resume")
    assert result.exit_code == 2 and f"--resume with a different {option}" in result.output
    assert out.read_text() == before                        # nothing written, nothing lost
    forced = _tts(tiny_model_dir, problems, out, *other, "--resume", "--force-resume")
    assert forced.exit_code == 0, forced.output


def test_resume_after_the_input_changed_is_refused(tmp_path, tiny_model_dir):
    problems = _problems(tmp_path, n=2)
    out = tmp_path / "o.jsonl"
    assert _tts(tiny_model_dir, problems, out, "--strategy", "greedy").exit_code == 0
    rows = [json.loads(line) for line in problems.read_text().splitlines()]
    rows[0]["question"] = "A different question?"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _tts(tiny_model_dir, problems, out, "--strategy", "greedy", "--resume")
    assert result.exit_code == 2 and "changed since" in result.output


def test_output_equal_to_input_and_a_second_writer_are_refused(tmp_path, tiny_model_dir):
    from ttx.records import Output

    problems = _problems(tmp_path, n=2)
    before = problems.read_text()
    result = _tts(tiny_model_dir, problems, problems, "--strategy", "greedy", "--limit", "1")
    assert result.exit_code == 2 and "also an input" in result.output
    assert problems.read_text() == before
    out = tmp_path / "o.jsonl"
    holder = Output(out, stage="test", fingerprint={})
    try:
        result = _tts(tiny_model_dir, problems, out, "--strategy", "greedy")
        assert result.exit_code == 2 and "another process" in result.output
        assert str(__import__("os").getpid()) in result.output
    finally:
        holder.close()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _tts(tiny_model_dir, empty, out, "--strategy", "greedy")
    assert result.exit_code == 2 and "no records" in result.output


def test_broken_jsonl_line_is_named(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "a?"}\n{"id": 2, "question": \n')
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 0, "keep": true}\n')
    result = _tts(tiny_model_dir, problems, out, "--resume")
    assert result.exit_code == 2
    assert f"{problems}:2:" in result.output and "not valid JSON" in result.output
    assert out.read_text() == '{"id": 0, "keep": true}\n'      # nothing already written is lost


def test_missing_field_is_named(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "a?"}\n{"id": 2, "prompt": "b?"}\n')
    result = _tts(tiny_model_dir, problems, tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert f"{problems}:2: field 'question': missing" in result.output


def test_gsm8k_format_and_other_field_names(tmp_path, tiny_model_dir):
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()[:2]]
    problems = tmp_path / "gsm.jsonl"
    problems.write_text("".join(json.dumps({"problem": r["question"], "solution": r["answer"]})
                                + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    result = _tts(tiny_model_dir, problems, out, "--strategy", "greedy", "--question-field",
                  "problem", "--answer-field", "solution")
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["id"] for r in records] == [1, 2]                  # ids default to line numbers
    result = run_cli(["score", "-i", out, "--answer-field", "solution", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["summary"]["n_records"] == 2


def test_best_of_n_picks_the_highest_mean_logprob(tmp_path, tiny_model_dir):
    problems, out = _problems(tmp_path, n=2), tmp_path / "o.jsonl"
    result = _tts(tiny_model_dir, problems, out, "--strategy", "best-of-n", "--n", "4",
                  "--temperature", "1.0")
    assert result.exit_code == 0, result.output
    for r in _records(out):
        scores = [t["score"] for t in r["traces"]]
        assert len(set(scores)) > 1 and all(s < 0 for s in scores)
        assert r["pred"] == max(r["traces"], key=lambda t: t["score"])["pred"]


def test_ffs_stops_at_the_first_finished_trace(tmp_path, tiny_model_dir):
    """A stop string that random text hits early makes traces finish at different steps."""
    problems, out = _problems(tmp_path, n=3), tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "ffs", "--n", "6", "--temperature", "1.0", "--stop", "e",
                      "--max-new-tokens", "24", "--no-progress"])
    assert result.exit_code == 0, result.output
    cancelled = 0
    for r in _records(out):
        finished = [t for t in r["traces"] if t["finish_reason"] != "cancelled"]
        first = min(finished, key=lambda t: t["finish_order"])
        assert first["finish_order"] == 0
        assert r["pred"] == first["pred"]
        assert r["sequential_tokens"] == first["completion_tokens"]
        # nobody ran past the first finish; the cancelled ones stopped right there
        assert all(t["completion_tokens"] <= first["completion_tokens"] for t in r["traces"])
        cancelled += sum(t["finish_reason"] == "cancelled" for t in r["traces"])
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
    assert cancelled > 0


def test_problems_from_stdin(tmp_path, tiny_model_dir):
    text = "".join(json.dumps(p) + "\n" for p in generate(2, 1))
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", "-", "-o", out, "--strategy",
                      "greedy", "--max-new-tokens", "3", "--no-progress"], input=text)
    assert result.exit_code == 0, result.output
    assert len(_records(out)) == 2


def test_ffs_k_above_n_fails_before_any_output(tmp_path, tiny_model_dir):
    problems, out = _problems(tmp_path, n=1), tmp_path / "o.jsonl"
    out.write_text('{"keep": 1}\n')
    result = _tts(tiny_model_dir, problems, out, "--strategy", "ffs", "--n", "2", "--ffs-k", "4",
                  "--levels", "max_new_tokens=2,4")
    assert result.exit_code == 2 and "--ffs-k 4" in result.output
    assert out.read_text() == '{"keep": 1}\n'


def test_score_agrees_with_records(tmp_path, tiny_model_dir):
    problems, out = _problems(tmp_path, n=4), tmp_path / "o.jsonl"
    assert _tts(tiny_model_dir, problems, out, "--n", "2").exit_code == 0
    result = run_cli(["score", "-i", out, "--json"])
    summary = json.loads(result.stdout)["runs"][0]["summary"]
    records = _records(out)
    want = sum(answers_equal(r["pred"], extract_answer(r["answer"])) for r in records) / 4
    assert summary["accuracy"] == pytest.approx(want)
    assert summary["mean_completion_tokens"] == pytest.approx(
        sum(r["completion_tokens"] for r in records) / 4)
