"""The search strategies' engine needs against a real vLLM server (run by `make test-server`):
min_tokens, the stop string that ended a trace, per-prompt budgets, and budget forcing through
/v1/completions with raw templated text."""

from __future__ import annotations

from ttx.engines import SamplingParams
from ttx.engines.openai import OpenAIEngine

CHAT = [{"role": "user", "content": "What is 2+2? Answer briefly."}]


def test_min_tokens_stop_strings_and_per_prompt_budgets(base_url, tokenizer):
    engine = OpenAIEngine(base_url=base_url)
    [held] = engine.generate([CHAT], 4, SamplingParams(max_new_tokens=12, min_new_tokens=12,
                                                       temperature=1.0, seed=2))
    assert [t.completion_tokens for t in held.traces] == [12] * 4      # EOS suppressed
    [cut] = engine.generate([CHAT], 2, SamplingParams(max_new_tokens=16, stop=(" ",), seed=1,
                                                      temperature=0.5))
    assert all(t.stop_string == " " and " " not in t.text for t in cut.traces)
    gens = engine.generate(["Once upon a time", "The sky is"], [1, 3],
                           [SamplingParams(max_new_tokens=k, temperature=0.7, seed=4,
                                           ignore_eos=True) for k in (3, 5)])
    assert [[t.completion_tokens for t in g.traces] for g in gens] == [[3], [5, 5, 5]]
    engine.close()


def test_budget_forcing_through_the_server(base_url, tokenizer):
    from ttx.models import DEFAULT_MODEL, resolve_model
    from ttx.tts.budget import run_budget_forcing
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategies import StrategyConfig

    engine = OpenAIEngine(base_url=base_url)
    cfg = StrategyConfig(strategy="budget-forcing", n=3,
                         params=SamplingParams(max_new_tokens=40, temperature=0.8, seed=5),
                         search=SearchConfig(min_thinking_tokens=30, max_thinking_tokens=40,
                                             num_ignore=2, answer_tokens=6,
                                             tokenizer=str(resolve_model(DEFAULT_MODEL))))
    [outcome] = run_budget_forcing(engine, [CHAT], cfg)
    engine.close()
    for t in outcome.traces:
        bf = t["budget_forcing"]
        assert bf["thinking_tokens"] <= 40
        assert bf["thinking_tokens"] >= 30 or bf["ignored"] == 2
        assert t["completion_tokens"] == bf["thinking_tokens"] + bf["answer_tokens"]
        assert bf["answer_tokens"] <= 6
    assert outcome.completion_tokens == sum(t["completion_tokens"] for t in outcome.traces)
