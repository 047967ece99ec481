"""Defensive parsing of an extractor's output into memory items.

The model is asked for blocks such as `Title: / Description: / Content:` (reasoningbank) or
`Concept: / Description: / Cues: / Hints:` (concepts) or `Title: / Content: / Count:`
(cheatsheet). Anything else is tolerated: list markers
and bold markup are ignored, a wrapped line continues the field above it, and a block missing a
required field is dropped and counted as malformed, never raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KEYS = "title|description|content|kind|concept|cues|hints|count"
_FIELD = re.compile(rf"^[\s\-*#>\d.)]*\**\s*({_KEYS})\s*\**\s*[:：]\s*\**\s*(.*?)\s*\**\s*$", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")
_NOT_NAMES = {"How", "What", "When", "Where", "Which", "Who", "Why", "If", "The", "A", "An",
              "In", "On", "At", "Each", "Every", "After", "Then", "There", "This", "That", "It",
              "Find", "Compute", "Calculate", "Suppose", "Let", "Given", "All", "Some", "Answer",
              "She", "He", "They", "We", "You", "Her", "His", "Their", "One", "Two", "For",
              "Is", "Are", "Do", "Does", "Can", "Write", "Show", "Question", "Assume"}

# style -> (block head, required fields, optional fields)
FORMATS = {"reasoningbank": ("title", ("title", "content"), ("description", "kind")),
           "concepts": ("concept", ("concept", "description"), ("cues", "hints")),
           "cheatsheet": ("title", ("title", "content"), ("count",))}


@dataclass
class Parsed:
    blocks: list[dict] = field(default_factory=list)
    malformed: int = 0           # blocks dropped for a missing or unusable field


def parse_blocks(text: str, style: str, max_items: int) -> Parsed:
    """Blocks of fields from free text; at most `max_items` kept (the rest count as dropped)."""
    head, required, _ = FORMATS[style]
    out, current, last = Parsed(), None, None
    raw: list[dict] = []
    for line in (text or "").splitlines():
        m = _FIELD.match(line)
        if m:
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == head:
                current, last = {head: value}, head
                raw.append(current)
            elif current is None:
                out.malformed += 1                    # a field before any block head
                current, last = {key: value}, key
                raw.append(current)
            else:
                current[key] = f"{current.get(key, '')} {value}".strip()
                last = key
        elif current is not None and last and line.strip():
            current[last] = f"{current[last]} {line.strip()}".strip()   # a wrapped line
    if not raw and (text or "").strip():
        out.malformed += 1                            # prose with no block at all
    for block in raw:
        if head not in block:
            continue                                  # already counted above
        if any(not block.get(k) for k in required) or len(block[head]) > 120:
            out.malformed += 1
            continue
        if len(out.blocks) >= max_items:
            out.malformed += 1                        # over the style's item limit
            continue
        if "content" in block:                        # 1-3 sentences (ReasoningBank)
            block["content"] = " ".join(_SENTENCE_END.split(block["content"])[:3])
        out.blocks.append(block)
    return out


def split_list(value: str | None) -> list[str]:
    return [x.strip(" .") for x in re.split(r"[;\n]", value or "") if x.strip(" .")]


def problem_specifics(question: str, answer: str | None = None) -> tuple[set[str], set[str]]:
    """(numbers, names) literally in a problem: an item must not carry them to another one."""
    text = f"{question} {answer or ''}"
    numbers = set(_NUMBER.findall(text))
    names = {w for w in _CAPITALISED.findall(question) if w not in _NOT_NAMES}
    return numbers, names


def strip_specifics(text: str, numbers: set[str], names: set[str]) -> tuple[str, bool]:
    """Replace the problem's own numbers with N and its names with 'someone'."""
    new = text
    for num in sorted(numbers, key=len, reverse=True):
        new = re.sub(rf"(?<![\w.]){re.escape(num)}(?![\w])", "N", new)
    for name in names:
        new = re.sub(rf"\b{re.escape(name)}\b", "someone", new)
    return new, new != text


# The tips format's worked example turn (ttx.memory.extract and .cheatsheet show it first); an
# item that repeats TIP_EXAMPLE is the example copied, not a lesson.
TIP_EXAMPLE_PROBLEM = ("Problem: Ann has 5 pens and buys 3 more. How many pens does she have?\n\n"
                       "Attempt (judged CORRECT):\nAnn has 5 + 3 = 8 pens. The answer is 8.")
TIP_EXAMPLE = "When something is added to what a person has, add the two amounts."
_TIP = re.compile(r"^[\s\-*#>]*(?:\d+[.)]\s*)?\**\s*tip\s*\d*\s*\**\s*[:：.]\s*\**\s*(?:\d+[.)]\s*)?(.*?)\s*$",
                  re.I)


def parse_tips(text: str, max_items: int, example: str = "") -> tuple[Parsed, int]:
    """The `tips` item format, one `Tip: ...` line per item (small models keep to it far better
    than to field blocks). Returns (blocks with title and content, copies of the prompt's example
    dropped). The title is the tip's first clause; a repeated tip counts once."""
    out, copied, seen = Parsed(), 0, set()
    raw = [m.group(1) for m in map(_TIP.match, (text or "").splitlines()) if m]
    if not raw and (text or "").strip():
        out.malformed += 1                            # prose with no tip at all
    for tip in raw:
        tip = tip.strip(" *")
        if len(tip.split()) < 3:
            out.malformed += 1                        # empty or a fragment
            continue
        if example and " ".join(tip.lower().split()) == " ".join(example.lower().split()):
            copied += 1                               # the prompt's example, copied
            continue
        if tip.lower() in seen:
            continue
        seen.add(tip.lower())
        if len(out.blocks) >= max_items:
            out.malformed += 1
            continue
        content = " ".join(_SENTENCE_END.split(tip)[:3])
        title = " ".join(re.split(r"[,;:.]", content)[0].split()[:8])
        out.blocks.append({"title": title, "content": content})
    return out, copied
