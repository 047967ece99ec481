"""The openai engine against a faulty server: a scripted HTTP server on 127.0.0.1 that each test
starts and stops. Every POST takes the next scripted step (a 500, a 429 with Retry-After, a stall
past the client's timeout, a stream that drops or is cut off, a body that is not the API's), so
retries, token accounting and the one-line errors are checked over real sockets and real HTTP."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_cli
from ttx.engines import SamplingParams, open_engine
from ttx.engines.openai import OpenAIEngine
from ttx.errors import TtxError

TIMEOUT_S = 0.5         # the client's read timeout where a test stalls the server
STALL_S = 5.0           # the longest a stalled handler waits (it is released at teardown)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive and chunked streams, as vLLM serves them
    timeout = 10                        # no handler outlives a silent client for long

    def log_message(self, *args):
        pass

    def do_GET(self):
        fault = self.server.fault
        step = fault.models or answer(200, {"object": "list", "data": [{"id": "m"}]})
        fault.requests.append(("GET", self.path, None))
        step(self, None)

    def do_POST(self):
        fault = self.server.fault
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fault.lock:
            fault.requests.append(("POST", self.path, body))
            step = fault.steps.pop(0) if fault.steps else answer(599, {"error": "unscripted request"})
        try:
            step(self, body)
        except OSError:             # the client closed first (a timeout, First Finish Search)
            self.close_connection = True


class FaultServer:
    """A scripted OpenAI-compatible server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self):
        self.steps: list = []           # one per POST, in order
        self.models = None              # the GET /models step (None: one model, "m")
        self.requests: list = []        # (method, path, body) as received
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fault = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self) -> list[dict]:
        return [body for method, _, body in self.requests if method == "POST"]

    def close(self):
        self.release.set()              # wake stalled handlers
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def server():
    fault = FaultServer()
    yield fault
    fault.close()


def engine_for(server, **kw) -> OpenAIEngine:
    kw = {"model": "m", "max_retries": 2, "backoff_s": 0.01, **kw}
    return OpenAIEngine(base_url=server.url, **kw)


# ---------------------------------------------------------------- scripted steps

def answer(status, obj=None, raw: bytes | None = None, content_type="application/json", headers=()):
    """A whole answer: obj as JSON, or raw bytes."""
    def step(h, body):
        data = raw if raw is not None else json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for key, value in headers:
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)
    return step


def completion(*tokens: int, text="x"):
    """A /completions answer with one choice per entry, each of that many tokens."""
    return answer(200, {"usage": {"prompt_tokens": 5, "completion_tokens": sum(tokens)},
                        "choices": [{"index": i, "text": text * k, "finish_reason": "stop",
                                     "logprobs": {"token_logprobs": [-0.5] * k}}
                                    for i, k in enumerate(tokens)]})


def stall():
    """Send nothing until the client has given up (released at teardown at the latest)."""
    def step(h, body):
        h.server.fault.release.wait(STALL_S)
        h.close_connection = True
    return step


def hang_up():
    """Close the connection without an answer."""
    def step(h, body):
        h.close_connection = True
    return step


def token(index, text="t", finish=None):
    """One streamed /completions event: one token of choice `index`."""
    return {"choices": [{"index": index, "text": text, "finish_reason": finish,
                         "logprobs": {"token_logprobs": [-0.25]}}]}


def stream(events, end="done", tail: bytes = b""):
    """A server-sent event stream of `events` (dicts, or raw lines as str), then `end`:
    "done": [DONE]; "drop": the connection closes mid-body (a chunked body never finished);
    "eof": a close-delimited body that ends there, after the bytes `tail` (a cut-off event);
    "stall": nothing more until the client gives up."""
    def step(h, body):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        chunked = end != "eof"
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
        h.end_headers()

        def send(data: bytes):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            h.wfile.flush()
        for event in events:
            send(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode())
        if end == "done":
            send(b"data: [DONE]\n\n")
            h.wfile.write(b"0\r\n\r\n")
        elif end == "eof":
            h.wfile.write(tail)
        elif end == "stall":
            h.server.fault.release.wait(STALL_S)
        h.wfile.flush()
        if end != "done":
            h.close_connection = True
    return step


