"""sft: the DCO loss and its gradient factor against the closed form and finite differences
(arXiv 2502.07154, "Direct coverage optimization": L = -log(1 - (1-p)^N), ∇L = F(N, p) ∇L_CE,
F = N p (1-p)^(N-1) / (1 - (1-p)^N); no public code), response-only masking, and the stage end
to end on the tiny model: the adapter PEFT loads and tts-run uses, exact resume, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.sft.loss import dco_factor, dco_value, log1mexp, response_logprobs, sequence_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PS = [1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999]
NS = [1, 2, 4, 16, 64]


def _closed(p: float, n: int) -> tuple[float, float]:
    """The paper's formulas written out directly (float64, moderate p only)."""
    cover = 1 - (1 - p) ** n
    return -math.log(cover), n * p * (1 - p) ** (n - 1) / cover


@pytest.mark.parametrize("n", NS)
def test_dco_loss_and_factor_equal_the_closed_form(n):
    logp = torch.tensor([math.log(p) for p in PS], dtype=torch.float64)
    value, factor = dco_value(logp, n), dco_factor(logp, n)
    for i, p in enumerate(PS):
        want_value, want_factor = _closed(p, n)
        assert float(value[i]) == pytest.approx(want_value, rel=1e-9, abs=1e-12)
        assert float(factor[i]) == pytest.approx(want_factor, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n", NS)
def test_dco_gradient_is_the_factor_times_the_ce_gradient(n):
    """Central finite differences of the closed-form loss in ℓ = log p: dL/dℓ = -F (L_CE = -ℓ);
    autograd through sequence_loss (the detached factor) gives the same, and its value is L."""
    h = 1e-6
    for p in PS[1:-1]:
        ell = math.log(p)
        fd = (_closed(math.exp(ell + h), n)[0] - _closed(math.exp(ell - h), n)[0]) / (2 * h)
        x = torch.tensor([ell], dtype=torch.float64, requires_grad=True)
        loss, factor = sequence_loss(x, "dco", n)
        loss.sum().backward()
        assert float(x.grad) == pytest.approx(fd, rel=1e-5, abs=1e-9)
        assert float(x.grad) == pytest.approx(-float(factor), rel=1e-12)
        assert float(loss.detach()) == pytest.approx(_closed(p, n)[0], rel=1e-9)


def test_dco_is_stable_at_both_ends():
    """p -> 0: F -> 1 and L -> -ℓ - log N (the paper: DCO acts as CE on what the model misses);
    p -> 1: F -> 0 and L -> 0 (no push on what it already gets); never nan or inf."""
    tiny = torch.tensor([-1e4, -800.0, -120.0, -40.0], dtype=torch.float64)
    assert dco_factor(tiny, 16).tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    assert dco_value(tiny, 16).tolist() == pytest.approx((-tiny - math.log(16)).tolist(), rel=1e-12)
    sure = torch.tensor([0.0, -1e-300, -1e-30, -1e-12], dtype=torch.float64)
    f, v = dco_factor(sure, 16), dco_value(sure, 16)
    assert torch.isfinite(f).all() and torch.isfinite(v).all()
    assert f.tolist() == pytest.approx([0.0] * 4, abs=1e-150)
    assert v.tolist() == pytest.approx([0.0] * 4, abs=1e-150)
    assert float(dco_factor(torch.tensor([0.0]), 1)) == 1.0          # N = 1: CE's gradient
    for dtype in (torch.float32, torch.float64):                     # 1 - e^ℓ without cancellation
        x = torch.tensor([-1e-20, -0.5, -50.0], dtype=dtype)
        assert torch.isfinite(log1mexp(x)).all()
        assert float(log1mexp(x)[0]) == pytest.approx(math.log(1e-20), rel=1e-6)
    ell = torch.tensor([-0.2, -3.0, -9.0], requires_grad=True)    # N = 1: exactly CE
    loss, factor = sequence_loss(ell, "dco", 1)
    assert torch.allclose(loss, -ell) and factor.tolist() == [1.0, 1.0, 1.0]


def test_factor_damps_confident_examples_monotonically():
    """F falls with p for N > 1 (the paper's confidence limiting), and with N at fixed p."""
    logp = torch.log(torch.linspace(0.01, 0.99, 50, dtype=torch.float64))
    f = dco_factor(logp, 8)
    assert bool((f[1:] < f[:-1]).all())
    assert float(dco_factor(torch.tensor([math.log(0.5)]), 32)) < float(
        dco_factor(torch.tensor([math.log(0.5)]), 4))


def test_masking_only_response_tokens_carry_the_loss(tiny_model_dir):
    """ℓ sums log p over the response tokens only: equal to a by-hand sum on each unpadded row,
    unchanged by the prompt's own probabilities, and by padding beside a longer row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [([5, 17, 99, 3, 42, 7], 4), ([8, 9, 10, 11, 12, 13, 14, 15, 16], 3)]
    with torch.no_grad():
        got, tokens = response_logprobs(model, [r for r, _ in rows], [k for _, k in rows], 0)
        for i, (row, start) in enumerate(rows):
            lp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0].float(), -1)
            want = sum(float(lp[t - 1, row[t]]) for t in range(start, len(row)))
            assert float(got[i]) == pytest.approx(want, abs=1e-4)
            assert int(tokens[i]) == len(row) - start
        alone, _ = response_logprobs(model, [rows[0][0]], [rows[0][1]], 0)
        assert float(alone[0]) == pytest.approx(float(got[0]), abs=1e-5)
        prompt_only, n = response_logprobs(model, [rows[0][0]], [len(rows[0][0])], 0)
    assert float(prompt_only[0]) == 0.0 and int(n[0]) == 0     # no response: nothing counted


def _pairs(path, n=8, seed=1, answer_only=True):
    with open(path, "w") as f:
        for p in generate(n, seed):
            f.write(json.dumps({"id": p["id"], "prompt": p["question"],
                                "response": p["answer"] if answer_only else f"It is {p['answer']}."})
                    + "\n")
    return str(path)


def _lora(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _sft(tiny, inp, out, *extra):
    return run_cli(["sft", "--model", tiny, "-i", inp, "-o", out, "--lr", "5e-3", "--lora-r", "4",
                    "--batch-size", "2", "--no-progress", *extra])


def test_prompt_is_templated_as_tts_run_and_the_response_ends_with_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    from ttx.models import render_prompt
    from ttx.prompts import build_prompt
    from ttx.sft.config import SFTConfig
    from ttx.sft.data import Pair, encode_pairs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = SFTConfig(input="x", output="y", max_length=64)
    (row, start), = encode_pairs(tok, cfg, [Pair("a", "What is 2+3?", "5")])[0]
    head = tok(render_prompt(tok, build_prompt("What is 2+3?")), add_special_tokens=False).input_ids
    assert row[:start] == head and row[start:] == tok("5", add_special_tokens=False).input_ids + [
        tok.eos_token_id]
    long = encode_pairs(tok, SFTConfig(input="x", output="y", max_length=len(row) - 1),
                        [Pair("a", "What is 2+3?", "5")])
    assert long == ([], [])                         # longer than --max-length: left out


def test_sft_writes_an_adapter_peft_loads_and_tts_run_uses(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inp = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "adapter"
    result = _sft(tiny_model_dir, inp, out, "--epochs", "2", "--loss", "dco", "--dco-n", "4")
    assert result.exit_code == 0, result.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert (s["pairs"], s["trained_pairs"], s["steps"], s["loss"], s["dco_n"]) == (8, 8, 8, "dco", 4)
    assert s["train_loss_last"] < s["train_loss_first"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and all(0 < r["factor_mean"] <= 1 and 0 < r["p_mean"] < 1 for r in log)
    assert not (out / "checkpoints").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps({"id": p["id"], "question": p["question"],
                                            "answer": p["answer"]}) + "\n" for p in generate(3, 1)))
    ran = run_cli(["tts-run", "--model", tiny_model_dir, "--adapter", out, "-i", problems,
                   "-o", tmp_path / "runs.jsonl", "--strategy", "greedy", "--max-new-tokens", "3",
                   "--no-progress"])
    assert ran.exit_code == 0, ran.output
    base = run_cli(["tts-run", "--model", tiny_model_dir, "-i", problems, "-o",
                    tmp_path / "base.jsonl", "--strategy", "greedy", "--max-new-tokens", "3",
                    "--no-progress"])
    assert base.exit_code == 0, base.output
    texts = lambda f: [json.loads(x)["traces"][0]["text"] for x in f.read_text().splitlines()]
    assert texts(tmp_path / "runs.jsonl") != texts(tmp_path / "base.jsonl")   # the adapter acts


def test_dco_with_n_one_trains_exactly_as_ce(tiny_model_dir, tmp_path):
    """DCO at N = 1 is -log p: the same adapter, bit for bit, as --loss ce."""
    inp = _pairs(tmp_path / "pairs.jsonl", n=4)
    assert _sft(tiny_model_dir, inp, tmp_path / "ce").exit_code == 0
    assert _sft(tiny_model_dir, inp, tmp_path / "dco", "--loss", "dco", "--dco-n", "1").exit_code == 0
    a, b = _lora(tmp_path / "ce"), _lora(tmp_path / "dco")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dco_limits_the_confidence_ce_drives_up(tiny_model_dir, tmp_path):
    """The paper's mechanism in miniature: on one pair, CE pushes p towards 1; DCO's factor falls
    to 0 once pass@16 is near 1 (F(16, 0.55) ~ 1e-4), so p stops near where coverage saturates."""
    inp = tmp_path / "one.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "What is 2+3?", "response": "5"}) + "\n")
    last = {}
    for loss in ("ce", "dco"):
        r = run_cli(["sft", "--model", tiny_model_dir, "-i", inp, "-o", tmp_path / loss, "--lr",
                     "3e-3", "--lora-r", "0", "--epochs", "50", "--schedule", "constant",
                     "--loss", loss, *(["--dco-n", "16"] if loss == "dco" else []), "--no-progress"])
        assert r.exit_code == 0, r.output
        log = [json.loads(x) for x in (tmp_path / loss / "train_log.jsonl").read_text().splitlines()]
        last[loss] = log[-1]
    assert last["ce"]["p_mean"] > 0.9 and last["ce"]["factor_mean"] == 1.0
    assert last["dco"]["p_mean"] < 0.7 and last["dco"]["factor_mean"] < 0.01


def test_interrupted_run_resumes_bit_exact_and_refuses_other_options(tiny_model_dir, tmp_path):
    inp = _pairs(tmp_path / "pairs.jsonl", n=6)
    common = ["--loss", "dco", "--dco-n", "8", "--epochs", "2", "--lora-dropout", "0.1",
              "--save-every", "1"]
    assert _sft(tiny_model_dir, inp, tmp_path / "whole", *common).exit_code == 0
    first = _sft(tiny_model_dir, inp, tmp_path / "cut", *common, "--stop-after", "4")
    assert first.exit_code == 0 and "continue with --resume" in first.output
    assert not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    other = _sft(tiny_model_dir, inp, tmp_path / "cut", "--loss", "dco", "--dco-n", "4",
                 "--epochs", "2", "--lora-dropout", "0.1", "--resume")
    assert other.exit_code == 2 and "--dco-n" in other.output and len(other.output.splitlines()) == 1
    moved = tmp_path / "moved.jsonl"
    moved.write_text((tmp_path / "pairs.jsonl").read_text().replace('"response": "', '"response": "1'))
    other = _sft(tiny_model_dir, moved, tmp_path / "cut", *common, "--resume")
    assert other.exit_code == 2 and "--resume with a different input" in other.output
    second = _sft(tiny_model_dir, inp, tmp_path / "cut", *common, "--resume")
    assert second.exit_code == 0, second.output
    a, b = _lora(tmp_path / "whole"), _lora(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda f: [json.loads(x) for x in (f / "train_log.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "whole") == rows(tmp_path / "cut")
    again = _sft(tiny_model_dir, inp, tmp_path / "cut", *common, "--resume")
    assert again.exit_code == 0 and "already holds a finished run" in again.output


def _scored(path):
    """Two problems, three traces each: 2 + 1 of them right by ttx score's rule."""
    with open(path, "w") as f:
        f.write(json.dumps({"id": "a", "question": "Tom has 3 apples and gets 4. How many?",
                            "answer": "7", "traces": [{"text": "3 + 4 = 7. The answer is 7.", "pred": "7"},
                                                      {"text": "The answer is 8.", "pred": "8"},
                                                      {"text": "It is 7.0", "pred": "7.0"}]}) + "\n")
        f.write(json.dumps({"id": "b", "question": "Mia has 9 pens and gives 2. How many?",
                            "answer": "7", "traces": [{"text": "9 - 2 = 7", "pred": "7"},
                                                      {"text": "11", "pred": "11"},
                                                      {"text": "none"}]}) + "\n")
    return str(path)


def test_rejection_sampling_keeps_only_the_correct_traces(tiny_model_dir, tmp_path):
    scored = _scored(tmp_path / "scored.jsonl")
    out = tmp_path / "rft"
    r = run_cli(["sft", "--model", tiny_model_dir, "--from", scored, "--only-correct", "-o", out,
                 "--lora-r", "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert (s["records"], s["traces"], s["correct_traces"], s["pairs"]) == (2, 6, 3, 3)
    from ttx.sft.config import SFTConfig
    from ttx.sft.data import read_pairs

    pairs, _ = read_pairs(SFTConfig(from_records=scored, output="x", only_correct=True))
    assert [p.response for p in pairs] == ["3 + 4 = 7. The answer is 7.", "It is 7.0", "9 - 2 = 7"]
    everything, _ = read_pairs(SFTConfig(from_records=scored, output="x"))
    assert len(everything) == 6


def test_full_fine_tuning_writes_a_model_tts_run_loads(tiny_model_dir, tmp_path):
    inp = _pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "full"
    r = run_cli(["sft", "--model", tiny_model_dir, "-i", inp, "-o", out, "--lora-r", "0",
                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    ran = run_cli(["tts-run", "--model", out, "-i", _problems(tmp_path), "-o", tmp_path / "r.jsonl",
                   "--strategy", "greedy", "--max-new-tokens", "2", "--no-progress"])
    assert ran.exit_code == 0, ran.output


def _problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 5)))
    return path


@pytest.mark.parametrize("content, field", [
    ('{"id": 1, "prompt": "q", "response": "1"}\n{"id": 2, "prompt": "no response"}\n', "response"),
    ('{"id": 1, "prompt": "q", "response": ""}\n', "response"),
    ('{"id": 1, "prompt": ["q"], "response": "1"}\n', "prompt"),
])
def test_bad_input_is_one_line_naming_file_line_and_field(tiny_model_dir, tmp_path, content, field):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    line = content.count("\n")
    r = run_cli(["sft", "--model", tiny_model_dir, "-i", bad, "-o", tmp_path / "a"])
    assert r.exit_code == 2, r.output
    assert f"{bad}:{line}: field '{field}'" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()              # nothing loaded, nothing written


def test_bad_from_records_name_file_line_and_field(tiny_model_dir, tmp_path):
    bad = tmp_path / "scored.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q", "answer": "1",
                               "traces": [{"text": "1", "pred": "1"}]}) + "\n"
                   + json.dumps({"id": "b", "question": "q", "answer": "1",
                                 "traces": [{"pred": "1"}]}) + "\n")
    r = run_cli(["sft", "--model", tiny_model_dir, "--from", bad, "-o", tmp_path / "a"])
    assert r.exit_code == 2 and f"{bad}:2: field 'traces'" in r.output
    assert not (tmp_path / "a").exists()


