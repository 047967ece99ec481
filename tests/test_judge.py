"""The LLM judge scorer (`--reward-model judge:...`, ttx/tts/judge.py) against its references.

References (read at these commits):
  its_hub  Red-Hat-AI-Innovation-Team/its_hub @ 05747634b9822fbdb443b423f1b1fdf5bb036a77,
           its_hub/core/reward_models/llm_judge.py, class LLMJudge: DEFAULT_JUDGE_PROMPT (lines
           26-32), _format_conversation, _build_judge_prompt, _extract_json, _parse_score,
           fallback_score=5.0.
  thinkbooster  IINemo/thinkbooster @ 51ca08e6c4cf3822f03e841937e463bd8931b214,
           llm_tts/scorers/step_scorer_llm_critic.py: value_map / value_synonyms (lines 117-133),
           _parse_value_output (lines 822-870).
The reference rules are written out below (not imported: neither package is a ttx dependency) and
driven with ttx's on the same scripted judge answers.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.engines.base import Generation, Trace
from ttx.errors import TtxError
from ttx.tts import judge as J

# ---------------------------------------------------------------- the references, written out

# llm_judge.py:26-32, LLMJudge.DEFAULT_JUDGE_PROMPT
REF_PROMPT = ('Score the following conversation on a scale of 0-10.\nReturn only a JSON object '
              'with your score.\n\nConversation:\n{conversation}\n\nFormat: {{"score": <number>}}')


def ref_format_conversation(messages):
    """LLMJudge._format_conversation for messages without tool calls: `role: content` lines."""
    return "\n".join(f"{m['role']}: {m['content'] or ''}" for m in messages)


def ref_extract_json(text):
    """LLMJudge._extract_json."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    match = re.search(r"```(?:json)?\s*\n?(.*?)\n?```", text, re.DOTALL)
    if match:
        try:
            return json.loads(match.group(1).strip())
        except json.JSONDecodeError:
            pass
    match = re.search(r"\{[^{}]*\}", text)
    if match:
        try:
            return json.loads(match.group(0))
        except json.JSONDecodeError:
            pass
    return None


def ref_parse_score(response, fallback=5.0):
    """LLMJudge._parse_score."""
    parsed = ref_extract_json(response)
    if parsed is not None:
        try:
            return float(parsed.get("score", fallback))
        except (ValueError, TypeError, AttributeError):
            return fallback
    match = re.search(r'"score"\s*:\s*([\d.]+)', response)
    if match:
        try:
            return float(match.group(1))
        except ValueError:
            pass
    return fallback


def ref_parse_value(output, value_map, synonyms):
    """thinkbooster _parse_value_output (step_scorer_llm_critic.py:822-870); None marks its
    step 6, the unmatched default 0.0."""
    output_lower = output.lower().strip()
    all_keywords = {**value_map, **synonyms}
    lines = [line.strip() for line in output_lower.splitlines() if line.strip()]
    if lines:
        normalized = re.sub(r"[^a-z]+", " ", lines[-1]).strip()
        if normalized in value_map:
            return value_map[normalized]
        for token in normalized.split():
            if token in all_keywords:
                return all_keywords[token]
    for keyword in sorted(all_keywords.keys(), key=len, reverse=True):
        if output_lower.startswith(keyword):
            return all_keywords[keyword]
    for keyword in sorted(all_keywords.keys(), key=len, reverse=True):
        if re.search(r"\b" + re.escape(keyword) + r"\b", output_lower):
            return all_keywords[keyword]
    full = re.sub(r"[^a-z\s]+", " ", output_lower)
    for token in full.split():
        if token in all_keywords:
            return all_keywords[token]
    return None


RATING_ANSWERS = [
    '{"score": 7}', ' {"score": 10, "reasoning": "fine"} ', '```json\n{"score": 3.5}\n```',
    'I think {"score": 2} is fair', '{"score": 7.5\n\n\n', '"score": 4', '{"score": "8"}',
    '{"reasoning": "no score"}', '{"score": "high"}', "7", "[1, 2]", "no json here", "",
    '{"score": 9} and {"score": 1}', '```\n{"score": 6}\n```', '{"score": 12}',
]
YES_NO_ANSWERS = [
    "Yes", "No", "yes.", "  NO  ", "The answer is correct", "Incorrect!", "wrong answer",
    "Yesterday", "nothing", "I would say\nYes", "Yes\nbut no", "maybe", "", "It is correct.\nNo",
    "yes-no", "The answer seems right",
]


