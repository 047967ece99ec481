"""bench/gpu_check.py without a GPU and without a model: its options, the JSON it writes where no
GPU is visible (the environment check fails saying so, the others are skipped), and a check that
outruns its time limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_check
from tests.conftest import REPO


def test_options_default_to_the_gpu_and_smoke_to_the_cpu(tmp_path):
    args = gpu_check.parse_args([])
    assert (args.device, args.only, args.budget) == ("cuda", gpu_check.CHECKS, 450.0)
    assert args.out == REPO / "bench" / "results" / "gpu_check.json"
    smoke = gpu_check.parse_args(["--smoke", "--work", str(tmp_path)])
    assert smoke.device == "cpu" and smoke.out == tmp_path / "gpu_check.json"
    # checks run in the documented order whatever order --only names them in
    assert gpu_check.parse_args(["--only", "ttrl, env"]).only == ("env", "ttrl")


@pytest.mark.parametrize("argv, message", [
    (["--only", "env,gpu"], "unknown check gpu"),
    (["--only", ","], "unknown check (none)"),
    (["--budget", "0"], "--budget must be positive"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="states what a machine without a GPU gets")
def test_without_a_gpu_the_json_says_so_and_skips_the_rest(tmp_path):
    out = tmp_path / "result.json"
    argv = ["--only", "ttrl,env", "--work", str(tmp_path / "work"), "-o", str(out)]
    done = subprocess.run([sys.executable, "bench/gpu_check.py", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr            # a check failed
    data = json.loads(out.read_text())
    assert data["bench"] == "gpu_check" and data["mode"] == "gpu" and data["device"] == "cuda"
    assert data["machine"]["argv"][1:] == argv and data["machine"]["gpu"] is None
    assert list(data["checks"]) == ["env", "ttrl"]
    env, ttrl = data["checks"]["env"], data["checks"]["ttrl"]
    reason = "no CUDA device visible to torch (run with --smoke on CPU)"
    assert (env["status"], env["error"]) == ("failed", reason)
    assert (ttrl["status"], ttrl["error"]) == ("skipped", reason)
    assert data["model"] is None                               # no model built for nothing
    numbers = env["numbers"]
    assert numbers["cuda"] is False and numbers["versions"]["torch"]
    # every optional package is reported, importable or with the reason it is not
    assert set(numbers["imports"]) == set(gpu_check.OPTIONAL)
    assert all(v.startswith(("ok", "installed", "unavailable: ")) for v in numbers["imports"].values())
    assert data["summary"] == {"ok": 0, "failed": 1, "skipped": 1}
    assert data["headline"]["passed"] == "0/2" and env["seconds"] > 0


def test_a_check_past_its_limit_is_killed_and_recorded(tmp_path):
    args = gpu_check.parse_args(["--smoke", "--work", str(tmp_path)])
    (tmp_path / "logs").mkdir()
    step = gpu_check.run_child(args, "env", None, 0.2)       # at least 1 s: killed importing torch
    assert step["status"] == "failed" and step["error"].startswith("timed out after 1 s")
    assert step["seconds"] < 30
