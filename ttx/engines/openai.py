"""The `openai` engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp server) over HTTP.

    engine = OpenAIEngine(base_url="http://127.0.0.1:8000/v1")      # model: the server's first
    gens = engine.generate(["2+2="], n=4, SamplingParams(max_new_tokens=32, temperature=0.7))

Chat prompts (a list of messages) go to /chat/completions, where the server applies the model's
chat template; a str prompt goes to /completions as it is, and so does a TokenPrompt (its ids as
the `prompt`, with vLLM's return_token_ids so the sampled ids come back). The n traces of a prompt are asked for
in one request (`n`), so the server shares the prompt's prefill; requests for different prompts run
concurrently on threads, at most `concurrency` in flight.

Token counts are exact per trace. vLLM and SGLang report `usage` per request, summed over the n
choices, so the engine always asks for the sampled token's log-probability (`logprobs=0` on
/completions, `logprobs=true, top_logprobs=0` on /chat/completions): the server returns one entry
per generated token of each choice, and their count is that choice's completion_tokens (tokens
that produced a stop string included, as in `usage`). A choice's `token_ids` (vLLM with
extra_body={"return_token_ids": True}) are used, and kept in Trace.token_ids, where present. A
server that returns neither, or fewer choices than asked (llama.cpp ignores `n`), is then asked
one trace per request, whose `usage` is exact; the engine remembers that for its lifetime.

Log-probabilities are the server's: vLLM returns them from the raw model output (temperature 1)
by default. Trace.self_certainty stays None: a server returns a few top log-probabilities, not
the full distribution KL(uniform || p) needs.

First Finish Search (params.stop_after_finished=k) streams the request; once k traces of a
prompt have finished, the stream is closed (vLLM aborts the request on disconnect) and the other
traces come back with finish_reason "cancelled" and the tokens received so far (counted from the
streamed log-probability entries). finish_order numbers traces in the order they finished; for a
non-streamed request, whose n choices are decoded in lockstep, that is the order of their token
counts (ties by index).

DeepConf (params.confidence, a ConfidenceStop) streams with `logprobs: k` (/completions) or
`top_logprobs: k` (/chat); each token's confidence is -(1/k) x the sum of the k largest top
log-probabilities streamed for it (Trace.confidences). With a threshold every trace is its own
request, so one trace's stream can be closed alone once its window confidence falls below it:
that trace comes back "cancelled" with the tokens received.

At temperature 0 the n traces are identical (and vLLM refuses n > 1), so one is generated and
copied n times; each copy counts its tokens, as n greedy sequences would.

Faults. One attempt is one HTTP request. These failures are retried, up to max_retries times
after the first attempt, with exponential backoff and full jitter (uniform in [0, backoff_s *
2**attempt]; a 429's or 5xx's Retry-After in seconds is honoured, up to 60 s): a connection that
cannot be made or breaks (httpx ConnectError, ReadError, WriteError, RemoteProtocolError), any
timeout (ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout), HTTP 429 and 5xx, an `error`
event inside a stream, and a stream that ends before `data: [DONE]` with a trace unfinished (cut
off). Other 4xx are not retried: the server's message is the error. timeout_s bounds every read
(httpx's read timeout: the longest silence between two pieces of the answer, not the whole
request); a non-streamed request sends nothing until it is done, so there it bounds the request;
connecting gets min(timeout_s, 30) s. An answer that is not what the API specifies (a body that is
not JSON, no `choices`, a choice without text, a streamed `data:` line that is not JSON) is not
retried: it gives one TtxError naming the URL and what was wrong. When the retries run out the
error names the URL, the number of attempts and the last failure. open_engine (every stage)
takes timeout_s and max_retries from its arguments, else $TTX_TIMEOUT_S and $TTX_MAX_RETRIES,
else 600 s and 4.

Limits. Nothing the server sends is trusted to end or to be small. Each attempt has a deadline
for the whole request, connecting and sending included: deadline_s (--deadline,
$TTX_DEADLINE_S), else timeout_s + SECONDS_PER_TOKEN (1 s) per max_tokens; every connect, read
and write of the connection is bounded by what is left of it, so a server that sends a byte a
second (which no read timeout catches) is cut off at the deadline, and the attempt is retried
like a timeout. An answer (the body, decompressed) may have at most BYTES_OVERHEAD (4 MiB) +
BYTES_PER_TOKEN (4 KiB) x max_tokens x n bytes; a larger one, or a Content-Length over that, is
one TtxError, not retried. What comes back is checked before it is kept: token counts (`usage`,
token ids) are integers from 0 to 2**31 - 1, a choice has at most max_tokens tokens (ids or
log-probability entries) and `usage.completion_tokens` at most max_tokens x n, log-probabilities
are finite numbers <= 0; a stream whose trace runs past max_tokens without finishing is refused
as soon as it does. A redirect (3xx) is not followed, and its body is not taken as the answer:
one TtxError naming where it points. Every such error is one line naming the URL and what was
wrong, not retried. The URL that errors and logs show (and manifests store) has its credentials
redacted (ttx.redact.redact_url), and the credentials themselves are taken out of a server's
message that echoes them; the userinfo is sent as basic auth, the query with every request.

A retry repeats the whole request (same body, same seed: a seeded request comes back the same);
nothing is resumed mid-trace, since the API cannot continue a stream. So the traces returned
always come from one attempt, and their completion_tokens are the tokens that attempt generated,
counted as above; nothing of a failed attempt is added to them. The finishes a failed stream had
counted for First Finish Search are taken back, so finish_order is that of the attempt kept. A
stream whose every trace has finished is kept even if the connection breaks afterwards (before
the usage chunk or [DONE]). What failed attempts cost is in engine.stats(): "requests" (HTTP
requests sent, every attempt), "retries" (attempts that failed and were retried) and
"retried_tokens" (completion tokens received in streamed attempts that failed, the last one
included: generated, then thrown away). The tokens of a failed non-streamed attempt never reach
the engine, so they cannot be counted; each failed attempt also cost its prompt's prefill.

An output constraint (params.constraint) goes the way vLLM takes it: a JSON schema on
/chat/completions as `response_format` {"type": "json_schema", ...} (OpenAI's field, which SGLang
and llama.cpp server read too), everything else in vLLM's `structured_outputs` {"json" | "regex" |
"choice": ...}. vLLM 0.32 ignores its old `guided_json` / `guided_regex` / `guided_choice`
fields (it logs a warning and decodes unconstrained), so they are not sent. A server that
refuses a constraint with a 4xx naming it raises one TtxError line saying so.

LoRA adapters (vLLM's runtime LoRA API): load_adapter(name, path) loads a PEFT adapter folder on
the server (POST /load_lora_adapter) and makes generate() ask for model=name; unload_adapter(name)
unloads it (POST /unload_lora_adapter). `ttx rl --engine openai` loads its current adapter so at
every rollout step. A refusal is one TtxError line with the server's answer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import httpcore
import httpx

from ttx.engines.base import Generation, Prompt, SamplingParams, TokenPrompt, Trace, per_prompt
from ttx.errors import TtxError
from ttx.redact import MASK, redact_text, redact_url, secret_param

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 4
# The default deadline of a request: timeout_s (the wait for the first byte) + this per max_tokens.
SECONDS_PER_TOKEN = 1.0
# The size cap of an answer: this per max_tokens per choice (a streamed token is one event with
# its log-probability and usage, ~0.5 KB on vLLM), plus the overhead (ids, model name, headers).
BYTES_PER_TOKEN = 4096
BYTES_OVERHEAD = 4 << 20
_ERROR_BYTES = 64 << 10         # of an error answer, what is read for its message
_MOST_TOKENS = 2 ** 31 - 1      # no count of tokens is larger (a 400-digit one is not a count)
_RETRY_STATUS = {429, 500, 502, 503, 504}
# words of a 4xx message that refuses an output constraint
_CONSTRAINT_WORDS = re.compile(r"structured|response_format|json_schema|schema|guided|regex|choice|"
                               r"grammar|xgrammar|guidance|outlines", re.I)
# Failures before or while talking to the server that a retry can fix (timeouts separately).
_RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Retryable(Exception):
    """An attempt that failed in a way the next attempt may not (429, 5xx, a dropped connection)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Inexact(Exception):
    """The server gave no per-choice token count for a multi-choice request."""


