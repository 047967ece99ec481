"""memory-extract and tts-run --memory through the real CLI on a tiny model, and the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, run_cli
from ttx.data.arith import generate
from ttx.memory import bank as mb


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tts_run_score_extract_then_answer_with_memory(tmp_path, tiny_model_dir):
    problems = generate(8, seed=5)
    train, test = _write(tmp_path / "train.jsonl", problems[:4]), _write(tmp_path / "test.jsonl",
                                                                         problems[4:])
    runs, scored, bank = tmp_path / "runs.jsonl", tmp_path / "scored.jsonl", tmp_path / "bank.jsonl"
    tiny = ["--model", tiny_model_dir, "--no-progress"]
    r = run_cli(["tts-run", "-i", train, "-o", runs, "--strategy", "majority", "--n", "2",
                 "--max-new-tokens", "6", *tiny])
    assert r.exit_code == 0, r.output
    assert all(rec["memory_ids"] == [] for rec in _records(runs))     # always present
    assert run_cli(["score", "-i", runs, "--per-record", scored]).exit_code == 0
    r = run_cli(["memory-extract", "-i", scored, "-o", bank, "--max-new-tokens", "24", *tiny])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "bank.jsonl.manifest.json").read_text())["summary"]
    assert summary["problems"] == summary["extracted"] == 4
    assert summary["mode_contrast"] + summary["mode_single"] == 4
    # a random tiny model writes no usable blocks: counted, never fatal
    assert summary["items_parsed"] + summary["malformed"] >= 0 and bank.exists()
    assert summary["bank_items"] == len(mb.load_bank(bank))
    # resuming skips problems already extracted; the self judge runs on records without gold
    r = run_cli(["memory-extract", "-i", runs, "-o", bank, "--judge", "self",
                 "--max-new-tokens", "8", *tiny])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "bank.jsonl.manifest.json").read_text())["summary"]
    assert again["skipped_already_extracted"] == 4 and again["extracted"] == 0

    # a hand-written item from each train problem, so that retrieval has something to find
    mb.add_items(bank, [mb.new_item(f"To find how many {w} in all, combine the groups of {w}.",
                                    title=f"Counting {w}", kind="strategy",
                                    source_ids=[p["id"]], outcome="success")
                        for p, w in zip(problems[:4], ["apples", "pencils", "stickers",
                                                       "marbles"])])
    for p in problems:      # and one from every problem about its own item, for leave-one-out
        item = p["question"].split()[3]
        mb.add_items(bank, [mb.new_item(f"Own note on {item} {p['id']}", title=item,
                                        kind="pitfall", source_ids=[p["id"]],
                                        outcome="failure")])
    bank_ids = {it["id"]: it for it in mb.load_bank(bank)}
    with_memory = tmp_path / "with_memory.jsonl"
    r = run_cli(["tts-run", "-i", test, "-o", with_memory, "--strategy", "greedy",
                 "--max-new-tokens", "4", "--memory", bank, "--memory-k", "2", *tiny])
    assert r.exit_code == 0, r.output
    records = _records(with_memory)
    assert len(records) == 4 and any(rec["memory_ids"] for rec in records)
    for rec in records:
        assert len(rec["memory_ids"]) <= 2
        for mid in rec["memory_ids"]:
            assert str(rec["id"]) not in bank_ids[mid]["source_ids"]   # never its own items
    baseline = tmp_path / "baseline.jsonl"
    run_cli(["tts-run", "-i", test, "-o", baseline, "--strategy", "greedy",
             "--max-new-tokens", "4", *tiny])
    prompt_with = [r["prompt_tokens"] for r in records if r["memory_ids"]]
    prompt_without = [b["prompt_tokens"] for r, b in zip(records, _records(baseline))
                      if r["memory_ids"]]
    assert all(a > b for a, b in zip(prompt_with, prompt_without))   # the items were injected
    manifest = json.loads((tmp_path / "with_memory.jsonl.manifest.json").read_text())
    assert manifest["summary"]["memory_problems_with_items"] >= 1
    assert str(bank) in [i["path"] for i in manifest["inputs"]]


def test_a_bad_bank_line_exits_2_naming_file_and_line(tmp_path, tiny_model_dir):
    problems = _write(tmp_path / "p.jsonl", generate(2, seed=1))
    bank = tmp_path / "bank.jsonl"
    mb.add_items(bank, [mb.new_item("Fine item.", title="t", kind="strategy",
                                    source_ids=["x"], outcome="success")])
    bank.write_text(bank.read_text() + '{"id": "m-2", "text": \n')
    runs = _write(tmp_path / "runs.jsonl", [{"id": 1, "question": "q?", "pred": "2",
                                             "traces": [{"text": "2", "pred": "2"}]}])
    for args in (["tts-run", "-i", problems, "-o", tmp_path / "o.jsonl", "--memory", bank],
                 ["memory-extract", "-i", runs, "-o", bank, "--judge", "self"]):
        r = run_cli([*args, "--model", tiny_model_dir, "--no-progress"])
        assert r.exit_code == 2, r.output
        assert f"{bank}:2:" in r.output and "not valid JSON" in r.output


def test_gold_judge_needs_scored_records(tmp_path, tiny_model_dir):
    runs = _write(tmp_path / "runs.jsonl", [{"id": 1, "question": "q?", "traces": []}])
    r = run_cli(["memory-extract", "-i", runs, "-o", tmp_path / "b.jsonl", "--model",
                 tiny_model_dir])
    assert r.exit_code == 2 and f"{runs}:1: field 'correct'" in r.output


def test_memory_pipeline_script_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    problems = generate(6, seed=11)
    train, test = _write(tmp_path / "train.jsonl", problems[:3]), _write(tmp_path / "test.jsonl",
                                                                         problems[3:])
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/memory.sh"), train, test, out,
                           "--model", tiny_model_dir, "--max-new-tokens", "4", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("train.jsonl", "train.scored.jsonl", "bank.jsonl", "baseline.jsonl",
                 "with_memory.jsonl", "online.jsonl", "online-bank.jsonl", "score.json"):
        assert (out / name).exists(), name
    assert all("memory_ids" in r for r in _records(out / "with_memory.jsonl"))
    meta = json.loads((out / "online-bank.jsonl.meta.json").read_text())
    assert meta["extracted_from"] == sorted(p["id"] for p in problems[3:])   # learned online
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["runs"]} == {"baseline", "memory", "online"}
