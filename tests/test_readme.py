"""The README is the front door: every `ttx` command it shows names a real stage and real
options, and its pipeline runs as written on a tiny model (small budgets appended)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import REPO, run_cli

README = (REPO / "README.md").read_text(encoding="utf-8")


def _commands() -> list[list[str]]:
    found = re.findall(r"`(ttx [^`]+)`", README)
    block = re.search(r"## A pipeline\n\n```bash\n(.*?)```", README, re.S).group(1)
    found += [line for line in block.splitlines() if line.startswith("ttx ")]
    return [shlex.split(c) for c in found]


def test_every_readme_command_names_a_stage_and_its_options():
    import click

    from ttx.commands import cli

    ctx = click.Context(cli)
    for argv in _commands():
        command = cli.get_command(ctx, argv[1])
        assert command is not None, argv
        flags = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for arg in argv[2:]:
            if arg.startswith("-"):
                assert arg.split("=")[0] in flags, (argv, arg)


_SMALL = {"tts-run": ["--max-new-tokens", "6", "--no-progress"],
          "verifier-train": ["--epochs", "1", "--no-progress"]}


def test_the_pipeline_runs_as_written(tmp_path, tiny_model_dir, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    block = re.search(r"## A pipeline\n\n```bash\n(.*?)```", README, re.S).group(1)
    for line in block.splitlines():
        argv = shlex.split(line)
        if argv[:3] == ["python", "-m", "ttx.data.arith"]:
            argv[argv.index("--n") + 1] = "3"
            subprocess.run([sys.executable, *argv[1:]], check=True, cwd=tmp_path)
            continue
        extra = _SMALL.get(argv[1], [])
        if argv[1] in ("tts-run", "verifier-train"):
            extra = ["--model", str(tiny_model_dir), *extra]
        result = run_cli(argv[1:] + extra)
        assert result.exit_code == 0, (line, result.output[-2000:])
    assert Path("report.html").is_file() and Path("cmp.png").is_file()
