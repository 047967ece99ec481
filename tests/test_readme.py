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

    from ttx.cli import cli

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


# ---------------------------------------------------------------- every page's commands

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _documented() -> list[tuple[str, list[str], bool]]:
    """(where, argv, whole) of every `ttx ...` command in the README and docs/: the lines of
    bash blocks (whole commands: continuations joined, comments dropped), and inline code
    (prose may name an option without its value)."""
    out = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                if line.startswith("ttx "):
                    for piece in re.split(r"\s*(?:&&|\||;)\s*", line):
                        if piece.startswith("ttx "):
                            out.append((page.name, piece, True))
        for inline in re.findall(r"`(ttx [a-z][^`]*)`", text):
            out.append((page.name, inline, False))
    return [(where, shlex.split(cmd), whole) for where, cmd, whole in out
            if "..." not in cmd and "<" not in cmd]


def test_every_documented_command_parses(tmp_path, monkeypatch):
    """Each command parses as written: its stage exists, its options and choices are real, no
    argument is left over. Paths the option says must exist are made empty first, so only the
    command line is judged."""
    import click

    from ttx.cli import cli

    monkeypatch.chdir(tmp_path)
    commands = _documented()
    assert len(commands) > 80, len(commands)
    failures = []
    for where, argv, whole in commands:
        if len(argv) < 2 or argv[1].startswith("-"):
            continue
        command = cli.get_command(click.Context(cli), argv[1])
        if command is None:
            failures.append(f"{where}: {' '.join(argv)}: no stage {argv[1]!r}")
            continue
        if not whole:
            flags = {o for p in command.params
                     for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
            failures += [f"{where}: {' '.join(argv)}: no option {a}" for a in argv[2:]
                         if a.startswith("--") and a.split("=")[0] not in flags]
            continue
        _make_paths(command, argv[2:])
        try:
            ctx = command.make_context(argv[1], argv[2:], resilient_parsing=False)
            ctx.close()
        except click.exceptions.Exit:
            pass
        except click.ClickException as exc:
            failures.append(f"{where}: {' '.join(argv)}: {exc.format_message()}")
    assert not failures, "\n".join(failures)


def _make_paths(command, args: list[str]) -> None:
    """Create what an option's type says must exist (an empty file or folder), and the files of
    --config (recipes are real files in the repository: copied in)."""
    import shutil

    import click

    flags = {o: p for p in command.params for o in getattr(p, "opts", [])}
    for i, arg in enumerate(args[:-1]):
        param, value = flags.get(arg), args[i + 1]
        if param is None or value == "-" or Path(value).is_absolute() or ".." in value:
            continue
        kind = getattr(param.type, "inner", param.type)       # ttx.options._Clearable
        target = Path(value)
        if arg == "--config" and (REPO / value).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / value, target)
        elif isinstance(kind, click.Path) and kind.exists and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind.file_okay:
                target.write_text("")
            else:
                target.mkdir()
