"""memory-extract: distil scored tts-run records into bank items with an engine.

Styles (shared/specs/memory.md):
- reasoningbank (ReasoningBank, arXiv 2509.25140): a successful trace gives transferable
  strategies, a failed one gives the pitfall and how to prevent it (up to 3 items); several
  traces of one problem are contrasted, MaTTS parallel scaling, into at most 5 items.
- concepts (ArcMemo, arXiv 2509.04439): abstract, parameterised concepts, merged by name.
- cheatsheet (Dynamic Cheatsheet, arXiv 2504.07952): one document rewritten after each problem,
  problems in order (ttx.memory.cheatsheet).
Outcomes come from `correct` (ttx score --per-record) or, with --judge self, from the model.
Records that carry `memory_ids` (a run with --memory) credit those items' `uses`.
With an engine that enforces output constraints (hf, openai), items are asked for with a JSON
schema and the judge answers from a choice list (ttx.memory.structured); the text parsing of
ttx.memory.parse serves engines without them, or `structured=False`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import click

from ttx.engines.base import Constraint, Engine, SamplingParams
from ttx.engines.options import EngineOptions
from ttx.errors import TtxError
from ttx.io import iter_jsonl
from ttx.memory import bank as bank_mod
from ttx.memory import structured as st
from ttx.memory.parse import (
    TIP_EXAMPLE,
    TIP_EXAMPLE_PROBLEM,
    parse_blocks,
    parse_tips,
    problem_specifics,
    split_list,
    strip_specifics,
)
from ttx.options import opt

STYLES = ("reasoningbank", "concepts", "cheatsheet")
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
ITEM_FORMATS = ("blocks", "tips")
# The `tips` format: one "Tip: ..." line per item, shown once on another problem first (a worked
# example turn). The 135M default model never wrote the field blocks; with this it writes tips.
TIP_TASK = ("Write general tips for solving problems like this one, one per line, each starting "
            "with 'Tip:'. No numbers or names from the problem.")
TIP_TASK_JSON = ("Write general tips for solving problems like this one. No numbers or names from "
                 "the problem. " + st.format_text("reasoningbank", "tips"))


def tip_example_turns(structured: bool = False) -> list[dict]:
    if structured:
        return [{"role": "user", "content": f"{TIP_EXAMPLE_PROBLEM}\n\n{TIP_TASK_JSON}"},
                {"role": "assistant", "content": st.tips_json([TIP_EXAMPLE])}]
    return [{"role": "user", "content": f"{TIP_EXAMPLE_PROBLEM}\n\n{TIP_TASK}"},
            {"role": "assistant", "content": f"Tip: {TIP_EXAMPLE}"}]


@dataclass
class Problem:
    id: str
    question: str
    gold: str | None
    pred: str | None
    correct: float | None
    traces: list[dict] = field(default_factory=list)    # {text, pred, success}
    memory_ids: list[str] = field(default_factory=list)  # items its prompts were given


@dataclass
class ExtractIO:
    """memory-extract's input and bank (the command line's -i / -o)."""

    input: str = opt(None, "Scored records (ttx score --per-record), or tts-run records with "
                     "--judge self.", short="-i", required=True)
    output: str = opt(None, "Bank JSONL; an existing bank is merged into (duplicates logged as "
                      "events).", short="-o", required=True)


@dataclass
class ExtractConfig:
    style: str = opt("reasoningbank", "reasoningbank: strategies and pitfalls; concepts: ArcMemo "
                     "concepts by name; cheatsheet: one document rewritten after each problem "
                     "(Dynamic Cheatsheet).", type=click.Choice(STYLES))
    item_format: str = opt("blocks", "blocks: Title/Description/Content fields; tips: one 'Tip:' "
                           "line per item after a worked example (small models keep to it).",
                           type=click.Choice(ITEM_FORMATS))
    judge: str = opt("gold", "gold: the records' `correct`; self: the model judges each answer.",
                     type=click.Choice(["gold", "self"]))
    structured: bool = opt(True, "Ask for items with a JSON schema, and the self judge for "
                           "yes/no, where the engine enforces output constraints (hf, openai); "
                           "--no-structured: the text formats.", secondary="--no-structured")
    max_traces: int = opt(4, "Traces shown per problem; 2+ distinct ones are contrasted (MaTTS).",
                          type=click.IntRange(min=1))
    batch: int = opt(8, "Problems per engine call; the bank is saved after each.",
                     type=click.IntRange(min=1))
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Record field holding the gold answer.")
    id_field: str = opt("id", "Record field holding the problem id.")
    limit: int | None = opt(None, "Only the first N problems.", type=click.IntRange(min=1))
    resume: bool = opt(True, "Skip problems the bank already lists as extracted from.",
                       secondary="--no-resume")
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")
    trace_chars: int = opt(1200, cli=False)   # characters of each trace shown in the prompt
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=256),
                                   metadata={"cli": {"cli": False}})


@dataclass
class ExtractSampling:
    """How the extractor (and the self judge) samples."""

    max_new_tokens: int = opt(256, "Tokens per extraction answer.", type=click.IntRange(min=1))
    temperature: float = opt(0.0, "Sampling temperature (0: greedy).", type=click.FloatRange(min=0))
    top_p: float = opt(1.0, "Nucleus sampling mass.", type=click.FloatRange(0, 1, min_open=True))
    seed: int = opt(0, "Random seed (one per engine call, derived from it).", type=int)

    def params(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, seed=self.seed)


def read_problems(path: str, cfg: ExtractConfig) -> list[Problem]:
    """Group records by problem id (levels and repeats pool their traces); validate fields."""
    groups: dict[str, Problem] = {}
    for line, r in iter_jsonl(path, required=[cfg.question_field, "traces"]):
        pid = add_record(groups, r, cfg, path, line)
        if cfg.limit is not None and len(groups) > cfg.limit:
            del groups[pid]
            break
    return list(groups.values())


def add_record(groups: dict[str, Problem], r: dict, cfg: ExtractConfig, path: str,
               line: int) -> str:
    """Add one record's traces to its problem in `groups` (created on first sight); its id."""
    from ttx.scoring.answers import answers_equal, extract_answer

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
            raise TtxError("expected objects with a text", path=path, line=line, field="traces")
        if gold_pred is not None and cfg.judge == "gold":
            ok = answers_equal(t.get("pred"), gold_pred)
        else:                     # no gold: a trace shares the verdict of the answer it voted for
            ok = None if t.get("pred") != r.get("pred") else r.get("correct")
        p.traces.append({"text": t["text"], "pred": t.get("pred"), "success": ok})
    ids = r.get("memory_ids") or []
    if not isinstance(ids, list):
        raise TtxError("expected a list of item ids", path=path, line=line, field="memory_ids")
    p.memory_ids = sorted(set(p.memory_ids) | {str(i) for i in ids})
    return pid


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


