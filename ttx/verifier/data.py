"""A verifier's training data: the traces of scored tts-run records, each judged against gold.

Input: `ttx score --per-record` output (or any tts-run records with gold answers): a record holds
`question`, `answer` (gold) and `traces: [{text, pred, ...}]`. Records with the same id (levels,
repeats) pool their traces into one problem. A trace's label is answers_equal(its pred, the
gold's final answer), the rule `ttx score` uses for pass@k; a stored `correct` is never trusted.
Traces cancelled by First Finish Search are not solutions and are left out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ttx.errors import TtxError


@dataclass
class Example:
    problem: str                 # problem id
    index: int                   # the trace's position among its problem's traces
    question: str
    text: str                    # the trace (the model's response)
    pred: str | None
    gold: str
    correct: bool
    model: str | None = None     # the policy that wrote it (the record's `model`)
    steps: list[str] = field(default_factory=list)
    step_labels: list[float] | None = None

    @property
    def key(self) -> str:
        return f"{self.problem}#{self.index}"


@dataclass
class ReadConfig:
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"


def read_examples(path: str, cfg: ReadConfig | None = None) -> list[Example]:
    """Every usable trace of the file, validated: bad input names file, line and field."""
    from ttx.records import read_records
    from ttx.reward_inputs import split_steps
    from ttx.scoring.answers import answers_equal, normalize_answer
    from ttx.scoring.metrics import gold_answer

    cfg = cfg or ReadConfig()
    examples: list[Example] = []
    counts: dict[str, int] = {}
    verdicts: dict[tuple, bool] = {}
    for row in read_records(path, required=[cfg.question_field, "traces", cfg.answer_field],
                            id_field=cfg.id_field, unique=False):
        line, r = row.line, row.data
        question = r[cfg.question_field]
        if not isinstance(question, str):
            raise TtxError("expected a string", path=path, line=line, field=cfg.question_field)
        traces = r["traces"]
        if not isinstance(traces, list):
            raise TtxError("expected a list of traces", path=path, line=line, field="traces")
        gold = gold_answer(r, cfg.answer_field)
        if gold is None:
            raise TtxError("the gold answer has no extractable final answer, so no trace can be "
                           "judged", path=path, line=line, field=cfg.answer_field)
        pid = str(r.get(cfg.id_field, line))
        model = r.get("model")
        for t in traces:
            if not isinstance(t, dict) or not isinstance(t.get("text"), str):
                raise TtxError("expected objects with a string `text`", path=path, line=line,
                               field="traces")
            if t.get("finish_reason") == "cancelled":
                continue
            if "pred" in t:
                pred = t["pred"]
                if pred is not None and not isinstance(pred, (str, int, float)):
                    raise TtxError("a trace's pred must be a string or null", path=path,
                                   line=line, field="traces")
            else:
                from ttx.scoring.answers import extract_answer
                pred = extract_answer(t["text"])
            pred = None if pred is None else str(pred)
            vkey = (normalize_answer(pred), gold)
            if vkey not in verdicts:
                verdicts[vkey] = answers_equal(pred, gold)
            index = counts.get(pid, 0)
            counts[pid] = index + 1
            examples.append(Example(problem=pid, index=index, question=question, text=t["text"],
                                    pred=pred, gold=gold, correct=verdicts[vkey],
                                    model=None if model is None else str(model),
                                    steps=split_steps(t["text"])))
    return examples


def split_problems(examples: list[Example], fraction: float, seed: int
                   ) -> tuple[list[Example], list[Example]]:
    """Held-out problems (not traces: a problem's traces never straddle the split)."""
    problems = sorted({e.problem for e in examples})
    if fraction <= 0 or len(problems) < 2:
        return examples, []
    held = max(1, round(fraction * len(problems)))
    held = min(held, len(problems) - 1)
    chosen = set(random.Random(seed).sample(problems, held))
    return ([e for e in examples if e.problem not in chosen],
            [e for e in examples if e.problem in chosen])


def balance(examples: list[Example]) -> dict:
    """Class balance of traces (and of step labels where there are any)."""
    pos = sum(e.correct for e in examples)
    out = {"traces": len(examples), "correct": pos, "wrong": len(examples) - pos,
           "correct_share": round(pos / len(examples), 4) if examples else None,
           "problems": len({e.problem for e in examples})}
    labels = [y for e in examples for y in (e.step_labels or [])]
    if labels:
        out["steps"] = len(labels)
        out["step_label_mean"] = round(sum(labels) / len(labels), 4)
        out["steps_good"] = sum(1 for y in labels if y >= 0.5)
    return out
