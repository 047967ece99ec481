"""Distillation data: text or chat records -> token ids with labels, batches, teacher completions.

A record is one of (first match wins):
  {"messages": [{"role": ..., "content": ...}, ...]}   chat; the last assistant turn is the target
  {"prompt": ..., "completion": ...}                    the completion is the target
  {"question": ..., "answer": ...}                      GSM8K style, as a one-turn chat
  {"text": ...}                                         plain text, every token is a target
With --teacher-generate the target is replaced by the teacher's own completion of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttx.errors import TtxError

IGNORE = -100        # label of a token that is context only (prompt, padding)


@dataclass
class Example:
    prompt: object | None            # chat messages or raw text that conditions the target
    target: str                      # what the model learns to continue with
    line: int


def parse_record(record: dict, path: str, line: int, *, need_target: bool = True) -> Example:
    """Split a record into prompt and target; a record of no known shape is an error."""
    def text(field):
        value = record[field]
        if not isinstance(value, str):
            raise TtxError("expected a string", path=path, line=line, field=field)
        return value

    if "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise TtxError("expected a list of {role, content} messages", path=path, line=line,
                           field="messages")
        if messages[-1]["role"] == "assistant":
            return Example(messages[:-1], messages[-1]["content"], line)
        if need_target:
            raise TtxError("the last message must be the assistant's (the target)", path=path,
                           line=line, field="messages")
        return Example(messages, "", line)
    for prompt_field, target_field in (("prompt", "completion"), ("question", "answer")):
        if prompt_field in record:
            prompt = text(prompt_field)
            if prompt_field == "question":
                prompt = [{"role": "user", "content": prompt}]
            if target_field not in record:
                if need_target:
                    raise TtxError("missing", path=path, line=line, field=target_field)
                return Example(prompt, "", line)
            return Example(prompt, text(target_field), line)
    if "text" in record:
        if not need_target:
            raise TtxError("--teacher-generate needs prompts ('messages', 'prompt' or "
                           "'question'), not plain 'text'", path=path, line=line, field="text")
        return Example(None, text("text"), line)
    raise TtxError("expected a 'text', 'messages', 'prompt'+'completion' or 'question'+'answer' "
                   "record", path=path, line=line)


def read_examples(path: str, *, need_target: bool = True) -> list[Example]:
    from ttx.records import read_records

    return [parse_record(row.data, str(path), row.line, need_target=need_target)
            for row in read_records(path, unique=False)]


def tokenize(example: Example, tokenizer, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with prompt tokens labelled IGNORE; None when nothing is left to learn."""
    from ttx.models import render_prompt

    eos = tokenizer.eos_token or ""
    if example.prompt is None:
        ids = tokenizer(example.target, add_special_tokens=True).input_ids
        prompt_len = 0
    else:
        prefix = render_prompt(tokenizer, example.prompt)
        raw = isinstance(example.prompt, str)
        prompt_ids = tokenizer(prefix, add_special_tokens=raw).input_ids
        target_ids = tokenizer(example.target + eos, add_special_tokens=False).input_ids
        ids, prompt_len = prompt_ids + target_ids, len(prompt_ids)
    ids = ids[:max_length]
    labels = [IGNORE] * min(prompt_len, len(ids)) + ids[prompt_len:]
    if sum(1 for x in labels[1:] if x != IGNORE) == 0:
        return None
    return ids, labels


def make_batches(sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list:
    """Right-padded micro-batches in input order: dicts of input_ids, attention_mask, labels."""
    from ttx.train.pad import pad

    batches = []
    for start in range(0, len(sequences), batch_size):
        group = sequences[start:start + batch_size]
        input_ids, mask = pad([ids for ids, _ in group], pad_id)
        labels, _ = pad([labs for _, labs in group], IGNORE, width=input_ids.shape[1])
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def teacher_completions(examples: list[Example], teacher, tokenizer, out_path, *,
                        max_new_tokens: int, temperature: float, seed: int, batch: int = 8,
                        progress: bool = True) -> list[Example]:
    """Replace each target with the teacher's completion of its prompt (through the hf engine).

    Completions are appended to out_path one by one, so an interrupted run resumes where it
    stopped (prompts already answered are not generated again).
    """
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from ttx.engines import engine_over
    from ttx.engines.base import SamplingParams
    from ttx.io import JsonlAppender, resume_log
    from ttx.seeds import call_seed

    out_path = Path(out_path)
    done = {int(r["index"]): r["completion"] for r in resume_log(out_path)}
    engine = engine_over(teacher, tokenizer, name="teacher", max_batch_rows=batch)
    todo = [i for i in range(len(examples)) if i not in done]
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="teacher-generate",
               unit="prompt", file=sys.stderr, disable=not progress)
    with JsonlAppender(out_path, resume=True) as out:
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=call_seed(seed, chunk[0]))
            gens = engine.generate([examples[i].prompt for i in chunk], 1, params)
            for i, gen in zip(chunk, gens):
                done[i] = gen.traces[0].text
                out.write({"index": i, "line": examples[i].line, "completion": done[i]})
            bar.update(len(chunk))
    bar.close()
    return [Example(e.prompt, done[i], e.line) for i, e in enumerate(examples)]
