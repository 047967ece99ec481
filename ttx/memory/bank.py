"""The memory bank: one JSONL item per line, a `<bank>.meta.json` sidecar, an events log.

Item schema (shared/specs/memory.md): {id, text, title, kind, source_ids, outcome, created_at,
updated_at, uses, hash, meta}. Every change goes through `add_items`, which holds an exclusive
lock on `<bank>.lock` while it loads, merges and atomically replaces the bank, so concurrent
writers cannot corrupt it. Changes are logged mem0-style (ADD / UPDATE / NOOP) in
`<bank>.events.jsonl`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import iter_jsonl, now_iso, write_json, write_jsonl

KINDS = ("strategy", "pitfall", "concept", "cheatsheet")
OUTCOMES = ("success", "failure")
DEFAULT_META = {"retriever": "bm25", "tokenizer": "bm25s english stopwords",
                "embedder": None, "dimension": None,
                "near_duplicate": {"measure": "jaccard", "threshold": 0.7}}
_FIELDS = {"id": str, "text": str, "title": str, "kind": str, "source_ids": list,
           "outcome": str, "created_at": str, "updated_at": str, "uses": int, "hash": str,
           "meta": dict}
_WORD = re.compile(r"[a-z]+")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def new_item(text: str, *, title: str, kind: str, source_ids: Sequence, outcome: str,
             meta: dict | None = None) -> dict:
    """A fresh item; its id derives from its text, so two writers give one text one id."""
    h = text_hash(text)
    at = now_iso()
    return {"id": f"mem-{h[:12]}", "text": text, "title": title, "kind": kind,
            "source_ids": sorted({str(s) for s in source_ids}), "outcome": outcome,
            "created_at": at, "updated_at": at, "uses": 0, "hash": h, "meta": meta or {}}


def sidecar_paths(bank: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(<bank>.meta.json, <bank>.events.jsonl, <bank>.lock)."""
    p = Path(bank)
    return (p.with_name(p.name + ".meta.json"), p.with_name(p.name + ".events.jsonl"),
            p.with_name(p.name + ".lock"))


def _check(record: dict, path: str, line: int) -> dict:
    for name, typ in _FIELDS.items():
        if name not in record:
            raise TtxError("missing", path=path, line=line, field=name)
        if not isinstance(record[name], typ) or (typ is int and isinstance(record[name], bool)):
            raise TtxError(f"expected {typ.__name__}", path=path, line=line, field=name)
    if record["kind"] not in KINDS:
        raise TtxError(f"expected one of {', '.join(KINDS)}", path=path, line=line, field="kind")
    if record["outcome"] not in OUTCOMES:
        raise TtxError("expected success or failure", path=path, line=line, field="outcome")
    if not record["text"].strip():
        raise TtxError("empty", path=path, line=line, field="text")
    return record


def load_bank(bank: str | os.PathLike) -> list[dict]:
    """All items, validated; a missing bank is empty. A bad line names file, line and field."""
    if not Path(bank).exists():
        return []
    return [_check(r, str(bank), line) for line, r in iter_jsonl(bank)]


def load_meta(bank: str | os.PathLike) -> dict:
    meta_path = sidecar_paths(bank)[0]
    if not meta_path.exists():
        return json.loads(json.dumps(DEFAULT_META))
    try:
        return {**DEFAULT_META, **json.loads(meta_path.read_text(encoding="utf-8"))}
    except json.JSONDecodeError as exc:
        raise TtxError(f"not valid JSON ({exc.msg})", path=str(meta_path)) from None


@contextmanager
def bank_lock(bank: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `<bank>.lock` (fcntl.flock: released when the holder dies)."""
    lock_path = sidecar_paths(bank)[2]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _merge_concept(old: dict, new: dict) -> bool:
    """ArcMemo: same name -> keep the first description, union cues and hints."""
    changed = False
    for key in ("cues", "hints"):
        have = old["meta"].setdefault(key, [])
        seen = {normalise(x) for x in have}
        for x in new["meta"].get(key, []):
            if normalise(x) not in seen:
                have.append(x)
                seen.add(normalise(x))
                changed = True
    if changed:
        old["text"] = concept_text(old["title"], old["meta"].get("description", ""),
                                   old["meta"]["cues"], old["meta"]["hints"])
    return changed


def concept_text(name: str, description: str, cues: Sequence[str], hints: Sequence[str]) -> str:
    text = f"{name}: {description}".strip()
    if cues:
        text += " Cues: " + "; ".join(cues) + "."
    if hints:
        text += " Hints: " + "; ".join(hints) + "."
    return text


def _match(items: list[dict], new: dict, threshold: float) -> tuple[dict | None, float]:
    for old in items:                                   # exact duplicate: same normalised text
        if old["hash"] == new["hash"]:
            return old, 1.0
    if new["kind"] == "concept":                        # concepts merge by name
        for old in items:
            if old["kind"] == "concept" and normalise(old["title"]) == normalise(new["title"]):
                return old, jaccard(old["text"], new["text"])
        return None, 0.0
    best, best_sim = None, 0.0
    for old in items:                                   # near duplicate: word-set Jaccard
        if old["kind"] != new["kind"]:
            continue
        sim = jaccard(old["text"], new["text"])
        if sim > best_sim:
            best, best_sim = old, sim
    return (best, best_sim) if best_sim >= threshold else (None, best_sim)


def merge_into(items: list[dict], candidates: Sequence[dict], threshold: float) -> list[dict]:
    """Merge candidates into `items` in place; returns one event per candidate."""
    events = []
    for new in candidates:
        old, sim = _match(items, new, threshold)
        if old is None:
            items.append(new)
            events.append({"event": "ADD", "id": new["id"], "source_ids": new["source_ids"]})
            continue
        sources = sorted(set(old["source_ids"]) | set(new["source_ids"]))
        changed = sources != old["source_ids"]
        old["source_ids"] = sources
        if new["kind"] == "concept" and _merge_concept(old, new):
            old["hash"] = text_hash(old["text"])
            changed = True
        if changed:
            old["updated_at"] = now_iso()
        events.append({"event": "UPDATE" if changed else "NOOP", "id": old["id"],
                       "merged": new["id"], "similarity": round(sim, 3),
                       "source_ids": new["source_ids"]})
    return events


def add_items(bank: str | os.PathLike, candidates: Sequence[dict], *,
              meta_updates: dict | None = None) -> list[dict]:
    """Load, merge, save atomically and log events, all under the bank's lock."""
    if str(bank) == "-":
        raise TtxError("a memory bank must be a file, not stdout", field="--output")
    meta_path, events_path, _ = sidecar_paths(bank)
    with bank_lock(bank):
        items = load_bank(bank)
        meta = load_meta(bank)
        events = merge_into(items, candidates, float(meta["near_duplicate"]["threshold"]))
        for key, value in (meta_updates or {}).items():
            if key == "extracted_from":
                value = sorted(set(meta.get(key, [])) | set(value))
            meta[key] = value
        write_jsonl(bank, items)
        write_json(meta_path, meta)
        at = now_iso()
        with open(events_path, "a", encoding="utf-8") as log:
            for e in events:
                log.write(json.dumps({"at": at, **e}, ensure_ascii=False) + "\n")
    return events
