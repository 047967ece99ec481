"""verifier-train on tiny random models: labels (outcome, scripted and real rollouts), AUC by
hand, training, exact resume, the saved ORM / PRM folders as tts-run reads them, bad input, and
the pipeline script."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_cli
from ttx.data.arith import generate
from ttx.errors import TtxError
from ttx.reward_inputs import MATH_SHEPHERD_TAG, READING_FILE, split_steps, tag_positions, tag_text
from ttx.verifier.data import Example, read_examples, split_problems
from ttx.verifier.labels import (
    RolloutConfig,
    estimate,
    label_by_rollouts,
    outcome_labels,
    rollout_labels,
    step_prefixes,
)
from ttx.verifier.metrics import accuracy, auc, selection

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scored(path, n=12, seed=3, per=4):
    """Scored records whose correct traces carry a surface cue a tiny model can learn ("We add
    them up." vs "Maybe."), so training has something real to fit; two or three steps each."""
    r = random.Random(seed)
    with open(path, "w") as f:
        for p in generate(n, seed):
            traces = []
            for k in range(per):
                ok = k % 2 == 0 if r.random() < 0.5 else k % 2 == 1
                ans = int(p["answer"]) + (0 if ok else r.randint(1, 9))
                lead = "We add them up." if ok else "Maybe."
                middle = "\n\nWe check it.\n\n" if r.random() < 0.5 else "\n\n"
                traces.append({"text": f"{lead}{middle}The answer is {ans}.", "pred": str(ans)})
            f.write(json.dumps({**p, "traces": traces, "pred": traces[0]["pred"], "model": "m",
                                "correct": traces[0]["pred"] == p["answer"]}) + "\n")
    return path


# -------------------------------------------------------------------- metrics

def test_auc_matches_a_hand_computation():
    # positives 0.8, 0.4; negatives 0.6, 0.4, 0.2. Pairs (pos, neg): 0.8 beats all three (3),
    # 0.4 loses to 0.6 (0), ties 0.4 (1/2), beats 0.2 (1): 4.5 of 6 pairs = 0.75
    scores = [0.8, 0.6, 0.4, 0.4, 0.2]
    labels = [True, False, True, False, False]
    assert auc(scores, labels) == pytest.approx(0.75)
    assert auc([0.1, 0.9], [False, True]) == 1.0 and auc([0.9, 0.1], [False, True]) == 0.0
    assert auc([0.5] * 4, [True, False, True, False]) == 0.5          # all tied: chance
    assert auc([0.3, 0.7], [True, True]) is None                       # one class: undefined
    # by brute force over every pair, on a random case with ties
    r = random.Random(0)
    s = [r.choice([0.1, 0.2, 0.3, 0.5, 0.8]) for _ in range(40)]
    y = [r.random() < 0.4 for _ in range(40)]
    pairs = [(a, b) for a, ya in zip(s, y) if ya for b, yb in zip(s, y) if not yb]
    assert auc(s, y) == pytest.approx(sum(1.0 if a > b else 0.5 if a == b else 0.0
                                          for a, b in pairs) / len(pairs))
    assert accuracy([0.9, 0.2, 0.5, 0.4], [True, False, False, True]) == 0.5
    sel = selection({"a": [(0.2, False), (0.9, True)], "b": [(0.7, False), (0.7, True)],
                     "c": [(0.1, False), (0.3, False)]})
    assert sel == {"best_of_n": pytest.approx(1 / 3), "random": pytest.approx(1 / 3),
                   "oracle": pytest.approx(2 / 3), "problems": 3}           # b: tie -> the first


# -------------------------------------------------------------------- labels

def test_outcome_labels_and_step_prefixes():
    text = "Tom has 3.\n\n\n\nHe buys 5, 3 + 5 = 8.  \n\nThe answer is 8."
    steps = split_steps(text)
    assert steps == ["Tom has 3.", "He buys 5, 3 + 5 = 8.", "The answer is 8."]
    assert outcome_labels(steps, True) == [1.0, 1.0, 1.0]
    assert outcome_labels(steps, False) == [0.0, 0.0, 0.0]
    prefixes = step_prefixes(text)
    assert prefixes == ["Tom has 3.\n\n", "Tom has 3.\n\n\n\nHe buys 5, 3 + 5 = 8.  \n\n"]
    assert all(text.startswith(p[:-2]) for p in prefixes)              # the raw text, cut
    assert [split_steps(p) for p in prefixes] == [steps[:1], steps[:2]]
    assert step_prefixes("One step only.") == []


def test_rollout_labels_from_scripted_completions():
    """Math-Shepherd eq. 3 / 4 on given completions: a completion's answer is extracted from the
    whole solution (prefix + completion); the last step keeps the trace's own verdict."""
    text = "Tom has 3 apples.\n\nHe buys 5 more: 3 + 4 = 7.\n\nThe answer is 7."
    e = Example(problem="p", index=0, question="q", text=text, pred="7", gold="8", correct=False,
                steps=split_steps(text))
    completions = [
        ["He buys 5 more, 3 + 5 = 8. The answer is 8.", "So 3 + 5 = 9.", "The answer is 8."],
        ["The answer is 7.", "So it is 6."],
    ]
    assert rollout_labels(e, completions, "hard") == [1.0, 0.0, 0.0]
    assert rollout_labels(e, completions, "soft") == pytest.approx([2 / 3, 0.0, 0.0])
    # a completion with no number of its own takes the answer the prefix already wrote
    e2 = Example(problem="p", index=1, question="q", text="So 3 + 5 = 8.\n\nDone: 8.", pred="8",
                 gold="8", correct=True, steps=["So 3 + 5 = 8.", "Done: 8."])
    assert rollout_labels(e2, [["That is all."]], "hard") == [1.0, 1.0]
    assert estimate([False, False], "hard") == 0.0 and estimate([True, False, False, False], "soft") == 0.25
    with pytest.raises(ValueError):
        rollout_labels(e, completions[:1], "hard")


def test_rollouts_through_the_engine_resume_and_refuse_other_traces(tiny_model_dir, tmp_path):
    from ttx.engines.hf import HFEngine
    from ttx.prompts import build_prompt
    from ttx.tts.search import SearchConfig, templated
    from ttx.verifier.labels import _sha

    examples = [e for e in read_examples(str(_scored(tmp_path / "s.jsonl", n=3)))]
    engine = HFEngine(model=str(tiny_model_dir), device="cpu")
    log = tmp_path / "rollouts.jsonl"
    cfg = RolloutConfig(k=2, max_new_tokens=4, temperature=1.0, chunk=3, progress=False, seed=5)
    cost = label_by_rollouts(engine, examples, cfg, log)
    prefixes = sum(len(e.steps) - 1 for e in examples)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert cost.prefixes == prefixes == len(rows) and cost.calls == -(-prefixes // 3)
    assert cost.completions == 2 * prefixes and cost.tokens == sum(r["completion_tokens"] for r in rows)
    by_key = {e.key: e for e in examples}
    for row in rows:                             # the prompt: the templated question + the prefix
        e = by_key[row["trace"]]
        head = templated(engine, build_prompt(e.question), SearchConfig())
        assert row["prefix_sha"] == _sha(head + step_prefixes(e.text)[row["step"] - 1])
        assert len(row["completions"]) == 2
    for e in examples:
        mine = [r["completions"] for r in rows if r["trace"] == e.key]
        assert e.step_labels == rollout_labels(e, mine, "hard")
        assert len(e.step_labels) == len(e.steps) and e.step_labels[-1] == float(e.correct)
    again = [Example(**{**e.__dict__, "step_labels": None}) for e in examples]
    cost2 = label_by_rollouts(engine, again, cfg, log, resume=True)
    assert cost2.calls == 0 and cost2.reused == prefixes
    assert [e.step_labels for e in again] == [e.step_labels for e in examples]
    other = [Example(**{**e.__dict__, "text": e.text.replace(".", "!")}) for e in examples]
    with pytest.raises(TtxError, match="other traces"):
        label_by_rollouts(engine, other, cfg, log, resume=True)


# -------------------------------------------------------------------- data

def test_traces_are_judged_against_gold_pooled_by_problem_and_split_by_problem(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"id": "a", "question": "1+1?", "answer": "#### 2", "correct": True,
                    "traces": [{"text": "It is 2.", "pred": "2.0"}, {"text": "3", "pred": "3"},
                               {"text": "half", "pred": None, "finish_reason": "cancelled"}]}) + "\n"
        + json.dumps({"id": "a", "question": "1+1?", "answer": "2", "level": 2,
                      "traces": [{"text": "The answer is 2"}]}) + "\n"
        + json.dumps({"id": "b", "question": "2+2?", "answer": "4",
                      "traces": [{"text": "5", "pred": "5"}]}) + "\n")
    ex = read_examples(str(path))
    assert [(e.key, e.correct) for e in ex] == [("a#0", True), ("a#1", False), ("a#2", True),
                                                ("b#0", False)]
    train, held = split_problems(ex, 0.5, seed=0)
    assert {e.problem for e in train} & {e.problem for e in held} == set()
    assert len(train) + len(held) == 4 and held


