"""Hostile input, round 3 (issue 33): training stages share one folder lock and refuse a resume
of another model or input; tts-run refuses records made from another input whatever its path,
and a full disk mid-run is one line with every record before it whole and resumable;
unsatisfiable constraints are one line; safetensors files get a plain file's mode."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli
from ttx.records import folder_lock

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _error(result):
    """The one error line of a refused command (exit 2, no traceback)."""
    lines = [line for line in result.output.splitlines() if line.startswith("ttx: error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _scored(path, reword=False):
    """Scored records as `ttx score --per-record` writes them: 4 problems, 2 traces each."""
    rows = []
    for i in range(4):
        question = f"{'Please: w' if reword else 'W'}hat is {i} + {i + 2}?"
        traces = [{"text": f"We add them.\n\nThe answer is {2 * i + 2}.", "pred": str(2 * i + 2)},
                  {"text": f"Maybe.\n\nThe answer is {2 * i + 5}.", "pred": str(2 * i + 5)}]
        rows.append({"id": f"p{i}", "question": question, "answer": str(2 * i + 2),
                     "traces": traces, "model": "m"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _verifier(data, out, model, *extra):
    return run_cli(["verifier-train", "-i", data, "-o", out, "--model", model, "--no-progress",
                    "--batch-size", "2", "--epochs", "1", "--save-every", "1", *extra])


def _other_weights(src, dst):
    """The same architecture and shapes as src, other weights."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.5
    save_file({k: v.contiguous() for k, v in weights.items()}, str(dst / "model.safetensors"))
    return dst


# ---------------------------------------------------------------- training stages


@pytest.mark.parametrize("stage", ["verifier-train", "ttrl", "tlm-adapt"])
def test_a_second_writer_of_a_training_folder_is_refused(tmp_path, tiny_model_dir, stage):
    if stage == "verifier-train":
        data = _scored(tmp_path / "s.jsonl")
    else:
        data = tmp_path / "q.jsonl"
        data.write_text('{"id": "a", "question": "What is 1 + 1?", "answer": "2"}\n')
    out = tmp_path / "out"
    quick = {"verifier-train": ["--epochs", "1"], "tlm-adapt": ["--epochs", "1"],
             "ttrl": ["--steps", "1", "--n", "2", "--n-train", "1", "--max-new-tokens", "1"]}
    with folder_lock(out):                       # another run holds the folder
        line = _error(run_cli([stage, "-i", data, "-o", out, "--model", tiny_model_dir,
                               "--no-progress", *quick[stage]]))
        assert f"another process (pid {os.getpid()}) is writing this output folder" in line
    assert not out.exists() and not (tmp_path / ".out.lock").exists()   # nothing left behind
    with folder_lock(out):                       # free again once released
        pass


def test_verifier_resume_refuses_another_model_input_or_kind(tmp_path, tiny_model_dir):
    data, out = _scored(tmp_path / "s.jsonl"), tmp_path / "v"
    result = _verifier(data, out, tiny_model_dir, "--epochs", "2", "--stop-after", "1")
    assert result.exit_code == 0 and "continue with --resume" in result.output, result.output
    state = {p.name: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    # another base model of the same shape
    other = _other_weights(tiny_model_dir, tmp_path / "other-model")
    line = _error(_verifier(data, out, other, "--epochs", "2", "--resume"))
    assert "--resume with a different model" in line
    # another file with the same ids, reworded questions
    line = _error(_verifier(_scored(tmp_path / "moved.jsonl", reword=True), out, tiny_model_dir,
                            "--epochs", "2", "--resume"))
    assert "--resume with a different input" in line
    line = _error(_verifier(data, out, tiny_model_dir, "--epochs", "3", "--resume"))
    assert "--resume with a different --epochs" in line
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()} == state
    # the same records under another path continue the run
    same = tmp_path / "copy.jsonl"
    shutil.copy(data, same)
    result = _verifier(same, out, tiny_model_dir, "--epochs", "2", "--resume")
    assert result.exit_code == 0 and "verifier in" in result.output, result.output
    reading = (out / "ttx_reward.json").read_text()
    # a finished ORM folder: --resume --kind prm is refused and the ORM stays
    line = _error(_verifier(data, out, tiny_model_dir, "--epochs", "2", "--resume", "--kind",
                            "prm"))
    assert "--resume with a different --kind" in line and "'orm'" in line
    assert (out / "ttx_reward.json").read_text() == reading
    result = _verifier(data, out, tiny_model_dir, "--epochs", "2", "--resume")
    assert result.exit_code == 0 and "already holds a finished verifier" in result.output