def attempts_text(p: Problem, cfg: ExtractConfig) -> tuple[str, str, list[dict]]:
    """The problem's distinct attempts with their verdicts, as shown to the extractor; its mode
    (one attempt: single; several: contrast, MaTTS parallel) and the attempts shown."""
    seen, traces = set(), []
    for t in p.traces:
        if t["text"] not in seen:
            seen.add(t["text"])
            traces.append(t)
    traces = traces[:cfg.max_traces]
    clip = lambda s: s if len(s) <= cfg.trace_chars else s[:cfg.trace_chars] + " ..."  # noqa: E731
    if len(traces) <= 1:
        t = traces[0] if traces else {"text": "", "success": None}
        return (f"Attempt (judged {_verdict(t['success'])}):\n{clip(t['text'])}", "single",
                [t])
    return ("\n\n".join(f"Attempt {i} (judged {_verdict(t['success'])}):\n{clip(t['text'])}"
                        for i, t in enumerate(traces, start=1)), "contrast", traces)


def extraction_prompt(p: Problem, cfg: ExtractConfig,
                      structured: bool = False) -> tuple[list[dict], str]:
    """The chat prompt for one problem, and its mode: single trace or contrast (MaTTS).
    structured: the answer is JSON under item_schema (the prompt describes that format)."""
    shown, mode, traces = attempts_text(p, cfg)
    limit = _LIMIT[mode]
    head = f"Problem: {p.question}\n\n{shown}\n\n"
    if mode == "single":
        if cfg.style == "concepts":
            task = f"Write up to {limit} abstract concepts this problem uses."
        elif traces[0]["success"]:
            task = (f"Write up to {limit} memory items: general strategies that made this "
                    "attempt work and would help on similar problems.")
        else:
            task = (f"Write up to {limit} memory items: why this attempt failed (the pitfall) "
                    "and what would prevent the failure.")
    elif cfg.style == "concepts":
        task = f"Compare the attempts and write up to {limit} abstract concepts they rely on."
    else:
        task = (f"Compare the attempts: what did the correct ones do that the wrong ones did "
                f"not, and which mistakes recur? Write up to {limit} memory items: "
                "strategies that work and pitfalls with how to prevent them.")
    if cfg.item_format == "tips":
        if mode == "contrast":
            task = "Compare the attempts: what did the correct ones do, and which mistakes recur?"
        elif traces[0]["success"]:
            task = "What made this attempt work?"
        else:
            task = "What went wrong in this attempt, and how can it be avoided?"
        tip_task = TIP_TASK_JSON if structured else TIP_TASK
        return ([{"role": "system", "content": SYSTEM}, *tip_example_turns(structured),
                 {"role": "user", "content": f"{head}{task} {tip_task} At most {limit}."}], mode)
    fmt = st.format_text(cfg.style, "blocks") if structured else _FORMAT[cfg.style]
    body = f"{head}{task} {_GENERAL}\n\n{fmt}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}], mode


