"""`ttx memory-extract`: distil scored tts-run records into a memory bank.

    ttx score -i runs.jsonl --per-record scored.jsonl
    ttx memory-extract -i scored.jsonl -o bank.jsonl --style reasoningbank
    ttx memory-extract -i scored.jsonl -o sheet.jsonl --style cheatsheet --item-format tips
    ttx tts-run -i test.jsonl --memory bank.jsonl --memory-k 1 -o with_memory.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.engines.options import EngineOptions
from ttx.memory.extract import ExtractConfig, ExtractIO, ExtractSampling  # light: no torch
from ttx.options import cli_options


@click.command(name="memory-extract")
@config_option
@cli_options(ExtractIO, ExtractConfig, EngineOptions, ExtractSampling)
def command(**options):
    """Distil strategies and pitfalls from scored traces into a memory bank."""
    from ttx.memory.extract import run_extract
    from ttx.options import build

    sampling = build(ExtractSampling, options)
    io = build(ExtractIO, options)
    s = run_extract(io, build(ExtractConfig, options, params=sampling.params()),
                    build(EngineOptions, options), options)
    click.echo(f"memory-extract: {s['extracted']} problems, {s['items_parsed']} items parsed "
               f"({s['malformed']} malformed dropped), events {s['events']}, "
               f"bank now {s['bank_items']} items: {io.output}", err=True)
