"""Dynamic Cheatsheet (arXiv 2504.07952), the cumulative variant: one evolving document of short
entries, rewritten by the model after each problem, each entry with a usage count.

The cheatsheet is the bank's items of kind `cheatsheet`, in order. After a problem the model sees
the current cheatsheet, the problem and its attempt(s) with their verdicts, and writes the whole
cheatsheet again; `bank.rewrite_items` turns the rewrite into ADD / UPDATE / NOOP / DELETE events.
As in the paper, an output with no usable entry keeps the previous cheatsheet; a rewrite cut by
the token limit deletes nothing (the entries it did not reach are kept). With an engine that
enforces constraints the rewrite is JSON under a schema (ttx.memory.structured), and the
cheatsheet is shown to the curator in that JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from ttx.engines.base import Engine, SamplingParams
from ttx.memory import bank as bank_mod
from ttx.memory import structured as st
from ttx.memory.parse import (
    TIP_EXAMPLE,
    TIP_EXAMPLE_PROBLEM,
    parse_blocks,
    parse_tips,
    problem_specifics,
    strip_specifics,
)

MAX_ENTRIES = 12
NEW_PER_PROBLEM = 2
SYSTEM = ("You keep a cheatsheet: short, general notes that help solve future problems of the "
          "same kind.")
FORMAT = ("Write each entry in exactly this format, with nothing else:\n\n"
          "Title: <a short name>\nContent: <1-2 sentences>\nCount: <how many problems it helped>")


def current_entries(bank_path: str) -> list[dict]:
    return [it for it in bank_mod.load_bank(bank_path) if it["kind"] == "cheatsheet"]


def render(entries: list[dict], item_format: str = "blocks", structured: bool = False) -> str:
    if structured:                               # the answer's own JSON, to copy entries from
        if item_format == "tips":
            return st.tips_json([it["text"] for it in entries])
        return json.dumps({"entries": [{"title": it["title"], "content": it["text"],
                                        "count": it["meta"].get("count", 1)} for it in entries]},
                          ensure_ascii=False)
    if not entries:
        return "(empty)"
    if item_format == "tips":
        return "\n".join(f"Tip: {it['text']}" for it in entries)
    return "\n\n".join(f"Title: {it['title']}\nContent: {it['text']}\n"
                       f"Count: {it['meta'].get('count', 1)}" for it in entries)


def _tips_task(n: int, structured: bool = False) -> str:
    form = (st.format_text("cheatsheet", "tips") if structured
            else "One tip per line, each starting with 'Tip:'.")
    return (f"Rewrite the cheatsheet for future problems: keep the useful tips, drop wrong or "
            f"repeated ones, add at most {NEW_PER_PROBLEM} new ones, {n} tips at most. {form} "
            "No numbers or names from the problem.")


def cheatsheet_prompt(entries: list[dict], p, attempts: str,
                      item_format: str = "blocks", structured: bool = False) -> list[dict]:
    """The curator's prompt: the cheatsheet so far, the problem and its attempts, the task.
    structured: the rewrite is JSON under item_schema (the prompt describes that format)."""
    if item_format == "tips":                   # a worked example turn first (small models)
        empty = st.tips_json([]) if structured else "(empty)"
        answer = st.tips_json([TIP_EXAMPLE]) if structured else f"Tip: {TIP_EXAMPLE}"
        task = _tips_task(MAX_ENTRIES, structured)
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Current cheatsheet:\n{empty}\n\n"
                 f"{TIP_EXAMPLE_PROBLEM}\n\n{task}"},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"Current cheatsheet:\n"
                 f"{render(entries, 'tips', structured)}\n\n"
                 f"Problem: {p.question}\n\n{attempts}\n\n{task}"}]
    form = st.format_text("cheatsheet", "blocks") if structured else FORMAT
    body = (f"Current cheatsheet:\n\n{render(entries, structured=structured)}\n\n"
            f"Problem: {p.question}\n\n{attempts}\n\n"
            f"Rewrite the whole cheatsheet for future problems. Keep the entries that are still "
            f"useful (add 1 to the Count of any that helped here), correct wrong ones, drop wrong "
            f"or repeated ones, and add at most {NEW_PER_PROBLEM} new entries learned from this "
            f"problem. At most {MAX_ENTRIES} entries. Keep entries general: no numbers or names "
            f"from this problem.\n\n{form}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def _count(value: str | None) -> int:
    digits = "".join(ch for ch in (value or "") if ch.isdigit())[:6]
    return int(digits) if digits else 1


def entries_from_output(text: str, finish_reason: str, p, old: list[dict], counts: Counter,
                        item_format: str = "blocks", structured: bool = False) -> list[dict]:
    """Parse a rewrite into cheatsheet items; old entries written back verbatim stay as they are,
    new or changed ones lose the problem's own numbers and names."""
    if structured:        # a cut JSON rewrite keeps only its whole entries: none is cut short
        parsed, copied = st.parse_json(text, "cheatsheet", item_format, MAX_ENTRIES,
                                       TIP_EXAMPLE if item_format == "tips" else "")
        counts["copied_example"] += copied
    elif item_format == "tips":
        parsed, copied = parse_tips(text, MAX_ENTRIES, TIP_EXAMPLE)
        counts["copied_example"] += copied
    else:
        parsed = parse_blocks(text, "cheatsheet", MAX_ENTRIES)
    counts["malformed"] += parsed.malformed
    blocks = parsed.blocks
    if finish_reason == "length" and blocks and not structured:
        blocks = blocks[:-1]                      # the last entry of a cut rewrite may be cut too
        counts["malformed"] += 1
    known = {bank_mod.text_hash(it["text"]) for it in old}
    numbers, names = problem_specifics(p.question, p.gold)
    outcome = "success" if any(t["success"] for t in p.traces) else "failure"
    items = []
    for block in blocks:
        title, content = block["title"], block["content"]
        if bank_mod.text_hash(content) not in known:
            title, a = strip_specifics(title, numbers, names)
            content, b = strip_specifics(content, numbers, names)
            counts["specifics_stripped"] += a or b
        meta = {"style": "cheatsheet"}
        if item_format == "blocks":             # the model's own usage count (the tips keep ours)
            meta["count"] = _count(block.get("count"))
        items.append(bank_mod.new_item(content, title=title, kind="cheatsheet",
                                       source_ids=[p.id], outcome=outcome, meta=meta))
    counts["items_parsed"] += len(items)
    return items


