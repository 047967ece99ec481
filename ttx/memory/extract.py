"""memory-extract: distil scored tts-run records into bank items with an engine.

Styles (shared/specs/memory.md):
- reasoningbank (ReasoningBank, arXiv 2509.25140): a successful trace gives transferable
  strategies, a failed one gives the pitfall and how to prevent it (up to 3 items); several
  traces of one problem are contrasted, MaTTS parallel scaling, into at most 5 items.
- concepts (ArcMemo, arXiv 2509.04439): abstract, parameterised concepts, merged by name.
Outcomes come from `correct` (ttx score --per-record) or, with --judge self, from the model.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from ttx.engines.base import Engine, SamplingParams
from ttx.errors import TtxError
from ttx.io import iter_jsonl
from ttx.memory import bank as bank_mod
from ttx.memory.parse import parse_blocks, problem_specifics, split_list, strip_specifics

STYLES = ("reasoningbank", "concepts")
SYSTEM = "You distil short, reusable lessons from attempts at problems."
_LIMIT = {"single": 3, "contrast": 5}
_FORMAT = {
    "reasoningbank": ("Use exactly this format for each item, with nothing else:\n\n"
                      "Title: <a short name>\nDescription: <when to use it, and when not>\n"
                      "Content: <1-3 sentences>"),
    "concepts": ("Use exactly this format for each concept, with nothing else:\n\n"
                 "Concept: <a short name>\nDescription: <what the concept is, in general terms>\n"
                 "Cues: <signs in a problem that it applies, separated by ;>\n"
                 "Hints: <how to apply it, separated by ;>"),
}
_GENERAL = "Keep each item general: no numbers or names from this problem."


@dataclass
class Problem:
    id: str
    question: str
    gold: str | None
    pred: str | None
    correct: float | None
    traces: list[dict] = field(default_factory=list)    # {text, pred, success}


@dataclass
class ExtractConfig:
    style: str = "reasoningbank"
    judge: str = "gold"               # gold: `correct` from ttx score; self: ask the model
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    max_traces: int = 4               # traces shown per problem (MaTTS contrast)
    trace_chars: int = 1200
    batch: int = 8                    # problems per engine call; the bank is saved after each
    resume: bool = True               # skip problems the bank's sidecar lists as extracted
    limit: int | None = None
    progress: bool = True
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=256))


def read_problems(path: str, cfg: ExtractConfig) -> list[Problem]:
    """Group records by problem id (levels and repeats pool their traces); validate fields."""
    from ttx.scoring.answers import answers_equal, extract_answer

    groups: dict[str, Problem] = {}
    for line, r in iter_jsonl(path, required=[cfg.question_field, "traces"]):
        if not isinstance(r["traces"], list):
            raise TtxError("expected a list", path=path, line=line, field="traces")
        if cfg.judge == "gold" and not isinstance(r.get("correct"), (int, float)):
            raise TtxError("missing verdict: run `ttx score --per-record` on records with gold "
                           "answers, or use --judge self", path=path, line=line, field="correct")
        pid = str(r.get(cfg.id_field, line))
        gold = r.get(cfg.answer_field)
        gold_pred = extract_answer(str(gold)) if gold is not None else None
        p = groups.setdefault(pid, Problem(pid, str(r[cfg.question_field]),
                                           None if gold is None else str(gold), r.get("pred"),
                                           r.get("correct")))
        for t in r["traces"]:
            if not isinstance(t, dict) or not isinstance(t.get("text"), str):
                raise TtxError("expected objects with a text", path=path, line=line,
                               field="traces")
            if gold_pred is not None and cfg.judge == "gold":
                ok = answers_equal(t.get("pred"), gold_pred)
            else:                 # no gold: a trace shares the verdict of the answer it voted for
                ok = None if t.get("pred") != r.get("pred") else r.get("correct")
            p.traces.append({"text": t["text"], "pred": t.get("pred"), "success": ok})
        if cfg.limit is not None and len(groups) > cfg.limit:
            del groups[pid]
            break
    return list(groups.values())


def judge_prompt(p: Problem) -> list[dict]:
    return [{"role": "user", "content":
             f"Problem: {p.question}\nProposed answer: {p.pred}\n"
             "Is the proposed answer correct? Reply with one word: yes or no."}]


def parse_verdict(text: str) -> float | None:
    m = re.search(r"\b(yes|no|correct|incorrect|wrong)\b", text.lower())
    return None if m is None else float(m.group(1) in ("yes", "correct"))


def _verdict(success) -> str:
    return {True: "CORRECT", False: "WRONG"}.get(None if success is None else bool(success),
                                                 "UNJUDGED")


def extraction_prompt(p: Problem, cfg: ExtractConfig) -> tuple[list[dict], str]:
    """The chat prompt for one problem, and its mode: single trace or contrast (MaTTS)."""
    seen, traces = set(), []
    for t in p.traces:
        if t["text"] not in seen:
            seen.add(t["text"])
            traces.append(t)
    traces = traces[:cfg.max_traces]
    clip = lambda s: s if len(s) <= cfg.trace_chars else s[:cfg.trace_chars] + " ..."  # noqa: E731
    mode = "contrast" if len(traces) > 1 else "single"
    limit = _LIMIT[mode]
    if mode == "single":
        t = traces[0] if traces else {"text": "", "success": None}
        head = (f"Problem: {p.question}\n\nAttempt (judged {_verdict(t['success'])}):\n"
                f"{clip(t['text'])}\n\n")
        if cfg.style == "concepts":
            task = f"Write up to {limit} abstract concepts this problem uses."
        elif t["success"]:
            task = (f"Write up to {limit} memory items: general strategies that made this "
                    "attempt work and would help on similar problems.")
        else:
            task = (f"Write up to {limit} memory items: why this attempt failed (the pitfall) "
                    "and what would prevent the failure.")
    else:
        shown = "\n\n".join(f"Attempt {i} (judged {_verdict(t['success'])}):\n{clip(t['text'])}"
                            for i, t in enumerate(traces, start=1))
        head = f"Problem: {p.question}\n\n{shown}\n\n"
        if cfg.style == "concepts":
            task = f"Compare the attempts and write up to {limit} abstract concepts they rely on."
        else:
            task = (f"Compare the attempts: what did the correct ones do that the wrong ones did "
                    f"not, and which mistakes recur? Write up to {limit} memory items: "
                    "strategies that work and pitfalls with how to prevent them.")
    body = f"{head}{task} {_GENERAL}\n\n{_FORMAT[cfg.style]}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}], mode


def items_from_output(text: str, p: Problem, cfg: ExtractConfig, mode: str,
                      counts: Counter) -> list[dict]:
    """Parse the model's output into bank items; malformed blocks and stripped ones counted."""
    parsed = parse_blocks(text, cfg.style, _LIMIT[mode])
    counts["malformed"] += parsed.malformed
    numbers, names = problem_specifics(p.question, p.gold)
    any_success = any(t["success"] for t in p.traces)
    outcome = "success" if any_success else "failure"
    items = []
    for block in parsed.blocks:
        stripped = False
        for key, value in list(block.items()):
            block[key], changed = strip_specifics(value, numbers, names)
            stripped |= changed
        counts["specifics_stripped"] += stripped
        if cfg.style == "concepts":
            cues, hints = split_list(block.get("cues")), split_list(block.get("hints"))
            text_ = bank_mod.concept_text(block["concept"], block["description"], cues, hints)
            item = bank_mod.new_item(text_, title=block["concept"], kind="concept",
                                     source_ids=[p.id], outcome=outcome,
                                     meta={"description": block["description"], "cues": cues,
                                           "hints": hints, "style": cfg.style})
        else:
            kind = (block.get("kind") or "").lower().strip()
            if kind not in ("strategy", "pitfall"):
                kind = "strategy" if any_success else "pitfall"
            desc = block.get("description", "")
            text_ = block["content"] + (f" When: {desc}" if desc else "")
            item = bank_mod.new_item(text_, title=block["title"], kind=kind, source_ids=[p.id],
                                     outcome=outcome,
                                     meta={"description": desc, "content": block["content"],
                                           "style": cfg.style, "mode": mode})
        items.append(item)
    counts["items_parsed"] += len(items)
    return items


