"""Output constraints over HTTP: the openai engine against a real vLLM (CPU) server (see
conftest.py). vLLM enforces them itself (its xgrammar / guidance backends); these tests check that
the fields the engine sends (`response_format` json_schema on /chat/completions, `structured_outputs`
otherwise) are the ones it honours, and that a constraint it refuses gives one clear line."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from ttx.engines import Constraint, SamplingParams, make_engine
from ttx.errors import TtxError
from ttx.memory.structured import item_schema

pytestmark = pytest.mark.server

ASK = [{"role": "user", "content": "Give one tip for word problems as JSON with a title, a "
        "description, a content and a kind."}]
SCHEMA = item_schema("reasoningbank", "blocks", 2, 400)


@pytest.fixture(scope="module")
def engine(base_url):
    engine = make_engine("openai", base_url=base_url)
    yield engine
    engine.close()


def test_json_schema_honoured_on_chat_with_n_traces(engine):
    params = SamplingParams(max_new_tokens=400, temperature=0.8, seed=5,
                            constraint=Constraint.json_schema(SCHEMA))
    [gen] = engine.generate([ASK], 4, params)
    assert len(gen.traces) == 4
    for t in gen.traces:
        if t.finish_reason == "stop":
            jsonschema.validate(json.loads(t.text), SCHEMA)
        else:                                # cut by max_tokens: a prefix of such JSON
            assert t.text.startswith('{"items":[') or t.text.startswith('{ "items"')
    assert any(t.finish_reason == "stop" for t in gen.traces)


def test_json_schema_on_completions_and_regex_and_choice(engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    [gen] = engine.generate(["The count as JSON:"], 2, SamplingParams(
        max_new_tokens=40, temperature=0.7, seed=1, constraint=Constraint.json_schema(schema)))
    for t in gen.traces:
        if t.finish_reason == "stop":
            jsonschema.validate(json.loads(t.text), schema)
    pattern = r"The answer is [0-9]{1,3}\."
    gens = engine.generate([ASK, "Question: 2+2?"], 3, SamplingParams(
        max_new_tokens=24, temperature=0.9, seed=2, constraint=Constraint.regex(pattern)))
    for gen in gens:
        assert all(re.fullmatch(pattern, t.text) for t in gen.traces), [t.text for t in gen.traces]
    gens = engine.generate([ASK], 4, SamplingParams(
        max_new_tokens=8, temperature=1.0, seed=3, constraint=Constraint.choice(["yes", "no"])))
    assert all(t.text in ("yes", "no") for t in gens[0].traces)


def test_first_finish_streams_under_a_constraint(engine):
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=4, stop_after_finished=1,
                            constraint=Constraint.regex(r"[0-9]{1,20}"))
    [gen] = engine.generate([ASK], 4, params)
    done = [t for t in gen.traces if t.finish_reason != "cancelled"]
    assert done and all(re.fullmatch(r"[0-9]{1,20}", t.text) for t in done)


def test_a_refused_constraint_is_one_clear_line(engine):
    with pytest.raises(TtxError, match="refused the regex output constraint") as err:
        engine.generate(["Hi"], 1, SamplingParams(max_new_tokens=4,
                                                  constraint=Constraint.regex("([a-z")))
    assert "\n" not in str(err.value)
