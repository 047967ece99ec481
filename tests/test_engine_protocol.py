"""The engine contract as declared (ttx/engines/base.py): every engine's attributes, the local
engine's extras, the one constructor for a stage's own model, and no probing anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import torch

from ttx.engines import engine_over, local
from ttx.engines.base import Engine, LocalEngine, SamplingParams
from ttx.engines.hf import HFEngine
from ttx.engines.openai import OpenAIEngine

TTX = Path(__file__).resolve().parents[1] / "ttx"


def test_the_hf_engine_is_local_and_the_openai_engine_is_not(tiny_model_dir):
    hf = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0)
    remote = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    for engine in (hf, remote):
        assert isinstance(engine, Engine) and isinstance(engine.supports_constraints, bool)
    assert local(hf) is hf and isinstance(hf, LocalEngine)
    assert local(remote) is None
    assert hf.max_positions == 2048 and hf.encode("2 + 2 =") == hf.tokenizer("2 + 2 =").input_ids
    [states] = hf.hidden_states(["Tom has 3 apples."], layer=-1)
    n = len(hf.tokenizer("Tom has 3 apples.", add_special_tokens=False).input_ids)
    assert states.shape == (n, hf.model.config.hidden_size) and states.dtype == torch.float32


def test_engine_over_a_stages_model_reads_its_weights_at_each_call(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    classes = [type(m) for m in model.modules()]
    engine = engine_over(model, tokenizer, name="trained", max_batch_rows=4)
    assert engine.model_name == "trained" and engine.max_batch_rows == 4
    assert engine.prefix is None and engine.packed_linears == 0 and engine.fused is None
    assert [type(m) for m in model.modules()] == classes            # the model left as given
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(["Tom has"], 1, params)[0].traces[0].token_ids
    with torch.no_grad():                                           # a training step, say
        model.model.norm.weight.neg_()                              # argmax becomes argmin
    after = engine.generate(["Tom has"], 1, params)[0].traces[0].token_ids
    assert after[0] != before[0]


def test_no_stage_probes_an_engine_or_builds_one_for_its_side_effects():
    probe = re.compile(r"(getattr|hasattr)\((self\.)?engine\b|HFEngine\([^)]*loaded=")
    found = [f"{p.relative_to(TTX)}:{i}: {line.strip()}"
             for p in TTX.rglob("*.py") if p.parts[-2:] != ("engines", "__init__.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if probe.search(line)]
    assert not found, "\n".join(found)


def test_no_stage_but_tts_run_imports_the_tts_package_except_to_run_strategies():
    """Prompts, seeds, reward inputs and problem reading are shared primitives outside ttx/tts;
    a stage imports ttx.tts only to run or regrade strategies (the allowed modules below)."""
    allowed = {"ttx.tts.launch", "ttx.tts.options", "ttx.tts.search", "ttx.tts.run",
               "ttx.tts.strategy", "ttx.tts.sampling", "ttx.tts.registry"}
    users = {Path("cli/tts_run.py"): {"ttx.tts.options", "ttx.tts.search", "ttx.tts.launch"},
             Path("tlm/adapt.py"): {"ttx.tts.run", "ttx.tts.strategy"},
             Path("perk/encode.py"): {"ttx.tts.sampling", "ttx.tts.strategy"},
             Path("score.py"): {"ttx.tts.registry"}}
    found = {}
    for p in TTX.rglob("*.py"):
        rel = p.relative_to(TTX)
        if rel.parts[0] == "tts":
            continue
        mods = set(re.findall(r"^\s*from (ttx\.tts[\w.]*) import", p.read_text(encoding="utf-8"),
                              re.M))
        if mods:
            found[rel] = mods
    assert found == users and set().union(*found.values()) <= allowed, found
