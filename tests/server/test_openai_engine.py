"""The `openai` engine against a real OpenAI-compatible server (vLLM on CPU; see conftest.py)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from ttx.engines import SamplingParams, make_engine
from ttx.engines.openai import OpenAIEngine
from ttx.errors import TtxError

pytestmark = pytest.mark.server

CHAT = [{"role": "user", "content": "What is 2+2? Answer briefly."}]
STORY = "Once upon a time"


class CountingTransport(httpx.BaseTransport):
    """The real HTTP transport, counting requests in flight and keeping every POST exchange."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.exchanges: list[tuple[dict, int, bytearray]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            response = self.inner.handle_request(request)
        except BaseException:
            self._done()
            raise
        body = bytearray()
        if request.method == "POST":
            with self.lock:
                self.exchanges.append((json.loads(request.content), response.status_code, body))
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Recording(response.stream, body, self._done),
                              extensions=response.extensions)

    def _done(self):
        with self.lock:
            self.in_flight -= 1

    def close(self):
        self.inner.close()


class _Recording(httpx.SyncByteStream):
    def __init__(self, inner, body: bytearray, on_close):
        self.inner, self.body, self.on_close, self.closed = inner, body, on_close, False

    def __iter__(self):
        for chunk in self.inner:
            self.body.extend(chunk)
            yield chunk

    def close(self):
        if not self.closed:
            self.closed = True
            self.inner.close()
            self.on_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(base_url):
    engine = make_engine("openai", base_url=base_url)
    yield engine
    engine.close()


def _usage_total(transport: CountingTransport) -> int:
    return sum(json.loads(bytes(body))["usage"]["completion_tokens"]
               for _, status, body in transport.exchanges if status == 200)


def test_model_from_server(engine, served_model):
    assert engine.name == "openai"
    assert engine.model_name == served_model


@pytest.mark.parametrize("prompt", [CHAT, STORY], ids=["chat", "completions"])
def test_n_traces_with_exact_token_counts(base_url, tokenizer, prompt):
    transport = CountingTransport()
    # return_token_ids (vLLM) gives the generated ids, to check counts against the tokenizer.
    engine = OpenAIEngine(base_url=base_url, transport=transport,
                          extra_body={"return_token_ids": True})
    params = SamplingParams(max_new_tokens=12, temperature=0.8, seed=11)
    [gen] = engine.generate([prompt], 4, params)
    engine.close()
    assert len(gen.traces) == 4
    assert len(transport.exchanges) == 1 and transport.exchanges[0][0]["n"] == 4
    assert gen.prompt_tokens > 0 and gen.wall_s > 0
    # The per-trace counts split the server's per-request usage exactly.
    assert sum(t.completion_tokens for t in gen.traces) == _usage_total(transport)
    for t in gen.traces:
        assert t.finish_reason in ("stop", "length")
        assert len(t.token_ids) == t.completion_tokens
        assert tokenizer.decode(t.token_ids, skip_special_tokens=True) == t.text
        if t.finish_reason == "length":
            assert t.completion_tokens == 12
    assert sorted(t.finish_order for t in gen.traces) == [0, 1, 2, 3]


def test_length_and_counts_without_token_ids(engine, tokenizer):
    gens = engine.generate([STORY, "The three primary colours are"], 4,
                           SamplingParams(max_new_tokens=6, temperature=1.0, seed=3))
    assert len(gens) == 2
    for gen in gens:
        for t in gen.traces:
            assert t.token_ids == [] and t.logprobs is None and t.self_certainty is None
            if t.finish_reason == "length":
                assert t.completion_tokens == 6
            else:
                assert t.finish_reason == "stop" and t.completion_tokens <= 6
    assert any(t.finish_reason == "length" for g in gens for t in g.traces)


def test_seed_repeats_at_positive_temperature(engine):
    params = SamplingParams(max_new_tokens=16, temperature=0.9, seed=1234)
    first = [t.text for t in engine.generate([CHAT], 4, params)[0].traces]
    again = [t.text for t in engine.generate([CHAT], 4, params)[0].traces]
    other = [t.text for t in engine.generate([CHAT], 4, SamplingParams(
        max_new_tokens=16, temperature=0.9, seed=4321))[0].traces]
    assert first == again
    assert first != other


