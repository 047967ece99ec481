"""Every training stage under two processes (`accelerate launch --multi_gpu --num_processes 2`,
torchrun's launcher; MULTI_CPU on gloo here, ttx.train.dist) against one process with the same
global batch: the same loss curve in train_log.jsonl, and one output written by rank 0.

Same global batch: two processes with --grad-accum g take 2g micro-batches per step (each rank
every second one, Trainer._shard); one process takes them with --grad-accum 2g. Gradients are
averaged over the ranks, so the updates agree up to float summation order: the tolerance below
(relative 1e-4 on each step's mean loss) is that order, not a modelling difference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.pipeline    # several subprocesses each: make test, not make test-fast
REL = 1e-4


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": "offline"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list, processes: int) -> subprocess.CompletedProcess:
    """`ttx ARGS` in `processes` processes (accelerate launch) or one (python -m ttx)."""
    if processes == 1:
        cmd = [sys.executable, "-m", "ttx"]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
               "--main_process_port", str(_port()), "-m", "ttx"]
    r = subprocess.run(cmd + [str(a) for a in args], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def losses(log: Path) -> list[float]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))    # one writer, no repeats
    return [r["loss"] for r in rows]


def same_curve(one: Path, two: Path) -> list[float]:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) >= 2
    assert b == pytest.approx(a, rel=REL)
    return a


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_process_state_is_multi_cpu_under_the_launcher(tmp_path):
    if _cuda():
        pytest.skip("CUDA here: the launcher gives NCCL ranks, not gloo")
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom pathlib import Path\nfrom ttx.train.dist import state\ns = state()\n"
                     "Path(sys.argv[1], f'rank{s.process_index}').write_text("
                     "f'RANK {s.process_index} {s.num_processes} {s.distributed_type} {s.backend}')\n")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_port()), str(probe), str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = sorted(p.read_text() for p in tmp_path.glob("rank*"))
    assert ranks == ["RANK 0 2 DistributedType.MULTI_CPU gloo", "RANK 1 2 DistributedType.MULTI_CPU gloo"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_tlm_adapt(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "in.jsonl", [{"id": str(i), "question": f"What is {i} plus {i + 3}? "
                                           "Think about the numbers."} for i in range(8)])
    common = ["tlm-adapt", "--model", tiny_model_dir, "-i", data, "--lr", "5e-3", "--lora-r", "4",
              "--no-progress", "--batch-size", "1"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1", "--report-to", "tensorboard"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    if importlib.util.find_spec("tensorboard"):                     # rank 0 alone logs
        assert len(list((tmp_path / "two" / "runs").rglob("events.out.tfevents.*"))) == 2   # scalars, hparams
    for name in ("one", "two"):
        out = tmp_path / name
        assert (out / "adapter_model.safetensors").is_file() and not (out / "checkpoints").exists()
    s1, s2 = (json.loads((tmp_path / n / "ttx_manifest.json").read_text())["summary"] for n in ("one", "two"))
    assert s2["backward_passes"] == s1["backward_passes"] == 8           # counts summed over ranks
    assert s2["mean_log_ppl_after"] == pytest.approx(s1["mean_log_ppl_after"], rel=REL)


def test_tlm_adapt_resumes_under_two_processes(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "in.jsonl", [{"id": str(i), "question": f"Count {i} and {i * 2} apples."}
                                          for i in range(8)])
    common = ["tlm-adapt", "--model", tiny_model_dir, "-i", data, "--lr", "5e-3", "--lora-r", "4",
              "--no-progress", "--batch-size", "1"]
    launch(common + ["-o", tmp_path / "straight"], 2)
    launch(common + ["-o", tmp_path / "cut", "--stop-after", "2"], 2)
    assert len(losses(tmp_path / "cut" / "train_log.jsonl")) == 2
    assert len(list((tmp_path / "cut" / "checkpoints").iterdir())) == 1      # rank 0 wrote one
    launch(common + ["-o", tmp_path / "cut", "--resume"], 2)
    assert losses(tmp_path / "cut" / "train_log.jsonl") == losses(tmp_path / "straight" / "train_log.jsonl")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_verifier_train(tmp_path, tiny_model_dir):
    from tests.test_verifier import _scored

    data = _scored(tmp_path / "s.jsonl")
    common = ["verifier-train", "-i", data, "--model", tiny_model_dir, "--lr", "2e-3", "--epochs", "1",
              "--batch-size", "2", "--no-progress", "--eval-fraction", "0.25"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    assert not (tmp_path / "two" / "checkpoints").exists()
    assert json.loads((tmp_path / "two" / "ttx_manifest.json").read_text())["summary"]


def test_verifier_train_prm_with_rollout_labels(tmp_path, tiny_model_dir):
    """Rank 0 samples the rollout labels; the other rank reads its rows back (same labels)."""
    from tests.test_verifier import _scored

    data = _scored(tmp_path / "s.jsonl", n=4)
    common = ["verifier-train", "-i", data, "--model", tiny_model_dir, "--kind", "prm", "--prm-labels",
              "rollout", "--label-type", "soft", "--rollouts", "2", "--rollout-model", tiny_model_dir,
              "--max-new-tokens", "4", "--epochs", "1", "--batch-size", "1", "--no-progress"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    rows = [(tmp_path / n / "rollouts.jsonl").read_text().splitlines() for n in ("one", "two")]
    assert rows[0] == rows[1]


def test_perk_metatrain(tmp_path, tiny_model_dir):
    from ttx.data.recall import generate

    data = _write(tmp_path / "train.jsonl", generate(4, context_words=30, seed=0, facts=2))
    common = ["perk-metatrain", "-i", data, "--model", tiny_model_dir, "--steps", "2", "--lora-r", "2",
              "--inner-steps", "2", "--unroll", "1", "--segment-tokens", "16", "--lora-dropout", "0",
              "--inner-lr", "0.5", "--lr", "1e-3", "--no-progress"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    assert json.loads((tmp_path / "two" / "ttx_manifest.json").read_text())["summary"]["finished"]


def test_inplace_ttt_convert(tmp_path, tiny_model_dir):
    from tests.test_inplace_ttt_cli import _docs

    conv = tmp_path / "conv"
    launch(["inplace-ttt-convert", "--model", tiny_model_dir, "-o", conv, "--layers", "0,1", "--chunk", "8"], 1)
    docs = _docs(tmp_path / "d.jsonl", n=8)
    common = ["inplace-ttt-convert", "--model", conv, "-i", docs, "--max-steps", "3", "--max-length", "32",
              "--lr", "1e-3", "--no-progress", "--batch-size", "1"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    assert (tmp_path / "two" / "model.safetensors").is_file()


def test_distill_to_mamba(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "t.jsonl", [{"text": f"Record {i}: {i} apples and {i + 2} pears make "
                                                  f"{2 * i + 2} fruits."} for i in range(10)])
    common = ["distill-to-mamba", "-m", tiny_model_dir, "-i", data, "--attn-layers", "1", "--align-steps", "2",
              "--steps", "2", "--lr", "1e-3", "--max-length", "32", "--batch-size", "1", "--eval-records", "2",
              "--no-progress"]
    launch(common + ["-o", tmp_path / "one", "--grad-accum", "2"], 1)
    launch(common + ["-o", tmp_path / "two", "--grad-accum", "1"], 2)
    for stage in ("align", "distill"):
        same_curve(tmp_path / "one" / "train" / stage / "train_log.jsonl",
                   tmp_path / "two" / "train" / stage / "train_log.jsonl")
    assert (tmp_path / "two" / "model.safetensors").is_file()


def test_ttrl(tmp_path, tiny_model_dir):
    """Both ranks sample the same rollouts (same weights, same seeds); each trains on every second
    micro-batch of an update. Two micro-batches per update (4 rollouts, --micro-batch-size 2)."""
    from ttx.data.arith import generate

    data = _write(tmp_path / "q.jsonl", generate(4, seed=0))
    common = ["ttrl", "--model", tiny_model_dir, "-i", data, "--n", "8", "--n-train", "4", "--batch-size", "2",
              "--micro-batch-size", "2", "--max-new-tokens", "2", "--temperature", "1.0", "--lr", "1e-3",
              "--steps", "2", "--no-progress"]
    launch(common + ["-o", tmp_path / "one"], 1)
    launch(common + ["-o", tmp_path / "two"], 2)
    same_curve(tmp_path / "one" / "train_log.jsonl", tmp_path / "two" / "train_log.jsonl")
    logs = [(tmp_path / n / "train_log.jsonl").read_text().splitlines() for n in ("one", "two")]
    norms = [[json.loads(line)["grad_norm"] for line in log] for log in logs]   # GRPO's loss is ~0
    # on-policy (ratio 1, advantages of mean 0): the gradient norms say more
    assert norms[1] == pytest.approx(norms[0], rel=1e-3) and max(norms[0]) > 0
    rollouts = [(tmp_path / n / "rollouts.jsonl").read_text().splitlines() for n in ("one", "two")]
    assert len(rollouts[1]) == 4 and rollouts[0] == rollouts[1]              # one writer, same samples
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()


def test_a_resume_under_another_process_count_is_refused(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "in.jsonl", [{"id": str(i), "question": f"Add {i} and {i}."} for i in range(8)])
    common = ["tlm-adapt", "--model", tiny_model_dir, "-i", data, "--lr", "5e-3", "--lora-r", "4",
              "--no-progress", "-o", tmp_path / "cut"]
    launch(common + ["--stop-after", "1"], 2)
    r = subprocess.run([sys.executable, "-m", "ttx", *map(str, common), "--resume"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--resume under 1 process(es): the checkpoint was trained under 2" in r.stderr


TRAINER_SCRIPT = """
import json, sys, torch
from ttx.train import TrainConfig, Trainer

