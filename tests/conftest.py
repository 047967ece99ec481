"""Shared fixtures: a tiny random Llama (seconds), the real default model (end-to-end tests).

Markers (pyproject.toml): `model` runs the default model's weights, `server` a real vLLM server,
`browser` headless Chromium, `pipeline` a whole recipe script end to end (tiny models, but every
stage). `make test-fast` deselects the four and sets TTX_TEST_FAST=1, under
which a test that loads the default model's weights without the `model` marker fails, naming
itself, so the fast loop cannot silently grow slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
FAST = os.environ.get("TTX_TEST_FAST") == "1"


def pytest_collection_modifyitems(config, items):
    """Mark what needs a browser or a server by the fixtures and folders it uses, and the
    pipeline tests by name."""
    for item in items:
        if "pipeline" in item.name:
            item.add_marker(pytest.mark.pipeline)
        if "page" in getattr(item, "fixturenames", ()) or "browser" in item.name:
            item.add_marker(pytest.mark.browser)
        if "server" in item.path.parts[-2:-1]:
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _fast_loop_guard(request, monkeypatch):
    """Under `make test-fast`, loading the default model's weights fails an unmarked test."""
    if not FAST or request.node.get_closest_marker("model"):
        yield
        return
    from transformers import PreTrainedModel

    from ttx.models import resolve_model

    default = resolve_model("smollm2-135m-instruct").resolve()
    real = PreTrainedModel.from_pretrained.__func__

    def guarded(cls, path, *args, **kwargs):
        if Path(str(path)).resolve() == default:
            pytest.fail(f"{request.node.nodeid} loads the default model's weights: mark it "
                        f"@pytest.mark.model (make test-fast leaves those out)", pytrace=False)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(guarded))
    yield


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model converted from its GGUF (cached under $TTX_HOME after the first run)."""
    from ttx.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A 2-layer, hidden-64 Llama with random weights and the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def ttx_home(tmp_path, monkeypatch):
    """Point $TTX_HOME at a temp folder, keeping the converted default model reachable."""
    from ttx.models import ttx_home as real_home

    home = tmp_path / "ttx-home"
    (home).mkdir()
    models = real_home() / "models"
    if models.exists():
        os.symlink(models, home / "models")
    monkeypatch.setenv("TTX_HOME", str(home))
    return home


def run_cli(args, input=None):
    """Run the real `ttx` click group in-process; returns click's Result."""
    from click.testing import CliRunner

    from ttx.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random Llama that ends a trace with EOS about one token in nine (at temperature 1),
    so stopping, EOS suppression and continuation are exercised for real: hidden unit 0 is held
    constant (embedding column 0 = 1, nothing else writes to it) and only EOS reads it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 1.15     # P(EOS) ~ 0.11 per token
    folder = tmp_path_factory.mktemp("eos-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a loaded machine one avoids OpenMP stalls."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def nan_for_uninitialized():
    """torch.empty and friends come back filled with NaN, so a read of memory nothing wrote
    (a cache buffer's spare room, a stale row) shows in the result instead of passing by luck."""
    import torch

    enabled, warn_only = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill
