"""tlm-adapt: the weighted objective, sample selection, the frozen reference, and the stage end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GSM8K, run_cli
from ttx.tlm.loss import measure_ce, sample_weight, tlm_loss


def test_weight_and_selection_follow_the_formula():
    ce_ref = torch.tensor([2.0, 3.0, 3.5, 5.0])
    # S(x) = λ exp(CE_ref - τ) 1[CE_ref > τ], λ = 0.1, τ = 3
    expected = [0.0, 0.0, 0.1 * math.exp(0.5), 0.1 * math.exp(2.0)]
    assert sample_weight(ce_ref).tolist() == pytest.approx(expected)
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # Σ S·CE / Σ 1[selected]: two inputs are above τ
    assert float(tlm_loss(ce, ce_ref)) == pytest.approx((expected[2] * 3 + expected[3] * 4) / 2)
    assert sample_weight(ce_ref, threshold=4.0, lam=1.0).tolist() == pytest.approx([0, 0, 0, math.e])
    assert tlm_loss(ce, torch.tensor([1.0, 2.0, 2.9, 3.0])) is None     # nothing selected


def _inputs(path, start: int, count: int) -> str:
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()]
    with open(path, "w") as f:
        for i, r in enumerate(rows[start:start + count]):
            f.write(json.dumps({"id": f"q{start + i}", "question": r["question"]}) + "\n")
    return str(path)


def _lora(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_reference_ce_disables_the_adapter(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttx.tlm.adapt import TLMConfig, attach_lora, reference_ce

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    seqs = [tok("Natalia sold clips to 48 of her friends.").input_ids, tok("How many?").input_ids]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = measure_ce(base, seqs, tok.eos_token_id)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        TLMConfig(input="-", output="-", lora_r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)                       # an adapter that changes the outputs
    adapted = measure_ce(model, seqs, tok.eos_token_id)
    assert reference_ce(model, seqs, tok.eos_token_id) == pytest.approx(plain, abs=1e-5)
    assert adapted != pytest.approx(plain, abs=1e-3)


def test_offline_adapts_and_the_adapter_loads_everywhere(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train = _inputs(tmp_path / "in.jsonl", 0, 6)
    held = _inputs(tmp_path / "held.jsonl", 100, 4)
    out = tmp_path / "adapter"
    result = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", train, "-o", out, "--lr", "5e-3",
                      "--lora-r", "4", "--eval", held, "--generate", tmp_path / "answers.jsonl",
                      "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "ttx_manifest.json").read_text())
    s = manifest["summary"]
    # a random model has log-perplexity ~ ln(vocab) > τ: every input is selected and learned from
    assert (s["seen"], s["selected"], s["backward_passes"], s["updates"]) == (6, 6, 6, 6)
    assert s["mean_log_ppl_after"] < s["mean_log_ppl_before"]
    assert s["eval"][held]["mean_log_ppl_after"] < s["eval"][held]["mean_log_ppl_before"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in samples] == [f"q{i}" for i in range(6)]
    assert set(samples[0]) >= {"id", "ce_ref", "selected", "weight", "ce_after"}
    assert not (out / "checkpoints").exists()
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all(a["strategy"] == "greedy" for a in answers)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    ran = run_cli(["tts-run", "--model", tiny_model_dir, "--adapter", out, "-i", train,
                   "-o", tmp_path / "runs.jsonl", "--strategy", "greedy", "--max-new-tokens", "4",
                   "--no-progress"])
    assert ran.exit_code == 0, ran.output
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["traces"][0]["text"] for r in runs] == [a["traces"][0]["text"] for a in answers]


def test_steps_caps_the_optimizer_steps(tiny_model_dir, tmp_path):
    """--steps (the shared name): 6 inputs, 2 per micro-batch, 2 epochs, capped at 4 steps: the
    second epoch stops after one batch; the summary counts the inputs really seen."""
    train = _inputs(tmp_path / "in.jsonl", 0, 6)
    out = tmp_path / "adapter"
    result = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", train, "-o", out, "--lora-r", "4",
                      "--batch-size", "2", "--epochs", "2", "--steps", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert (s["seen"], s["updates"]) == (8, 4)
    online = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", train, "-o", tmp_path / "b",
                      "--mode", "online", "--steps", "2"])
    assert online.exit_code == 2 and "--steps" in online.output and not (tmp_path / "b").exists()


def test_nothing_above_the_threshold_means_no_update(tiny_model_dir, tmp_path):
    train = _inputs(tmp_path / "in.jsonl", 0, 3)
    out = tmp_path / "adapter"
    result = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", train, "-o", out,
                      "--threshold", "100", "--lora-r", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert (s["selected"], s["backward_passes"], s["updates"], s["skipped_backward"]) == (0, 0, 0, 3)
    assert all(float(v.abs().sum()) == 0 for k, v in _lora(out).items() if "lora_B" in k)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_interrupted_run_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, mode):
    train = _inputs(tmp_path / "in.jsonl", 0, 6)
    common = ["tlm-adapt", "--model", tiny_model_dir, "-i", train, "--lr", "5e-3", "--lora-r", "4",
              "--lora-dropout", "0.1", "--mode", mode, "--stream-block", "2", "--save-every", "1",
              "--no-progress"]
    if mode == "online":
        common += ["--generate", "answers.jsonl", "--max-new-tokens", "3"]
    whole = run_cli(common + ["-o", tmp_path / "whole"] + (
        ["--generate", tmp_path / "whole.jsonl"] if mode == "online" else []))
    assert whole.exit_code == 0, whole.output
    cut = common + ["-o", tmp_path / "cut"] + (["--generate", tmp_path / "cut.jsonl"] if mode == "online"
                                              else [])
    first = run_cli(cut + ["--stop-after", "2"])
    assert "continue with --resume" in first.output
    assert not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    second = run_cli(cut + ["--resume"])
    assert second.exit_code == 0, second.output
    a, b = _lora(tmp_path / "whole"), _lora(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if mode == "online":
        whole_answers = (tmp_path / "whole.jsonl").read_text().splitlines()
        cut_answers = (tmp_path / "cut.jsonl").read_text().splitlines()
        assert len(whole_answers) == len(cut_answers) == 6
        strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("wall_s", "model")}
        assert [strip(x) for x in whole_answers] == [strip(x) for x in cut_answers]


def test_bad_input_names_file_line_and_field(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "fine"}\n{"id": 2, "prompt": "no question"}\n')
    result = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", bad, "-o", tmp_path / "a"])
    assert result.exit_code == 2
    assert f"{bad}:2: field 'question': missing" in result.output
    assert not (tmp_path / "a").exists()               # nothing loaded, nothing written


def test_tlm_pipeline_script_runs_on_a_tiny_model(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()][:3]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/tlm.sh"), test, out, "--model",
                           tiny_model_dir, "--max-new-tokens", "4", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["runs"]} == {"baseline", "tlm"}


@pytest.mark.model
def test_default_model_learns_the_domain_without_hurting_other_text(default_model_dir, tmp_path):
    """Adapted on 16 GSM8K questions (the paper's defaults), held-out GSM8K questions get a lower
    log-perplexity and general prose (the GPL text) does not get worse by more than 0.05 nats."""
    from pathlib import Path

    from ttx.tlm.adapt import TLMConfig, run_tlm

    paras = [" ".join(p.split()) for p in Path("/usr/share/common-licenses/GPL-3").read_text().split("\n\n")]
    control = tmp_path / "control.jsonl"
    control.write_text("".join(json.dumps({"id": f"c{i}", "question": p}) + "\n"
                               for i, p in enumerate([p for p in paras if len(p.split()) >= 40][:4])))
    train, held = _inputs(tmp_path / "train.jsonl", 0, 16), _inputs(tmp_path / "held.jsonl", 16, 8)
    s = run_tlm(TLMConfig(input=train, output=str(tmp_path / "adapter"), model=str(default_model_dir),
                          eval=(held, str(control)), progress=False))
    assert s["selected"] > 0 and s["backward_passes"] == s["selected"]
    assert s["eval"][held]["mean_log_ppl_after"] < s["eval"][held]["mean_log_ppl_before"]
    c = s["eval"][str(control)]
    assert c["mean_log_ppl_after"] < c["mean_log_ppl_before"] + 0.05