def items_from_output(text: str, p: Problem, cfg: ExtractConfig, mode: str,
                      counts: Counter, structured: bool = False) -> list[dict]:
    """Parse the model's output into bank items; malformed blocks and stripped ones counted.
    structured: the output is JSON under item_schema (else the text formats of parse.py)."""
    if structured:
        parsed, copied = st.parse_json(text, cfg.style, cfg.item_format, _LIMIT[mode],
                                       TIP_EXAMPLE if cfg.item_format == "tips" else "")
        counts["copied_example"] += copied
    elif cfg.item_format == "tips":
        parsed, copied = parse_tips(text, _LIMIT[mode], TIP_EXAMPLE)
        counts["copied_example"] += copied
    else:
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
                                           "style": cfg.style, "mode": mode,
                                           "format": cfg.item_format})
        items.append(item)
    counts["items_parsed"] += len(items)
    return items


def check_style(style: str, item_format: str) -> None:
    if style not in STYLES:
        raise TtxError(f"unknown style {style!r} (choose {', '.join(STYLES)})", field="--style")
    if item_format not in ITEM_FORMATS:
        raise TtxError(f"unknown item format {item_format!r}", field="--item-format")
    if style == "concepts" and item_format == "tips":
        raise TtxError("concepts need their fields (name, description, cues, hints): use "
                       "--item-format blocks", field="--item-format")


def judge_problems(engine: Engine, chunk: list[Problem], seed: int | None,
                   counts: Counter, structured: bool = True) -> None:
    """--judge self: the model says whether each problem's answer is right (no gold needed); an
    engine with constraints answers from the choice list yes / no."""
    choice = Constraint.choice(["yes", "no"]) if st.use_constraints(engine, structured) else None
    params = SamplingParams(max_new_tokens=8, temperature=0.0, seed=seed, constraint=choice)
    gens = engine.generate([judge_prompt(p) for p in chunk], 1, params)
    for p, g in zip(chunk, gens):
        verdict = parse_verdict(g.traces[0].text)
        counts["judge_unparsed"] += verdict is None
        p.correct = verdict or 0.0
        for t in p.traces:              # traces voting for the judged answer share its verdict
            t["success"] = bool(p.correct) if t["pred"] == p.pred else False


def extract_items(engine: Engine, chunk: list[Problem], cfg: ExtractConfig,
                  params: SamplingParams, counts: Counter) -> list[dict]:
    """reasoningbank / concepts: one engine call for the chunk, parsed into candidate items
    (with a JSON schema per prompt where the engine enforces one)."""
    structured = st.use_constraints(engine, cfg.structured)
    prompts, modes = zip(*(extraction_prompt(p, cfg, structured) for p in chunk))
    per = [dataclasses.replace(params, constraint=st.constraint(
        cfg.style, cfg.item_format, _LIMIT[mode], params.max_new_tokens) if structured else None)
        for mode in modes]
    gens = engine.generate(list(prompts), 1, per)
    items = []
    for p, mode, g in zip(chunk, modes, gens):
        counts[f"mode_{mode}"] += 1
        counts["structured"] += structured
        items += items_from_output(g.traces[0].text, p, cfg, mode, counts, structured)
        counts["completion_tokens"] += g.traces[0].completion_tokens
    return items