torch.manual_seed(0)
module = torch.nn.Linear(3, 1)
xs = torch.arange(24, dtype=torch.float32).view(8, 3) / 10


def loss_fn(m, i):
    if i in (1, 6):                      # skipped micro-batches (tlm-adapt's filter, say)
        return None
    return ((m(xs[i]) - i) ** 2).sum()


trainer = Trainer(module, TrainConfig(output_dir=sys.argv[1], grad_accum=int(sys.argv[2]), lr=0.1,
                                      shuffle=True, seed=3, epochs=2, progress=False))
result = trainer.fit(list(range(8)), loss_fn)
if trainer.is_main:
    w = trainer.unwrapped
    print("RESULT", json.dumps({"losses": result.losses, "w": w.weight.tolist(), "b": w.bias.tolist()}))
"""


def test_trainer_skipped_micro_batches_and_shuffle_match_one_process(tmp_path):
    """The Trainer alone: a shuffled order and micro-batches whose loss_fn returns None (the rank
    contributes a zero gradient) give one process's weights and losses under two processes."""
    script = tmp_path / "train.py"
    script.write_text(TRAINER_SCRIPT)
    out = {}
    for processes, accum in ((1, 4), (2, 2)):
        if processes == 1:
            cmd = [sys.executable, str(script)]
        else:
            cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                   "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_port()), str(script)]
        r = subprocess.run(cmd + [str(tmp_path / f"o{processes}"), str(accum)], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
        out[processes] = json.loads(line.split(" ", 1)[1])
    assert len(out[1]["losses"]) == 4
    assert out[2]["losses"] == pytest.approx(out[1]["losses"], rel=1e-5)
    assert out[2]["w"][0] == pytest.approx(out[1]["w"][0], rel=1e-5)
    assert out[2]["b"] == pytest.approx(out[1]["b"], rel=1e-5)
