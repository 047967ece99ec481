"""bench/gpu_check.py without a GPU and without a model: its options, the JSON it writes for the
environment check alone, and a check that outruns its time limit."""

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


def test_env_check_alone_writes_the_json(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--only", "env",
                           "--work", str(tmp_path / "work"), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["bench"] == "gpu_check" and data["mode"].startswith("smoke")
    assert data["machine"]["argv"][1:] == ["--smoke", "--only", "env", "--work",
                                           str(tmp_path / "work"), "-o", str(out)]
    assert data["model"] is None                                   # no check needed one
    assert list(data["checks"]) == ["env"]
    env = data["checks"]["env"]
    assert env["status"] == "ok" and env["seconds"] > 0
    numbers = env["numbers"]
    assert isinstance(numbers["cuda"], bool) and numbers["versions"]["torch"]
    # every optional package is reported, importable or with the reason it is not
    assert set(numbers["imports"]) == set(gpu_check.OPTIONAL)
    assert all(v.startswith(("ok", "installed", "unavailable: ")) for v in numbers["imports"].values())
    assert data["summary"] == {"ok": 1, "failed": 0, "skipped": 0}
    assert data["headline"]["passed"] == "1/1"


def test_a_check_past_its_limit_is_killed_and_recorded(tmp_path):
    args = gpu_check.parse_args(["--smoke", "--work", str(tmp_path)])
    (tmp_path / "logs").mkdir()
    step = gpu_check.run_child(args, "env", None, 0.2)       # at least 1 s: killed importing torch
    assert step["status"] == "failed" and step["error"].startswith("timed out after 1 s")
    assert step["seconds"] < 30
