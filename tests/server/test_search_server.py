"""The search strategies' engine needs against a real vLLM server (run by `make test-server`):
min_tokens, the stop string that ended a trace, per-prompt budgets, and budget forcing through
/v1/completions with raw templated text."""

from __future__ import annotations

import pytest

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
    from ttx.tts.budget import BudgetForcing
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    engine = OpenAIEngine(base_url=base_url)
    cfg = StrategyConfig(strategy="budget-forcing", n=3,
                         params=SamplingParams(max_new_tokens=40, temperature=0.8, seed=5),
                         search=SearchConfig(budget_style="ttx", min_thinking_tokens=30,
                                             max_thinking_tokens=40,
                                             num_ignore=2, answer_tokens=6,
                                             tokenizer=str(resolve_model(DEFAULT_MODEL))))
    [outcome] = BudgetForcing(cfg).run(engine, [CHAT], cfg)
    engine.close()
    for t in outcome.traces:
        bf = t["budget_forcing"]
        assert bf["thinking_tokens"] <= 40
        assert bf["thinking_tokens"] >= 30 or bf["ignored"] == 2
        assert t["completion_tokens"] == bf["thinking_tokens"] + bf["answer_tokens"]
        assert bf["answer_tokens"] <= 6
    assert outcome.completion_tokens == sum(t["completion_tokens"] for t in outcome.traces)


_STRATEGY_ARGS = {
    "greedy": [],
    "majority": ["--n", "3"],
    "best-of-n": ["--n", "3"],
    "ffs": ["--n", "3", "--ffs-k", "2"],
    "budget-forcing": ["--n", "2", "--max-thinking-tokens", "16", "--num-ignore", "1"],
    "beam": ["--n", "4", "--beam-width", "2", "--step-tokens", "8", "--max-steps", "2"],
    "dvts": ["--n", "4", "--beam-width", "2", "--step-tokens", "8", "--max-steps", "2"],
    "dora": ["--n", "4", "--step-tokens", "8", "--max-steps", "2", "--embedder", "{model}"],
    "refine": ["--n", "2", "--turns", "2"],
    "adaptive-consistency": ["--n", "4", "--adaptive-batch", "2"],
    "particle-filter": ["--n", "3", "--step-tokens", "8", "--max-steps", "2"],
    "particle-gibbs": ["--n", "3", "--step-tokens", "8", "--max-steps", "2", "--pg-sweeps", "2"],
    "tot": ["--n", "2", "--tot-breadth", "2", "--tot-evaluations", "2", "--tot-depth", "2",
            "--tot-step-tokens", "8"],
}


def _cli_run(tmp_path, strategy, engine_args, name):
    import json

    from tests.conftest import run_cli
    from ttx.models import DEFAULT_MODEL, resolve_model

    folder = str(resolve_model(DEFAULT_MODEL))
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "What is 3 + 4?", "answer": "7"}) + "\n")
    out = tmp_path / f"{name}.jsonl"
    args = [a.replace("{model}", folder) for a in _STRATEGY_ARGS[strategy]]
    result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", strategy,
                      "--max-new-tokens", "24", "--temperature", "0.7", "--seed", "3",
                      "--no-progress", *args, *engine_args])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    return record


@pytest.mark.parametrize("strategy", list(_STRATEGY_ARGS))
def test_every_strategy_through_the_server(tmp_path, base_url, tokenizer, strategy):
    """The path past one machine: each strategy end to end with --engine openai, with the
    record fields of the hf engine and exact token counts (a trace cut by its budget counts
    exactly that budget)."""
    served = _cli_run(tmp_path, strategy, ["--engine", "openai", "--base-url", base_url],
                      "openai")
    local = _cli_run(tmp_path, strategy, ["--engine", "hf"], "hf")
    assert set(served) == set(local)
    assert {k for t in served["traces"] for k in t} == {k for t in local["traces"] for k in t}
    assert served["completion_tokens"] >= sum(
        t["completion_tokens"] for t in served["traces"]
        if strategy not in ("beam", "dora", "particle-filter", "particle-gibbs", "tot"))
    if strategy in ("greedy", "majority", "best-of-n", "ffs", "refine"):
        for t in served["traces"]:
            assert (t["finish_reason"] != "length") or t["completion_tokens"] == 24
        assert served["completion_tokens"] == sum(t["completion_tokens"]
                                                  for t in served["traces"]) or strategy == "refine"