@pytest.mark.parametrize("line, field", [
    ('{"question": "q", "traces": []}', "answer"),
    ('{"question": "q", "answer": "1", "traces": "no"}', "traces"),
    ('{"question": "q", "answer": "1", "traces": [{"pred": "1"}]}', "traces"),
    ('{"question": 3, "answer": "1", "traces": []}', "question"),
    ('{"question": "q", "answer": "no number here at all", "traces": []}', "answer"),
])
def test_bad_input_names_file_line_and_field(tmp_path, line, field):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1", "traces": [{"text": "1"}]}\n' + line + "\n")
    result = run_cli(["verifier-train", "-i", bad, "-o", tmp_path / "v", "--model", tmp_path])
    assert result.exit_code == 2, result.output
    assert f"{bad}:2: field '{field}'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "v").exists()


def test_bad_options_and_an_existing_folder(tmp_path, tiny_model_dir):
    data = _scored(tmp_path / "s.jsonl", n=3)
    base = ["verifier-train", "-i", data, "--model", tiny_model_dir, "--no-progress"]
    for extra, message in [
            (["--label-type", "soft"], "--label-type applies to --kind prm --prm-labels rollout"),
            (["--kind", "orm", "--prm-labels", "rollout"], "--prm-labels applies to --kind prm"),
            (["--resume", "--overwrite"], "give one")]:
        result = run_cli(base + ["-o", tmp_path / "v"] + extra)
        assert result.exit_code == 2 and message in result.output, result.output
    result = run_cli(base + ["-i", tmp_path / "missing.jsonl", "-o", tmp_path / "v"])
    assert result.exit_code == 2 and "missing.jsonl: no such file" in result.output
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = run_cli(base + ["-o", existing])
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert (existing / "keep.txt").read_text() == "mine"
    result = run_cli(base + ["-o", existing, "--overwrite"])       # not a verifier folder
    assert result.exit_code == 2 and "not deleting it" in result.output
    assert (existing / "keep.txt").read_text() == "mine"
    done = tmp_path / "done"
    assert run_cli(base + ["-o", done, "--epochs", "1"]).exit_code == 0
    manifest = (done / "ttx_manifest.json").read_text()
    result = run_cli(base + ["-o", done, "--resume", "--epochs", "1"])  # finished: nothing to do
    assert result.exit_code == 0 and "already holds a finished verifier" in result.output
    assert (done / "ttx_manifest.json").read_text() == manifest
    result = run_cli(base + ["-o", done])
    assert result.exit_code == 2 and "--overwrite replaces it" in result.output
    (done / "stale.txt").write_text("old run")
    result = run_cli(base + ["-o", done, "--overwrite", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert not (done / "stale.txt").exists() and (done / READING_FILE).is_file()


# -------------------------------------------------------------------- training and folders

def _train(tmp_path, tiny_model_dir, name, *extra):
    data = tmp_path / "s.jsonl"
    if not data.exists():
        _scored(data)
    out = tmp_path / name
    result = run_cli(["verifier-train", "-i", data, "-o", out, "--model", tiny_model_dir,
                      "--lr", "2e-3", "--epochs", "4", "--batch-size", "4", "--no-progress",
                      "--eval-fraction", "0.25", *extra])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "ttx_manifest.json").read_text())["summary"]


def test_orm_learns_and_its_folder_scores_through_tts_run_reward_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from ttx.tts.reward import RewardModel
    from ttx.tts.search import SearchConfig

    out, s = _train(tmp_path, tiny_model_dir, "orm")
    assert s["train"]["correct"] + s["train"]["wrong"] == s["train"]["traces"] == 36
    assert s["held_out"]["traces"] == 12 and s["held_out"]["problems"] == 3
    assert s["train_loss_last"] < s["train_loss_first"]
    assert s["after"]["loss"] < s["before"]["loss"] and s["after"]["auc"] > 0.9
    assert json.loads((out / READING_FILE).read_text())["kind"] == "orm"
    assert not (out / "checkpoints").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)        # plain: LoRA merged
    assert model.config.num_labels == 1 and type(model).__name__ == "LlamaForSequenceClassification"
    rm = RewardModel(str(out), SearchConfig())
    assert rm.kind == "orm"
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    rows = [json.loads(line) for line in (out / "eval_scores.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        record = records[row["problem"]]
        [(score, _)] = rm.score_texts([(record["question"], record["traces"][row["trace"]]["text"])])
        assert score == pytest.approx(row["score"], abs=1e-4)


def test_prm_folder_follows_reward_inputs_tag_convention(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, s = _train(tmp_path, tiny_model_dir, "prm", "--kind", "prm")
    reading = json.loads((out / READING_FILE).read_text())
    assert reading == {"kind": "prm", "format": "tag", "prm_input": "model-card",
                       "step_tag": MATH_SHEPHERD_TAG,
                       "good_token": "+", "bad_token": "-", "added_tokens": [MATH_SHEPHERD_TAG],
                       "labels": "outcome", "base_model": str(tiny_model_dir)}
    assert s["after"]["step_auc"] > 0.9 and s["after"]["loss"] < s["before"]["loss"]
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    tag_id, good, bad = (tok(t, add_special_tokens=False).input_ids for t in ("ки", "+", "-"))
    assert len(tag_id) == len(good) == len(bad) == 1
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    for row in map(json.loads, (out / "eval_scores.jsonl").read_text().splitlines()):
        record = records[row["problem"]]
        steps = split_steps(record["traces"][row["trace"]]["text"])
        ids = tok(tag_text(record["question"], steps)).input_ids
        positions = tag_positions(ids, tag_id[0])
        assert len(positions) == len(steps) == len(row["step_scores"])
        assert row["step_labels"] == [float(row["correct"])] * len(steps)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, positions]
        pair = torch.softmax(logits[:, [good[0], bad[0]]], -1)[:, 0]
        assert pair.tolist() == pytest.approx(row["step_scores"], abs=1e-4)
        assert row["score"] == pytest.approx(row["step_scores"][-1])


def test_prm_loss_is_math_shepherd_cross_entropy_at_the_tags(tiny_model_dir):
    """Hard labels: cross-entropy over the (good, bad) logits at each tag, as OpenRLHF's PRMLoss
    (openrlhf/models/loss.py L397-436 before commit 6a981c8c); soft labels: targets [y, 1 - y]."""
    from ttx.verifier.heads import HeadConfig
    from ttx.verifier.prm import ProcessVerifier

    v = ProcessVerifier(tiny_model_dir, HeadConfig(lora_r=0))
    steps = ["Tom has 3.", "He buys 5: 8.", "The answer is 8."]
    e = Example("p", 0, "How many?", "\n\n".join(steps), "8", "8", True, steps=steps,
                step_labels=[1.0, 0.0, 1.0])
    (item,), _ = v.encode([e])
    ids = v.tokenizer(tag_text("How many?", steps)).input_ids
    assert item.ids == ids and item.positions == tag_positions(ids, v.tag_id)
    with torch.no_grad():
        logits = v.model(input_ids=torch.tensor([ids])).logits[0, item.positions][:, [v.good, v.bad]]
        hard = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0]))
        assert float(v.loss(v.model, [item])) == pytest.approx(float(hard), abs=1e-5)
        item.labels = [0.25, 1.0, 0.5]
        soft = torch.nn.functional.cross_entropy(
            logits, torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]]))
        assert float(v.loss(v.model, [item])) == pytest.approx(float(soft), abs=1e-5)