def extract_to_bank(engine: Engine, input_path: str, bank_path: str,
                    cfg: ExtractConfig) -> dict:
    """Extract items from every problem in `input_path` and merge them into the bank."""
    from tqdm import tqdm

    from ttx.tts.run import call_seed

    if cfg.style not in STYLES:
        raise TtxError(f"unknown style {cfg.style!r} (choose {', '.join(STYLES)})", field="--style")
    t0 = time.perf_counter()
    problems = read_problems(input_path, cfg)
    done = set(bank_mod.load_meta(bank_path).get("extracted_from", [])) if cfg.resume else set()
    bank_mod.load_bank(bank_path)                   # a bad existing bank fails before the model
    todo = [p for p in problems if p.id not in done]
    counts: Counter = Counter(dict.fromkeys(("items_parsed", "malformed", "specifics_stripped",
                                             "judge_unparsed", "completion_tokens",
                                             "mode_single", "mode_contrast"), 0))
    events: Counter = Counter()
    bar = tqdm(total=len(todo), desc=f"memory-extract {cfg.style}", unit="problem",
               disable=not cfg.progress, file=sys.stderr)
    for b, start in enumerate(range(0, len(todo), cfg.batch)):
        chunk = todo[start:start + cfg.batch]
        seed = call_seed(cfg.params.seed, b)
        params = SamplingParams(max_new_tokens=cfg.params.max_new_tokens,
                                temperature=cfg.params.temperature, top_p=cfg.params.top_p,
                                seed=seed)
        if cfg.judge == "self":
            judge_params = SamplingParams(max_new_tokens=8, temperature=0.0, seed=seed)
            gens = engine.generate([judge_prompt(p) for p in chunk], 1, judge_params)
            for p, g in zip(chunk, gens):
                verdict = parse_verdict(g.traces[0].text)
                counts["judge_unparsed"] += verdict is None
                p.correct = verdict or 0.0
                for t in p.traces:       # traces voting for the judged answer share its verdict
                    t["success"] = bool(p.correct) if t["pred"] == p.pred else False
        prompts, modes = zip(*(extraction_prompt(p, cfg) for p in chunk))
        gens = engine.generate(list(prompts), 1, params)
        items = []
        for p, mode, g in zip(chunk, modes, gens):
            counts[f"mode_{mode}"] += 1
            items += items_from_output(g.traces[0].text, p, cfg, mode, counts)
            counts["completion_tokens"] += g.traces[0].completion_tokens
        for e in bank_mod.add_items(bank_path, items, meta_updates={
                "extracted_from": [p.id for p in chunk], "style": cfg.style}):
            events[e["event"]] += 1
        bar.update(len(chunk))
    bar.close()
    return {"problems": len(problems), "skipped_already_extracted": len(problems) - len(todo),
            "extracted": len(todo), **{k: int(v) for k, v in sorted(counts.items())},
            "events": {k: events.get(k, 0) for k in ("ADD", "UPDATE", "NOOP")},
            "bank_items": len(bank_mod.load_bank(bank_path)),
            "wall_s": round(time.perf_counter() - t0, 3)}


