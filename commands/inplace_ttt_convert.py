"""`ttx inplace-ttt-convert`: make an In-Place TTT checkpoint from a gated-MLP model; train it.

    ttx inplace-ttt-convert --model smollm2-135m-instruct -o ttt_dir --layers 0,6,12 --chunk 1024
    ttx inplace-ttt-convert --model ttt_dir --train long_docs.jsonl -o ttt_trained
    ttx tts-run --model ttt_trained -i problems.jsonl -o runs.jsonl     # generation uses TTT
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options, overwrite_option


@click.command(name="inplace-ttt-convert")
@config_option
@model_options
@click.option("-o", "--output", "output_path", required=True,
              help="New checkpoint folder (config.json + safetensors + tokenizer).")
@click.option("--layers", help="Converted decoder layers, e.g. 0,6,12 (default: every 6th from 0).")
@click.option("--chunk", type=click.IntRange(min=1),
              help="Tokens per fast-weight update, C (default 4096).")
@click.option("--ttt-lr", type=click.FloatRange(min=0), help="Fast-weight step size eta (default 3).")
@click.option("--ttt-input", type=click.Choice(["hidden", "embedding"]),
              help="Target input X: the MLP input (default) or the token embeddings.")
@click.option("-i", "--train", "train_path",
              help="JSONL of long documents (`text`, or `documents`: a list) to continue training on.")
@click.option("--text-field", default="text", show_default=True,
              help="Field(s) holding a record's text; several comma-separated ones are joined.")
@click.option("--join-records", type=click.IntRange(min=1), default=1, show_default=True,
              help="Concatenate N consecutive records into one long document.")
@click.option("--max-length", type=click.IntRange(min=2), default=2048, show_default=True,
              help="Tokens per training sequence (longer documents are cut into windows).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N training documents.")
@click.option("--trainable", type=click.Choice(["all", "ttt"]), default="all", show_default=True,
              help="all: every parameter (the paper); ttt: only the conv and W_target.")
@click.option("--lr", type=click.FloatRange(min=0), default=5e-6, show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.02, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--max-grad-norm", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Optimizer steps (default: epochs).")
@click.option("--save-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Checkpoint every N steps, for --resume (0: never).")
@click.option("--resume", is_flag=True, help="Continue an interrupted --train run in -o.")
@click.option("--seed", type=int, default=0, show_default=True)
@overwrite_option
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """Make an In-Place TTT model from a checkpoint; optionally continue training it."""
    from ttx.inplace_ttt.convert import convert_from_options

    s = convert_from_options(**options)
    what = "converted" if s["converted"] else "loaded"
    line = (f"inplace-ttt-convert: {what} layers {s['ttt_layers']} (chunk {s['ttt_chunk']}, "
            f"eta {s['ttt_lr']}, +{s['ttt_parameters']:,} parameters)")
    if "max_abs_logit_diff_after_conversion" in s:
        line += f", max |logit diff| after conversion {s['max_abs_logit_diff_after_conversion']:.2e}"
    if "train" in s:
        t = s["train"]
        line += f"; trained {t['steps']} steps on {t['tokens']:,} tokens, loss {t['last_loss']}"
        if not t["finished"]:
            line += " (stopped early: --resume continues)"
    click.echo(f"{line}: {options['output_path']}", err=True)