PLAIN = SamplingParams(max_new_tokens=8, temperature=0.7, seed=1)
FFS2 = SamplingParams(max_new_tokens=8, temperature=0.7, seed=1, stop_after_finished=2)


# ---------------------------------------------------------------- retried, then answered

def test_500_then_ok_is_retried(server):
    server.steps = [answer(500, {"error": {"message": "boom"}}), completion(3, 2)]
    engine = engine_for(server)
    [gen] = engine.generate(["q"], 2, PLAIN)
    assert sorted(t.completion_tokens for t in gen.traces) == [2, 3]
    assert gen.prompt_tokens == 5
    assert server.posts()[0] == server.posts()[1]          # the same request, the same seed
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 0}


def test_429_waits_for_retry_after(server):
    server.steps = [answer(429, {"error": "slow down"}, headers=[("Retry-After", "0.6")]), completion(1)]
    engine = engine_for(server, backoff_s=0.001)
    started = time.perf_counter()
    [gen] = engine.generate(["q"], 1, PLAIN)
    assert 0.6 <= time.perf_counter() - started < 5
    assert gen.traces[0].completion_tokens == 1 and len(server.posts()) == 2


def test_retries_run_out_with_one_line_naming_the_url_and_attempts(server):
    server.steps = [answer(502, raw=b"<html>bad gateway</html>", content_type="text/html")] * 2
    engine = engine_for(server, max_retries=1)
    with pytest.raises(TtxError) as info:
        engine.generate(["q"], 1, PLAIN)
    message = str(info.value)
    assert message == (f"cannot get an answer from the server at {server.url}/completions after 2 "
                       "attempt(s): HTTP 502: <html>bad gateway</html>")
    assert engine.stats()["retries"] == 1


def test_other_4xx_is_not_retried(server):
    server.steps = [answer(400, {"error": {"message": "max_tokens is too large"}}), completion(1)]
    with pytest.raises(TtxError, match=r"/completions: HTTP 400: max_tokens is too large"):
        engine_for(server).generate(["q"], 1, PLAIN)
    assert len(server.posts()) == 1


def test_a_multi_line_server_error_is_one_line(server):
    # vLLM's grammar errors print the offending source with a caret under it, over several lines
    message = "Parse error:\n    ([a-z\n     ^\nerror: unclosed character class"
    server.steps = [answer(400, {"error": {"message": message}})]
    with pytest.raises(TtxError) as info:
        engine_for(server).generate(["q"], 1, PLAIN)
    assert "\n" not in str(info.value)
    assert str(info.value).endswith("HTTP 400: Parse error: ([a-z ^ error: unclosed character class")


def test_hang_up_without_an_answer_is_retried(server):
    server.steps = [hang_up(), completion(2)]
    [gen] = engine_for(server).generate(["q"], 1, PLAIN)
    assert gen.traces[0].completion_tokens == 2 and len(server.posts()) == 2


def test_read_stall_past_the_timeout_is_retried(server):
    """The README promised this; a ReadTimeout used to end the run at once."""
    server.steps = [stall(), completion(4)]
    engine = engine_for(server, timeout_s=TIMEOUT_S)
    started = time.perf_counter()
    [gen] = engine.generate(["q"], 1, PLAIN)
    assert time.perf_counter() - started < STALL_S / 2       # gave up on the stall, did not wait it out
    assert gen.traces[0].completion_tokens == 4
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 0}


def test_stalling_every_time_fails_after_max_retries(server):
    server.steps = [stall(), stall()]
    engine = engine_for(server, timeout_s=TIMEOUT_S, max_retries=1)
    with pytest.raises(TtxError) as info:
        engine.generate(["q"], 1, PLAIN)
    assert str(info.value) == (f"cannot get an answer from the server at {server.url}/completions "
                               f"after 2 attempt(s): ReadTimeout: the server sent nothing for "
                               f"{TIMEOUT_S:g}s (timeout_s)")
    assert len(server.posts()) == 2