def test_the_rating_prompt_is_its_hubs():
    assert J.RATING_PROMPT == REF_PROMPT
    question, answer = "What is 2+3?", "2+3 = 5.\n\nThe answer is 5."
    convo = ref_format_conversation([{"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}])
    assert J.judge_prompt("0-10", question, answer) == REF_PROMPT.format(conversation=convo)
    assert J.RATING_FALLBACK == 5.0


@pytest.mark.parametrize("answer", RATING_ANSWERS)
def test_rating_parse_equals_its_hubs(answer):
    mine = J.parse_rating(answer)
    assert (mine if mine is not None else J.RATING_FALLBACK) == ref_parse_score(answer)


@pytest.mark.parametrize("answer", YES_NO_ANSWERS)
def test_yes_no_parse_equals_thinkboosters_rule(answer):
    ref = ref_parse_value(answer, {"yes": 1.0, "no": 0.0},
                          {"correct": 1.0, "incorrect": 0.0, "wrong": 0.0})
    assert J.parse_yes_no(answer) == ref


# ---------------------------------------------------------------- a scripted judge (tests only)

class ScriptedJudge:
    """Answers each judge prompt with the next scripted text (no constraints: free text)."""

    name, model_name = "scripted", "scripted"

    def __init__(self, answers, supports_constraints=False, logprob=None):
        self.answers, self.supports_constraints, self.logprob = list(answers), \
            supports_constraints, logprob
        self.prompts, self.params = [], []

    def generate(self, prompts, n, params):
        self.prompts += prompts
        self.params.append(params)
        out = []
        for _ in prompts:
            text = self.answers.pop(0)
            lp = None if self.logprob is None else [self.logprob]
            out.append(Generation([Trace(text, 3, "stop", logprobs=lp)], prompt_tokens=11))
        return out

    def close(self):
        pass


def test_unparsed_answers_are_counted_not_raised():
    judge = J.Judge(ScriptedJudge(['{"score": 8}', "gibberish", '{"score": 15}']), "0-10")
    scores = [s for s, _ in judge.score_texts([("q", "a"), ("q", "b"), ("q", "c")])]
    assert scores == [0.8, 0.5, 1.0]                 # fallback 5.0 -> 0.5; 15 clamped to 10
    stats = judge.stats()
    assert stats["judge_unparsed"] == 1 and stats["judge_out_of_range"] == 1
    assert stats["judge_calls"] == 3 and stats["judge_prompt_tokens"] == 33
    assert stats["judge_completion_tokens"] == 9
    params = judge.engine.params[0]
    assert params.constraint is None and params.max_new_tokens == J.FREE_TOKENS
    yn = J.Judge(ScriptedJudge(["Yes", "hmm", "No"]), "yes-no")
    assert [s for s, _ in yn.score_texts([("q", "a"), ("q", "b"), ("q", "c")])] == [1.0, 0.0, 0.0]
    assert yn.stats()["judge_unparsed"] == 1


def test_yes_no_reads_the_label_probability():
    import math

    judge = J.Judge(ScriptedJudge(["Yes", "No"], supports_constraints=True,
                                  logprob=math.log(0.8)), "yes-no")
    scores = [s for s, _ in judge.score_texts([("q", "a"), ("q", "b")])]
    assert scores == pytest.approx([0.8, 0.2])
    params = judge.engine.params[0]
    assert params.constraint.kind == "choice" and params.constraint.spec == ("Yes", "No")
    assert params.logprobs and params.temperature == 0.0


def test_step_judging_scores_each_prefix_once():
    engine = ScriptedJudge(['{"score": 2}', '{"score": 6}', '{"score": 9}'])
    judge = J.Judge(engine, "0-10")
    assert judge.score_paths([("q", ["s1", "s2"])]) == [[0.2, 0.6]]
    assert judge.score_paths([("q", ["s1", "s2", "s3"])]) == [[0.2, 0.6, 0.9]]
    assert judge.stats()["judge_calls"] == 3 and judge.stats()["judge_cached"] == 2
    last = engine.prompts[-1][0]["content"]
    assert last == REF_PROMPT.format(conversation="user: q\nassistant: s1\n\ns2\n\ns3")


def test_spec_refusals():
    assert J.parse_spec("judge:self") == ("self", "self")
    assert J.parse_spec("judge:https://h:8000/v1") == ("url", "https://h:8000/v1")
    for bad, words in (("judge:", "names no judge"), ("judge:  ", "names no judge"),
                       ("judge:ftp://host/v1", "http(s)"), ("judge:http://", "http(s)"),
                       ("judge:/no/such/folder", "no such model folder")):
        with pytest.raises(TtxError, match=re.escape(words)):
            J.parse_spec(bad)


@pytest.mark.parametrize("args, words", [
    (["--reward-model", "judge:"], "names no judge"),
    (["--reward-model", "judge:file:///x"], "http(s)"),
    (["--reward-model", "judge:self", "--judge-scale", "1-5"], "1-5"),
    (["--judge-scale", "yes-no"], "needs --reward-model judge"),
    (["--reward-model", "judge:self", "--prm-step-tag", "x"], "a judge reads none"),
])
def test_bad_judge_options_exit_2(tmp_path, args, words):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?"}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "absent-model", "-i", problems, "-o", "-",
                      "--strategy", "best-of-n", "--n", "2", *args])
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if "rror" in line]   # one line
    assert words in line and "Traceback" not in result.output