@pytest.mark.parametrize("prompt", ["1, 2, 3, 4,", [{"role": "user", "content": "Count from 1 "
                                                      "to 10, separated by commas."}]],
                         ids=["completions", "chat"])
def test_stop_strings(engine, prompt):
    [gen] = engine.generate([prompt], 2, SamplingParams(max_new_tokens=40, stop=("7",)))
    for t in gen.traces:
        assert t.finish_reason == "stop", t.text
        assert "7" not in t.text and "6" in t.text
        assert 0 < t.completion_tokens < 40


@pytest.mark.parametrize("prompt", [CHAT, STORY], ids=["chat", "completions"])
def test_logprobs(engine, prompt):
    [gen] = engine.generate([prompt], 3, SamplingParams(max_new_tokens=10, temperature=0.7,
                                                        seed=5, logprobs=True))
    for t in gen.traces:
        assert len(t.logprobs) == t.completion_tokens > 0
        assert all(lp <= 0.0 for lp in t.logprobs)
        assert t.self_certainty is None


@pytest.mark.parametrize("ffs", [None, 2])
def test_greedy_traces_are_one_request_copied(base_url, ffs):
    transport = CountingTransport()
    engine = OpenAIEngine(base_url=base_url, transport=transport)
    [gen] = engine.generate([CHAT], 3, SamplingParams(max_new_tokens=10, logprobs=True,
                                                      stop_after_finished=ffs))
    engine.close()
    assert len(transport.exchanges) == 1 and transport.exchanges[0][0]["n"] == 1
    assert len({t.text for t in gen.traces}) == 1
    assert all(t.completion_tokens == len(t.logprobs) > 0 for t in gen.traces)
    if ffs is None:
        assert [t.finish_order for t in gen.traces] == [0, 1, 2]
    else:
        assert [t.finish_order for t in gen.traces] == [0, 1, None]
        assert gen.traces[2].finish_reason == "cancelled"


@pytest.mark.parametrize("k", [1, 2])
def test_first_finish_search_cancels_the_rest(base_url, k):
    transport = CountingTransport()
    engine = OpenAIEngine(base_url=base_url, transport=transport)
    params = SamplingParams(max_new_tokens=96, temperature=0.8, seed=7, logprobs=True,
                            stop_after_finished=k)
    started = time.perf_counter()
    [gen] = engine.generate([CHAT], 4, params)
    engine.close()
    assert time.perf_counter() - started < 120
    finished = [t for t in gen.traces if t.finish_reason != "cancelled"]
    cancelled = [t for t in gen.traces if t.finish_reason == "cancelled"]
    assert len(finished) == k and len(cancelled) == 4 - k
    assert sorted(t.finish_order for t in finished) == list(range(k))
    assert all(t.finish_order is None for t in cancelled)
    for t in gen.traces:        # counts are exact for cancelled traces too
        assert len(t.logprobs) == t.completion_tokens
    assert any(t.completion_tokens < 96 for t in cancelled)
    assert transport.exchanges[0][0]["stream"] is True
    assert transport.in_flight == 0          # the stream was closed, not left open
    assert gen.prompt_tokens > 0


def test_concurrency_limit(base_url):
    transport = CountingTransport()
    engine = OpenAIEngine(base_url=base_url, transport=transport, concurrency=2)
    gens = engine.generate([f"Item {i}:" for i in range(6)], 1,
                           SamplingParams(max_new_tokens=24, temperature=0.7, seed=1))
    engine.close()
    assert [len(g.traces) for g in gens] == [1] * 6
    assert len(transport.exchanges) == 6
    assert transport.peak == 2


@pytest.mark.parametrize("retries", [0, 1])
def test_unreachable_server_fails_fast(retries):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(TtxError, match=f"127.0.0.1:{url.split(':')[2]}") as info:
        OpenAIEngine(base_url=url, max_retries=retries, backoff_s=0.05)
    assert time.perf_counter() - started < 10
    assert f"after {retries + 1} attempt(s)" in str(info.value)


def test_client_error_is_not_retried(base_url):
    transport = CountingTransport()
    engine = OpenAIEngine(base_url=base_url, model="no-such-model", transport=transport)
    with pytest.raises(TtxError, match="HTTP 404.*no-such-model"):
        engine.generate([STORY], 2, SamplingParams(max_new_tokens=4))
    engine.close()
    assert len(transport.exchanges) == 1