def extract_from_options(*, input_path: str, output_path: str, style: str, judge: str,
                         engine: str, model: str, device: str, dtype: str, base_url: str | None,
                         concurrency: int, max_new_tokens: int, temperature: float, top_p: float,
                         seed: int | None, max_traces: int, batch: int, question_field: str,
                         answer_field: str, id_field: str, limit: int | None, resume: bool,
                         progress: bool) -> dict:
    """`ttx memory-extract`: validate inputs, open the engine, extract, write the manifest."""
    options = dict(locals())                    # every resolved option, for the manifest
    from ttx.engines import open_engine
    from ttx.io import now_iso, write_manifest

    started = now_iso()
    if output_path == "-":
        raise TtxError("a memory bank must be a file, not stdout", field="--output")
    cfg = ExtractConfig(style=style, judge=judge, question_field=question_field,
                        answer_field=answer_field, id_field=id_field, max_traces=max_traces,
                        batch=batch, resume=resume, limit=limit, progress=progress,
                        params=SamplingParams(max_new_tokens=max_new_tokens,
                                              temperature=temperature, top_p=top_p, seed=seed))
    read_problems(input_path, cfg)              # bad input fails before the model loads
    bank_mod.load_bank(output_path)             # and so does a bad existing bank
    opened = open_engine(engine, model=model, device=device, dtype=dtype, base_url=base_url,
                         concurrency=concurrency, max_batch_rows=batch)
    try:
        summary = extract_to_bank(opened, input_path, output_path, cfg)
    finally:
        opened.close()
    write_manifest(output_path, stage="memory-extract",
                   options={"cli": options, "engine": opened.name, "model": opened.model_name},
                   inputs=[input_path], started=started, summary=summary)
    return summary
