"""DeepConf's engine support against a real vLLM server: streamed top-k log-probabilities give
each token's confidence, and a trace whose window confidence falls below the threshold has its
stream closed (vLLM aborts it), its tokens counted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.server.test_openai_engine import CHAT, STORY, CountingTransport
from ttx.engines import SamplingParams
from ttx.engines.base import ConfidenceStop
from ttx.engines.openai import OpenAIEngine

pytestmark = pytest.mark.server


@pytest.mark.parametrize("prompt", [CHAT, STORY], ids=["chat", "completions"])
def test_server_top_logprobs_give_token_confidences(base_url, prompt):
    engine = OpenAIEngine(base_url=base_url)
    params = SamplingParams(max_new_tokens=24, temperature=0.8, seed=3, logprobs=True,
                            confidence=ConfidenceStop(top_k=5, window=4))
    [gen] = engine.generate([prompt], 2, params)
    engine.close()
    for t in gen.traces:
        assert t.finish_reason in ("stop", "length")
        assert len(t.confidences) == t.completion_tokens == len(t.logprobs)
        # C_i = -(1/k) sum of the top-k log-probs >= -(the sampled token's, if in the top k)
        assert all(c > 0 for c in t.confidences)


def test_server_trace_below_the_threshold_is_cancelled_after_one_window(base_url):
    transport = CountingTransport()
    engine = OpenAIEngine(base_url=base_url, transport=transport)
    # no window of a real model averages 1000 nats: every trace stops at its first full window
    params = SamplingParams(max_new_tokens=64, temperature=0.8, seed=5,
                            confidence=ConfidenceStop(top_k=5, window=4, threshold=1000.0))
    [gen] = engine.generate([CHAT], 3, params)
    engine.close()
    for t in gen.traces:
        assert t.finish_reason == "cancelled" and t.completion_tokens == 4
        assert len(t.confidences) == 4
    bodies = [body for body, _, _ in transport.exchanges]
    assert len(bodies) == 3 and all(b["n"] == 1 and b["stream"] for b in bodies)
    assert all(b["top_logprobs"] == 5 for b in bodies)
    assert transport.in_flight == 0          # every stream was closed


def test_tts_run_deepconf_on_the_server(base_url, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "What is 2+3?", "answer": "5"}) + "\n")
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--engine", "openai", "--base-url", base_url, "-i", problems,
                      "-o", out, "--strategy", "deepconf", "--n", "4", "--deepconf-warmup", "2",
                      "--deepconf-window", "8", "--max-new-tokens", "48", "--temperature", "0.8",
                      "--no-progress"])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["deepconf"]["warmup"] == 2 and 2 <= len(record["traces"]) <= 4
    assert record["completion_tokens"] == sum(t["completion_tokens"] for t in record["traces"])