# The two tests below check the retry and fallback paths against an in-process stand-in, since a
# real server cannot be made to answer 503 or to ignore `n` on demand. They need no server.

def test_retries_429_and_5xx_then_succeeds():
    answers = iter([httpx.Response(503, json={"error": {"message": "overloaded"}}),
                    httpx.Response(429, headers={"retry-after": "0"}, text="slow down"),
                    httpx.Response(200, json={"usage": {"prompt_tokens": 3},
                                              "choices": [{"index": 0, "text": "hi",
                                                           "finish_reason": "stop",
                                                           "logprobs": {"token_logprobs":
                                                                        [-0.1]}}]})])
    calls = []

    def answer(request):
        calls.append(request)
        return next(answers)
    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m", backoff_s=0.01,
                          transport=httpx.MockTransport(answer))
    [gen] = engine.generate(["x"], 1, SamplingParams(max_new_tokens=4))
    assert len(calls) == 3 and gen.traces[0].text == "hi" and gen.traces[0].completion_tokens == 1
    engine.max_retries = 1
    answers = iter([httpx.Response(500, text="boom")] * 2)
    with pytest.raises(TtxError, match="after 2 attempt.*HTTP 500: boom"):
        engine.generate(["x"], 1, SamplingParams(max_new_tokens=4))


def test_server_that_ignores_n_gets_one_trace_per_request():
    """Like llama.cpp's server: one choice whatever `n`, no logprobs, usage per request."""
    seeds = []

    def answer(request):
        body = json.loads(request.content)
        seeds.append(body.get("seed"))
        tokens = 2 + len(seeds)
        return httpx.Response(200, json={
            "usage": {"prompt_tokens": 3, "completion_tokens": tokens},
            "choices": [{"index": 0, "text": "t" * tokens, "finish_reason": "length"}]})
    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(answer), concurrency=1)
    [gen] = engine.generate(["x"], 3, SamplingParams(max_new_tokens=9, temperature=0.5, seed=10))
    assert [t.completion_tokens for t in gen.traces] == [3, 4, 5]
    assert [len(t.text) for t in gen.traces] == [3, 4, 5]
    assert seeds == [10, 11, 12]


def test_server_without_per_choice_counts_gets_one_trace_per_request():
    """n choices but no logprobs and usage summed over them: counts need one trace a request."""
    asked = []

    def answer(request):
        n = json.loads(request.content)["n"]
        asked.append(n)
        return httpx.Response(200, json={
            "usage": {"prompt_tokens": 3, "completion_tokens": 4 * n},
            "choices": [{"index": i, "text": "abcd", "finish_reason": "length"}
                        for i in range(n)]})
    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(answer), concurrency=1)
    [gen] = engine.generate(["x"], 2, SamplingParams(max_new_tokens=4, temperature=1.0))
    assert asked == [2, 1, 1]
    assert [t.completion_tokens for t in gen.traces] == [4, 4]
    engine.generate(["x"], 2, SamplingParams(max_new_tokens=4, temperature=1.0))
    assert asked == [2, 1, 1, 1, 1]      # remembered


def test_streaming_server_that_ignores_n():
    """First Finish Search on a server that streams one choice whatever `n`."""
    asked = []

    def answer(request):
        asked.append(json.loads(request.content)["n"])
        chunks = [{"choices": [{"index": 0, "text": "ab", "finish_reason": None,
                                "logprobs": {"token_logprobs": [-0.5, -0.25]}}]},
                  {"choices": [{"index": 0, "text": "c", "finish_reason": "stop",
                                "logprobs": {"token_logprobs": [-0.1]}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 3}}]
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(answer), concurrency=1)
    [gen] = engine.generate(["x"], 3, SamplingParams(max_new_tokens=8, temperature=1.0,
                                                     stop_after_finished=2))
    assert asked == [3, 1]
    assert [t.finish_order for t in gen.traces] == [0, 1, None]
    assert [t.completion_tokens for t in gen.traces] == [3, 3, 0]
    assert [t.text for t in gen.traces] == ["abc", "abc", ""]
    assert gen.traces[2].finish_reason == "cancelled" and gen.prompt_tokens == 3