def test_verifier_eval_equal_to_the_training_input_is_refused(tmp_path, tiny_model_dir):
    data = _scored(tmp_path / "s.jsonl")
    copy = tmp_path / "copy.jsonl"
    shutil.copy(data, copy)
    for held in (data, copy):
        line = _error(_verifier(data, tmp_path / "v", tiny_model_dir, "--eval", held))
        assert "field '--eval'" in line and "training input" in line
    assert not (tmp_path / "v").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = _error(_verifier(data, mine, tiny_model_dir, "--resume"))
    assert "no run here to resume" in line and os.listdir(mine) == ["notes.txt"]


def test_verifier_train_prints_no_loading_bars_and_writes_plain_modes(tmp_path, tiny_model_dir):
    out = tmp_path / "v"
    result = _verifier(_scored(tmp_path / "s.jsonl"), out, tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output and "Writing model shards" not in result.output
    assert "it/s" not in result.output, result.output
    mode = 0o666 & ~_umask()
    assert (out / "model.safetensors").stat().st_mode & 0o777 == mode
    assert (out / "config.json").stat().st_mode & 0o777 == mode


def test_ttrl_resume_with_another_lora_rank_is_one_line(tmp_path, tiny_model_dir):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": i, "question": f"What is {i} + 1?"}) + "\n"
                            for i in range(2)))
    common = ["ttrl", "--model", tiny_model_dir, "-i", data, "-o", tmp_path / "r", "--n", "2",
              "--n-train", "2", "--batch-size", "1", "--max-new-tokens", "1", "--steps", "2",
              "--no-progress"]
    result = run_cli(common + ["--stop-after", "1"])
    assert result.exit_code == 0 and "continue with --resume" in result.output, result.output
    [checkpoint] = (tmp_path / "r" / "checkpoints").iterdir()
    mode = 0o666 & ~_umask()
    for name in ("trainable.safetensors", "optimizer.safetensors", "state.json"):
        assert (checkpoint / name).stat().st_mode & 0o777 == mode, name
    line = _error(run_cli(common + ["--resume", "--lora-r", "4"]))
    assert "--resume with a different --lora-r" in line