def update_cheatsheet(engine: Engine, bank_path: str, p, attempts: str, params: SamplingParams,
                      counts: Counter, *, item_format: str = "blocks",
                      extracted_key: str | None = None,
                      meta_updates: dict | None = None, structured: bool = True) -> list[dict]:
    """One Dynamic Cheatsheet step for problem `p`: rewrite, then apply the rewrite to the bank
    (as JSON under a schema where the engine enforces one and `structured`).

    The bank is read just before the model call, so problems are taken strictly in order."""
    structured = st.use_constraints(engine, structured)
    old = current_entries(bank_path)
    prompt = cheatsheet_prompt(old, p, attempts, item_format, structured)
    if structured:
        params = dataclasses.replace(params, constraint=st.constraint(
            "cheatsheet", item_format, MAX_ENTRIES, params.max_new_tokens))
    gen = engine.generate([prompt], 1, params)[0].traces[0]
    counts["completion_tokens"] += gen.completion_tokens
    counts["structured"] += structured
    entries = entries_from_output(gen.text, gen.finish_reason, p, old, counts, item_format,
                                  structured)
    updates = {**(meta_updates or {}), "extracted_from": [extracted_key or p.id],
               "style": "cheatsheet"}
    if not entries:
        counts["rewrite_kept_old"] += 1           # as in the paper: keep the previous cheatsheet
        return bank_mod.add_items(bank_path, [], meta_updates=updates)
    return bank_mod.rewrite_items(bank_path, entries, kind="cheatsheet", source_id=p.id,
                                  keep_missing=gen.finish_reason == "length",
                                  meta_updates=updates)
