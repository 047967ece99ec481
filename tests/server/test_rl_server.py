"""`ttx rl --engine openai` against a real vLLM (CPU) server with runtime LoRA loading (fixture
lora_base_url, tests/server/conftest.py): two rollout steps of the default model, each sampled by
the server with the adapter as the policy was then, and the server's own refusal where it lacks
the LoRA API."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import run_cli
from tests.server.conftest import has_lora_api

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTIONS = [("What is 15 + 27?", "42"), ("Tom has 3 apples and buys 5 more. How many apples?", "8")]


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS)))
    return path


def _args(questions, out, url):
    return ["rl", "-i", questions, "-o", out, "--n", "4", "--n-train", "2", "--batch-size", "1",
            "--max-new-tokens", "24", "--steps", "2", "--lr", "1e-3", "--no-progress",
            "--engine", "openai", "--base-url", url]


def test_two_steps_through_the_server_with_the_adapter_loaded(lora_base_url, questions, tmp_path):
    out = tmp_path / "rl"
    result = run_cli(_args(questions, out, lora_base_url))
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["votes"] == 4 and r["trained"] == 2 for r in recs)
    assert all(r["generated_tokens"] > 0 for r in recs)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "served").exists()
    # every adapter the run loaded was unloaded again (vLLM lists loaded adapters as models)
    models = httpx.get(f"{lora_base_url}/models", timeout=30).json()["data"]
    assert not [m["id"] for m in models if m["id"].startswith("ttx-rl-")]
    manifest = json.loads((out / "ttx_manifest.json").read_text())
    assert manifest["options"]["engine"] == "openai"


def test_a_server_without_the_lora_api_refuses_in_one_line(base_url, questions, tmp_path):
    if has_lora_api(base_url):
        pytest.skip("the session's server has the runtime LoRA API")
    result = run_cli(_args(questions, tmp_path / "rl", base_url))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "/load_lora_adapter: the server refused to load the LoRA adapter" in lines[0]
    assert "HTTP 404: Not Found; the server has no runtime LoRA API" in lines[0]
