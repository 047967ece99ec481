"""Memory items asked for with a JSON schema (SamplingParams.constraint), for engines that enforce
one (`engine.supports_constraints`: hf and openai). The 135M default model never writes the field
blocks of ttx.memory.parse unconstrained; under the schema every output is JSON with the item
fields, so every extraction parses. The parsed items become the same blocks parse_blocks and
parse_tips return, so the checks after parsing (copied examples, the problem's own numbers and
names) are the same for both ways.

Formats (per style and item format): reasoningbank blocks {"items": [{title, description, content,
kind}]}; concepts {"concepts": [{concept, description, cues: [..], hints: [..]}]}; cheatsheet
blocks {"entries": [{title, content, count}]}; tips (reasoningbank or cheatsheet) {"tips": [..]}.
String lengths are bounded by the token budget, so the first item always ends within it and a small
model cannot ramble in one field.
"""

from __future__ import annotations

import json
import re

from ttx.engines.base import Constraint
from ttx.memory.parse import Parsed

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Field lengths (characters): (fewest, most, share of the room the token budget leaves). With a
# token budget, the first item's fields together fit in it even at one character per token (the
# 135M model falls into loops like "1.1.1.1", one token per character), so every answer holds at
# least one whole item; with more budget they grow to `most`.
_BOUNDS = {"title": (3, 60, 0.15), "concept": (3, 60, 0.15), "description": (10, 160, 0.25),
           "content": (10, 240, 0.55), "cheatsheet.content": (10, 240, 0.8),
           "cue": (3, 80, 0.1), "hint": (3, 120, 0.1)}
_OVERHEAD = 80            # the keys and punctuation of the first item, one character per token
# field -> what the prompt says it holds (a copy of the description is a copied example)
HINTS = {"title": "a short name", "description": "when to use it, and when not",
         "content": "1-3 sentences", "kind": "strategy or pitfall",
         "concept": "a short name", "cues": "signs in a problem that it applies",
         "hints": "how to apply it", "count": "how many problems it helped",
         "tip": "one general tip"}


def use_constraints(engine, wanted: bool = True) -> bool:
    """Ask for items with a schema: wanted, and the engine enforces constraints."""
    return bool(wanted) and engine.supports_constraints


def list_key(style: str, item_format: str) -> str:
    if item_format == "tips":
        return "tips"
    return {"reasoningbank": "items", "concepts": "concepts", "cheatsheet": "entries"}[style]


def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def _string(field: str, room: int | None) -> dict:
    fewest, most, share = _BOUNDS[field]
    if room is not None:
        most = max(fewest, min(most, int(room * share)))
    return {"type": "string", "minLength": fewest, "maxLength": most}


