"""distill-to-mamba on a tiny random Llama: conversion, init, losses, engine, CLI, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import GSM8K, REPO, run_cli
from ttx.engines.base import SamplingParams
from ttx.errors import TtxError
from ttx.mamba.convert import choose_attn_layers, convert
from ttx.mamba.distill import distill_loss, token_kl

PROMPTS = ["Tom has 3 apples and buys 5 more.", "Hi", "A much longer prompt, so that left padding "
           "matters when the prompts of a chunk share one batch."]


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def hybrid(teacher):
    """Layer 0 becomes Mamba-2, layer 1 stays attention."""
    model = convert(teacher[0], [1], "default", seed=0)[0]
    model.model.layers[0].mamba.chunk_size = 16      # same function, less padding on CPU
    return model


@pytest.fixture()
def texts(tmp_path):
    """Ten short text records (the last two are held out by --eval-records 2)."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"Record {i}: {i} apples and {i + 2} pears make "
                                                f"{2 * i + 2} fruits."}) + "\n" for i in range(10)))
    return path


def test_attention_layer_choices():
    assert choose_attn_layers(30, "3,8,13") == [3, 8, 13]
    assert choose_attn_layers(12, attn_every=4) == [3, 7, 11]
    assert choose_attn_layers(28, attn_fraction=6 / 28) == [4, 8, 13, 18, 22, 27]
    assert choose_attn_layers(8, attn_fraction=0.5) == [1, 3, 5, 7]
    with pytest.raises(TtxError, match="no attention layer would stay"):
        choose_attn_layers(8, attn_fraction=0.0)
    with pytest.raises(TtxError, match="0..29"):
        choose_attn_layers(30, "3,30")
    with pytest.raises(TtxError, match="only one"):
        choose_attn_layers(30, "3", attn_every=2)


def test_all_attention_conversion_reproduces_the_teacher_exactly(teacher):
    model, tok = teacher
    student, _ = convert(model, [0, 1])
    ids = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(**ids).logits
        got = student(**ids).logits
    assert type(student).__name__ == "BambaForCausalLM"
    assert (want - got).abs().max().item() == 0.0


def test_mamba_mixer_starts_from_the_attention_weights(teacher, hybrid):
    model = teacher[0]
    c = model.config
    attn, mixer = model.model.layers[0].self_attn, hybrid.model.layers[0].mamba
    d, rep = c.hidden_size, c.num_attention_heads // c.num_key_value_heads
    head = d // c.num_attention_heads
    rows = mixer.in_proj.weight                      # [z | x | B | C | dt]
    v = attn.v_proj.weight.view(-1, head, d).repeat_interleave(rep, 0).reshape(-1, d)
    k = attn.k_proj.weight.view(-1, head, d).repeat_interleave(rep, 0).reshape(-1, d)
    assert torch.equal(rows[d:2 * d], v)
    assert torch.equal(rows[2 * d:3 * d], k)
    assert torch.equal(rows[3 * d:4 * d], attn.q_proj.weight)
    assert torch.equal(mixer.out_proj.weight, attn.o_proj.weight)
    a = torch.exp(mixer.A_log)
    assert ((a >= 1) & (a <= 16)).all() and torch.equal(mixer.D, torch.ones_like(mixer.D))
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    layer, student_layer = model.model.layers[0], hybrid.model.layers[0]
    assert torch.equal(student_layer.feed_forward.up_proj.weight, layer.mlp.up_proj.weight)
    assert torch.equal(student_layer.pre_ff_layernorm.weight, layer.post_attention_layernorm.weight)
    identity = convert(model, [1], "identity")[0].model.layers[0].mamba.conv1d
    assert torch.equal(identity.weight[:, 0, -1], torch.ones(identity.weight.shape[0]))
    assert identity.weight[:, 0, :-1].abs().sum() == 0 and identity.bias.abs().sum() == 0


def test_reverse_and_forward_kl_and_the_masked_loss():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ps, pt = s.softmax(-1), t.softmax(-1)
    assert torch.allclose(token_kl(s, t, "reverse"), (ps * (ps.log() - pt.log())).sum(-1), atol=1e-6)
    assert torch.allclose(token_kl(s, t, "forward"), (pt * (pt.log() - ps.log())).sum(-1), atol=1e-6)
    assert token_kl(s, s).abs().max() < 1e-6
    # only positions whose next token is a target count: the first two are the prompt
    s_logits, t_logits = torch.randn(1, 5, 7), torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1]])
    loss, ce, kl = distill_loss(s_logits, t_logits, labels, kl_weight=0.25)
    pos = [1, 2, 3]                                  # logits at t predict labels[t + 1]
    want_kl = token_kl(s_logits[0, pos], t_logits[0, pos]).mean()
    want_ce = torch.nn.functional.cross_entropy(s_logits[0, pos], labels[0, 2:])
    assert torch.allclose(kl, want_kl) and torch.allclose(ce, want_ce)
    assert torch.allclose(loss, 0.75 * want_ce + 0.25 * want_kl)