def test_a_checkpoint_of_other_shapes_is_one_line(tmp_path):
    import torch

    from ttx.errors import TtxError
    from ttx.train.checkpoint import load_checkpoint, save_checkpoint

    saved = {"w": torch.nn.Parameter(torch.ones(4, 2))}
    save_checkpoint(tmp_path, 1, params=saved, optimizer=torch.optim.AdamW(saved.values()),
                    state={"step": 1}, keep=1)
    other = {"w": torch.nn.Parameter(torch.ones(8, 2))}
    with pytest.raises(TtxError, match=r"w is \[4, 2\] there, \[8, 2\] here"):
        load_checkpoint(tmp_path / "checkpoints" / "step-0000001", params=other,
                        optimizer=torch.optim.AdamW(other.values()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- tts-run


def _problems(path, n, reword=False):
    path.write_text("".join(json.dumps({"id": f"q{i}", "answer": str(i + 1), "question":
                                        f"{'Say: w' if reword else 'W'}hat is {i} + 1?"}) + "\n"
                            for i in range(n)))
    return path


def _tts(model, problems, out, *extra):
    return ["tts-run", "--model", model, "-i", problems, "-o", out, "--max-new-tokens", "6",
            "--no-progress", *extra]


def test_tts_resume_with_another_input_file_is_refused(tmp_path, tiny_model_dir):
    problems, out = _problems(tmp_path / "p.jsonl", 3), tmp_path / "o.jsonl"
    assert run_cli(_tts(tiny_model_dir, problems, out, "--strategy", "greedy", "--limit", "2")
                   ).exit_code == 0
    before = out.read_text()
    manifest = (tmp_path / "o.jsonl.manifest.json").read_text()
    moved = _problems(tmp_path / "elsewhere.jsonl", 3, reword=True)      # same ids, reworded
    line = _error(run_cli(_tts(tiny_model_dir, moved, out, "--strategy", "greedy", "--resume")))
    assert "field 'question'" in line and "'q0'" in line and "another question" in line
    assert out.read_text() == before
    assert (tmp_path / "o.jsonl.manifest.json").read_text() == manifest
    # the same questions from another file continue the run
    same = _problems(tmp_path / "same.jsonl", 3)
    result = run_cli(_tts(tiny_model_dir, same, out, "--strategy", "greedy", "--resume"))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q0", "q1", "q2"]
    line = _error(run_cli(_tts(tiny_model_dir, problems, "-", "--strategy", "greedy", "--resume")))
    assert "field '--resume'" in line and "-o FILE" in line


def _limited(limit):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


def test_a_full_disk_mid_run_is_one_line_and_resumable(tmp_path, tiny_model_dir):
    problems = _problems(tmp_path / "p.jsonl", 8)
    args = ("--strategy", "sample", "--n", "8", "--temperature", "1.0", "--batch-rows", "16")
    whole = tmp_path / "whole.jsonl"
    assert run_cli(_tts(tiny_model_dir, problems, whole, *args)).exit_code == 0
    lines = whole.read_text().splitlines(keepends=True)
    manifest = len((tmp_path / "whole.jsonl.manifest.json").read_bytes())
    # a file-size limit (a full disk's stand-in) that the manifest fits under and that a
    # record in the middle of the run crosses
    k = next(k for k in range(1, len(lines) - 1)
             if len("".join(lines[:k]).encode()) + len(lines[k]) // 2 > manifest)
    limit = len("".join(lines[:k]).encode()) + len(lines[k]) // 2
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([sys.executable, "-m", "ttx", *map(str, _tts(tiny_model_dir, problems,
                                                                      out, *args))],
                         capture_output=True, text=True, env=env, preexec_fn=_limited(limit),
                         timeout=300)
    errors = [line for line in run.stderr.splitlines() if line.startswith("ttx: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(errors) == 1 and str(out) in errors[0] and "--resume" in errors[0], run.stderr
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    kept = out.read_text()
    assert kept.endswith("\n") and len(kept.splitlines()) == k              # no torn line
    assert strip(map(json.loads, kept.splitlines())) == strip(map(json.loads, lines[:k]))
    result = run_cli(_tts(tiny_model_dir, problems, out, *args, "--resume"))
    assert result.exit_code == 0, result.output
    assert strip(map(json.loads, out.read_text().splitlines())) == strip(map(json.loads, lines))


# ---------------------------------------------------------------- constraints


def test_unsatisfiable_or_too_deep_constraints_are_one_line(tiny_model_dir):
    from ttx.engines.base import Constraint, SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.errors import TtxError

    deep = leaf = {}
    for _ in range(2000):
        leaf["type"], leaf["items"] = "array", {}
        leaf = leaf["items"]
    engine = HFEngine(model=str(tiny_model_dir), device="cpu")
    for constraint, words in [(Constraint.json_schema({"$ref": "#"}), "no text can complete it"),
                              (Constraint.regex(r"a[^\s\S]b"), "no text can complete it"),
                              (Constraint.json_schema(deep), "nested more than 128 levels")]:
        with pytest.raises(TtxError) as caught:
            engine.generate(["Hi", "Ho"], 1, [SamplingParams(max_new_tokens=4),
                                              SamplingParams(max_new_tokens=4,
                                                             constraint=constraint)])
        text = str(caught.value)
        assert words in text and "\n" not in text and len(text) < 400, text
        assert text.startswith("field 'constraint'")


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path):
    """A checkpoint that cannot be written is one line; the complete one before it stays and
    no temporary folder is left (a file-size limit in a child process stands in for the disk)."""
    code = f"""
import torch
from pathlib import Path
from ttx.errors import TtxError
from ttx.train.checkpoint import save_checkpoint
root = Path({str(tmp_path)!r})
small = {{"w": torch.nn.Parameter(torch.zeros(10))}}
save_checkpoint(root, 1, params=small, optimizer=torch.optim.AdamW(small.values()),
                state={{"step": 1}}, keep=2)
big = {{"w": torch.nn.Parameter(torch.zeros(100000))}}
try:
    save_checkpoint(root, 2, params=big, optimizer=torch.optim.AdamW(big.values()),
                    state={{"step": 2}}, keep=2)
except TtxError as exc:
    print("refused:", exc)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         preexec_fn=_limited(20000), timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    [line] = run.stdout.splitlines()
    assert "step-0000002: cannot write a checkpoint" in line and "--resume" in line
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-0000001"]
