"""The `ttx` command group. Subcommands load lazily so `ttx --help` never imports torch."""

from __future__ import annotations

import importlib
import os
import sys

import click

# name -> (module under ttx.cli, one-line help shown by `ttx --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tts-run": ("tts_run", "Test-time scaling: sample, vote, search and refine with a model."),
    "score": ("score", "Score tts-run records: accuracy, pass@k, maj@k, tokens, plots."),
    "report": ("report", "One self-contained HTML page of runs: scores, traces, votes, trees."),
    "tlm-adapt": ("tlm_adapt", "Test-Time Learning: LoRA on unlabeled test inputs."),
    "perk-metatrain": ("perk_metatrain", "PERK: meta-learn a LoRA that encodes long context."),
    "perk-encode": ("perk_encode", "PERK at test time: encode each context into a LoRA, answer."),
    "inplace-ttt-convert": ("inplace_ttt_convert", "Make an In-Place TTT model from a checkpoint; train it."),
    "distill-to-mamba": ("distill_to_mamba", "Replace attention with Mamba-2 layers and distill."),
    "memory-extract": ("memory_extract", "Distil strategies and pitfalls from traces into a memory bank."),
    "verifier-train": ("verifier_train", "Train an outcome or process reward model on scored traces."),
    "ttrl": ("ttrl", "Test-time RL: majority-vote rewards on unlabeled questions, GRPO (TTRL, ETTRL)."),
    "rl": ("rl", "Test-time RL with reward and advantage plug-ins (majority, gold, label-free, HAPO)."),
    "sft": ("sft", "Supervised fine-tuning on pairs or correct traces: cross-entropy or DCO."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module_name, short_help = SUBCOMMANDS[name]
        module = importlib.import_module(f"ttx.cli.{module_name}")
        command = module.command
        command.short_help = short_help
        return command

    def invoke(self, ctx):
        from ttx.errors import TtxError

        try:
            return super().invoke(ctx)
        except TtxError as exc:
            if os.environ.get("TTX_DEBUG") or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"ttx: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ttx")
@click.option("--debug", is_flag=True, help="Show tracebacks (also TTX_DEBUG=1).")
@click.pass_context
def cli(ctx, debug):
    """ttx: test-time compute for language models. Each subcommand is one stage; stages talk
    through files (JSONL records, safetensors checkpoints, PEFT adapters)."""
    ctx.obj = {"debug": debug}
    if not os.environ.get("TTX_VERBOSE"):
        _quiet_libraries()


def _quiet_libraries() -> None:
    """Other libraries' notices that say nothing about the user's run stay off (TTX_VERBOSE=1
    shows them): bitsandbytes' missing optional CPU kernel, transformers' deprecations that
    peft triggers."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