def _tip(room: int | None) -> dict:
    """A tip of 3 or more words, the first a word (parse_tips drops fragments), words of at most
    16 characters: a pattern, since llguidance cannot join a pattern with min/maxLength, so the
    word count bounds the length."""
    words = 24 if room is None else max(3, min(24, room // 17))
    return {"type": "string", "pattern": rf"^[A-Za-z]\S{{0,15}}( \S{{1,16}}){{2,{words - 1}}}$"}


def item_schema(style: str, item_format: str, limit: int, budget: int | None = None) -> dict:
    """The JSON schema of an extractor's answer: one list of 1 to `limit` items; `budget`: the
    answer's max_new_tokens (the fields are sized so the first item fits in it)."""
    room = None if budget is None else max(0, budget - _OVERHEAD)
    text = lambda field: _string(field, room)  # noqa: E731
    if item_format == "tips":
        item = _tip(room)
    elif style == "concepts":
        phrases = lambda field: {"type": "array", "minItems": 1, "maxItems": 3,  # noqa: E731
                                 "items": text(field)}
        item = _obj({"concept": text("concept"), "description": text("description"),
                     "cues": phrases("cue"), "hints": phrases("hint")})
    elif style == "cheatsheet":
        item = _obj({"title": text("title"), "content": text("cheatsheet.content"),
                     "count": {"type": "integer", "minimum": 1, "maximum": 999}})
    else:
        item = _obj({"title": text("title"), "description": text("description"),
                     "content": text("content"), "kind": {"enum": ["strategy", "pitfall"]}})
    return _obj({list_key(style, item_format): {"type": "array", "minItems": 1,
                                                "maxItems": limit, "items": item}})


def constraint(style: str, item_format: str, limit: int, budget: int | None = None) -> Constraint:
    return Constraint.json_schema(item_schema(style, item_format, limit, budget))


def format_text(style: str, item_format: str) -> str:
    """The prompt's description of the JSON answer (field hints, no example values)."""
    key = list_key(style, item_format)
    if item_format == "tips":
        return f'Answer with JSON only: {{"{key}": ["<{HINTS["tip"]}>", ...]}}'
    fields = {"reasoningbank": ("title", "description", "content", "kind"),
              "concepts": ("concept", "description", "cues", "hints"),
              "cheatsheet": ("title", "content", "count")}[style]
    shown = ", ".join(f'"{f}": ' + (f'["<{HINTS[f]}>", ...]' if f in ("cues", "hints")
                                    else f"<{HINTS[f]}>" if f == "count" else f'"<{HINTS[f]}>"')
                      for f in fields)
    return f'Answer with JSON only: {{"{key}": [{{{shown}}}, ...]}}'


def tips_json(tips: list[str]) -> str:
    """Tips as the JSON answer (the worked example turn, a cheatsheet shown to its curator)."""
    return json.dumps({"tips": list(tips)}, ensure_ascii=False)


def json_items(text: str, key: str) -> tuple[list, bool]:
    """The items of `{key: [...]}` and whether the answer was whole; from an answer cut by the
    token limit, the items that were complete before the cut."""
    try:
        data = json.loads(text)
        items = data.get(key) if isinstance(data, dict) else None
        return (items, True) if isinstance(items, list) else ([], False)
    except (json.JSONDecodeError, TypeError):
        pass
    m = re.search(rf'"{re.escape(key)}"\s*:\s*\[', text or "")
    if m is None:
        return [], False
    decoder, pos, items = json.JSONDecoder(), m.end(), []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items, False
        items.append(value)


def _copied(value: str) -> bool:
    """A field that repeats the prompt's own description of it (`<a short name>`, `...`)."""
    v = " ".join(value.lower().strip(" <>.\"'").split())
    return not v or v in HINTS.values()


def parse_json(text: str, style: str, item_format: str, limit: int,
               example: str = "") -> tuple[Parsed, int]:
    """Blocks as parse_blocks / parse_tips give them, from a schema-constrained answer; returns
    (blocks, copies of the prompt's example or field descriptions dropped)."""
    items, whole = json_items(text, list_key(style, item_format))
    out, copied, seen = Parsed(), 0, set()
    if not whole:
        out.malformed += 1                       # cut by the token limit (or not JSON at all)
    for item in items:
        if item_format == "tips":
            block = {"tip": item} if isinstance(item, str) else None
        else:
            block = item if isinstance(item, dict) else None
        if block is None:
            out.malformed += 1
            continue
        block = {k: "; ".join(map(str, v)) if isinstance(v, list) else str(v)
                 for k, v in block.items()}
        texts = [v for k, v in block.items() if k not in ("kind", "count")]
        if any(_copied(v) for v in texts) or (
                example and any(" ".join(v.lower().split()) == " ".join(example.lower().split())
                                for v in texts)):
            copied += 1
            continue
        if item_format == "tips":
            tip = " ".join(block["tip"].split())
            if len(tip.split()) < 3:
                out.malformed += 1                # a fragment, as parse_tips drops it
                continue
            if tip.lower() in seen:
                continue
            seen.add(tip.lower())
            clauses = [c for c in re.split(r"[,;:.]", tip) if c.strip()] or [tip]
            block = {"title": " ".join(clauses[0].split()[:8]), "content": tip}
        if "content" in block:                    # 1-3 sentences (ReasoningBank)
            block["content"] = " ".join(_SENTENCE_END.split(block["content"])[:3])
        if len(out.blocks) >= limit:
            out.malformed += 1
            continue
        out.blocks.append(block)
    return out, copied