# ---------------------------------------------------------------- streams that break

def _second_attempt():
    """n=3, FFS k=2: choice 1 finishes first (2 tokens), then choice 0 (3 tokens); choice 2 has
    1 token when the engine closes the stream."""
    return [token(0), token(1), token(2), token(0), token(1, finish="stop"), token(0, finish="length"),
            token(2)]


@pytest.mark.parametrize("end", ["drop", "stall", "eof"])
def test_stream_broken_midway_is_retried_from_scratch_and_counted_once(server, end):
    """Attempt 1 streams 4 tokens (choice 0 finished after 2) and breaks: the connection drops,
    stalls past the timeout, or ends without [DONE]. The traces are attempt 2's, with its counts
    and its finish order; attempt 1's 4 tokens are in stats()["retried_tokens"], in no trace."""
    first = [token(0), token(1), token(0, finish="stop"), token(2)]
    server.steps = [stream(first, end=end), stream(_second_attempt())]
    engine = engine_for(server, timeout_s=TIMEOUT_S if end == "stall" else 600.0)
    [gen] = engine.generate(["q"], 3, FFS2)
    assert [t.completion_tokens for t in gen.traces] == [3, 2, 1]
    assert [t.finish_reason for t in gen.traces] == ["length", "stop", "cancelled"]
    assert [t.finish_order for t in gen.traces] == [1, 0, None]     # attempt 1's finish taken back
    assert [t.text for t in gen.traces] == ["ttt", "tt", "t"]
    posts = server.posts()
    assert len(posts) == 2 and posts[0] == posts[1] and posts[0]["stream"] is True
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 4}


def test_stream_cut_off_inside_an_event_is_retried(server):
    """A close-delimited stream that ends in the middle of a `data:` line is cut off, not bad JSON."""
    server.steps = [stream([token(0), token(1)], end="eof", tail=b'data: {"choices": [{"ind'),
                    stream(_second_attempt())]
    engine = engine_for(server)
    [gen] = engine.generate(["q"], 3, FFS2)
    assert [t.completion_tokens for t in gen.traces] == [3, 2, 1]
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 2}


def test_stream_whose_traces_all_finished_is_kept_when_the_tail_is_lost(server):
    """The request's one trace finished (the prompt waits for a second, as when a server that
    ignores n is asked one trace a request); the connection dropped before usage and [DONE]:
    the trace is complete, so nothing is retried."""
    server.steps = [stream([token(0), token(0, finish="stop")], end="drop")]
    engine = engine_for(server)
    [gen] = engine.generate(["q"], 1, FFS2)
    assert [(t.completion_tokens, t.finish_reason, t.finish_order) for t in gen.traces] == [(2, "stop", 0)]
    assert engine.stats() == {"requests": 1, "retries": 0, "retried_tokens": 0}


def test_stream_truncated_every_time_fails_with_one_line(server):
    server.steps = [stream([token(0), token(1)], end="eof")] * 2
    engine = engine_for(server, max_retries=1)
    with pytest.raises(TtxError) as info:
        engine.generate(["q"], 2, FFS2)
    assert str(info.value) == (f"cannot get an answer from the server at {server.url}/completions "
                               "after 2 attempt(s): the stream ended before [DONE] with 2 of 2 "
                               "trace(s) unfinished")
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 4}


def test_stream_error_event_is_retried(server):
    server.steps = [stream([token(0), {"error": {"message": "engine died"}}]), stream(_second_attempt())]
    engine = engine_for(server)
    [gen] = engine.generate(["q"], 3, FFS2)
    assert [t.finish_order for t in gen.traces] == [1, 0, None]
    assert engine.stats()["retried_tokens"] == 1


# ---------------------------------------------------------------- answers that are not the API's

def _chat_answer(message):
    return answer(200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop",
                                     "logprobs": {"content": [{"token": "a", "logprob": -1.0}]}}]})


