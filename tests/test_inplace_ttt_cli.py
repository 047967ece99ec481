"""`ttx inplace-ttt-convert` through the real CLI: convert, train, resume, generate, bad input;
the pipeline script; exactness on the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_cli


def _docs(path, n=4, words=60):
    rows = [{"text": " ".join(f"word{(i * 7 + j) % 23}" for j in range(words))} for i in range(n)]
    rows.append({"documents": ["first short document here", "and a second one after it"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _conv_weights(folder):
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in weights.items() if ".mlp.ttt_conv" in k}


def test_convert_then_train_then_generate(tmp_path, tiny_model_dir):
    conv = tmp_path / "conv"
    r = run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", conv, "--layers", "0,1",
                 "--chunk", "8"])
    assert r.exit_code == 0, r.output
    config = json.loads((conv / "config.json").read_text())
    assert (config["model_type"], config["ttt_layers"], config["ttt_chunk"]) == \
        ("inplace_ttt_llama", [0, 1], 8)
    manifest = json.loads((conv / "ttx_manifest.json").read_text())
    assert manifest["stage"] == "inplace-ttt-convert"
    assert manifest["summary"]["max_abs_logit_diff_after_conversion"] == 0.0
    assert all(not w.any() for w in _conv_weights(conv).values())     # conv starts at zero

    trained = tmp_path / "trained"
    r = run_cli(["inplace-ttt-convert", "--model", conv, "-i", _docs(tmp_path / "d.jsonl"),
                 "-o", trained, "--max-steps", "3", "--max-length", "32", "--lr", "1e-3",
                 "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((trained / "ttx_manifest.json").read_text())["summary"]
    assert summary["converted"] is False and summary["train"]["steps"] == 3
    assert all(w.any() for w in _conv_weights(trained).values())       # training moved them
    assert not (trained / "checkpoints").exists()

    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "1+1?", "answer": "2"}\n')
    out = tmp_path / "runs.jsonl"
    r = run_cli(["tts-run", "--model", trained, "-i", problems, "-o", out, "--strategy", "sample",
                 "--n", "2", "--max-new-tokens", "12", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["traces"]) == 2

    # `import ttx` is enough for transformers to load the converted checkpoint (a fresh process)
    import subprocess
    import sys

    code = ("import sys, ttx\nassert 'torch' not in sys.modules\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(trained)!r})\n"
            "print(type(m).__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "InPlaceTTT" in done.stdout


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    from ttx.train import Trainer

    docs = _docs(tmp_path / "d.jsonl", n=6)
    common = ["--model", tiny_model_dir, "--layers", "1", "--chunk", "4", "-i", docs,
              "--max-length", "24", "--max-steps", "4", "--lr", "1e-3", "--save-every", "2",
              "--no-progress"]
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "straight"])
    assert r.exit_code == 0, r.output

    finish = Trainer._finish_window

    def crash_after_two(self):
        finish(self)
        if self.step_count == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_finish_window", crash_after_two)
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "resumed"])
    assert r.exit_code != 0                                            # interrupted at step 3
    monkeypatch.setattr(Trainer, "_finish_window", finish)
    assert not (tmp_path / "resumed" / "config.json").exists()        # no half checkpoint
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "resumed"])
    assert r.exit_code == 2 and "--resume" in r.output
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "resumed", "--resume",
                 "--lr", "2e-3"])                                    # other options: refused
    assert r.exit_code == 2 and "--resume with a different --lr" in r.output, r.output
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "resumed", "--resume"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "resumed" / "ttx_manifest.json").read_text())["summary"]
    assert summary["train"]["resumed_from"] == 2
    a, b = _conv_weights(tmp_path / "straight"), _conv_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_after_then_resume_gives_the_same_weights(tmp_path, tiny_model_dir):
    """--stop-after (the shared name) stops checkpointed; --resume finishes as one run would."""
    docs = _docs(tmp_path / "d.jsonl", n=6)
    common = ["--model", tiny_model_dir, "--layers", "1", "--chunk", "4", "-i", docs,
              "--max-length", "24", "--steps", "4", "--lr", "1e-3", "--no-progress"]
    assert run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "straight"]).exit_code == 0
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "cut", "--stop-after", "3"])
    assert r.exit_code == 0 and "stopped early" in r.output, r.output
    assert not (tmp_path / "cut" / "config.json").exists()
    r = run_cli(["inplace-ttt-convert", *common, "-o", tmp_path / "cut", "--resume"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cut" / "ttx_manifest.json").read_text())["summary"]
    assert summary["train"]["resumed_from"] == 3
    a, b = _conv_weights(tmp_path / "straight"), _conv_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_gets_one_clear_line(tmp_path, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    r = run_cli(["inplace-ttt-convert", "--model", gpt2, "-o", tmp_path / "x"])
    assert r.exit_code == 2 and "gated-MLP family" in r.output and "gpt2" in r.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "torn\n')
    r = run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", tmp_path / "y", "-i", bad])
    assert r.exit_code == 2 and f"{bad}:2" in r.output
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"body": "no text field"}\n')
    r = run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", tmp_path / "z", "-i",
                 missing])
    assert r.exit_code == 2 and "field 'text'" in r.output

    r = run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", tmp_path / "w",
                 "--layers", "0,5"])
    assert r.exit_code == 2 and "--layers" in r.output
    done = tmp_path / "done"
    assert run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", done]).exit_code == 0
    r = run_cli(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", done])
    assert r.exit_code == 2 and "--overwrite replaces it" in r.output
    r = run_cli(["inplace-ttt-convert", "--model", done, "-o", tmp_path / "v", "--chunk", "7"])
    assert r.exit_code == 2 and "already converted" in r.output


def test_pipeline_script_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    """recipes/pipelines/inplace-ttt.sh: convert -> train -> tts-run -> score."""
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "2+2?", "answer": "4"}\n')
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "MODEL": str(tiny_model_dir), "CHUNK": "8", "LAYERS": "1", "MAX_NEW_TOKENS": "8"}
    out = tmp_path / "out"
    cmd = ["bash", str(REPO / "recipes/pipelines/inplace-ttt.sh"), _docs(tmp_path / "d.jsonl"),
           problems, out, "--max-steps", "2", "--max-length", "32", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "trained" / "config.json").is_file()
    assert json.loads((out / "score.json").read_text())
    assert json.loads((out / "trained" / "ttx_manifest.json").read_text())["summary"]["train"]["steps"] == 2


@pytest.mark.model
def test_default_model_converts_exactly_across_chunks_and_generation(default_model_dir):
    """SmolLM2-135M, every 6th layer, chunk 16: the same logits (max abs diff < 1e-5, float32) on
    a 64-token prompt (4 chunks) and over 20 greedy decoding steps through the TTT cache."""
    from transformers import DynamicCache

    from ttx.inplace_ttt.convert import convert
    from ttx.models import load_model

    base, _, _ = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    # from_pretrained leaves weights memory-mapped at odd alignments, and CPU matrix-vector
    # kernels round differently per alignment (two copies of the plain model differ by 3e-5 when
    # decoding); give the original fresh memory like the converted model's, then compare.
    for p in base.parameters():
        p.data = p.data.clone()
    model = convert(base, chunk=16)
    assert model.config.resolved_ttt_layers() == [0, 6, 12, 18, 24]
    ids = torch.randint(0, base.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max()) < 1e-5
        caches = [DynamicCache(config=m.config) for m in (base, model)]
        outs = [m(input_ids=ids, cache=c, use_cache=True).logits[:, -1] for m, c in zip((base, model), caches)]
        for _ in range(20):                 # 64 + 20 tokens: a chunk fills during decoding
            assert float((outs[0] - outs[1]).abs().max()) < 1e-5
            nxt = outs[0].argmax(-1, keepdim=True)
            outs = [m(input_ids=nxt, cache=c, use_cache=True).logits[:, -1]
                    for m, c in zip((base, model), caches)]
        state = caches[1].layers[0].ttt_state
        assert state.delta is not None and int(state.fill[0]) == (64 + 20) % 16