class _Malformed(Exception):
    """A part of the server's answer that is not what the API specifies."""


# What interpreting a JSON answer of the wrong shape raises (a str where a list belongs, ...).
_MALFORMED = (_Malformed, KeyError, IndexError, TypeError, ValueError, AttributeError)
# Server-sent event lines other than `data:` (and `:` comments), which the engine skips.
_SSE_FIELDS = (":", "event:", "id:", "retry:")


@dataclass
class _PromptState:
    """What the requests of one prompt share: their traces, the finish count, the clock."""

    n: int
    traces: list = field(default_factory=list)
    finished: int = 0
    prompt_tokens: int = 0
    start: float | None = None
    end: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.traces = [None] * self.n

    def finish(self, stop_after: int | None) -> tuple[int | None, bool]:
        """Count one finished trace; return (its finish_order, whether the prompt is done).

        A trace finishing after the prompt is done is cancelled (order None): FFS keeps k.
        """
        with self.lock:
            if stop_after is not None and self.finished >= stop_after:
                return None, True
            order = self.finished
            self.finished += 1
            return order, stop_after is not None and self.finished >= stop_after

    def done(self, stop_after: int | None) -> bool:
        with self.lock:
            return stop_after is not None and self.finished >= stop_after


class OpenAIEngine:
    """Generate through an OpenAI-compatible HTTP server (see the module docstring)."""

    name = "openai"
    supports_constraints = True

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 backoff_s: float = 0.5, extra_body: dict | None = None,
                 transport: httpx.BaseTransport | None = None, deadline_s: float | None = None):
        """base_url: e.g. http://127.0.0.1:8000/v1 (default $TTX_BASE_URL, else that URL); its
        userinfo is sent as basic auth and its query with every request, and neither is shown;
        model: the name the server serves (None: the first of GET /models);
        api_key: sent as a Bearer token (default $TTX_API_KEY; empty sends none);
        concurrency: most requests in flight;
        timeout_s: the longest wait for the server to send anything (a read; see "Faults");
        max_retries: retries after the first attempt; backoff_s: the first backoff's scale;
        extra_body: server-specific fields added to every request (e.g. vLLM's top_k);
        transport: an httpx transport (tests wrap the default one);
        deadline_s: the longest one attempt may take in all (None: timeout_s + SECONDS_PER_TOKEN
        per max_tokens; see "Limits")."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise TtxError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        for name, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s)):
            if value is None and name == "deadline_s":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise TtxError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise TtxError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        url = (base_url or os.environ.get("TTX_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # what errors and stats show: never the credentials in the URL (ttx.redact)
        self.base_url = redact_url(url)
        if not url.lower().startswith(("http://", "https://")):
            raise TtxError(f"base URL {self.base_url!r} must start with http:// or https:// "
                           f"(e.g. {DEFAULT_BASE_URL})")
        api_key = os.environ.get("TTX_API_KEY", "") if api_key is None else api_key
        self.concurrency = concurrency
        self.timeout_s = float(timeout_s)
        self.deadline_s = None if deadline_s is None else float(deadline_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(concurrency)
        self._one_per_request = False      # set once the server proved it cannot do n per request
        self._stats = {"requests": 0, "retries": 0, "retried_tokens": 0}
        self._stats_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        root, auth, params, secrets = _split_url(url, self.base_url)
        # the credentials themselves, which a server may echo in its messages: never shown
        self._secrets = sorted({x for x in (*secrets, api_key) if len(x) >= 4}, key=len, reverse=True)
        self._client = httpx.Client(
            base_url=root, auth=auth, params=params, headers=headers, transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        _bound_by_deadline(self._client)
        _redact_logs()
        try:
            self.model_name = model or self._first_model()
        except TtxError as exc:
            raise self._scrubbed(exc) from None

    def _url(self, path: str) -> str:
        """The URL of `path` as errors show it: credentials redacted, the query after the path."""
        try:
            u = urlsplit(self.base_url)
            return urlunsplit((u.scheme, u.netloc, u.path + path, u.query, ""))
        except ValueError:
            return self.base_url + path

    def _scrubbed(self, exc: TtxError) -> TtxError:
        """exc without the credentials, which a server's message may have echoed."""
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return TtxError(text)

    def stats(self) -> dict:
        """Counters over the engine's lifetime: requests (HTTP requests sent, every attempt),
        retries (attempts that failed and were retried), retried_tokens (completion tokens
        streamed in attempts that failed; they are in no trace's completion_tokens)."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str, amount: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += amount

    # ---------------------------------------------------------------- HTTP with retries

    def _attempts(self, what: str, call, deadline_s: float):
        """Run call() until it succeeds, retrying _Retryable failures, dropped connections and
        timeouts with backoff (see "Faults" in the module docstring); each attempt must end
        within deadline_s (see "Limits")."""
        for attempt in range(self.max_retries + 1):
            self._count("requests")
            end = math.inf
            try:
                with self._slots:           # the deadline runs from the slot, not the queue
                    end = _DEADLINE.end = time.monotonic() + deadline_s
                    try:
                        return call()
                    finally:
                        _DEADLINE.end = None
            except httpx.TimeoutException as exc:
                if time.monotonic() >= end - 0.01:
                    err = _Retryable(f"DeadlineExceeded: the answer took more than {deadline_s:g}s "
                                     "in all (the request's deadline)")
                else:
                    err = _Retryable(self._timeout_text(exc))
            except _RETRY_ERRORS as exc:
                err = _Retryable(f"{type(exc).__name__}: {exc}")
            except _Retryable as exc:
                err = exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:     # no retry mends these
                raise TtxError(f"{self._url(what)}: {type(exc).__name__}: {exc}") from None
            if attempt == self.max_retries:
                raise TtxError(f"cannot get an answer from the server at {self._url(what)} "
                               f"after {attempt + 1} attempt(s): {err}") from None
            self._count("retries")
            delay = random.uniform(0, self.backoff_s * 2 ** attempt)     # full jitter
            if err.retry_after is not None:
                delay = max(delay, min(err.retry_after, 60.0))
            time.sleep(delay)

    def _deadline(self, max_tokens: int) -> float:
        """The longest one attempt of a request for max_tokens may take (see "Limits")."""
        if self.deadline_s is not None:
            return self.deadline_s
        return self.timeout_s + SECONDS_PER_TOKEN * max_tokens

    def _timeout_text(self, exc: httpx.TimeoutException) -> str:
        kind = type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return f"{kind}: no connection within {self._client.timeout.connect:g}s"
        if isinstance(exc, httpx.ReadTimeout):
            return f"{kind}: the server sent nothing for {self.timeout_s:g}s (timeout_s)"
        return f"{kind}: {exc or 'timed out'} (timeout_s {self.timeout_s:g}s)"

    def _check(self, response: httpx.Response, what: str, constraint=None) -> None:
        """Raise _Retryable for 429/5xx and TtxError (with the server's message) for other 4xx
        and for a redirect (not followed: its body is not the answer); one naming the output
        constraint of the request says that the server refused it."""

        if 300 <= response.status_code < 400:
            location = response.headers.get("location")
            to = f" to {redact_url(location.strip()[:300])}" if location else ""
            raise TtxError(f"{self._url(what)}: the server redirects (HTTP "
                           f"{response.status_code}{to}); redirects are not followed: give the "
                           "URL of the API itself as the base URL")
        if response.status_code < 400:
            return
        message = _error_message(response, _head(response, _ERROR_BYTES))
        if response.status_code in _RETRY_STATUS or response.status_code >= 500:
            try:
                retry_after = float(response.headers.get("retry-after", ""))
            except ValueError:
                retry_after = None
            raise _Retryable(f"HTTP {response.status_code}: {message}", retry_after)
        if constraint is not None and _CONSTRAINT_WORDS.search(message):
            raise TtxError(f"{self._url(what)} refused the {constraint.kind} output constraint "
                           f"(sent as {_constraint_fields(what, constraint)}, as vLLM takes it): "
                           f"HTTP {response.status_code}: {message}")
        raise TtxError(f"{self._url(what)}: HTTP {response.status_code}: {message}")

    def _json(self, response: httpx.Response, what: str, cap: int) -> dict:
        """The answer's JSON object, or a TtxError saying what the server sent instead (or that
        it is larger than cap bytes: see "Limits")."""
        content = b"".join(_chunks(response, cap, self._url(what)))
        try:
            data = json.loads(content)
        except ValueError:              # not JSON, or not UTF-8
            kind = response.headers.get("content-type") or "no content-type"
            raise TtxError(f"{self._url(what)}: the server's answer is not JSON "
                           f"(HTTP {response.status_code}, {kind}): {_excerpt(_text(content))}") from None
        if not isinstance(data, dict):
            raise TtxError(f"{self._url(what)}: the server's answer is not a JSON object: "
                           f"{_excerpt(_text(content))}")
        return data

    def _get_json(self, path: str) -> dict:
        def call():
            with self._client.stream("GET", path) as response:
                self._check(response, path)
                return self._json(response, path, BYTES_OVERHEAD)
        return self._attempts(path, call, self._deadline(0))

    def _first_model(self) -> str:
        models = self._get_json("/models").get("data")
        if not isinstance(models, list):
            raise TtxError(f"{self._url('/models')}: the answer has no `data` list of models; "
                           "is this an OpenAI-compatible server? (or pass model=)")
        if not models:
            raise TtxError(f"{self._url('/models')}: the server lists no model; pass model=")
        if not isinstance(models[0], dict) or not isinstance(models[0].get("id"), str):
            raise TtxError(f"{self._url('/models')}: the first model has no `id`: "
                           f"{_excerpt(json.dumps(models[0]))}")
        return models[0]["id"]

    # ---------------------------------------------------------------- requests

    def _body(self, prompt: Prompt, n: int, params: SamplingParams, seed: int | None,
              stream: bool) -> tuple[str, dict]:
        body = {"model": self.model_name, "n": n, "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p}
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)   # vLLM / SGLang extension
        if params.ignore_eos:
            body["ignore_eos"] = True       # vLLM / SGLang extension; benchmarks force lengths
        if params.min_new_tokens:
            body["min_tokens"] = params.min_new_tokens     # vLLM / SGLang extension
        raw = isinstance(prompt, (str, TokenPrompt))
        body.update(_constraint_body("/completions" if raw else "/chat/completions",
                                     params.constraint))
        top = params.confidence.top_k if params.confidence is not None else 0
        if raw:
            path = "/completions"
            body["logprobs"] = top          # the sampled token's (and DeepConf's top-k)
            if isinstance(prompt, TokenPrompt):
                body["prompt"] = list(prompt.ids)   # a token-id prompt (OpenAI's API, vLLM)
                body["return_token_ids"] = True     # vLLM: continue from the sampled ids
            else:
                body["prompt"] = prompt
        else:
            path = "/chat/completions"
            body["messages"] = prompt
            body["logprobs"] = True
            body["top_logprobs"] = top
        if stream:
            body["stream"] = True
            # continuous_usage_stats (vLLM) reports prompt_tokens on every chunk, so a stream
            # closed early still knows them; other servers ignore it.
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        body.update(self.extra_body)
        return path, body

    def _complete(self, prompt: Prompt, n: int, params: SamplingParams, seed: int | None,
                  state: _PromptState, first: int) -> int:
        """One non-streamed request for n choices; fill state.traces[first:]; return how many."""
        path, body = self._body(prompt, n, params, seed, stream=False)
        most = _max_tokens(body, params)
        cap = _size_cap(most, n)

        def call():
            with self._client.stream("POST", path, json=body) as response:
                self._check(response, path, params.constraint)
                return self._json(response, path, cap)
        data = self._attempts(path, call, self._deadline(most))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TtxError(f"{self._url(path)}: the answer has no `choices`: "
                           f"{_excerpt(json.dumps(data))}")
        try:
            usage = _usage(data.get("usage"), most * n)
            choices = sorted((_valid_choice(c, streamed=False) for c in choices),
                             key=lambda c: c.get("index", 0))[:n]
            counts = [_choice_tokens(c, most) for c in choices]
            if len(choices) == 1 and counts[0] is None and usage.get("completion_tokens") is not None:
                counts[0] = usage["completion_tokens"]
                if counts[0] > most:
                    raise _Malformed(f"usage.completion_tokens is {counts[0]}, more than "
                                     f"max_tokens {most}")
            inexact = any(c is None for c in counts)
            traces = [] if inexact else [
                Trace(text=_choice_text(c), completion_tokens=k,
                      finish_reason=_finish_reason(c.get("finish_reason")),
                      token_ids=_token_ids(c),
                      logprobs=_choice_logprobs(c) if params.logprobs else None,
                      stop_string=_stop_string(c), stop_token=_stop_token(c))
                for c, k in zip(choices, counts)]
            prompt_tokens = usage.get("prompt_tokens") or 0
        except _MALFORMED as exc:
            raise TtxError(f"{self._url(path)}: the answer is not the API's: {_what(exc)}: "
                           f"{_excerpt(json.dumps(data))}") from None
        if inexact:
            raise _Inexact()
        with state.lock:
            state.prompt_tokens = state.prompt_tokens or prompt_tokens
            state.traces[first:first + len(traces)] = traces
        return len(traces)

    def _stream(self, prompt: Prompt, n: int, params: SamplingParams, seed: int | None,
                state: _PromptState, first: int) -> int:
        """One streamed request for n choices, closed once the prompt has k finished traces."""
        k = params.stop_after_finished
        if state.done(k):
            return 0
        path, body = self._body(prompt, n, params, seed, stream=True)
        most = _max_tokens(body, params)

        def call():
            parts = [_Partial(most, params.confidence) for _ in range(n)]
            counted = []      # the finish orders this attempt took from the prompt's count
            try:
                self._read_stream(path, body, parts, counted, state, k, params.constraint)
            except Exception as exc:
                retryable = isinstance(exc, (_Retryable, httpx.TimeoutException, *_RETRY_ERRORS))
                if retryable and all(p.finish_reason is not None for p in parts):
                    return parts        # every trace is complete: only the usage or [DONE] was lost
                self._count("retried_tokens", sum(p.tokens for p in parts))
                taken = sum(1 for order in counted if order is not None)
                if taken:
                    # With n > 1 this request is its prompt's only one (see _run), so no other
                    # finish was counted since: give these back, the retry decodes them again.
                    with state.lock:
                        state.finished -= taken
                raise
            return parts

        parts = self._attempts(path, call, self._deadline(most))
        if not state.done(k):
            # A server that ignores n sends fewer choices: keep those, _run asks for the rest.
            parts = parts[:next((i for i, p in enumerate(parts) if not p.seen), n)]
            if not parts:
                raise TtxError(f"{self._url(path)}: the stream ended without a choice")
        traces = []
        for p in parts:
            count = p.tokens
            if n == 1 and p.finish_reason is not None and p.usage_tokens is not None:
                if p.usage_tokens > most:
                    raise TtxError(f"{self._url(path)}: the answer is not the API's: "
                                   f"usage.completion_tokens is {p.usage_tokens}, more than "
                                   f"max_tokens {most}")
                count = p.usage_tokens
            traces.append(Trace(text="".join(p.text), completion_tokens=count,
                                finish_reason=_finish_reason(p.finish_reason),
                                token_ids=p.token_ids,
                                logprobs=p.logprobs if params.logprobs else None,
                                finish_order=p.order, stop_string=p.stop_string,
                                stop_token=p.stop_token,
                                confidences=p.confidences if params.confidence else None))
        with state.lock:
            state.traces[first:first + len(traces)] = traces
        return len(traces)

    def _read_stream(self, path: str, body: dict, parts: list[_Partial], counted: list,
                     state: _PromptState, k: int | None, constraint=None) -> None:
        """Read one stream into parts until [DONE] or the prompt's k-th finish; raise _Retryable
        for a stream cut off, TtxError for one that is not the API's."""
        where = self._url(path)
        cap = _size_cap(parts[0].most, len(parts))
        with self._client.stream("POST", path, json=body) as response:
            self._check(response, path, constraint)
            bad = None          # a data line that is not JSON: an error unless the stream ends there
            events, other = 0, None
            for line in _lines(_chunks(response, cap, where)):
                if bad is not None:
                    raise TtxError(f"{where}: a streamed `data:` line is not JSON: {_excerpt(bad)}")
                if not line.startswith("data:"):
                    if other is None and line.strip() and not line.startswith(_SSE_FIELDS):
                        other = line
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    bad = payload
                    continue
                events += 1
                try:
                    prompt_done = self._take_chunk(chunk, parts, counted, state, k)
                except _MALFORMED as exc:
                    raise TtxError(f"{where}: a streamed event is not the API's: {_what(exc)}: "
                                   f"{_excerpt(payload)}") from None
                if prompt_done:
                    return                                 # closing the stream aborts the rest
            if bad is not None:
                raise _Retryable(f"the stream was cut off inside an event: {_excerpt(bad)}")
            if not events and other is not None:
                kind = response.headers.get("content-type") or "no content-type"
                raise TtxError(f"{where}: the answer is not an event stream ({kind}): {_excerpt(other)}")
            unfinished = sum(1 for p in parts if p.seen and p.finish_reason is None)
            if unfinished or not any(p.seen for p in parts):
                raise _Retryable(f"the stream ended before [DONE] with {unfinished} of "
                                 f"{len(parts)} trace(s) unfinished")

    def _take_chunk(self, chunk, parts: list[_Partial], counted: list, state: _PromptState,
                    k: int | None) -> bool:
        """Add one streamed event to parts; return whether the prompt has its k finished traces."""
        if not isinstance(chunk, dict):
            raise _Malformed("the event is not a JSON object")
        if chunk.get("error"):
            raise _Retryable(f"stream error: {_error_text(chunk['error'])}")
        n = len(parts)
        usage = _usage(chunk.get("usage"), parts[0].most * n)
        if usage.get("prompt_tokens"):
            with state.lock:
                state.prompt_tokens = state.prompt_tokens or usage["prompt_tokens"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _Malformed("`choices` is not a list")
        if not choices and n == 1 and usage.get("completion_tokens") is not None:
            parts[0].usage_tokens = usage["completion_tokens"]
        prompt_done = False
        for c in choices:
            index = _valid_choice(c, streamed=True).get("index", 0)
            if index >= n:
                continue
            part = parts[index]
            part.add(c)
            if part.low_confidence():
                return True         # DeepConf: close the stream (one trace per request, see _run)
            if part.finish_reason is not None and part.order is None:
                part.order, prompt_done = state.finish(k)
                counted.append(part.order)
                if part.order is None:          # finished after the k-th: too late
                    part.finish_reason = None
        return prompt_done or state.done(k)

    # ---------------------------------------------------------------- generate

    def _run(self, prompt: Prompt, n: int, first: int, params: SamplingParams,
             state: _PromptState) -> None:
        """Fill state.traces[first:first+n], in one request where the server allows."""
        with state.lock:
            state.start = time.perf_counter() if state.start is None else state.start
        streamed = params.stop_after_finished is not None or params.confidence is not None
        request = self._stream if streamed else self._complete
        done = 0
        while done < n:
            ask = 1 if self._one_per_request or _cancels_one(params) else n - done
            index = first + done
            # Trace i of a prompt gets seed + i when asked alone, so traces differ yet repeat.
            seed = None if params.seed is None else params.seed + index
            try:
                got = request(prompt, ask, params, seed, state, index)
            except _Inexact:
                if ask == 1:
                    raise TtxError(f"{self._url('')}: the server returned no token count for a "
                                   "single-choice request") from None
                self._one_per_request = True
                continue
            if got == 0:            # FFS: the prompt already has its k finished traces
                break
            if got < ask:           # the server ignores n: ask one trace per request from now
                self._one_per_request = True
            done += got
        with state.lock:
            state.end = max(state.end, time.perf_counter())

    def generate(self, prompts: list[Prompt], n, params) -> list[Generation]:
        """Generate n traces for each prompt; results come back in prompt order.

        `n` and `params` may be given per prompt (ttx.engines.base.per_prompt)."""
        try:
            counts, each = per_prompt(len(prompts), n, params)
        except ValueError as exc:
            raise TtxError(str(exc)) from None
        if isinstance(n, int) and n < 1:
            raise TtxError(f"n must be >= 1, got {n}")
        # Greedy traces are all the same, and vLLM refuses n > 1 at temperature 0: generate
        # one and copy it.
        asked = [min(k, 1) if p.temperature == 0 else k for k, p in zip(counts, each)]
        states = [_PromptState(a) for a in asked]
        # One unit of work per prompt (or per trace, for a server that ignores n).
        # A DeepConf stop cancels one trace by closing its stream: one trace per request.
        single = [self._one_per_request or _cancels_one(p) for p in each]
        units = [(p, first, 1 if single[p] else asked[p])
                 for p in range(len(prompts))
                 for first in range(0, asked[p], 1 if single[p] else max(asked[p], 1))]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(units)))) as pool:
            futures = [pool.submit(self._run, prompts[p], min(per, asked[p] - first), first,
                                   each[p], states[p]) for p, first, per in units]
            try:
                for future in futures:
                    future.result()
            except BaseException as exc:
                for future in futures:      # a failed prompt fails the call: start no more
                    future.cancel()
                if isinstance(exc, TtxError):
                    raise self._scrubbed(exc) from None
                raise
        generations = []
        for state, k, a, params in zip(states, counts, asked, each):
            traces = [t or Trace(text="", completion_tokens=0, finish_reason="cancelled")
                      for t in state.traces]
            if a < k:
                traces = _copies(traces[0], k, params.stop_after_finished)
            elif params.stop_after_finished is None:
                _order_by_length(traces)
            generations.append(Generation(traces=traces, prompt_tokens=state.prompt_tokens,
                                          wall_s=state.end - (state.start or state.end)))
        return generations

    # ---------------------------------------------------------------- LoRA adapters (vLLM)

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT adapter folder `path` (as the server's filesystem names it) on the server
        as `name` through vLLM's runtime LoRA API (POST /load_lora_adapter; the server runs with
        --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); generate() then asks for
        model=name. A server that refuses (no such API, LoRA not enabled, a rank above its
        --max-lora-rank) is one TtxError line with the server's own answer."""
        if self._base_model is None:
            self._base_model = self.model_name
        self._adapter_request("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)},
                              f"load the LoRA adapter {name!r} from {path}")
        self.model_name = name

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name` from the server (POST /unload_lora_adapter); generate() goes
        back to the base model if it asked for this one."""
        self._adapter_request("/unload_lora_adapter", {"lora_name": name},
                              f"unload the LoRA adapter {name!r}")
        if self.model_name == name:
            self.model_name = self._base_model or name

    _base_model: str | None = None     # the served model before load_adapter switched away

    def _adapter_request(self, path: str, body: dict, what: str) -> None:
        """POST body to path; 429/502/503/504 and dropped connections are retried ("Faults"),
        any other refusal is one TtxError (vLLM answers a LoRA error with a 500 that no retry
        mends). The answer is plain text ("Success: ..."), read and dropped."""

        def call():
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code in _RETRY_STATUS - {500} or 300 <= response.status_code < 400:
                    self._check(response, path)
                if response.status_code >= 400:
                    message = _error_message(response, _head(response, _ERROR_BYTES))
                    hint = ""
                    if response.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
                        hint = ("; the server has no runtime LoRA API: run vLLM with --enable-lora "
                                "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
                    raise TtxError(f"{self._url(path)}: the server refused to {what}: "
                                   f"HTTP {response.status_code}: {message}{hint}")
                _head(response, _ERROR_BYTES)
        try:
            self._attempts(path, call, self._deadline(0))
        except TtxError as exc:
            raise self._scrubbed(exc) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Partial:
    """One streamed choice as it arrives."""

    def __init__(self, most: int, confidence=None):
        self.most = most                 # the request's max_tokens: no choice has more
        self.confidence = confidence     # SamplingParams.confidence (DeepConf)
        self.confidences: list[float] = []
        self.window_sum = 0.0
        self.text: list[str] = []
        self.logprobs: list[float] = []
        self.token_ids: list[int] = []
        self.tokens = 0
        self.deltas = 0
        self.has_logprobs = False
        self.seen = False
        self.finish_reason: str | None = None
        self.order: int | None = None
        self.usage_tokens: int | None = None
        self.stop_string: str | None = None
        self.stop_token: int | None = None

    def add(self, c: dict) -> None:
        self.seen = True
        if self.finish_reason is not None:
            return
        text = c.get("text")
        if text is None:
            text = (c.get("delta") or {}).get("content")
        if text:
            self.text.append(text)
            self.deltas += 1
        self.token_ids.extend(_token_ids(c))
        logprobs = _choice_logprobs(c)
        if logprobs is not None:
            self.logprobs.extend(logprobs)
            self.has_logprobs = True
        if self.confidence is not None:
            for top in _choice_top_logprobs(c):
                self._add_confidence(_token_confidence(top, self.confidence.top_k))
        # Per-token entries count exactly; without them, one delta per token (llama.cpp does so).
        if self.token_ids:
            self.tokens = len(self.token_ids)
        else:
            self.tokens = len(self.logprobs) if self.has_logprobs else self.deltas
        entries = max(self.tokens, len(self.token_ids), len(self.logprobs))
        if entries > self.most:
            raise _Malformed(f"choice {c.get('index', 0)} has {entries} tokens, more than "
                             f"max_tokens {self.most}")
        if c.get("finish_reason"):
            self.finish_reason = c["finish_reason"]
            self.stop_string = _stop_string(c)
            self.stop_token = _stop_token(c)


    def _add_confidence(self, conf: float) -> None:
        """Keep C_i and the sum of the last `window` of them (deepconf processors.py:43-49)."""
        self.confidences.append(conf)
        self.window_sum += conf
        if len(self.confidences) > self.confidence.window:
            self.window_sum -= self.confidences[-self.confidence.window - 1]

    def low_confidence(self) -> bool:
        """Whether this unfinished choice's group confidence fell below the DeepConf threshold
        (checked on a full window, deepconf processors.py:51)."""
        rule = self.confidence
        if rule is None or rule.threshold is None or self.finish_reason is not None:
            return False
        return (len(self.confidences) >= rule.window
                and self.window_sum / rule.window < rule.threshold)


def _cancels_one(params: SamplingParams) -> bool:
    """Whether a trace of these params may be cancelled alone (a DeepConf threshold)."""
    return params.confidence is not None and params.confidence.threshold is not None


def _choice_top_logprobs(c: dict) -> list[list[float]]:
    """Per token of a choice or chunk, the top log-probabilities the server returned
    (/completions: `top_logprobs` dicts; /chat: each entry's `top_logprobs` list)."""
    lp = c.get("logprobs")
    if not lp:
        return []
    if "content" in lp:
        entries = [e.get("top_logprobs") or [] for e in lp["content"] or []]
        return [[_logprob(x["logprob"]) for x in e] for e in entries]
    return [[_logprob(x) for x in (d or {}).values()] for d in lp.get("top_logprobs") or []]


def _token_confidence(top: list[float], k: int) -> float:
    """C_i = -(1/k) * sum of the k largest log-probabilities (arXiv 2508.15260 eq. 2); fewer
    entries (a server that merged equal token strings) average what there is, as deepconf
    utils.py:48 averages the entries vLLM returned."""
    best = sorted(top, reverse=True)[:k]
    if not best:
        raise _Malformed("a token has no top log-probabilities")
    return -sum(best) / len(best)


def _valid_choice(c, streamed: bool) -> dict:
    """c, if it is a choice as the API specifies (raise _Malformed otherwise). A non-streamed
    choice carries its text as `text` (/completions) or `message.content` (/chat; null is empty);
    a streamed one may carry none (`delta` without content)."""
    if not isinstance(c, dict):
        raise _Malformed("a choice is not a JSON object")
    index = c.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise _Malformed(f"a choice's `index` is {index!r}, not an integer >= 0")
    if "text" in c:
        text = c["text"]
    else:
        holder = c.get("delta" if streamed else "message")
        if holder is None and not streamed:
            raise _Malformed(f"choice {index} has no text (neither `text` nor `message`)")
        if holder is not None and not isinstance(holder, dict):
            raise _Malformed(f"choice {index}'s `{'delta' if streamed else 'message'}` is not an object")
        text = (holder or {}).get("content")
    if text is not None and not isinstance(text, str):
        raise _Malformed(f"choice {index}'s text is not a string")
    return c


def _constraint_body(path: str, constraint) -> dict:
    """The request fields of an output constraint (see the module docstring)."""
    if constraint is None:
        return {}
    if constraint.kind == "json" and path == "/chat/completions":
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "ttx_output", "schema": constraint.spec, "strict": True}}}
    spec = list(constraint.spec) if constraint.kind == "choice" else constraint.spec
    return {"structured_outputs": {constraint.kind: spec}}


def _constraint_fields(path: str, constraint) -> str:
    return ("response_format json_schema" if "response_format" in _constraint_body(path, constraint)
            else f"structured_outputs.{constraint.kind}")


def _choice_text(c: dict) -> str:
    if "text" in c:
        return c["text"] or ""
    return ((c.get("message") or {}).get("content")) or ""


def _choice_logprobs(c: dict) -> list[float] | None:
    """The sampled tokens' log-probabilities of a choice or chunk (/completions or /chat)."""
    lp = c.get("logprobs")
    if not lp:
        return None
    if "content" in lp:                                     # chat: [{token, logprob, ...}]
        return [_logprob(e["logprob"]) for e in lp["content"] or []]
    if "token_logprobs" in lp:                              # completions
        return [_logprob(x) if x is not None else 0.0 for x in lp["token_logprobs"] or []]
    return None


def _logprob(value) -> float:
    """A log-probability as the API specifies: a finite number, not above 0 (rounding aside)."""
    if isinstance(value, bool):
        raise _Malformed(f"a log-probability is {value!r}, not a number")
    x = float(value)
    if not math.isfinite(x) or x > 1e-4:
        raise _Malformed(f"a log-probability is {_short(value)}, not a finite number <= 0")
    return x


def _stop_string(c: dict) -> str | None:
    """The stop string that ended a choice (vLLM's `stop_reason`; an int there is a token id)."""
    reason = c.get("stop_reason")
    return reason if isinstance(reason, str) else None


def _stop_token(c: dict) -> int | None:
    """The stop token id that ended a choice (vLLM reports it as an int `stop_reason`)."""
    reason = c.get("stop_reason")
    return reason if isinstance(reason, int) and not isinstance(reason, bool) else None


def _choice_tokens(c: dict, most: int) -> int | None:
    """A choice's token count (its token ids, else its log-probability entries; None: neither),
    refused above the request's max_tokens."""
    ids, logprobs = _token_ids(c), _choice_logprobs(c)
    entries = max(len(ids), len(logprobs or ()))
    if entries > most:
        raise _Malformed(f"choice {c.get('index', 0)} has {entries} tokens, more than "
                         f"max_tokens {most}")
    if ids:
        return len(ids)
    return len(logprobs) if logprobs is not None else None


def _token_ids(c: dict) -> list[int]:
    ids = c.get("token_ids") or []
    if not isinstance(ids, list):
        raise _Malformed(f"choice {c.get('index', 0)}'s `token_ids` is not a list")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= _MOST_TOKENS:
            raise _Malformed(f"a token id is {_short(t)}, not an integer from 0 to {_MOST_TOKENS}")
    return ids


def _usage(usage, most: int) -> dict:
    """`usage` with its token counts checked: integers from 0 to _MOST_TOKENS, completion_tokens
    at most `most` (the request's max_tokens times its choices)."""
    if usage is None:
        return {}
    if not isinstance(usage, dict):
        raise _Malformed("`usage` is not an object")
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= _MOST_TOKENS):
            raise _Malformed(f"usage.{name} is {_short(value)}, not an integer from 0 to "
                             f"{_MOST_TOKENS}")
    if (usage.get("completion_tokens") or 0) > most:
        raise _Malformed(f"usage.completion_tokens is {usage['completion_tokens']}, more than "
                         f"the request's max_tokens allow ({most})")
    return usage


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _max_tokens(body: dict, params: SamplingParams) -> int:
    """The max_tokens the request asks for (extra_body may change it)."""
    most = body.get("max_tokens")
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        most = params.max_new_tokens
    return most


def _size_cap(max_tokens: int, n: int) -> int:
    """The most bytes an answer of n choices of max_tokens may have (see "Limits")."""
    return BYTES_OVERHEAD + BYTES_PER_TOKEN * max_tokens * n


def _finish_reason(reason: str | None) -> str:
    if reason is None:
        return "cancelled"
    return "length" if reason == "length" else "stop"     # stop, eos, stop string, tool call


def _order_by_length(traces: list[Trace]) -> None:
    """finish_order for lockstep decoding: fewer tokens finished first."""
    ranked = sorted(range(len(traces)), key=lambda i: (traces[i].completion_tokens, i))
    order = 0
    for i in ranked:
        if traces[i].finish_reason != "cancelled":
            traces[i].finish_order = order
            order += 1


def _copies(trace: Trace, n: int, stop_after: int | None) -> list[Trace]:
    """n copies of a greedy trace; with FFS, those past the k-th count as cancelled."""
    copies = [dataclasses.replace(trace, token_ids=list(trace.token_ids),
                                  logprobs=None if trace.logprobs is None else list(trace.logprobs),
                                  confidences=None if trace.confidences is None
                                  else list(trace.confidences))
              for _ in range(n)]
    for i, t in enumerate(copies):
        if t.finish_reason == "cancelled" or (stop_after is not None and i >= stop_after):
            t.finish_reason, t.finish_order = "cancelled", None
        else:
            t.finish_order = i
    return copies


def _what(exc: Exception) -> str:
    """What was wrong with an answer, from _Malformed or what a wrong shape raised."""
    if isinstance(exc, _Malformed):
        return str(exc)
    return f"a field of the wrong shape ({type(exc).__name__}: {exc})"


def _excerpt(text: str, limit: int = 200) -> str:
    """The start of what the server sent, quoted on one line."""
    text = text.strip()
    return repr(text[:limit] + ("..." if len(text) > limit else "")) if text else "(empty)"


def _error_text(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _error_message(response: httpx.Response, content: bytes) -> str:
    """The server's error message on one line (vLLM's grammar errors span several)."""
    try:
        data = json.loads(content)
    except ValueError:
        text = _text(content)
    else:
        text = str(data)
        if isinstance(data, dict):
            key = next((k for k in ("error", "message", "detail") if data.get(k)), None)
            if key:
                text = _error_text(data[key])
    return " ".join(text.split())[:500] or response.reason_phrase


def _text(content: bytes) -> str:
    return content.decode("utf-8", "replace")


# ---------------------------------------------------------------- limits: size and deadline

def _head(response: httpx.Response, most: int) -> bytes:
    """The first `most` bytes of an answer (an error's, for its message)."""
    content, total = [], 0
    for chunk in _chunks(response, None, ""):
        content.append(chunk[:most - total])
        total += len(chunk)
        if total >= most:
            break
    return b"".join(content)


def _chunks(response: httpx.Response, cap: int | None, where: str):
    """The answer's bytes as they come (decoded: what would be stored), refusing more than cap
    bytes (TtxError, naming `where`) and checking the attempt's deadline between reads (where
    the network layer cannot: a test's transport)."""
    length = response.headers.get("content-length", "")
    if cap is not None and length.isdigit() and int(length) > cap:
        raise TtxError(f"{where}: the answer is {length} bytes, more than the {cap} its "
                       "max_tokens justify (see \"Limits\" in ttx/engines/openai.py)")
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if cap is not None and total > cap:
            raise TtxError(f"{where}: the answer is larger than {cap} bytes, the most its "
                           "max_tokens justify (see \"Limits\" in ttx/engines/openai.py)")
        end = getattr(_DEADLINE, "end", None)
        if end is not None and time.monotonic() >= end:
            raise httpx.ReadTimeout("the request's deadline passed")
        yield chunk


def _lines(chunks):
    """The text lines of a byte stream (server-sent events end lines with \n, \r\n or \r)."""
    pending: list[bytes] = []
    for chunk in chunks:
        if not re.search(rb"[\r\n]", chunk):
            pending.append(chunk)          # joined once its line ends: no quadratic copying
            continue
        data = b"".join(pending) + chunk
        hold = data.endswith(b"\r")       # its \n may come in the next chunk
        *done, rest = re.split(rb"\r\n|\r|\n", data[:-1] if hold else data)
        pending = [rest + (b"\r" if hold else b"")]
        for line in done:
            yield _text(line)
    tail = b"".join(pending)
    if tail:
        yield from (_text(line) for line in re.split(rb"\r\n|\r|\n", tail.rstrip(b"\r")))


# The end (time.monotonic()) of the current thread's attempt; the network layer bounds every
# connect, read and write by it, so a server that sends one byte a second cannot hold a request
# past its deadline.
_DEADLINE = threading.local()


def _bounded(timeout: float | None, error) -> float | None:
    end = getattr(_DEADLINE, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _bounded(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its connections bounded by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, _bounded(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._inner.connect_unix_socket(
            path, _bounded(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bound_by_deadline(client: httpx.Client) -> None:
    """Put the deadline under the client's connection pools (httpx's own transports, direct or
    through a proxy; a transport of another kind, a test's, is left as it is and bounded between
    chunks by _chunks). httpx takes no network backend, so this sets its pool's."""
    for transport in [getattr(client, "_transport", None),
                      *getattr(client, "_mounts", {}).values()]:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)


def _split_url(url: str, shown: str) -> tuple[str, httpx.BasicAuth | None, list, list]:
    """(the URL without userinfo and query, basic auth from the userinfo, the query's pairs, the
    credentials among them): httpx would put a base URL's query before the path it appends."""
    try:
        parts = urlsplit(url)
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        auth = httpx.BasicAuth(unquote(user), unquote(password)) if "@" in parts.netloc else None
        query = parse_qsl(parts.query, keep_blank_values=True)
        secrets = [user, password, unquote(user), unquote(password),
                   *(value for name, value in query if secret_param(name))]
        return urlunsplit((parts.scheme, host, parts.path, "", "")), auth, query, secrets
    except ValueError as exc:
        raise TtxError(f"base URL {shown!r}: {exc}") from None


class _RedactFilter(logging.Filter):
    """httpx logs every request's URL (INFO): its query's credentials are hidden."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        return True


def _redact_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactFilter) for f in logger.filters):
        logger.addFilter(_RedactFilter())