def _greedy_without_cache(model, ids, steps, eos=()):
    ids = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            tok = int(model(ids).logits[0, -1].argmax())
            out.append(tok)
            if tok in eos:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


def test_hf_engine_decodes_the_hybrid_cache_exactly(teacher, hybrid):
    """Bamba's cache holds conv and SSM states for Mamba layers: the engine's prefill sharing
    (repeat), finished rows leaving (select) and prompts joining a running batch (merge) must
    give what plain step-by-step decoding without any cache gives."""
    from ttx.engines import hf
    from ttx.engines.hf import HFEngine

    engine = HFEngine(loaded=(hybrid, teacher[1]), max_batch_rows=2)
    merges = []
    merge = hf._merge
    hf._merge = lambda *a: merges.append(1) or merge(*a)
    try:
        stop_early = _greedy_without_cache(hybrid, engine.encode(PROMPTS[1]), 3)[2]
        engine.eos_ids = set(engine.eos_ids) | {stop_early}
        gens = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=8))
        for prompt, gen in zip(PROMPTS, gens):
            assert gen.traces[0].token_ids[:8] == _greedy_without_cache(
                hybrid, engine.encode(prompt), 8, engine.eos_ids)
    finally:
        hf._merge = merge
    assert merges, "the third prompt should have joined the running batch"
    engine.max_batch_rows = 3
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=1, logprobs=True)
    for prompt, gen in zip(PROMPTS, engine.generate(PROMPTS, 2, params)):
        for trace in gen.traces:                       # sampled rows score as a full forward
            ids = engine.encode(prompt)
            with torch.no_grad():
                logp = hybrid(torch.tensor([ids + trace.token_ids])).logits[0].log_softmax(-1)
            want = [logp[len(ids) - 1 + i, t].item() for i, t in enumerate(trace.token_ids)]
            assert trace.logprobs == pytest.approx(want, abs=1e-4)


