"""distill-to-mamba on the real default model (SmolLM2-135M-Instruct, 30 layers, 9 / 3 heads)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import GSM8K, run_cli

pytestmark = pytest.mark.model
TEXT = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether?", "Hi"]


@pytest.fixture(scope="module")
def teacher(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(default_model_dir)


def test_all_attention_checkpoint_gives_the_teachers_logits(tmp_path, teacher):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "all-attention"
    r = run_cli(["distill-to-mamba", "-o", out, "--attn-fraction", "1", "--steps", "0",
                 "--no-progress"])
    assert r.exit_code == 0, r.output
    student = AutoModelForCausalLM.from_pretrained(out).eval()
    model, tok = teacher
    batch = tok(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (student(**batch).logits - model(**batch).logits).abs().max().item()
    assert diff == 0.0


def test_hybrid_checkpoint_loads_starts_from_attention_and_runs_in_tts_run(tmp_path, teacher):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hybrid"
    r = run_cli(["distill-to-mamba", "-o", out, "--attn-layers", "3,8,13", "--steps", "0",
                 "--no-progress"])
    assert r.exit_code == 0, r.output
    student = AutoModelForCausalLM.from_pretrained(out).eval()
    types = student.config.layers_block_type
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [3, 8, 13]
    model = teacher[0]
    attn, mixer = model.model.layers[0].self_attn, student.model.layers[0].mamba
    d = 9 * 64                                          # heads x head_dim = d_inner
    expand = lambda w: w.view(3, 64, 576).repeat_interleave(3, dim=0).reshape(d, 576)  # noqa: E731
    rows = mixer.in_proj.weight                         # [z | x | B | C | dt]
    assert torch.equal(rows[d:2 * d], expand(attn.v_proj.weight))
    assert torch.equal(rows[2 * d:3 * d], expand(attn.k_proj.weight))
    assert torch.equal(rows[3 * d:4 * d], attn.q_proj.weight)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join((GSM8K / "test.jsonl").read_text().splitlines()[:1]) + "\n")
    records = tmp_path / "runs.jsonl"
    r = run_cli(["tts-run", "--model", out, "-i", problems, "-o", records, "--strategy",
                 "majority", "--n", "2", "--max-new-tokens", "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(rows) == 1 and all(len(r["traces"]) == 2 for r in rows)
    assert all(t["completion_tokens"] > 0 for r in rows for t in r["traces"])
    manifest = json.loads((out / "ttx_manifest.json").read_text())
    assert manifest["summary"]["attn_layers"] == [3, 8, 13]
    assert manifest["summary"]["distill_steps"] == 0