def test_a_resume_before_the_first_checkpoint_starts_over(tiny_model_dir, tmp_path):
    """A run killed before its first checkpoint leaves a manifest and log rows: --resume trains
    from the start and the log holds this run's rows only."""
    inp = _pairs(tmp_path / "pairs.jsonl", n=4)
    assert _sft(tiny_model_dir, inp, tmp_path / "whole").exit_code == 0
    cut = tmp_path / "cut"
    assert _sft(tiny_model_dir, inp, cut, "--stop-after", "1", "--save-every", "0").exit_code == 0
    import shutil

    shutil.rmtree(cut / "checkpoints")              # as if killed before any checkpoint
    assert _sft(tiny_model_dir, inp, cut, "--resume", "--save-every", "0").exit_code == 0
    a, b = _lora(tmp_path / "whole"), _lora(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((cut / "train_log.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("args, flag", [
    ([], "--input"),
    (["-i", "P", "--from", "P"], "--input"),
    (["-i", "P", "--only-correct"], "--only-correct"),
    (["-i", "P", "--dco-n", "4"], "--dco-n"),
    (["-i", "P", "--load-in-4bit", "--lora-r", "0"], "--load-in-4bit"),
    (["-i", "P", "--resume", "--overwrite"], "--overwrite"),
])
def test_impossible_options_are_refused_before_anything_loads(tiny_model_dir, tmp_path, args, flag):
    pairs = _pairs(tmp_path / "pairs.jsonl", n=2)
    args = [pairs if a == "P" else a for a in args]
    r = run_cli(["sft", "--model", tiny_model_dir, "-o", tmp_path / "a", *args])
    assert r.exit_code == 2 and flag in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_a_folder_sft_did_not_write_is_never_replaced(tiny_model_dir, tmp_path):
    pairs = _pairs(tmp_path / "pairs.jsonl", n=2)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"], ["--resume"]):
        r = run_cli(["sft", "--model", tiny_model_dir, "-i", pairs, "-o", other, *extra])
        assert r.exit_code == 2, r.output
    assert (other / "notes.txt").read_text() == "keep"
    no_correct = tmp_path / "wrong.jsonl"
    no_correct.write_text(json.dumps({"id": "a", "question": "q", "answer": "7",
                                      "traces": [{"text": "8", "pred": "8"}]}) + "\n")
    r = run_cli(["sft", "--model", tiny_model_dir, "--from", no_correct, "--only-correct",
                 "-o", tmp_path / "b"])
    assert r.exit_code == 2 and "none is correct" in r.output and not (tmp_path / "b").exists()


def test_qlora_trains_an_adapter_over_4bit_weights(tiny_model_dir, tmp_path):
    inp = _pairs(tmp_path / "pairs.jsonl", n=2)
    r = run_cli(["sft", "--model", tiny_model_dir, "-i", inp, "-o", tmp_path / "q", "--lora-r", "4",
                 "--load-in-4bit", "--lr", "5e-3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert any(float(v.abs().sum()) > 0 for k, v in _lora(tmp_path / "q").items() if "lora_B" in k)


@pytest.mark.model
def test_default_model_adapter_lowers_the_loss_and_tts_run_uses_it(default_model_dir, tmp_path):
    """On the default model: two direct-answer pairs, two epochs; the second epoch's -log p is
    below the first's, and tts-run answers with the adapter."""
    inp = _pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "adapter"
    r = run_cli(["sft", "-i", inp, "-o", out, "--lr", "1e-3", "--batch-size", "1", "--epochs", "2",
                 "--loss", "dco", "--dco-n", "16", "--no-progress"])
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[2]["ce"] + log[3]["ce"] < log[0]["ce"] + log[1]["ce"]
    ran = run_cli(["tts-run", "--adapter", out, "-i", _problems(tmp_path), "-o", tmp_path / "r.jsonl",
                   "--strategy", "greedy", "--max-new-tokens", "4", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_a_second_writer_of_the_output_folder_is_refused(tiny_model_dir, tmp_path):
    import os

    from ttx.records import folder_lock

    inp = _pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "out"
    with folder_lock(out):                         # another run holds the folder
        r = _sft(tiny_model_dir, inp, out)
        assert r.exit_code == 2
        assert f"another process (pid {os.getpid()}) is writing this output folder" in r.output
    assert not out.exists()


def test_the_bench_index_reads_a_hand_made_sft_result():
    from bench import index

    row = lambda loss, epoch, p16, maxp: {"loss": loss, "epoch": epoch, "pass@1": 0.1,
                                          "pass@16": p16, "pass@16_ci": [0, 1], "max_answer_p": maxp}
    d = {"rows": [row("ce", 0, 0.5, 0.2), row("ce", 2, 0.4, 0.9), row("dco", 0, 0.5, 0.2),
                  row("dco", 2, 0.6, 0.5)]}
    assert index.sft_pass(d) == ("pass@16 0.500 -> CE 0.400 / DCO 0.600 after 2 epochs; "
                                 "max-answer p 0.20 -> 0.90 / 0.50")
    assert index.REGISTRY["sft"].script == "sft"
