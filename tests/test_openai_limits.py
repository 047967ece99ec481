"""The openai engine's limits against a hostile server on 127.0.0.1 (tests/test_openai_faults.py's
scripted server): a request's total deadline (a server that drips bytes, headers or body), the
size cap derived from max_tokens, what the server reports checked before it is kept (token
counts, log-probabilities, a stream that never finishes a trace), redirects refused; and
credentials in the base URL used for the requests but redacted wherever they are written or
shown (errors, logs, manifests, the report page)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from tests.conftest import run_cli
from tests.test_openai_faults import FFS2, PLAIN, FaultServer, answer, completion, engine_for, stream, token
from ttx.engines import SamplingParams, open_engine
from ttx.engines.openai import BYTES_OVERHEAD, BYTES_PER_TOKEN, OpenAIEngine
from ttx.errors import TtxError
from ttx.redact import redact_secrets, redact_text, redact_url

SECRET, KEY = "sk-SECRET-1234", "sk-QUERY-5678"


@pytest.fixture()
def server():
    fault = FaultServer()
    yield fault
    fault.close()


def secret_url(server) -> str:
    """The server's URL with a password in its userinfo and a key in its query."""
    return server.url.replace("http://", f"http://user:{SECRET}@") + f"?api_key={KEY}"


def _fails(engine, prompt="q", n=1, params=PLAIN) -> str:
    with pytest.raises(TtxError) as info:
        engine.generate([prompt], n, params)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- hostile steps

def drip(where: str, every_s: float = 0.05):
    """One byte every `every_s` seconds, for ever (until the client leaves or teardown):
    where="body": after whole headers (a chunked JSON body); "headers": the status line itself."""
    def step(h, body):
        release = h.server.fault.release
        if where == "body":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.flush()
        data = b"HTTP/1.1 200 OK\r\nX-Slow: " if where == "headers" else b'{"choices": ['
        i = 0
        while not release.wait(every_s):
            h.wfile.write(data[i:i + 1] if i < len(data) else b" ")
            h.wfile.flush()
            i += 1
        h.close_connection = True
    return step


def endless_tokens(every_s: float = 0.002):
    """A stream whose trace 0 gets a token every `every_s` seconds and never finishes."""
    def step(h, body):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        release = h.server.fault.release
        while not release.wait(every_s):
            data = f"data: {json.dumps(token(0))}\n\n".encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        h.close_connection = True
    return step


