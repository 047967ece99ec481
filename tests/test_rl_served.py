"""`ttx rl --engine openai`: rollouts on a server that loads the current LoRA adapter at each step
(ttx/rl/served.py, OpenAIEngine.load_adapter / unload_adapter), against a scripted vLLM server.

The scripted server speaks vLLM 0.32's runtime LoRA API as its source defines it
(vllm/entrypoints/serve/lora/api_router.py:63-98: POST /v1/load_lora_adapter and
/v1/unload_lora_adapter, a plain-text "Success: ..." answer; vllm/entrypoints/openai/models/
serving.py:247-296: the 400 for a name loaded twice, the 404 for an unknown one) and samples with
ttx's own hf engine over the base model plus the adapter folder it was given, loaded by PEFT. So
the served run must equal the in-process run bit for bit (one question per step, the same seed):
what it proves is that each step's adapter reaches the server as the policy is then, that the
prompts go as the in-process token ids, and that the sampled ids are what is trained. The real
server's run is tests/server/test_rl_server.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.test_ttrl import digits_model_dir  # noqa: F401  (a fixture)
from ttx.engines.openai import OpenAIEngine
from ttx.errors import TtxError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# vllm/v1/worker/lora_model_runner_mixin.py:81, answered as a 500 by serving.py:190-203
NOT_ENABLED = "LoRA is not enabled. Use --enable-lora to enable LoRA."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, obj=None, text: str | None = None):
        data = text.encode() if text is not None else json.dumps(obj).encode()
        self.send_response(status)
        if text is None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "base"}]})

    def do_POST(self):
        s = self.server.vllm
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s.requests.append((self.path, body))
        if self.path == "/v1/load_lora_adapter":
            if s.refuse is not None:
                return self._send(*s.refuse)
            name = body["lora_name"]
            if name in s.loaded:        # serving.py:266-275
                return self._send(400, {"error": {"message": f"The lora adapter '{name}' has already been "
                                                  "loaded.", "type": "InvalidUserInput", "code": 400}})
            s.load(name, body["lora_path"])
            return self._send(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if self.path == "/v1/unload_lora_adapter":
            name = body["lora_name"]
            if name not in s.loaded:     # serving.py:289-294
                return self._send(404, {"error": {"message": f"The lora adapter '{name}' cannot be found.",
                                                  "type": "NotFoundError", "code": 404}})
            del s.loaded[name]
            return self._send(200, text=f"Success: LoRA adapter '{name}' removed successfully.")
        if self.path == "/v1/completions":
            return self._send(200, s.complete(body))
        self._send(404, {"detail": "Not Found"})


class ScriptedVLLM:
    """An OpenAI-compatible server with vLLM's runtime LoRA API whose sampling is ttx's hf engine
    over base + the loaded adapter (tests only)."""

    def __init__(self, base: Path):
        self.base = base
        self.loaded: dict = {}          # name -> engine over base + adapter
        self.loads: list = []           # (name, path, the adapter's tensors) per load
        self.requests: list = []
        self.refuse = None              # (status, obj) answered to every load
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.vllm = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def load(self, name: str, path: str) -> None:
        from peft import PeftModel

        from ttx.engines import engine_over
        from ttx.models import load_model

        model, tok, _ = load_model(str(self.base), "cpu", "float32")
        peft = PeftModel.from_pretrained(model, path).eval()
        self.loaded[name] = engine_over(peft, tok, name=name)
        self.loads.append((name, path, load_file(str(Path(path) / "adapter_model.safetensors"))))

    def complete(self, body: dict) -> dict:
        from ttx.engines.base import SamplingParams, TokenPrompt

        assert body["return_token_ids"] is True and isinstance(body["prompt"], list)
        engine = self.loaded[body["model"]]
        params = SamplingParams(max_new_tokens=body["max_tokens"], temperature=body["temperature"],
                                top_p=body["top_p"], seed=body.get("seed"))
        (gen,) = engine.generate([TokenPrompt(body["prompt"])], body["n"], params)
        return {"usage": {"prompt_tokens": len(body["prompt"]),
                          "completion_tokens": sum(t.completion_tokens for t in gen.traces)},
                "choices": [{"index": i, "text": t.text, "token_ids": t.token_ids,
                             "finish_reason": t.finish_reason,
                             "logprobs": {"token_logprobs": [-0.5] * len(t.token_ids)}}
                            for i, t in enumerate(gen.traces)]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def vllm(digits_model_dir):  # noqa: F811
    server = ScriptedVLLM(digits_model_dir)
    yield server
    server.close()


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Say four ({i}).", "answer": "4"}) + "\n"
                            for i in range(2)))
    return path


def _args(model, questions, out):
    return ["rl", "--reward", "majority", "--model", model, "-i", questions, "-o", out, "--n", "8",
            "--n-train", "4", "--batch-size", "1", "--max-new-tokens", "2", "--lr", "1e-2", "--steps", "2",
            "--no-progress"]


def test_served_rollouts_equal_the_in_process_run(digits_model_dir, questions, vllm, tmp_path):  # noqa: F811
    local = run_cli(_args(digits_model_dir, questions, tmp_path / "local"))
    assert local.exit_code == 0, local.output
    served = run_cli(_args(digits_model_dir, questions, tmp_path / "served")
                     + ["--engine", "openai", "--base-url", vllm.url, "--max-retries", "0"])
    assert served.exit_code == 0, served.output
    for name in ("rollouts.jsonl", "train_log.jsonl"):
        assert (tmp_path / "served" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    a = load_file(str(tmp_path / "local" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "served" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # one load per step, each step's adapter as the policy was then: LoRA's B starts at zero, so
    # step 1 serves the base model; step 2 serves the weights after step 1's updates
    assert len(vllm.loads) == 2
    (name1, path1, w1), (name2, path2, w2) = vllm.loads
    assert name1.endswith("-step1") and name2.endswith("-step2") and Path(path1).is_absolute()
    assert all(not w.any() for k, w in w1.items() if "lora_B" in k)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    posts = [(p, b.get("lora_name") or b.get("model")) for p, b in vllm.requests]
    assert posts == [("/v1/load_lora_adapter", name1), ("/v1/completions", name1),
                     ("/v1/load_lora_adapter", name2), ("/v1/unload_lora_adapter", name1),
                     ("/v1/completions", name2), ("/v1/unload_lora_adapter", name2)]
    assert not vllm.loaded and not (tmp_path / "served" / "served").exists()   # nothing left behind
    # each step's prompt went as the token ids the in-process engine encodes
    from ttx.engines import engine_over
    from ttx.models import load_model
    from ttx.prompts import build_prompt

    model, tok, _ = load_model(str(digits_model_dir), "cpu", "float32")
    encode = engine_over(model, tok, name="x").encode
    sent = [b["prompt"] for p, b in vllm.requests if p == "/v1/completions"]
    recs = [json.loads(line) for line in (tmp_path / "served" / "rollouts.jsonl").read_text().splitlines()]
    assert len(sent) == len(recs) == 2
    for ids, rec in zip(sent, recs):
        assert ids == encode(build_prompt(f"Say four ({rec['id'][1:]}).", instruction=None))


def test_etmr_trees_and_mrt_forced_answers_go_through_the_server(digits_model_dir, questions, vllm,  # noqa: F811
                                                                 tmp_path):
    """ETTRL's branches and MRT's forced answers are sampled by the served engine too (token-id
    prompts, the step's adapter), not by the in-process model."""
    for extra in (["--etmr", "--etmr-trees", "2", "--etmr-forks", "1", "--etmr-branches", "1"],
                  ["--reward", "mrt", "--advantage", "mrt", "--mrt-samples", "2", "--mrt-answer-tokens", "2"]):
        vllm.requests.clear()
        out = tmp_path / extra[1].strip("-")
        args = [a for a in _args(digits_model_dir, questions, out) if a not in ("--reward", "majority")]
        result = run_cli(args + extra + ["--engine", "openai", "--base-url", vllm.url, "--n-train", "2"])
        assert result.exit_code == 0, result.output
        completions = [b for p, b in vllm.requests if p == "/v1/completions"]
        assert len(completions) > 2 and all(b["model"].endswith(("-step1", "-step2")) for b in completions)
        assert not vllm.loaded


def test_a_server_without_lora_is_one_line_with_its_answer(digits_model_dir, questions, vllm, tmp_path):  # noqa: F811
    for status, answer, shown in (
            (404, {"detail": "Not Found"}, "HTTP 404: Not Found; the server has no runtime LoRA API"),
            (500, {"error": {"message": NOT_ENABLED, "type": "InternalServerError", "code": 500}},
             f"HTTP 500: {NOT_ENABLED}")):
        vllm.refuse = (status, answer)
        vllm.requests.clear()
        out = tmp_path / f"o{status}"
        result = run_cli(_args(digits_model_dir, questions, out)
                         + ["--engine", "openai", "--base-url", vllm.url])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and shown in lines[0] and "refused to load the LoRA adapter" in lines[0], lines
        assert [p for p, _ in vllm.requests] == ["/v1/load_lora_adapter"]     # a 500 here is not retried
        assert not (out / "served").exists() or not any((out / "served").iterdir())


def test_engine_load_and_unload_adapter(vllm, tmp_path):
    engine = OpenAIEngine(base_url=vllm.url, max_retries=0)
    assert engine.model_name == "base"
    with pytest.raises(TtxError, match="cannot be found"):
        engine.unload_adapter("nope")
    vllm.refuse = (400, {"error": {"message": "LoRA rank 64 is greater than max_lora_rank 16.", "code": 400}})
    with pytest.raises(TtxError) as e:
        engine.load_adapter("a", str(tmp_path))
    assert "HTTP 400: LoRA rank 64 is greater than max_lora_rank 16." in str(e.value)
    assert engine.model_name == "base"


def test_bad_options_are_refused_before_the_model_loads(questions, tmp_path):
    base = ["rl", "--model", tmp_path / "no-such-model", "-i", questions, "-o", tmp_path / "o"]
    for extra, field in ((["--engine", "openai"], "--base-url"),
                         (["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--full"], "--full"),
                         (["--served-adapters", tmp_path / "s"], "--served-adapters"),
                         (["--concurrency", "2"], "--concurrency")):
        result = run_cli(base + extra)
        assert result.exit_code == 2, result.output
        assert f"field '{field}'" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()
