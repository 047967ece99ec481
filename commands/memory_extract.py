"""`ttx memory-extract`: distil scored tts-run records into a memory bank.

    ttx score -i runs.jsonl --per-record scored.jsonl
    ttx memory-extract -i scored.jsonl -o bank.jsonl --style reasoningbank
    ttx memory-extract -i scored.jsonl -o sheet.jsonl --style cheatsheet --item-format tips
    ttx tts-run -i test.jsonl --memory bank.jsonl --memory-k 1 -o with_memory.jsonl
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, engine_options
from ttx.memory.extract import ITEM_FORMATS, STYLES  # light: no torch at import time


@click.command(name="memory-extract")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Scored records (ttx score --per-record), or tts-run records with --judge self.")
@click.option("-o", "--output", "output_path", required=True,
              help="Bank JSONL; an existing bank is merged into (duplicates logged as events).")
@click.option("--style", type=click.Choice(STYLES), default="reasoningbank", show_default=True,
              help="reasoningbank: strategies and pitfalls; concepts: ArcMemo concepts by name; "
              "cheatsheet: one document rewritten after each problem (Dynamic Cheatsheet).")
@click.option("--item-format", type=click.Choice(ITEM_FORMATS), default="blocks",
              show_default=True, help="blocks: Title/Description/Content fields; tips: one "
              "'Tip:' line per item after a worked example (small models keep to it).")
@click.option("--judge", type=click.Choice(["gold", "self"]), default="gold", show_default=True,
              help="gold: the records' `correct`; self: the model judges each answer.")
@click.option("--structured/--no-structured", default=True, show_default=True,
              help="Ask for items with a JSON schema, and the self judge for yes/no, where the "
              "engine enforces output constraints (hf, openai); --no-structured: the text formats.")
@engine_options
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-traces", type=click.IntRange(min=1), default=4, show_default=True,
              help="Traces shown per problem; 2+ distinct ones are contrasted (MaTTS).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Problems per engine call; the bank is saved after each.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N problems.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip problems the bank already lists as extracted from.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """Distil strategies and pitfalls from scored traces into a memory bank."""
    from ttx.memory.extract import extract_from_options

    s = extract_from_options(**options)
    click.echo(f"memory-extract: {s['extracted']} problems, {s['items_parsed']} items parsed "
               f"({s['malformed']} malformed dropped), events {s['events']}, "
               f"bank now {s['bank_items']} items: {options['output_path']}", err=True)