def test_stages_reduce_their_losses(teacher):
    from ttx.mamba import data as D
    from ttx.mamba.distill import evaluate, run_align, run_distill
    from ttx.train import TrainConfig

    model, tok = teacher
    student, _ = convert(model, [1], "default")
    examples = [D.Example(None, f"The number {i} plus {i} is {2 * i}. " * 2, i) for i in range(4)]
    batches = D.make_batches([D.tokenize(e, tok, 32) for e in examples], 4, 0)   # one batch
    before = evaluate(student, model, batches)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(output_dir=Path(work) / "a", lr=3e-3, max_steps=4, progress=False)
        align, _ = run_align(student, model, batches, cfg, [0])
        assert align.losses[-1] < align.losses[0]
        assert torch.equal(student.model.layers[1].self_attn.q_proj.weight,
                           model.model.layers[1].self_attn.q_proj.weight)    # frozen in stage 1
        cfg = TrainConfig(output_dir=Path(work) / "d", lr=3e-3, max_steps=4, progress=False)
        _, trainer = run_distill(student, model, batches, cfg, kind="reverse", kl_weight=1.0,
                                 temperature=1.0, freeze_mlp=True)
    after = evaluate(trainer.unwrapped, model, batches)
    assert after["kl_reverse"] < before["kl_reverse"]
    assert torch.equal(student.model.layers[0].feed_forward.up_proj.weight,
                       model.model.layers[0].mlp.up_proj.weight)              # --freeze-mlp


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_cli_distills_saves_a_plain_bamba_checkpoint_and_resumes(tmp_path, tiny_model_dir,
                                                                 texts, monkeypatch):
    from transformers import AutoModelForCausalLM

    args = ["distill-to-mamba", "-m", tiny_model_dir, "-i", texts, "--attn-layers", "1",
            "--align-steps", "2", "--steps", "3", "--lr", "1e-3", "--max-length", "32",
            "--batch-size", "2", "--eval-records", "2", "--save-every", "1", "--no-progress"]
    full = tmp_path / "full"
    r = run_cli(args + ["-o", full])
    assert r.exit_code == 0, r.output
    model = AutoModelForCausalLM.from_pretrained(full)
    assert type(model).__name__ == "BambaForCausalLM"
    assert model.config.layers_block_type == ["linear_attention", "full_attention"]
    manifest = json.loads((full / "ttx_manifest.json").read_text())
    s = manifest["summary"]
    assert s["attn_layers"] == [1] and s["mamba_layers"] == [0] and s["init"]["conv"] == "default"
    assert s["align_steps"] == 2 and s["distill_steps"] == 3
    assert set(s["metrics"]) == {"converted", "aligned", "distilled"}
    assert s["final"]["ppl_teacher"] > 1 and s["final"]["kl_reverse"] >= 0
    assert not (full / "train" / "distill" / "checkpoints").exists()

    # interrupted in stage 2 after step 2 (checkpointed), then resumed: same weights
    import ttx.mamba.distill as distill
    real, calls = distill.distill_loss, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(*a, **k)

    part = tmp_path / "part"
    monkeypatch.setattr(distill, "distill_loss", crash_on_third)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_cli(args + ["-o", part])
    monkeypatch.setattr(distill, "distill_loss", real)
    assert (part / "train" / "distill" / "checkpoints").exists()
    r = run_cli(args + ["-o", part, "--resume", "--kl", "forward"])    # other options: refused
    assert r.exit_code == 2 and "--resume with a different --kl" in r.output, r.output
    r = run_cli(args + ["-o", part, "--resume"])
    assert r.exit_code == 0, r.output
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_after_spans_both_stages_and_resume_finishes_the_same(tmp_path, tiny_model_dir, texts):
    """--stop-after (the shared name) counts stage 1 and 2 steps together; each stop is
    checkpointed and --resume ends where an uninterrupted run does, bit for bit."""
    args = ["distill-to-mamba", "-m", tiny_model_dir, "-i", texts, "--attn-layers", "1",
            "--align-steps", "2", "--steps", "3", "--lr", "1e-3", "--max-length", "32",
            "--batch-size", "2", "--eval-records", "2", "--save-every", "0", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli(args + ["-o", full]).exit_code == 0
    for extra, said in [(["--stop-after", "1"], "stopped after align step 1"),
                        (["--resume", "--stop-after", "1"], "stopped after align step 2"),
                        (["--resume", "--stop-after", "2"], "stopped after distill step 2")]:
        r = run_cli(args + ["-o", cut, *extra])
        assert r.exit_code == 0 and said in r.output, r.output
        assert not (cut / "ttx_manifest.json").exists()
    r = run_cli(args + ["-o", cut, "--resume"])
    assert r.exit_code == 0, r.output
    s = json.loads((cut / "ttx_manifest.json").read_text())["summary"]
    assert (s["align_steps"], s["distill_steps"]) == (2, 3)
    a, b = _weights(full), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_generate_uses_the_teachers_greedy_completions(tmp_path, tiny_model_dir, teacher):
    from ttx.engines.hf import HFEngine

    prompts = tmp_path / "prompts.jsonl"
    qs = ["What is 2 + 3?", "Name a colour.", "Count to three.", "Say hi."]
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in qs))
    out = tmp_path / "gen"
    r = run_cli(["distill-to-mamba", "-m", tiny_model_dir, "-i", prompts, "-o", out,
                 "--attn-layers", "1", "--teacher-generate", "--gen-temperature", "0",
                 "--gen-max-new-tokens", "5", "--steps", "1", "--eval-records", "1",
                 "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "train" / "teacher_data.jsonl").read_text().splitlines()]
    engine = HFEngine(loaded=teacher)
    want = engine.generate([[{"role": "user", "content": q}] for q in qs], 1,
                           SamplingParams(max_new_tokens=5))
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3]
    assert {r["index"]: r["completion"] for r in rows} == {i: g.traces[0].text
                                                           for i, g in enumerate(want)}


def test_bad_inputs_fail_with_one_clear_line(tmp_path, tiny_model_dir, teacher):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"question": "no answer"}\n')
    r = run_cli(["distill-to-mamba", "-m", tiny_model_dir, "-i", bad, "-o", tmp_path / "o"])
    assert r.exit_code == 2 and f"{bad}:2: field 'answer': missing" in r.output
    r = run_cli(["distill-to-mamba", "-m", tiny_model_dir, "-o", tmp_path / "o"])
    assert r.exit_code == 2 and "needs -i/--input" in r.output
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    teacher[1].save_pretrained(gpt2)
    r = run_cli(["distill-to-mamba", "-m", gpt2, "-o", tmp_path / "o", "--steps", "0"])
    assert r.exit_code == 2 and "not Llama-style" in r.output
    assert not (tmp_path / "o" / "config.json").exists()


def test_pipeline_script_distills_runs_and_scores(tmp_path, tiny_model_dir, texts):
    problems = tmp_path / "problems.jsonl"
    lines = (GSM8K / "test.jsonl").read_text().splitlines()[:2]
    problems.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "MAX_NEW_TOKENS": "4"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/distill-mamba.sh"), tiny_model_dir,
                           texts, problems, out, "--attn-layers", "1", "--steps", "1",
                           "--max-length", "32", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "hybrid" / "config.json").exists()
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["runs"]} == {"teacher", "hybrid"}