def huge(size: int, declared: bool, sse: bool = False):
    """An answer of `size` bytes (padding inside a JSON string, or SSE comment lines), its
    Content-Length given (declared: only that header is sent, no body) or chunked."""
    def step(h, body):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream" if sse else "application/json")
        if declared:
            h.send_header("Content-Length", str(size))
            h.end_headers()
            h.wfile.flush()
            h.server.fault.release.wait(2)      # nothing comes: the length alone is refused
            h.close_connection = True
            return
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        block = (b": " + b"x" * 65530 + b"\n") if sse else b"x" * 65536
        if not sse:
            head = b'{"choices": [{"index": 0, "text": "'
            h.wfile.write(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(size // len(block) + 1):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    return step


def chat_choices(content="The answer is 5.", tokens=2, logprob=-0.5):
    """A /chat/completions answer with as many choices as the request asks (`n`)."""
    def step(h, body):
        n = body.get("n", 1)
        answer(200, {"usage": {"prompt_tokens": 5, "completion_tokens": tokens * n},
                     "choices": [{"index": i, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop",
                                  "logprobs": {"content": [{"token": "a", "logprob": logprob}] * tokens}}
                                 for i in range(n)]})(h, body)
    return step


# ---------------------------------------------------------------- the deadline

@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_server_that_drips_bytes_is_cut_off_at_the_deadline(server, where):
    """One byte every 50 ms: no read waits the 0.5 s timeout, yet the attempt ends at 0.6 s."""
    server.steps = [drip(where)]
    engine = engine_for(server, timeout_s=0.5, deadline_s=0.6, max_retries=0)
    started = time.perf_counter()
    message = _fails(engine)
    assert 0.55 <= time.perf_counter() - started < 2.0
    assert message == (f"cannot get an answer from the server at {server.url}/completions after 1 "
                       "attempt(s): DeadlineExceeded: the answer took more than 0.6s in all "
                       "(the request's deadline)")


def test_the_deadline_is_retried_like_a_timeout_then_answered(server):
    server.steps = [drip("body"), completion(3)]
    engine = engine_for(server, timeout_s=0.5, deadline_s=0.3)
    [gen] = engine.generate(["q"], 1, PLAIN)
    assert gen.traces[0].completion_tokens == 3
    assert engine.stats() == {"requests": 2, "retries": 1, "retried_tokens": 0}


def test_the_default_deadline_is_timeout_plus_a_second_per_token(server):
    engine = engine_for(server, timeout_s=0.2, max_retries=0)
    assert engine._deadline(8) == pytest.approx(8.2) and engine._deadline(0) == pytest.approx(0.2)
    server.steps = [drip("body", every_s=0.05)]
    started = time.perf_counter()
    message = _fails(engine, params=SamplingParams(max_new_tokens=1, temperature=0.7))
    assert 1.15 <= time.perf_counter() - started < 3.0
    assert message.endswith("DeadlineExceeded: the answer took more than 1.2s in all (the "
                            "request's deadline)")


def test_open_engine_takes_the_deadline_from_its_argument_then_env(server, monkeypatch):
    monkeypatch.setenv("TTX_DEADLINE_S", "7.5")
    assert open_engine("openai", model="m", base_url=server.url).deadline_s == 7.5
    assert open_engine("openai", model="m", base_url=server.url, deadline_s=2).deadline_s == 2
    monkeypatch.setenv("TTX_DEADLINE_S", "-1")
    with pytest.raises(TtxError, match=r"^TTX_DEADLINE_S='-1': must be a number of seconds > 0"):
        open_engine("openai", model="m", base_url=server.url)
    monkeypatch.delenv("TTX_DEADLINE_S")
    assert open_engine("openai", model="m", base_url=server.url).deadline_s is None
    with pytest.raises(TtxError, match="deadline_s must be a positive number of seconds"):
        engine_for(server, deadline_s=float("nan"))


def test_a_stream_that_never_finishes_a_trace_stops_past_max_tokens(server):
    """FFS with max_tokens 8: the ninth token of an unfinished trace ends the request."""
    server.steps = [endless_tokens(), completion(1)]
    engine = engine_for(server)
    started = time.perf_counter()
    message = _fails(engine, n=2, params=FFS2)
    assert time.perf_counter() - started < 2.0
    assert message.startswith(f"{server.url}/completions: a streamed event is not the API's: "
                              "choice 0 has 9 tokens, more than max_tokens 8: ")
    assert len(server.posts()) == 1


# ---------------------------------------------------------------- the size cap

def test_size_cap_is_derived_from_max_tokens():
    from ttx.engines.openai import _size_cap
    assert _size_cap(8, 1) == BYTES_OVERHEAD + 8 * BYTES_PER_TOKEN
    assert _size_cap(8, 4) - _size_cap(8, 1) == 24 * BYTES_PER_TOKEN


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_answer_larger_than_max_tokens_justify_is_refused(server, declared):
    cap = BYTES_OVERHEAD + 8 * BYTES_PER_TOKEN
    server.steps = [huge(300_000_000 if declared else cap + 1, declared), completion(1)]
    engine = engine_for(server)
    started = time.perf_counter()
    message = _fails(engine)
    assert time.perf_counter() - started < 3.0
    said = "is 300000000 bytes, more than the" if declared else "is larger than"
    assert message.startswith(f"{server.url}/completions: the answer {said} {cap}"), message
    assert len(server.posts()) == 1


def test_a_stream_larger_than_max_tokens_justify_is_refused(server):
    """Comment lines carry no token: only the size cap stops them."""
    cap = BYTES_OVERHEAD + 2 * 8 * BYTES_PER_TOKEN
    server.steps = [huge(cap + 1, declared=False, sse=True)]
    message = _fails(engine_for(server), n=2, params=FFS2)
    assert message.startswith(f"{server.url}/completions: the answer is larger than {cap} bytes")


# ---------------------------------------------------------------- what the server reports

def _raw(text: str):
    return answer(200, raw=text.encode())


def _choice(logprobs="[-0.5]", extra=""):
    return ('{"choices": [{"index": 0, "text": "a", "finish_reason": "stop", '
            f'"logprobs": {{"token_logprobs": {logprobs}}}{extra}}}]')


@pytest.mark.parametrize("step, expected", [
    (answer(200, {"usage": {"prompt_tokens": -5, "completion_tokens": 1},
                  "choices": [{"index": 0, "text": "a", "finish_reason": "stop",
                               "logprobs": {"token_logprobs": [-0.5]}}]}),
     "usage.prompt_tokens is -5, not an integer from 0 to 2147483647"),
    (answer(200, {"usage": {"prompt_tokens": 5, "completion_tokens": 1.5},
                  "choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}),
     "usage.completion_tokens is 1.5, not an integer from 0 to 2147483647"),
    (answer(200, {"usage": {"prompt_tokens": 5, "completion_tokens": 9},
                  "choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}),
     "usage.completion_tokens is 9, more than the request's max_tokens allow (8)"),
    (answer(200, {"usage": {"prompt_tokens": 10 ** 400},
                  "choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}),
     f"usage.prompt_tokens is 1{'0' * 36}..., not an integer from 0 to 2147483647"),
    (_raw(_choice("[NaN]") + "}"), "a log-probability is nan, not a finite number <= 0"),
    (_raw(_choice("[-0.5, -Infinity]") + "}"), "a log-probability is -inf, not a finite number <= 0"),
    (_raw(_choice("[3.5]") + "}"), "a log-probability is 3.5, not a finite number <= 0"),
    (_raw(_choice("[" + ", ".join(["-0.5"] * 200_000) + "]") + "}"),
     "choice 0 has 200000 tokens, more than max_tokens 8"),
    (_raw(_choice("[-0.5]", ', "token_ids": [1, -2]') + "}"),
     "a token id is -2, not an integer from 0 to 2147483647"),
    (_raw(_choice("[-0.5]", ', "token_ids": ' + json.dumps(list(range(9)))) + "}"),
     "choice 0 has 9 tokens, more than max_tokens 8"),
])
def test_what_the_server_reports_is_checked(server, step, expected):
    server.steps = [step, completion(1)]
    message = _fails(engine_for(server))
    assert message.startswith(f"{server.url}/completions: the answer is not the API's: "
                              f"{expected}: "), message
    assert len(server.posts()) == 1


@pytest.mark.parametrize("events, expected", [
    ([token(0), {"choices": [], "usage": {"prompt_tokens": -3}}],
     "usage.prompt_tokens is -3, not an integer from 0 to 2147483647"),
    ([{"choices": [{"index": 0, "text": "t", "finish_reason": None,
                    "logprobs": {"token_logprobs": [float("nan")]}}]}],
     "a log-probability is nan, not a finite number <= 0"),
    ([{"choices": [{"index": 0, "text": "t", "finish_reason": "stop",
                    "logprobs": {"token_logprobs": [-0.1] * 50}}]}],
     "choice 0 has 50 tokens, more than max_tokens 8"),
])
def test_what_a_stream_reports_is_checked(server, events, expected):
    server.steps = [stream(events), completion(1)]
    message = _fails(engine_for(server), n=2, params=FFS2)
    assert message.startswith(f"{server.url}/completions: a streamed event is not the API's: "
                              f"{expected}: "), message
    assert len(server.posts()) == 1


def test_a_nan_log_probability_never_reaches_the_records(server, tmp_path):
    """The case as it was tried: tts-run --scorer logprob; exit 2, one line, no NaN written."""
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "What is 2 + 3?", "answer": "5"}\n')
    server.steps = [chat_choices(logprob=float("nan"))]
    out = tmp_path / "out.jsonl"
    result = run_cli(["tts-run", "--engine", "openai", "--base-url", server.url, "-i", problems,
                      "-o", out, "--max-new-tokens", "4", "--n", "2", "--strategy", "best-of-n",
                      "--scorer", "logprob", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"ttx: error: {server.url}/chat/completions: the "
                                            "answer is not the API's: a log-probability is nan")
    assert "NaN" not in (out.read_text() if out.exists() else "")


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_refused_not_taken_as_the_answer(server, status):
    location = f"http://admin:{SECRET}@elsewhere.example/v1?token={KEY}"
    body = {"choices": [{"index": 0, "text": "from the redirect", "finish_reason": "stop",
                         "logprobs": {"token_logprobs": [-0.5]}}]}
    server.steps = [answer(status, body, headers=[("Location", location)]), completion(1)]
    message = _fails(engine_for(server))
    assert message == (f"{server.url}/completions: the server redirects (HTTP {status} to "
                       "http://***@elsewhere.example/v1?token=***); redirects are not followed: "
                       "give the URL of the API itself as the base URL")
    assert len(server.posts()) == 1


# ---------------------------------------------------------------- secrets in the base URL

@pytest.mark.parametrize("url, shown", [
    ("http://user:sk-SECRET@host:8000/v1", "http://***@host:8000/v1"),
    ("https://sk-SECRET@host/v1", "https://***@host/v1"),
    ("http://host/v1?api_key=sk-1&x=2&token=t&Key=k&access_token=a", "http://host/v1?api_key=***&x=2&"
     "token=***&Key=***&access_token=***"),
    ("http://host/v1?api-version=2024", "http://host/v1?api-version=2024"),
    ("http://u:p@[bad/v1", "http://***@[bad/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"at {url}: boom") == f"at {shown}: boom"


def test_credentials_are_used_but_never_shown_in_errors_or_logs(server, caplog):
    seen = []

    def failing(h, body):
        seen.append((h.path, h.headers.get("Authorization")))
        answer(500, {"error": f"bad key {KEY}"})(h, body)
    server.steps = [failing, failing]
    engine = OpenAIEngine(base_url=secret_url(server), model="m", max_retries=1, backoff_s=0.01)
    with caplog.at_level(logging.INFO, logger="httpx"):
        message = _fails(engine)
    # the userinfo went as basic auth, the query with every request
    assert seen[0] == (f"/v1/completions?api_key={KEY}", "Basic dXNlcjpzay1TRUNSRVQtMTIzNA==")
    shown = server.url.replace("http://", "http://***@") + "/completions?api_key=***"
    assert message == (f"cannot get an answer from the server at {shown} after 2 attempt(s): "
                       "HTTP 500: bad key ***")          # the key the server echoed too
    assert SECRET not in engine.base_url and KEY not in engine.base_url
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "/v1/completions?api_key=***" in logged and KEY not in logged and SECRET not in logged


def test_a_bad_base_url_is_refused_without_its_secret():
    with pytest.raises(TtxError) as info:
        OpenAIEngine(base_url=f"ftp://user:{SECRET}@host/v1", model="m")
    assert str(info.value).startswith("base URL 'ftp://***@host/v1' must start with http://")


def test_manifest_and_report_page_hold_no_secret(server, tmp_path):
    """tts-run with a key in --base-url: the records and manifest (what `report` shows) hold
    none; a manifest an older ttx wrote with the key in it is redacted on the report page."""
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "What is 2 + 3?", "answer": "5"}\n')
    server.steps = [chat_choices()]
    out = tmp_path / "out.jsonl"
    result = run_cli(["tts-run", "--engine", "openai", "--base-url", secret_url(server), "-i",
                      problems, "-o", out, "--max-new-tokens", "4", "--n", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = out.with_name("out.jsonl.manifest.json")
    text = manifest.read_text()
    assert SECRET not in text and KEY not in text and SECRET not in out.read_text()
    assert json.loads(text)["options"]["cli"]["base_url"] == redact_url(secret_url(server))
    assert server.requests[0][1] == f"/v1/models?api_key={KEY}"       # the key was used

    old = json.loads(text)                    # as a ttx before the redaction wrote it
    old["options"]["cli"]["base_url"] = secret_url(server)
    manifest.write_text(json.dumps(old))
    page = tmp_path / "page.html"
    result = run_cli(["report", "-i", out, "-o", page])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert SECRET not in html and KEY not in html
    assert "***@127.0.0.1" in html
    assert SECRET not in page.with_name("page.html.manifest.json").read_text()


def test_resume_compares_the_redacted_fingerprint(tmp_path):
    """A fingerprint with a URL is stored redacted; resuming with the same one is not refused,
    and one with another host names it without the secret."""
    from ttx.records import Output
    path = tmp_path / "o.jsonl"
    url = f"http://u:{SECRET}@h/v1"
    out = Output(path, stage="t", fingerprint={"base_url": url})
    out.write({"id": 1})
    out.close({"done": 1})
    assert SECRET not in path.with_name("o.jsonl.manifest.json").read_text()
    Output(path, stage="t", fingerprint={"base_url": url}, resume=True).close({"done": 1})
    with pytest.raises(TtxError) as info:
        Output(path, stage="t", fingerprint={"base_url": f"http://u:{SECRET}@other/v1"}, resume=True)
    assert "different --base-url" in str(info.value) and SECRET not in str(info.value)
    assert redact_secrets({"a": [url], url: 1}) == {"a": ["http://***@h/v1"], "http://***@h/v1": 1}
