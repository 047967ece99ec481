"""Budget forcing's ttx style on a tiny model that stops often: minimum, maximum, ignores,
accounting (the s1 style is pinned against s1's harness in test_search_reference.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.engines.base import SamplingParams
from ttx.scoring.answers import majority_vote


@pytest.fixture(scope="module")
def eos_engine(eos_model_dir):
    from ttx.engines.hf import HFEngine

    return HFEngine(model=str(eos_model_dir), device="cpu")


def _problems(tmp_path, n=3):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, 5)))
    return path


def _run(model, tmp_path, *extra):
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", model, "-i", _problems(tmp_path), "-o", out,
                      "--strategy", "budget-forcing", "--temperature", "1.0", "--no-progress",
                      "--budget-style", "ttx", *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_min_new_tokens_suppresses_eos_and_stop_strings(eos_engine):
    prompts = ["Tom has 3 apples.", "Hi"]
    free = eos_engine.generate(prompts, 8, SamplingParams(max_new_tokens=16, temperature=1.0,
                                                          seed=1))
    assert any(t.completion_tokens < 8 for g in free for t in g.traces)   # it does stop early
    held = eos_engine.generate(prompts, 8, SamplingParams(max_new_tokens=16, temperature=1.0,
                                                          seed=1, min_new_tokens=8, stop=("e",)))
    for gen in held:
        for t in gen.traces:
            assert t.completion_tokens >= 8
            if t.stop_string == "e":
                # cut at a stop string that ended once the minimum was reached, never before
                floor = len(eos_engine.tokenizer.decode(t.token_ids[:7], skip_special_tokens=True))
                assert len(t.text) >= floor
    assert any(t.stop_string == "e" for g in held for t in g.traces)


def test_per_prompt_budgets_in_one_call(eos_engine):
    params = [SamplingParams(max_new_tokens=k, temperature=1.0, seed=2, ignore_eos=True)
              for k in (3, 7)]
    gens = eos_engine.generate(["a", "b"], [2, 3], params)
    assert [len(g.traces) for g in gens] == [2, 3]
    assert [t.completion_tokens for t in gens[0].traces] == [3, 3]
    assert [t.completion_tokens for t in gens[1].traces] == [7, 7, 7]


def test_thinking_stays_between_the_minimum_and_the_maximum(tmp_path, eos_model_dir):
    records = _run(eos_model_dir, tmp_path, "--n", "4", "--min-thinking-tokens", "12",
                   "--max-thinking-tokens", "20", "--num-ignore", "2", "--answer-tokens", "5")
    ignored = forced = 0
    for r in records:
        for t in r["traces"]:
            bf = t["budget_forcing"]
            assert bf["thinking_tokens"] <= 20
            assert bf["thinking_tokens"] >= 12 or bf["ignored"] == 2    # else it refused K times
            assert t["completion_tokens"] == bf["thinking_tokens"] + bf["answer_tokens"]
            assert bf["answer_tokens"] <= 5
            if bf["ignored"]:
                assert t["text"].count("Wait") >= bf["ignored"]
            if bf["forced_end"]:
                assert "Final Answer:" in t["text"] and bf["thinking_tokens"] == 20
            ignored += bf["ignored"]
            forced += bf["forced_end"]
        assert r["budget_forcing"]["ignored"] == sum(t["budget_forcing"]["ignored"]
                                                     for t in r["traces"])
        assert r["pred"] == majority_vote([t["pred"] for t in r["traces"]])
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
        # rounds run in lockstep: the wait is at least the longest trace, at most all tokens
        longest = max(t["completion_tokens"] for t in r["traces"])
        assert longest <= r["sequential_tokens"] <= r["completion_tokens"]
        assert r["prefill_tokens"] > r["prompt_tokens"] or r["rounds"] == 1
    assert ignored > 0 and forced > 0       # both rules were exercised


def test_without_ignores_early_stops_stand(tmp_path, eos_model_dir):
    """K = 0: a stop before the minimum is kept, so the minimum is the continuation's doing."""
    records = _run(eos_model_dir, tmp_path, "--n", "4", "--min-thinking-tokens", "12",
                   "--max-thinking-tokens", "20", "--num-ignore", "0")
    traces = [t for r in records for t in r["traces"]]
    assert all(t["budget_forcing"]["ignored"] == 0 for t in traces)
    assert any(t["budget_forcing"]["thinking_tokens"] < 12 for t in traces)


def test_forced_end_appends_the_think_end_text(tmp_path, tiny_model_dir):
    """A model that never writes </think> is cut at the maximum with '</think>' and
    'Final Answer:', then answers in --answer-tokens tokens."""
    records = _run(tiny_model_dir, tmp_path, "--n", "2", "--think-end", "</think>",
                   "--max-thinking-tokens", "6", "--answer-tokens", "3")
    for r in records:
        assert r["budget_forcing"]["think_end"] == "</think>"
        for t in r["traces"]:
            bf = t["budget_forcing"]
            assert bf["forced_end"] and bf["thinking_tokens"] == 6 and bf["answer_tokens"] <= 3
            assert "</think>\n\nFinal Answer:" in t["text"]


def test_openai_engine_continues_as_raw_templated_text(default_model_dir):
    """Through the openai engine a continued trace is the chat template's text plus the trace
    so far, sent to /v1/completions with vLLM's min_tokens. The server here is an in-process
    stand-in (a real one cannot be made to stop early on demand); tests/server runs vLLM."""
    import httpx

    from ttx.engines.openai import OpenAIEngine
    from ttx.tts.budget import BudgetForcing
    from ttx.tts.search import SearchConfig, templated
    from ttx.tts.strategy import StrategyConfig

    bodies = []

    def answer(request):
        body = json.loads(request.content)
        bodies.append((request.url.path, body))
        first = "min_tokens" not in body
        text, tokens = ("Three.", 2) if first else (" It is 3.", 4)
        return httpx.Response(200, json={"usage": {"prompt_tokens": 20}, "choices": [
            {"index": i, "text": text, "finish_reason": "stop", "stop_reason": None,
             "logprobs": {"token_logprobs": [-0.5] * tokens}} for i in range(body["n"])]})

    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(answer))
    cfg = StrategyConfig(strategy="budget-forcing", n=2,
                         params=SamplingParams(max_new_tokens=30, temperature=0.5, seed=3),
                         search=SearchConfig(budget_style="ttx", min_thinking_tokens=5,
                                             tokenizer=str(default_model_dir)))
    prompt = [{"role": "user", "content": "1 + 2?"}]
    [outcome] = BudgetForcing(cfg).run(engine, [prompt], cfg)
    rendered = templated(engine, prompt, cfg.search)
    assert rendered.startswith("<|im_start|>") and rendered.endswith("assistant\n")
    assert bodies[0] == ("/v1/completions", {**bodies[0][1], "prompt": rendered, "n": 2})
    continued = [b for _, b in bodies[1:]]
    assert len(continued) == 2 and all(b["prompt"] == rendered + "Three. Wait" for b in continued)
    assert all(b["min_tokens"] == 3 and b["max_tokens"] == 28 for b in continued)
    for t in outcome.traces:
        assert t["text"] == "Three. Wait It is 3." and t["completion_tokens"] == 6
        assert t["budget_forcing"] == {"ignored": 1, "forced_end": False, "thinking_tokens": 6,
                                       "answer_tokens": 0}
    assert outcome.completion_tokens == 12 and outcome.sequential_tokens == 6