# ---------------------------------------------------------------- the tiny model (hf)

def test_constrained_judging_on_the_tiny_model(tiny_model_dir):
    from ttx.engines import open_engine

    engine = open_engine("hf", model=str(tiny_model_dir), device="cpu")
    pairs = [("What is 2+3?", "5"), ("What is 2+3?", "The answer is 7.")]
    rating = J.Judge(engine, "0-10")
    scores = [s for s, _ in rating.score_texts(pairs)]
    assert all(s * 10 == int(s * 10) and 0 <= s <= 1 for s in scores)
    assert rating.stats()["judge_unparsed"] == 0
    assert rating.stats()["judge_prompt_tokens"] > 0
    yn = J.Judge(engine, "yes-no")
    probs = [s for s, _ in yn.score_texts(pairs)]
    assert all(0 < p < 1 for p in probs) and yn.stats()["judge_unparsed"] == 0
    assert 0 < yn.stats()["judge_completion_tokens"] <= 2 * J.ANSWER_TOKENS["yes-no"]


def test_best_of_n_and_beam_with_judge_self(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 6)))
    out = tmp_path / "bon.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "best-of-n", "--n", "3", "--temperature", "1.0",
                      "--max-new-tokens", "8", "--reward-model", "judge:self",
                      "--judge-scale", "yes-no", "--no-progress"])
    assert result.exit_code == 0, result.output
    for r in map(json.loads, out.read_text().splitlines()):
        assert r["best_of_n"]["scorer"] == "judge"
        assert all(0 < t["score"] < 1 for t in r["traces"])
        assert r["pred"] == max(r["traces"], key=lambda t: t["score"])["pred"]
    summary = json.loads((tmp_path / "bon.jsonl.manifest.json").read_text())["summary"]
    assert summary["judge_calls"] == 6 and summary["judge_prompt_tokens"] > 0
    assert summary["judge_unparsed"] == 0

    out = tmp_path / "beam.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "beam", "--n", "4", "--temperature", "1.0", "--step-tokens",
                      "3", "--max-steps", "3", "--max-new-tokens", "12", "--reward-model",
                      "judge:self", "--no-progress"])
    assert result.exit_code == 0, result.output
    for r in map(json.loads, out.read_text().splitlines()):
        for t in r["traces"]:
            assert len(t["step_scores"]) == t["steps"]
            assert all(s * 10 == int(s * 10) for s in t["step_scores"])      # 0-10 ratings
            assert t["score"] == t["step_scores"][-1]                       # --agg last
    summary = json.loads((tmp_path / "beam.jsonl.manifest.json").read_text())["summary"]
    assert summary["judge_calls"] > 0 and summary["judge_completion_tokens"] > 0


def test_dvts_with_a_judge_folder(tmp_path, tiny_model_dir):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(1, 6)))
    out = tmp_path / "dvts.jsonl"
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out,
                      "--strategy", "dvts", "--n", "4", "--beam-width", "2", "--temperature",
                      "1.0", "--step-tokens", "3", "--max-steps", "2", "--max-new-tokens", "8",
                      "--reward-model", f"judge:{tiny_model_dir}", "--judge-scale", "yes-no",
                      "--no-progress"])
    assert result.exit_code == 0, result.output
    [r] = map(json.loads, out.read_text().splitlines())
    assert all(0 < s < 1 for t in r["traces"] for s in t["step_scores"])
    summary = json.loads((tmp_path / "dvts.jsonl.manifest.json").read_text())["summary"]
    assert summary["judge_calls"] > 0 and summary["judge_unparsed"] == 0
