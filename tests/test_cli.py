"""The command group: lazy loading, help for every stage, one-line errors, recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, run_cli
from ttx.cli import SUBCOMMANDS, cli
from ttx.cli.options import option_names

STAGES = ["distill-to-mamba", "inplace-ttt-convert", "perk-metatrain", "perk-encode", "tlm-adapt",
          "memory-extract", "tts-run", "score", "report", "verifier-train", "ttrl", "rl", "sft"]


def test_help_lists_every_stage_without_importing_torch():
    code = ("import sys; from ttx.cli import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    for stage in STAGES:
        line = next(line for line in out.stdout.splitlines() if line.strip().startswith(stage))
        assert len(line.split(stage, 1)[1].strip()) > 10, f"{stage} has no one-line help"
    assert sorted(SUBCOMMANDS) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    result = run_cli([stage, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_python_dash_m_ttx_runs_the_same_group():
    out = subprocess.run([sys.executable, "-m", "ttx", "--version"], capture_output=True,
                         text=True, check=True)
    from ttx import __version__

    assert __version__ in out.stdout


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_as_option_defaults(recipe):
    """Each recipe names a stage, opens with the command that runs it, and every key is an
    option of that stage (click's default_map)."""
    text = recipe.read_text()
    first = text.splitlines()[:3]
    stage = next(s for s in STAGES if any(f"ttx {s} --config recipes/{recipe.name}" in line
                                          for line in first))
    command = cli.get_command(None, stage)
    names = option_names(command)
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and data
    assert set(k.replace("-", "_") for k in data) <= set(names)
    ctx = command.make_context(stage, ["--config", str(recipe), "-i", "x.jsonl"],
                               resilient_parsing=True)
    for key, value in data.items():
        assert ctx.default_map[names[key.replace("-", "_")]] == value


def test_config_rejects_an_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 3\n")
    result = run_cli(["score", "--config", bad, "-i", "x.jsonl"])
    assert result.exit_code == 2
    assert "no_such_option" in result.output


def test_command_line_wins_over_config(tmp_path, tiny_model_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strategy: greedy\nmax_new_tokens: 3\nprogress: false\n")
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": 1, "question": "1+1?", "answer": "2"}\n')
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--config", cfg, "--model", tiny_model_dir, "-i", problems,
                      "-o", out, "--max-new-tokens", "5", "--strategy", "sample", "--n", "2"])
    assert result.exit_code == 0, result.output
    record = yaml.safe_load(out.read_text())
    assert record["strategy"] == "sample"           # the command line won
    assert all(t["completion_tokens"] <= 5 for t in record["traces"])
    assert any(t["completion_tokens"] > 3 for t in record["traces"])   # not the config's 3


def test_bad_model_path_is_one_line(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?"}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "nope", "-i", problems, "-o", "-"])
    assert result.exit_code == 2
    assert "nope" in result.output and "Traceback" not in result.output


def test_checkpoint_of_the_wrong_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=100)).save_pretrained(folder)
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?"}\n')
    result = run_cli(["tts-run", "--model", folder, "-i", problems, "-o", "-"])
    assert result.exit_code == 2
    assert str(folder) in result.output and "causal language model" in result.output