@pytest.mark.parametrize("kind, lora", [("orm", "16"), ("prm", "0")])
def test_resume_gives_bit_identical_weights(tmp_path, tiny_model_dir, kind, lora):
    from safetensors.torch import load_file

    common = ("--kind", kind, "--lora-r", lora, "--save-every", "1")
    whole, _ = _train(tmp_path, tiny_model_dir, "whole", *common)
    data = tmp_path / "s.jsonl"
    cut = tmp_path / "cut"
    args = ["verifier-train", "-i", data, "-o", cut, "--model", tiny_model_dir, "--lr", "2e-3",
            "--epochs", "4", "--batch-size", "4", "--no-progress", "--eval-fraction", "0.25", *common]
    result = run_cli(args + ["--stop-after", "5"])
    assert result.exit_code == 0 and "continue with --resume" in result.output, result.output
    assert not (cut / READING_FILE).exists()
    result = run_cli(args + ["--resume"])
    assert result.exit_code == 0, result.output
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (cut / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, len(log) + 1))


def test_rollout_labels_through_the_cli(tmp_path, tiny_model_dir):
    data = _scored(tmp_path / "s.jsonl", n=4)
    out = tmp_path / "prm"
    result = run_cli(["verifier-train", "-i", data, "-o", out, "--model", tiny_model_dir,
                      "--kind", "prm", "--prm-labels", "rollout", "--label-type", "soft",
                      "--rollouts", "2", "--rollout-model", tiny_model_dir, "--max-new-tokens", "4",
                      "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "ttx_manifest.json").read_text())["summary"]
    assert s["labels"] == "rollout-soft" and s["rollouts"]["completions"] == 2 * s["rollouts"]["prefixes"]
    assert (out / "rollouts.jsonl").is_file()
    result = run_cli(["verifier-train", "-i", data, "-o", tmp_path / "p2", "--kind", "prm",
                      "--prm-labels", "rollout", "--model", tiny_model_dir, "--no-progress"])
    assert result.exit_code == 2 and "--rollout-model" in result.output      # model "m" is no model


def test_recipe_loads_and_the_pipeline_runs_on_a_tiny_model(tmp_path, tiny_model_dir):
    from ttx.cli import cli
    from ttx.cli.options import option_names

    recipe = REPO / "recipes" / "verifier-train.yaml"
    text = recipe.read_text()
    assert "ttx verifier-train --config recipes/verifier-train.yaml" in text.splitlines()[0]
    command = cli.get_command(None, "verifier-train")
    import yaml

    assert set(k.replace("-", "_") for k in yaml.safe_load(text)) <= set(option_names(command))

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in generate(4, 11)))
    test.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 12)))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "N": "4"}
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "recipes/pipelines/verifier.sh"), train, test, out,
                           "--model", tiny_model_dir, "--max-new-tokens", "6", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("orm", "prm"):
        assert (out / name / READING_FILE).is_file()
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["runs"]} == {"greedy", "orm-best-of-n", "prm-beam"}
    bon = [json.loads(line) for line in (out / "orm-best-of-n.jsonl").read_text().splitlines()]
    assert len(bon) == 2 and all(r["best_of_n"]["scorer"] == "reward-model" and len(r["traces"]) == 4
                                 for r in bon)


def test_steps_caps_the_optimizer_steps(tmp_path, tiny_model_dir):
    """--steps (the shared name) overrides --epochs; train_tokens counts what the steps took."""
    _, one = _train(tmp_path, tiny_model_dir, "one", "--epochs", "1")
    _, capped = _train(tmp_path, tiny_model_dir, "capped", "--steps", str(one["steps"]))
    assert capped["steps"] == one["steps"] and capped["train_tokens"] == one["train_tokens"]
    _, short = _train(tmp_path, tiny_model_dir, "short", "--steps", "1")
    assert short["steps"] == 1 and 0 < short["train_tokens"] < one["train_tokens"]
