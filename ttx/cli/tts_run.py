"""`ttx tts-run`: test-time scaling over a JSONL file of problems."""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.engines.options import EngineOptions
from ttx.options import cli_options
from ttx.tts.options import (  # light: no torch at import time
    LevelOptions,
    MemoryOptions,
    PromptOptions,
    RunIO,
    Sampling,
    StrategyOptions,
)
from ttx.tts.search import SearchConfig

GROUPS = (RunIO, StrategyOptions, Sampling, SearchConfig, LevelOptions, EngineOptions,
          PromptOptions, MemoryOptions)


@click.command(name="tts-run")
@config_option
@cli_options(*GROUPS)
def command(**options):
    """Test-time scaling: sample, vote, search and refine with a model."""
    from ttx.tts.launch import run_from_options

    summary = run_from_options(options)
    click.echo(f"tts-run: {summary['written']} records written to {options['output_path']} "
               f"in {summary['wall_s']:.1f}s", err=True)
