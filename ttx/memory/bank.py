"""The memory bank: one JSONL item per line, a `<bank>.meta.json` sidecar, an events log.

Item schema (shared/specs/memory.md): {id, text, title, kind, source_ids, outcome, created_at,
updated_at, uses, hash, meta}. Every change goes through `add_items`, which holds an exclusive
lock on `<bank>.lock` while it loads, merges and atomically replaces the bank, so concurrent
writers cannot corrupt it; so do `rewrite_items` (a Dynamic Cheatsheet rewrite, which deletes the
entries it leaves out) and `record_uses`. Changes are logged mem0-style (ADD / UPDATE / DELETE /
NOOP) in `<bank>.events.jsonl`.

`uses` counts the distinct problems an item was given to; `meta.used_by`, `meta.solved_by` and
`meta.failed_by` hold their ids (sets, so recording the same record twice changes nothing).
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
    with bank_lock(bank):
        items = load_bank(bank)
        meta = load_meta(bank)
        events = merge_into(items, candidates, float(meta["near_duplicate"]["threshold"]))
        _update_meta(meta, meta_updates)
        _save(bank, items, meta, events)
    return events


def _save(bank, items: list[dict], meta: dict | None, events: Sequence[dict]) -> None:
    """Replace the bank (and its sidecar) atomically and append the events; under the lock."""
    meta_path, events_path, _ = sidecar_paths(bank)
    write_jsonl(bank, items)
    if meta is not None:
        write_json(meta_path, meta)
    at = now_iso()
    with open(events_path, "a", encoding="utf-8") as log:
        for e in events:
            log.write(json.dumps({"at": at, **e}, ensure_ascii=False) + "\n")


def _update_meta(meta: dict, updates: dict | None) -> None:
    for key, value in (updates or {}).items():
        if key == "extracted_from":
            value = sorted(set(meta.get(key, [])) | set(value))
        meta[key] = value


def rewrite_items(bank: str | os.PathLike, entries: Sequence[dict], *, kind: str,
                  source_id: str, keep_missing: bool = False,
                  meta_updates: dict | None = None) -> list[dict]:
    """Dynamic Cheatsheet: `entries` (new items, in order) become the bank's items of `kind`.

    An entry with an old entry's text is that entry (NOOP); one with an old entry's title, or
    near its text, updates it in place (UPDATE: same id, new text, `source_id` added); any other
    is added (ADD). Old entries the rewrite leaves out are deleted (DELETE), unless
    `keep_missing` (a rewrite cut short by the token limit). Items of other kinds are untouched.
    """
    with bank_lock(bank):
        items = load_bank(bank)
        meta = load_meta(bank)
        threshold = float(meta["near_duplicate"]["threshold"])
        others = [it for it in items if it["kind"] != kind]
        old = [it for it in items if it["kind"] == kind]
        taken: set[str] = set()
        doc, events = [], []
        for new in entries:
            free = [it for it in old if it["id"] not in taken]
            match = next((it for it in free if it["hash"] == new["hash"]), None)
            sim = 1.0
            if match is None:
                match = next((it for it in free
                              if normalise(it["title"]) == normalise(new["title"])), None)
                sim = jaccard(match["text"], new["text"]) if match else 0.0
            if match is None and free:
                best = max(free, key=lambda it: jaccard(it["text"], new["text"]))
                sim = jaccard(best["text"], new["text"])
                match = best if sim >= threshold else None
            if match is None:
                if any(it["id"] == new["id"] for it in doc):
                    continue                              # the same entry twice in one rewrite
                doc.append(new)
                events.append({"event": "ADD", "id": new["id"], "source_ids": new["source_ids"]})
                continue
            taken.add(match["id"])
            if match["hash"] == new["hash"] and match["meta"] == {**match["meta"], **new["meta"]}:
                doc.append(match)
                events.append({"event": "NOOP", "id": match["id"], "source_ids": [source_id]})
                continue
            changed_text = match["hash"] != new["hash"]
            updated = {**match, "meta": {**match["meta"], **new["meta"]}, "updated_at": now_iso()}
            if changed_text:
                updated.update(text=new["text"], title=new["title"], hash=new["hash"],
                               outcome=new["outcome"],
                               source_ids=sorted(set(match["source_ids"]) | {str(source_id)}))
            doc.append(updated)
            events.append({"event": "UPDATE", "id": match["id"], "similarity": round(sim, 3),
                           "source_ids": [source_id]})
        for it in old:
            if it["id"] not in taken:
                if keep_missing:
                    doc.append(it)
                else:
                    events.append({"event": "DELETE", "id": it["id"], "title": it["title"],
                                   "text": it["text"], "source_ids": [source_id]})
        _update_meta(meta, meta_updates)
        _save(bank, others + doc, meta, events)
    return events


def record_uses(bank: str | os.PathLike, uses: Sequence[tuple[str, Sequence[str], float | None]]
                ) -> int:
    """Credit items with the problems they were given to: (problem id, item ids, correct or
    None). `uses` = distinct problems; solved/failed as scored. Returns the items changed."""
    if not any(ids for _, ids, _ in uses):
        return 0
    with bank_lock(bank):
        items = {it["id"]: it for it in load_bank(bank)}
        changed, events = set(), []
        for pid, ids, correct in uses:
            pid = str(pid)
            for mid in ids:
                it = items.get(mid)
                if it is None:
                    continue                              # deleted since, or another bank
                m = it["meta"]
                before = (list(m.get("used_by", [])), list(m.get("solved_by", [])),
                          list(m.get("failed_by", [])))
                m["used_by"] = sorted(set(m.get("used_by", [])) | {pid})
                m.setdefault("solved_by", [])
                m.setdefault("failed_by", [])
                if correct is not None:
                    into, out_of = ("solved_by", "failed_by") if correct else ("failed_by",
                                                                                "solved_by")
                    m[into] = sorted(set(m.get(into, [])) | {pid})
                    m[out_of] = [x for x in m.get(out_of, []) if x != pid]
                if before != (m["used_by"], m["solved_by"], m["failed_by"]):
                    it["uses"] = len(m["used_by"])
                    changed.add(mid)
                    events.append({"event": "UPDATE", "id": mid, "used_by": pid,
                                   "solved": None if correct is None else bool(correct),
                                   "uses": it["uses"]})
        if changed:
            _save(bank, list(items.values()), None, events)
    return len(changed)