def new_counts() -> Counter:
    return Counter(dict.fromkeys(("items_parsed", "malformed", "specifics_stripped",
                                  "judge_unparsed", "completion_tokens", "mode_single",
                                  "mode_contrast", "rewrite_kept_old", "uses_recorded",
                                  "copied_example", "structured"), 0))


def extract_to_bank(engine: Engine, input_path: str, bank_path: str,
                    cfg: ExtractConfig, problems: list | None = None) -> dict:
    """Extract items from every problem in `input_path` (or the `problems` already read from
    it: standard input can be read only once) and merge them into the bank; records that were
    given memory items credit those items' `uses` (and solved / failed)."""
    from tqdm import tqdm

    from ttx.memory.cheatsheet import update_cheatsheet
    from ttx.seeds import call_seed

    check_style(cfg.style, cfg.item_format)
    t0 = time.perf_counter()
    problems = read_problems(input_path, cfg) if problems is None else problems
    if not problems:
        raise TtxError("no records (the input is empty)",
                       path="<stdin>" if input_path == "-" else input_path)
    done = set(bank_mod.load_meta(bank_path).get("extracted_from", [])) if cfg.resume else set()
    bank_mod.load_bank(bank_path)                   # a bad existing bank fails before the model
    todo = [p for p in problems if p.id not in done]
    counts, events = new_counts(), Counter()
    bar = tqdm(total=len(todo), desc=f"memory-extract {cfg.style}", unit="problem",
               disable=not cfg.progress, file=sys.stderr)
    # a cheatsheet is rewritten after each problem in turn: one problem per step
    step = 1 if cfg.style == "cheatsheet" else cfg.batch
    for b, start in enumerate(range(0, len(todo), step)):
        chunk = todo[start:start + step]
        seed = call_seed(cfg.params.seed, b)
        params = SamplingParams(max_new_tokens=cfg.params.max_new_tokens,
                                temperature=cfg.params.temperature, top_p=cfg.params.top_p,
                                seed=seed)
        if cfg.judge == "self":
            judge_problems(engine, chunk, seed, counts, cfg.structured)
        if cfg.style == "cheatsheet":
            [p] = chunk
            counts[f"mode_{attempts_text(p, cfg)[1]}"] += 1
            new = update_cheatsheet(engine, bank_path, p, attempts_text(p, cfg)[0], params,
                                    counts, item_format=cfg.item_format, structured=cfg.structured)
        else:
            new = bank_mod.add_items(bank_path, extract_items(engine, chunk, cfg, params, counts),
                                     meta_updates={"extracted_from": [p.id for p in chunk],
                                                   "style": cfg.style})
        events.update(e["event"] for e in new)
        bar.update(len(chunk))
    bar.close()
    counts["uses_recorded"] += bank_mod.record_uses(
        bank_path, [(p.id, p.memory_ids, p.correct) for p in problems if p.memory_ids])
    return {"problems": len(problems), "skipped_already_extracted": len(problems) - len(todo),
            "extracted": len(todo), **{k: int(v) for k, v in sorted(counts.items())},
            "events": {k: events.get(k, 0) for k in ("ADD", "UPDATE", "DELETE", "NOOP")},
            "bank_items": len(bank_mod.load_bank(bank_path)),
            "wall_s": round(time.perf_counter() - t0, 3)}


def run_extract(io: ExtractIO, cfg: ExtractConfig, engine: EngineOptions,
                options: dict | None = None) -> dict:
    """`ttx memory-extract`: validate inputs, open the engine, extract, write the manifest
    (`options`: what the command line gave, recorded in it)."""
    from ttx.io import now_iso, write_manifest
    from ttx.records import refuse_overlap

    started = now_iso()
    if io.output == "-":
        raise TtxError("a memory bank must be a file, not stdout", field="--output")
    check_style(cfg.style, cfg.item_format)
    refuse_overlap(io.output, [io.input])
    problems = read_problems(io.input, cfg)     # bad input fails before the model loads (once:
    if not problems:                            # standard input cannot be read again)
        raise TtxError("no records (the input is empty)",
                       path="<stdin>" if io.input == "-" else io.input)
    bank_mod.load_bank(io.output)               # and so does a bad existing bank
    opened = engine.open()
    try:
        summary = extract_to_bank(opened, io.input, io.output, cfg, problems)
    finally:
        opened.close()
    write_manifest(io.output, stage="memory-extract",
                   options={"cli": options or {}, "engine": opened.name, "model": opened.model_name},
                   inputs=[io.input], started=started, summary=summary)
    return summary
