"""perk-metatrain and perk-encode end to end on a tiny model: the folder, the per-step log, exact
resume, answers `ttx score` reads, no leak between records, gradient accumulation, bad input,
and the pipeline script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli
from ttx.data.recall import generate


@pytest.fixture(autouse=True, scope="module")
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py)."""

# small and fast: 16-token segments, 2 inner steps (1 unrolled), r=2, no dropout (exact repeats)
TRAIN = ["--lora-r", "2", "--inner-steps", "2", "--unroll", "1", "--segment-tokens", "16",
         "--lora-dropout", "0", "--inner-lr", "0.5", "--lr", "1e-3", "--no-progress"]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A PERK folder meta-trained for 3 outer steps, and held-out test records."""
    root = tmp_path_factory.mktemp("perk")
    train = _write(root / "train.jsonl", generate(3, context_words=30, seed=0, facts=2))
    test = _write(root / "test.jsonl", generate(3, context_words=30, seed=1, facts=2))
    r = run_cli(["perk-metatrain", "-i", train, "-o", root / "perk", "--model", tiny_model_dir,
                 "--steps", "3", *TRAIN])
    assert r.exit_code == 0, r.output
    return root, train, test


def test_metatrain_writes_a_peft_adapter_learned_state_manifest_and_step_log(trained,
                                                                             tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, _, _ = trained
    folder = root / "perk"
    state = load_file(str(folder / "perk_state.safetensors"))
    assert state["inner_lrs"].shape[0] == 2
    assert not torch.allclose(state["inner_lrs"], torch.full_like(state["inner_lrs"], 0.5))
    assert not torch.equal(state["weighting.out.weight"], torch.zeros_like(state["weighting.out.weight"]))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      folder / "adapter")
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().sum() > 0 for p in b)         # the init moved off LoRA's B = 0
    manifest = json.loads((folder / "ttx_manifest.json").read_text())
    assert manifest["stage"] == "perk-metatrain" and manifest["summary"]["finished"]
    assert manifest["summary"]["outer_steps"] == 3
    log = _records(folder / "train_log.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(row["forward_s"] > 0 and row["peak_memory_mb"] > 0 for row in log)
    assert not (folder / "checkpoints").exists()             # removed once the folder is final


def test_stopped_and_resumed_metatraining_ends_where_an_uninterrupted_run_does(trained, tmp_path,
                                                                               tiny_model_dir):
    root, train, _ = trained
    args = ["perk-metatrain", "-i", train, "-o", tmp_path / "p", "--model", tiny_model_dir,
            "--steps", "3", *TRAIN]
    assert run_cli([*args, "--stop-after", "1"]).exit_code == 0
    assert (tmp_path / "p" / "checkpoints").is_dir()
    again = run_cli(args)                                     # no --resume: refuses to overwrite
    assert again.exit_code == 2 and "--resume" in again.output
    assert run_cli([*args, "--resume"]).exit_code == 0
    ours = load_file(str(tmp_path / "p" / "perk_state.safetensors"))
    straight = load_file(str(root / "perk" / "perk_state.safetensors"))
    for name, t in straight.items():
        assert torch.allclose(ours[name], t, atol=1e-6), name
    ours = load_file(str(tmp_path / "p" / "adapter" / "adapter_model.safetensors"))
    straight = load_file(str(root / "perk" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(ours[n], t, atol=1e-6) for n, t in straight.items())


def test_encode_writes_records_that_score_reads(trained, tmp_path):
    root, _, test = trained
    out = tmp_path / "answers.jsonl"
    r = run_cli(["perk-encode", "--perk", root / "perk", "-i", test, "-o", out,
                 "--max-new-tokens", "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = _records(out)
    assert [row["id"] for row in rows] == [t["id"] for t in _records(test)]
    for row in rows:
        assert row["strategy"] == "perk" and len(row["traces"]) == 1 and "pred" in row
        assert len(row["perk"]["inner_loss"]) == 2
        assert row["completion_tokens"] >= 1 and row["prompt_tokens"] > 0
        # the context was learned, not prompted: the prompt is only the question
        assert row["prompt_tokens"] < 40
    assert json.loads((tmp_path / "answers.jsonl.manifest.json").read_text())["stage"] == "perk-encode"
    scored = run_cli(["score", "-i", out, "--json"])
    assert scored.exit_code == 0, scored.output
    assert "accuracy" in scored.output
    # resume: nothing left to do, nothing duplicated
    assert run_cli(["perk-encode", "--perk", root / "perk", "-i", test, "-o", out,
                    "--max-new-tokens", "4", "--no-progress", "--resume"]).exit_code == 0
    assert len(_records(out)) == len(rows)


def test_each_record_starts_from_the_meta_learned_init_and_accumulation_matches(trained, tmp_path):
    """Record B's answer and inner losses are the same whether A was encoded before it or not,
    and splitting its context into gradient-accumulation parts changes nothing."""
    root, _, test = trained
    records = _records(test)
    both, alone, split = tmp_path / "both.jsonl", tmp_path / "alone.jsonl", tmp_path / "split.jsonl"
    common = ["--perk", root / "perk", "--max-new-tokens", "4", "--no-progress"]
    assert run_cli(["perk-encode", "-i", test, "-o", both, *common]).exit_code == 0
    only_b = _write(tmp_path / "b.jsonl", records[2:])
    assert run_cli(["perk-encode", "-i", only_b, "-o", alone, *common]).exit_code == 0
    assert run_cli(["perk-encode", "-i", only_b, "-o", split, *common,
                    "--inner-grad-accum", "2"]).exit_code == 0
    b_after_a, b_alone, b_split = _records(both)[2], _records(alone)[0], _records(split)[0]
    assert b_after_a["perk"]["inner_loss"] == b_alone["perk"]["inner_loss"]
    assert b_after_a["traces"][0]["text"] == b_alone["traces"][0]["text"]
    assert b_split["perk"]["inner_loss"] == pytest.approx(b_alone["perk"]["inner_loss"], rel=1e-4)
    # the inner loop did something: the loss after the steps differs from the loss before
    assert b_alone["perk"]["inner_loss"][0] != b_alone["perk"]["inner_loss"][1]


def test_bad_input_gives_one_line_with_file_line_and_field(trained, tmp_path, tiny_model_dir):
    root, train, test = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_records(train)[0]) + "\n" + json.dumps({"id": 9, "question": "q?",
                                                                       "answer": "1"}) + "\n")
    r = run_cli(["perk-metatrain", "-i", bad, "-o", tmp_path / "x", "--model", tiny_model_dir])
    assert r.exit_code == 2 and f"{bad}:2: field 'context'" in r.output
    r = run_cli(["perk-encode", "--perk", root / "perk", "-i", bad, "-o", tmp_path / "a.jsonl"])
    assert r.exit_code == 2 and f"{bad}:2: field 'context'" in r.output
    r = run_cli(["perk-encode", "--perk", tmp_path, "-i", test, "-o", tmp_path / "a.jsonl"])
    assert r.exit_code == 2 and "not a PERK folder" in r.output


def test_a_perk_folder_on_the_wrong_model_is_refused(trained, tmp_path, default_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root, _, test = trained
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    other = tmp_path / "other"
    LlamaForCausalLM(config).save_pretrained(other)
    tok.save_pretrained(other)
    r = run_cli(["perk-encode", "--perk", root / "perk", "--model", other, "-i", test,
                 "-o", tmp_path / "a.jsonl"])
    assert r.exit_code == 2 and "trained on another base model" in r.output
    assert not (tmp_path / "a.jsonl").exists()


def test_perk_pipeline_script_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "TRAIN_N": "2", "TEST_N": "2", "CONTEXT_WORDS": "20", "FACTS": "2", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/perk.sh"), out,
                           "--config", str(REPO / "recipes/perk-metatrain-cpu.yaml"),
                           "--model", tiny_model_dir, "--steps", "2", "--lora-r", "2",
                           "--segment-tokens", "16", "--no-progress",
                           "--", "--max-new-tokens", "3", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("train.jsonl", "test.jsonl", "perk/adapter/adapter_config.json",
                 "perk/perk_state.safetensors", "answers.jsonl", "score.json"):
        assert (out / name).exists(), name
    assert len(_records(out / "answers.jsonl")) == 2
    assert json.loads((out / "score.json").read_text())
