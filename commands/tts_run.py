"""`ttx tts-run`: test-time scaling over a JSONL file of problems."""

from __future__ import annotations

import click

from ttx.commands.options import config_option, engine_options
from ttx.tts.registry import SCORERS, STRATEGIES  # light: no torch at import time


@click.command(name="tts-run")
@config_option
@click.option("-i", "--input", "input_path", required=True, help="Problems JSONL (path or -).")
@click.option("-o", "--output", "output_path", default="-", show_default=True,
              help="Records JSONL (path or -), one per problem, appended as each finishes.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="majority", show_default=True,
              help="How traces are sampled, searched and aggregated (docs/tts-run.md).")
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Traces per problem.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--scorer", type=click.Choice(SCORERS), default="logprob",
              show_default=True, help="best-of-n: how a trace is scored.")
@click.option("--weighted/--no-weighted", default=False, help="best-of-n: sum scores per answer.")
@click.option("--ffs-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="ffs: wait for k finished traces and vote among them.")
@click.option("--invalid-votes", type=click.Choice(["lm-eval", "skip"]), default="lm-eval",
              show_default=True,
              help="Votes: a trace with no answer votes '[invalid]' (lm-eval) or not at all.")
@click.option("--budget-style", type=click.Choice(["s1", "ttx"]),
              help="budget-forcing: s1's evaluation harness (default) or ttx's variant "
                   "(remaining budget per round, a minimum, a short forced answer).")
@click.option("--min-thinking-tokens", type=click.IntRange(min=0),
              help="budget-forcing: continue a trace that stops before this many tokens (ttx "
                   "style; s1 style: the minimum of one round, with --num-ignore 0).")
@click.option("--max-thinking-tokens", type=click.IntRange(min=1),
              help="budget-forcing: the thinking budget (default: s1's auto rule, "
                   "--max-new-tokens less 100 kept for the answer; ttx: --max-new-tokens).")
@click.option("--num-ignore", type=click.IntRange(min=0),
              help="budget-forcing: stops ignored at most K times per trace (default 1).")
@click.option("--ignore-str", help="budget-forcing: appended when a stop is ignored "
              "(default 'Wait').")
@click.option("--think-start", help="budget-forcing s1: text opening the thinking "
              "(default '<|im_start|>think').")
@click.option("--think-end", help="budget-forcing: end-of-thinking text (s1 default "
              "'<|im_start|>answer'; ttx default '</think>' when the model has it, else none).")
@click.option("--answer-tokens", type=click.IntRange(min=1),
              help="budget-forcing ttx: tokens for the answer after a forced end (default 32).")
@click.option("--beam-style", type=click.Choice(["search-and-learn", "ttx"]),
              help="beam: search-and-learn's algorithm (default with --reward-model) or ttx's "
                   "expansion (default otherwise).")
@click.option("--beam-width", type=click.IntRange(min=1),
              help="beam/dvts: M; n/M beams (subtrees) kept, each expanded M ways (default 2).")
@click.option("--step-tokens", type=click.IntRange(min=1),
              help="beam/dvts/dora: a step ends at a blank line or after this many tokens "
                   "(default: --max-new-tokens; ttx beam and dora: 64).")
@click.option("--max-steps", type=click.IntRange(min=1),
              help="beam/dvts/dora: iterations; the last runs to EOS (default 4).")
@click.option("--agg", type=click.Choice(["last", "min", "prod"]),
              help="beam/dvts/dora (and PRM best-of-n): step scores -> path score (default last).")
@click.option("--lookahead", type=click.IntRange(min=0),
              help="beam (search-and-learn)/dvts: greedy steps rolled out before a step is "
                   "scored (needs --reward-model; default 0).")
@click.option("--filter-duplicates", is_flag=True, default=None,
              help="beam (search-and-learn): keep one beam of each text.")
@click.option("--sort-completed", is_flag=True, default=None,
              help="beam (search-and-learn)/dora: answer from the n best completed beams, not "
                   "the first n.")
@click.option("--dora-tau", type=click.FloatRange(min=0, min_open=True),
              help="dora: softmax temperature of the scores (default 0.1).")
@click.option("--dora-alpha", type=click.FloatRange(min=0, min_open=True),
              help="dora: temperature of the similarity row-softmax (default 0.01).")
@click.option("--embedder", type=click.Path(exists=True, file_okay=False),
              help="dora: a local embedding model folder (default: the policy's hidden states).")
@click.option("--turns", type=click.IntRange(min=1),
              help="refine: rounds of check-and-correct (default 1).")
@click.option("--turn-aggregate", type=click.Choice(["last", "majority"]),
              help="refine: the last turn's answer, or a vote over all turns (default last).")
@click.option("--reward-model", type=click.Path(exists=True, file_okay=False),
              help="best-of-n/beam/dvts/dora: a local outcome or process reward model "
                   "(replaces --scorer); loaded once per run.")
@click.option("--reward-batch-size", type=click.IntRange(min=1),
              help="Sequences per reward-model forward (default 8).")
@click.option("--prm-format", type=click.Choice(["tag", "chat", "qwen"]),
              help="PRM input: steps followed by a tag (Math-Shepherd), chat turns (RLHFlow) or "
                   "<extra_0>-joined steps (Qwen2.5-Math-PRM) (default: ttx_reward.json, else "
                   "by architecture).")
@click.option("--prm-step-tag", help="PRM: text after each step, scored there (default 'ки').")
@click.option("--prm-good-token", help="PRM: the token whose probability is the score "
              "(default '+').")
@click.option("--prm-bad-token", help="PRM: its opposite; '' scores against the whole "
              "vocabulary (default '-').")
@click.option("--levels", metavar="AXIS=V1,V2,...",
              help="Compute levels for ARISE: n=1,2,4,8 or max_new_tokens=64,128,256.")
@click.option("--repeats", type=click.IntRange(min=1),
              help="Fixed repeats per (problem, level) (default 1); wins over --repeats-min/max.")
@click.option("--repeats-min", type=click.IntRange(min=1),
              help="Dynamic repeats: at least this many (ARISE default 3).")
@click.option("--repeats-max", type=click.IntRange(min=1),
              help="Dynamic repeats: at most this many (ARISE default 10).")
@click.option("--cv-threshold", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Dynamic repeats: stop once CV(accuracy) + CV(tokens) <= this.")
@engine_options
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="hf: a PEFT adapter folder to apply.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=64, show_default=True,
              help="hf: traces decoded together (problems per call = rows / n).")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--instruction", help="Text appended to each question (default: none, the "
              "question as it is; measured best for the default model).")
@click.option("--system", help="System message.")
@click.option("--chat/--no-chat", default=True, show_default=True,
              help="Chat template (chat endpoint) or plain 'Question: ... Answer:' text.")
@click.option("--memory", type=click.Path(dir_okay=False),
              help="A memory bank (ttx memory-extract): retrieved items go before each question.")
@click.option("--memory-k", type=click.IntRange(min=0), default=1, show_default=True,
              help="Memory items per problem (top-k, never from the same problem; 0: all).")
@click.option("--memory-update/--no-memory-update", default=None,
              help="Learn online: update the bank from each problem before the next.")
@click.option("--memory-style", type=click.Choice(["reasoningbank", "concepts", "cheatsheet"]),
              help="--memory-update: how items are distilled (default reasoningbank).")
@click.option("--memory-item-format", type=click.Choice(["blocks", "tips"]),
              help="--memory-update: field blocks (default) or one 'Tip:' line per item.")
@click.option("--memory-judge", type=click.Choice(["gold", "self"]),
              help="--memory-update: gold answers where present (default), or the model.")
@click.option("--memory-extract-tokens", type=click.IntRange(min=1),
              help="--memory-update: new tokens per extraction (default 256).")
@click.option("--memory-retriever", type=click.Choice(["bm25", "embedding"]),
              help="bm25 (default) or cosine similarity of a local model's mean hidden states.")
@click.option("--memory-embedder", help="embedding: a local model folder, .gguf or alias "
              "(default smollm2-135m-instruct); never downloaded.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N problems.")
@click.option("--resume/--no-resume", default=False,
              help="Keep the output and skip (problem, level, repeat) records already in it; "
                   "refused when the options or the input differ from the first session's.")
@click.option("--force-resume", is_flag=True,
              help="Resume even when the options differ (mixes records of two settings).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """Test-time scaling: sample, vote, search and refine with a model."""
    from ttx.tts.launch import run_from_options

    summary = run_from_options(**options)
    click.echo(f"tts-run: {summary['written']} records written to {options['output_path']} "
               f"in {summary['wall_s']:.1f}s", err=True)