@pytest.mark.parametrize("step, prompt, expected", [
    (answer(200, raw=b"<html>It works!</html>", content_type="text/html"), "q",
     "/completions: the server's answer is not JSON (HTTP 200, text/html): '<html>It works!</html>'"),
    (answer(200, raw=b'{"choices": [{"index": 0, "te'), "q",
     "/completions: the server's answer is not JSON (HTTP 200, application/json): "
     "'{\"choices\": [{\"index\": 0, \"te'"),
    (answer(200, raw=b"\xff\xfe\x00garbage"), "q", "/completions: the server's answer is not JSON"),
    (answer(200, [1, 2]), "q", "/completions: the server's answer is not a JSON object: '[1, 2]'"),
    (answer(200, {"object": "text_completion", "usage": {}}), "q",
     "/completions: the answer has no `choices`: "),
    (answer(200, {"choices": []}), "q", "/completions: the answer has no `choices`"),
    (answer(200, {"choices": [{"index": 0, "finish_reason": "stop", "logprobs": None}]}), "q",
     "/completions: the answer is not the API's: choice 0 has no text (neither `text` nor `message`)"),
    (answer(200, {"choices": [{"index": 0, "text": 7, "finish_reason": "stop"}]}), "q",
     "/completions: the answer is not the API's: choice 0's text is not a string"),
    (answer(200, {"choices": ["just text"]}), "q",
     "/completions: the answer is not the API's: a choice is not a JSON object"),
    (answer(200, {"choices": [{"index": 0, "text": "a", "logprobs": {"token_logprobs": ["x"]}}]}),
     "q", "/completions: the answer is not the API's: a field of the wrong shape (ValueError"),
    (_chat_answer("just text"), [{"role": "user", "content": "q"}],
     "/chat/completions: the answer is not the API's: choice 0's `message` is not an object"),
])
def test_answer_that_is_not_the_apis_is_one_line_not_retried(server, step, prompt, expected):
    server.steps = [step, completion(1)]
    engine = engine_for(server)
    with pytest.raises(TtxError) as info:
        engine.generate([prompt], 1, PLAIN)
    assert str(info.value).startswith(server.url + expected), str(info.value)
    assert "\n" not in str(info.value)
    assert len(server.posts()) == 1 and engine.stats()["retries"] == 0


def test_chat_message_with_null_content_is_an_empty_text(server):
    server.steps = [_chat_answer({"role": "assistant", "content": None})]
    [gen] = engine_for(server).generate([[{"role": "user", "content": "q"}]], 1, PLAIN)
    assert gen.traces[0].text == "" and gen.traces[0].completion_tokens == 1


