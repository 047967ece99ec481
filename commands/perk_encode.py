"""`ttx perk-encode`: answer long-context records with PERK (test-time learning).

    ttx perk-encode --perk perk_dir -i test.jsonl -o answers.jsonl
    ttx perk-encode --perk perk_dir -i long.jsonl -o answers.jsonl --inner-grad-accum 4
    ttx score -i answers.jsonl
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option


@click.command(name="perk-encode")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Records JSONL {id, context, question[, answer]} (path or -).")
@click.option("-o", "--output", "output_path", default="-", show_default=True,
              help="Answer records JSONL (tts-run format, `ttx score` reads it), appended per record.")
@click.option("--perk", "perk_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A folder written by ttx perk-metatrain.")
@click.option("--model", "-m", default=None,
              help="Base model (default: the one the PERK folder was meta-trained on).")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N or auto (cuda when present).")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--inner-grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split a long context's segments into this many accumulation parts (memory).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--context-field", default="context", show_default=True)
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N records.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the inner loop's LoRA dropout per record.")
@click.option("--resume/--no-resume", default=False,
              help="Keep the output and skip ids already in it.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """PERK at test time: encode each record's context into the LoRA, then answer."""
    from ttx.perk.encode import encode_from_options

    s = encode_from_options(**options)
    click.echo(f"perk-encode: {s['written']} records written to {options['output_path']} "
               f"in {s['wall_s']:.1f}s", err=True)