def test_adaptive_consistency_stops_a_settled_problem_on_the_server(base_url, tokenizer):
    """Each batch is one request per open problem with its round's seed: at temperature 0 the
    served model agrees with itself, so Beta's rule stops at 4 of 8 (P = 31/32 >= 0.95), and
    the same seeds give the same traces again."""
    from ttx.tts.adaptive import AdaptiveConsistency
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    cfg = StrategyConfig(strategy="adaptive-consistency", n=8,
                         params=SamplingParams(max_new_tokens=16, temperature=0.0, seed=3),
                         search=SearchConfig(adaptive_batch=2))
    runs = []
    for _ in range(2):
        engine = OpenAIEngine(base_url=base_url)
        [outcome] = AdaptiveConsistency(cfg).run(engine, [CHAT], cfg)
        engine.close()
        runs.append(outcome)
    o = runs[0]
    assert o.extra["drawn"] == 4 and o.extra["stopped"] == "settled" and o.extra["rounds"] == 2
    assert o.completion_tokens == sum(t["completion_tokens"] for t in o.traces)
    assert [t["text"] for t in runs[1].traces] == [t["text"] for t in o.traces]
    cfg.params.temperature = 1.0
    cfg.search.adaptive_rule, cfg.search.adaptive_threshold = "majority", 1.0
    engine = OpenAIEngine(base_url=base_url)
    [hot] = AdaptiveConsistency(cfg).run(engine, [CHAT], cfg)
    engine.close()
    assert hot.extra["drawn"] <= 8 and len(hot.traces) == hot.extra["drawn"]


def test_particle_gibbs_through_the_server(tmp_path, base_url, tokenizer):
    """particle-gibbs over /v1/completions: the record's sweeps, weights and ancestry, and the
    answer the highest-weight particle's."""
    import math

    r = _cli_run(tmp_path, "particle-gibbs", ["--engine", "openai", "--base-url", base_url],
                 "pg")
    info = r["particles"]
    assert len(r["traces"]) == 3 and len(info["sweeps"]) == 2
    for k, sweep in enumerate(info["sweeps"]):
        for it in sweep["iterations"]:
            assert math.isclose(sum(it["weights"]), 1.0, rel_tol=1e-9)
            assert len(it["ancestors"]) == 3 - (1 if k else 0)
        assert len(sweep["references"]) == 1
    weights = [t["log_weight"] for t in r["traces"]]
    assert r["pred"] == r["traces"][weights.index(max(weights))]["pred"]
    assert [t["reference"] for t in r["traces"]] == [False, False, True]
    assert r["completion_tokens"] >= r["sequential_tokens"] > 0


def test_mcts_through_the_server(tmp_path, base_url, tokenizer):
    """--strategy mcts with --engine openai: raw templated text continued through
    /v1/completions, the priors from the server's log-probabilities, the same record shape as
    the hf engine's."""
    import json

    from tests.conftest import run_cli

    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "What is 3 + 4?", "answer": "7"}) + "\n")
    records = {}
    for name, engine_args in (("openai", ["--engine", "openai", "--base-url", base_url]),
                              ("hf", ["--engine", "hf"])):
        out = tmp_path / f"{name}.jsonl"
        result = run_cli(["tts-run", "-i", problems, "-o", out, "--strategy", "mcts", "--n", "3",
                          "--mcts-width", "3", "--mcts-depth", "3", "--max-new-tokens", "48",
                          "--temperature", "0.7", "--seed", "3", "--no-progress", *engine_args])
        assert result.exit_code == 0, result.output
        [records[name]] = [json.loads(line) for line in out.read_text().splitlines()]
    served, local = records["openai"], records["hf"]
    assert set(served) == set(local) and set(served["mcts"]) == set(local["mcts"])
    nodes = served["mcts"]["nodes"]
    assert len(served["traces"]) == 3 and nodes[0]["visits"] == 3
    kids = [nd for nd in nodes if nd["parent"] == 0]
    assert kids and sum(nd["prior"] for nd in kids) == pytest.approx(1.0)
    assert all(0 < nd["prior"] <= 1 for nd in nodes[1:])
    for t in served["traces"]:
        assert t["text"] and t["completion_tokens"] <= 48 * 3
    assert served["completion_tokens"] >= max(t["completion_tokens"] for t in served["traces"])
    assert served["prefill_tokens"] >= served["prompt_tokens"] > 10


def test_tot_judgements_through_the_server(tmp_path, base_url, tokenizer):
    """tot's value prompts go to /v1/chat/completions held to the judgement words (vLLM's
    structured_outputs choice): every value is a sum of the value map over the answers (0: a
    duplicate state or a finished one without an answer), and they are counted as tokens."""
    import itertools

    from ttx.tts.tot_value import VALUE_MAP

    record = _cli_run(tmp_path, "tot", ["--engine", "openai", "--base-url", base_url], "openai")
    judged = {round(sum(VALUE_MAP[w] for w in ws), 6)
              for ws in itertools.combinations_with_replacement(VALUE_MAP, 2)} | {0}
    tot = record["tot"]
    for it in tot["iterations"]:
        assert {round(v, 6) for v in it["values"]} <= judged
    assert any(v > 0 for it in tot["iterations"] for v in it["values"])   # words, not prose
    assert tot["value_prompts"] >= 2 and tot["value_completion_tokens"] >= 2 * tot["value_prompts"]
    assert record["prefill_tokens"] >= tot["value_prompt_tokens"] > 0
