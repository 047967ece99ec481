"""`ttx tlm-adapt`: Test-Time Learning, a LoRA learned from unlabeled test inputs.

    ttx tlm-adapt -i test.jsonl -o adapter_dir --generate answers.jsonl
    ttx tts-run --adapter adapter_dir -i test.jsonl -o runs.jsonl
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options, overwrite_option


def _csv(ctx, param, value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


@click.command(name="tlm-adapt")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Test inputs JSONL (tts-run's format; answers are never read).")
@click.option("-o", "--output", "output_path", required=True,
              help="Adapter folder (PEFT), with samples.jsonl and ttx_manifest.json.")
@click.option("--mode", type=click.Choice(["offline", "online"]), default="offline", show_default=True,
              help="offline: learn from all inputs, then answer; online: answer each block, "
                   "then learn from it.")
@click.option("--generate", "generate", type=click.Path(dir_okay=False),
              help="Write greedy answers (tts-run records) here.")
@click.option("--eval", "eval_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Held-out or control inputs: mean log-perplexity before and after (repeatable).")
@model_options
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: the base model in 4-bit NF4 (bitsandbytes).")
@click.option("--lora-r", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lora-alpha", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True, callback=_csv,
              help="Comma-separated module names that get LoRA.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-5, show_default=True,
              help="AdamW learning rate (the paper: 1e-6 for reasoning data).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="offline.")
@click.option("--threshold", type=float, default=3.0, show_default=True,
              help="τ = ln P0: inputs with log-perplexity above it are learned from.")
@click.option("--lambda", "lam", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="λ, the sample weight's scale.")
@click.option("--stream-block", type=click.IntRange(min=1), default=100, show_default=True,
              help="online: inputs per block.")
@click.option("--max-length", type=click.IntRange(min=2), default=4096, show_default=True,
              help="Tokens per input (longer ones are cut).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="offline: warmup share of the cosine schedule (online is constant).")
@click.option("--save-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="offline: checkpoint every N steps (online: after every block).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="--generate: answer length.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--instruction", help="Text appended to each question (as tts-run --instruction).")
@click.option("--system", help="System message (as tts-run --system).")
@click.option("--chat/--no-chat", default=True, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N inputs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume/--no-resume", default=False,
              help="Continue from the newest checkpoint in the output folder.")
@click.option("--stop-after", type=click.IntRange(min=1),
              help="Stop after N steps (online: blocks), checkpointed; rerun with --resume.")
@overwrite_option
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(input_path, output_path, generate, eval_paths, **options):
    """Test-Time Learning: LoRA on unlabeled test inputs by perplexity minimisation."""
    from ttx.tlm.adapt import TLMConfig, run_tlm

    s = run_tlm(TLMConfig(input=input_path, output=output_path, generate=generate,
                          eval=tuple(eval_paths), **options))
    if not s:                                   # not the main process of a distributed run
        return
    if "stopped_at_step" in s:
        click.echo(f"tlm-adapt: stopped after step {s['stopped_at_step']} (checkpoint in "
                   f"{output_path}/checkpoints); continue with --resume", err=True)
        return
    click.echo(f"tlm-adapt: {s['selected']}/{s['seen']} inputs selected, "
               f"{s['backward_passes']} backward passes; log-PPL {s['mean_log_ppl_before']:.4f} -> "
               f"{s['mean_log_ppl_after']:.4f}; adapter in {output_path}", err=True)
