"""sft's training pairs: plain (prompt, response) JSONL, or the traces of tts-run records.

A pair becomes tokens as tts-run would see them: the prompt templated exactly as tts-run prompts
a question (ttx.prompts.build_prompt, the chat template with its generation header), then the
response's own tokens and the end-of-sequence token (so the model learns to stop; p includes it).
Only the response tokens carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttx.errors import TtxError


@dataclass
class Pair:
    id: str                      # record id (#trace index for --from)
    prompt: str
    response: str


def read_pairs(cfg) -> tuple[list[Pair], dict]:
    """The pairs of -i or --from (validated before any model loads), and their counts."""
    from ttx.records import read_records

    if cfg.input is not None:
        rows = read_records(cfg.input, required=[cfg.prompt_field, cfg.response_field],
                            strings=[cfg.prompt_field, cfg.response_field], id_field=cfg.id_field,
                            limit=cfg.limit, numbers_as_text=True)
        pairs = [Pair(r.id, r.data[cfg.prompt_field], r.data[cfg.response_field]) for r in rows]
        return pairs, {"records": len(rows), "pairs": len(pairs)}
    from ttx.verifier.data import ReadConfig, read_examples

    examples = read_examples(cfg.from_records, ReadConfig(cfg.question_field, cfg.answer_field,
                                                          cfg.id_field))
    if cfg.limit is not None:                  # the first N problems (all their traces)
        keep = list(dict.fromkeys(e.problem for e in examples))[:cfg.limit]
        examples = [e for e in examples if e.problem in set(keep)]
    correct = sum(e.correct for e in examples)
    chosen = [e for e in examples if e.correct or not cfg.only_correct]
    pairs = [Pair(e.key, e.question, e.text) for e in chosen if e.text.strip()]
    counts = {"records": len({e.problem for e in examples}), "traces": len(examples),
              "correct_traces": correct, "pairs": len(pairs),
              "problems_kept": len({e.problem for e in chosen})}
    if not pairs:
        raise TtxError("no trace to learn from" + (" (none is correct)" if cfg.only_correct else ""),
                       path=cfg.from_records, field="--only-correct" if cfg.only_correct else None)
    return pairs, counts


def encode_pairs(tokenizer, cfg, pairs: list[Pair]) -> tuple[list[tuple[list[int], int]], list[int]]:
    """(token row, prompt length) per pair that fits --max-length, and the indices kept."""
    from ttx.models import render_prompt
    from ttx.prompts import build_prompt

    eos = tokenizer.eos_token_id
    rows, kept = [], []
    for i, p in enumerate(pairs):
        prompt = build_prompt(p.prompt, instruction=cfg.instruction, system=cfg.system, chat=cfg.chat)
        head = tokenizer(render_prompt(tokenizer, prompt),
                         add_special_tokens=isinstance(prompt, str)).input_ids
        tail = tokenizer(p.response, add_special_tokens=False).input_ids
        row = head + tail + ([eos] if eos is not None else [])
        if len(row) <= cfg.max_length:
            rows.append((row, len(head)))
            kept.append(i)
    return rows, kept