@pytest.mark.parametrize("step, expected", [
    (stream(["not json", token(0, finish="stop")]),
     "/completions: a streamed `data:` line is not JSON: 'not json'"),
    (stream([token(0), "[1, 2]"]),
     "/completions: a streamed event is not the API's: the event is not a JSON object: '[1, 2]'"),
    (stream([{"choices": {"index": 0}}]),
     "/completions: a streamed event is not the API's: `choices` is not a list"),
    (stream([{"choices": [{"index": "0", "text": "a"}]}]),
     "/completions: a streamed event is not the API's: a choice's `index` is '0', not an integer >= 0"),
    (answer(200, {"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}),
     "/completions: the answer is not an event stream (application/json): '{\"choices\""),
])
def test_stream_that_is_not_the_apis_is_one_line_not_retried(server, step, expected):
    server.steps = [step, stream(_second_attempt())]
    engine = engine_for(server)
    with pytest.raises(TtxError) as info:
        engine.generate(["q"], 2, FFS2)
    assert str(info.value).startswith(server.url + expected), str(info.value)
    assert len(server.posts()) == 1


def test_a_5xx_page_that_is_not_json_is_retried_first(server):
    server.steps = [answer(503, raw=b"<html>Service Unavailable</html>", content_type="text/html"),
                    completion(2)]
    [gen] = engine_for(server).generate(["q"], 1, PLAIN)
    assert gen.traces[0].completion_tokens == 2 and len(server.posts()) == 2


@pytest.mark.parametrize("models, expected", [
    (answer(200, raw=b"<html>login</html>", content_type="text/html"),
     "/models: the server's answer is not JSON (HTTP 200, text/html): '<html>login</html>'"),
    (answer(200, {"data": "m"}), "/models: the answer has no `data` list of models"),
    (answer(200, {"data": [{"name": "m"}]}), "/models: the first model has no `id`"),
    (answer(200, {"data": []}), "/models: the server lists no model; pass model="),
])
def test_bad_model_list_is_one_line(server, models, expected):
    server.models = models
    with pytest.raises(TtxError) as info:
        OpenAIEngine(base_url=server.url, max_retries=0)
    assert str(info.value).startswith(server.url + expected), str(info.value)


# ---------------------------------------------------------------- options, env and the CLI

def test_open_engine_takes_timeout_and_retries_from_arguments_then_env(server, monkeypatch):
    monkeypatch.setenv("TTX_TIMEOUT_S", "0.25")
    monkeypatch.setenv("TTX_MAX_RETRIES", "0")
    engine = open_engine("openai", model="m", base_url=server.url)
    assert (engine.timeout_s, engine.max_retries) == (0.25, 0)
    server.steps = [stall(), completion(1)]
    with pytest.raises(TtxError, match=r"after 1 attempt\(s\): ReadTimeout: the server sent nothing "
                                       r"for 0.25s"):
        engine.generate(["q"], 1, PLAIN)
    engine = open_engine("openai", model="m", base_url=server.url, timeout_s=TIMEOUT_S, max_retries=1)
    assert (engine.timeout_s, engine.max_retries) == (TIMEOUT_S, 1)
    monkeypatch.delenv("TTX_TIMEOUT_S")
    monkeypatch.delenv("TTX_MAX_RETRIES")
    engine = open_engine("openai", model="m", base_url=server.url)
    assert (engine.timeout_s, engine.max_retries) == (600.0, 4)


@pytest.mark.parametrize("var, value", [("TTX_TIMEOUT_S", "soon"), ("TTX_TIMEOUT_S", "0"),
                                        ("TTX_TIMEOUT_S", "nan"), ("TTX_MAX_RETRIES", "-1"),
                                        ("TTX_MAX_RETRIES", "2.5")])
def test_bad_env_setting_is_one_line(server, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(TtxError, match=f"^{var}='{value}': must be "):
        open_engine("openai", model="m", base_url=server.url)


@pytest.mark.parametrize("kw, expected", [({"timeout_s": 0}, "timeout_s must be a positive number"),
                                          ({"timeout_s": float("inf")}, "timeout_s must be a positive"),
                                          ({"max_retries": -1}, "max_retries must be an integer >= 0"),
                                          ({"concurrency": 0}, "concurrency must be an integer >= 1")])
def test_bad_engine_settings_are_refused(server, kw, expected):
    with pytest.raises(TtxError, match=expected):
        engine_for(server, **kw)


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://127.0.0.1/v1"])
def test_base_url_without_http_is_one_line(url):
    with pytest.raises(TtxError, match=f"^base URL '{url}' must start with http:// or https://"):
        OpenAIEngine(base_url=url, model="m")


def test_tts_run_against_a_server_answering_html_exits_2_with_one_line(server, tmp_path):
    """The hostile case as it was tried: the CLI, a server whose answers are not JSON."""
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "What is 2 + 3?", "answer": "5"}\n')
    server.steps = [answer(200, raw=b"<html>It works!</html>", content_type="text/html")]
    result = run_cli(["tts-run", "--engine", "openai", "--base-url", server.url, "-i", problems,
                      "-o", tmp_path / "out.jsonl", "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip() == (f"ttx: error: {server.url}/chat/completions: the server's answer "
                                     "is not JSON (HTTP 200, text/html): '<html>It works!</html>'")
