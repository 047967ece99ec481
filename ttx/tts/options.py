"""tts-run's option schema (ttx.options): one dataclass per group; ttx/cli/tts_run.py generates
its click options from them and ttx.tts.launch builds the run from the same objects."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.options import opt
from ttx.tts.registry import SCORERS, STRATEGIES

_POS = click.IntRange(min=1)


@dataclass
class RunIO:
    input_path: str = opt(None, "Problems JSONL (path or -).", flag="--input", short="-i",
                          required=True)
    output_path: str = opt("-", "Records JSONL (path or -), one per problem, appended as each "
                           "finishes.", flag="--output", short="-o")
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Record field holding the gold answer (optional).")
    id_field: str = opt("id", "Record field holding the id (default: the line number).")
    limit: int | None = opt(None, "Only the first N problems.", type=_POS)
    resume: bool = opt(False, "Keep the output and skip (problem, level, repeat) records already "
                       "in it; refused when the options or the input differ from the first "
                       "session's.", secondary="--no-resume")
    force_resume: bool = opt(False, "Resume even when the options differ (mixes records of two "
                             "settings).", is_flag=True)
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")


@dataclass
class Sampling:
    max_new_tokens: int = opt(256, "Tokens per trace (a generation budget).", type=_POS)
    temperature: float = opt(0.7, "Sampling temperature (0: greedy).",
                             type=click.FloatRange(min=0))
    top_p: float = opt(1.0, "Nucleus sampling mass.", type=click.FloatRange(0, 1, min_open=True))
    seed: int | None = opt(0, "Seed of every engine call (each derives its own).", type=int)
    stop: tuple[str, ...] = opt((), "Stop string (repeatable).", multiple=True)


@dataclass
class StrategyOptions:
    strategy: str = opt("majority", "How traces are sampled, searched and aggregated "
                        "(docs/tts-run.md).", type=click.Choice(STRATEGIES))
    n: int = opt(8, "Traces per problem.", type=_POS)
    scorer: str = opt("logprob", "best-of-n/beam/dvts/dora without --reward-model: the policy's "
                      "own score of a trace or step.", type=click.Choice(SCORERS))
    weighted: bool = opt(False, "best-of-n: sum scores per answer.", secondary="--no-weighted")
    ffs_k: int = opt(1, "ffs: wait for k finished traces and vote among them.", type=_POS)
    invalid_votes: str = opt("lm-eval", "Votes: a trace with no answer votes '[invalid]' "
                             "(lm-eval) or not at all (skip).",
                             type=click.Choice(["lm-eval", "skip"]))


@dataclass
class LevelOptions:
    levels: str | None = opt(None, "Compute levels for ARISE: n=1,2,4,8, max_new_tokens=64,128, "
                             "max_thinking_tokens=..., turns=1,2,3.", metavar="AXIS=V1,V2,...")
    repeats: int | None = opt(None, "Fixed repeats per (problem, level) (default 1); wins over "
                              "--repeats-min/max.", type=_POS)
    repeats_min: int | None = opt(None, "Dynamic repeats: at least this many (ARISE default 3).",
                                  type=_POS)
    repeats_max: int | None = opt(None, "Dynamic repeats: at most this many (ARISE default 10).",
                                  type=_POS)
    cv_threshold: float = opt(0.5, "Dynamic repeats: stop once CV(accuracy) + CV(tokens) <= "
                              "this.", type=click.FloatRange(min=0))


@dataclass
class PromptOptions:
    instruction: str | None = opt(None, "Text appended to each question (default: none, the "
                                  "question as it is; measured best for the default model).")
    system: str | None = opt(None, "System message.")
    chat: bool = opt(True, "Chat template (chat endpoint) or plain 'Question: ... Answer:' text.",
                     secondary="--no-chat")


@dataclass
class MemoryOptions:
    memory: str | None = opt(None, "A memory bank (ttx memory-extract): retrieved items go before "
                             "each question.", type=click.Path(dir_okay=False))
    memory_k: int = opt(1, "Memory items per problem (top-k, never from the same problem; 0: "
                        "all).", type=click.IntRange(min=0))
    memory_update: bool = opt(False, "Learn online: update the bank from each problem before the "
                              "next.", secondary="--no-memory-update")
    memory_style: str = opt("reasoningbank", "--memory-update: how items are distilled.",
                            type=click.Choice(["reasoningbank", "concepts", "cheatsheet"]))
    memory_item_format: str = opt("blocks", "--memory-update: field blocks or one 'Tip:' line "
                                  "per item.", type=click.Choice(["blocks", "tips"]))
    memory_judge: str = opt("gold", "--memory-update: gold answers where present, or the model.",
                            type=click.Choice(["gold", "self"]))
    memory_extract_tokens: int = opt(256, "--memory-update: new tokens per extraction.",
                                     type=_POS)
    memory_retriever: str = opt("bm25", "bm25, or cosine similarity of a local model's mean "
                                "hidden states.", type=click.Choice(["bm25", "embedding"]))
    memory_embedder: str | None = opt(None, "embedding: a local model folder, .gguf or alias "
                                      "(default smollm2-135m-instruct); never downloaded.")
