"""`ttx score`: load tts-run records, compute every metric per run and level.

    ttx score -i runs.jsonl                              # a table
    ttx score -i n1.jsonl -i n2.jsonl -i n4.jsonl --json # files in level order, JSON summary
    ttx score --compare base=a.jsonl --compare ffs=b.jsonl --plot cmp.png

Definitions where the references disagree are options, each named after its reference (see
`ttx score --help` and docs/score.md): how a trace without an answer votes, the token basis of
ARISE, and the cost on the x axis.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import click

from ttx.errors import TtxError
from ttx.io import iter_jsonl, now_iso, write_jsonl, write_manifest
from ttx.options import opt
from ttx.records import refuse_outputs_overlap
from ttx.scoring import arise as ar
from ttx.scoring import intervals
from ttx.scoring.answers import DEFAULT_INVALID_VOTE, INVALID_VOTES
from ttx.scoring.cost import COSTS, KINETICS_INTENSITY, UNITS, record_costs
from ttx.scoring.metrics import gold_answer, record_correct, summarize

_NUMERIC = ("completion_tokens", "sequential_tokens", "prompt_tokens", "prefill_tokens", "wall_s")
ARISE_TOKENS = ("total", "completion")


@dataclass
class ScoreConfig:
    """score's (and report's) options: one schema for the command line and the library."""

    answer_field: str = opt("answer", "Record field holding the gold answer.")
    ks: tuple[int, ...] = opt((), "Extra k for pass@k and maj@k (powers of two are always "
                              "reported).", flag="--k", multiple=True, type=click.IntRange(min=1))
    bootstrap: int = opt(0, "maj@k as the mean over B random k-subsets (0: the first k traces).",
                         type=click.IntRange(min=0), show_default=True)
    invalid: str = opt(DEFAULT_INVALID_VOTE, "maj@k and majority votes: a trace with no "
                       "extractable answer votes '[invalid]' (lm-eval's filters; it can win and is "
                       "never right) or casts no vote (skip).", flag="--invalid-votes",
                       type=click.Choice(INVALID_VOTES))
    arise_tokens: str = opt("total", "ARISE's token count per record: prompt + completion, as "
                            "ARISE's evaluate.py (total), or generated tokens only (completion).",
                            type=click.Choice(ARISE_TOKENS))
    cost: str = opt("tokens", "The cost on ARISE's, the tables' and --plot's x axis: tokens "
                    "(--arise-tokens), FLOPs from the model's shape, or Kinetics' eFLOPs (compute "
                    "+ KV-cache traffic x arithmetic intensity).", type=click.Choice(COSTS))
    cost_model: str | None = opt(None, "--cost flops/kinetics: the model (alias, folder, .gguf) "
                                 "whose shape gives the cost (default: each record's `model`).",
                                 metavar="MODEL")
    kinetics_intensity: float = opt(KINETICS_INTENSITY, "--cost kinetics: FLOPs per byte of "
                                    "memory traffic (Kinetics' B200 value).",
                                    type=click.FloatRange(min=0, min_open=True))
    ci_samples: int = opt(intervals.DEFAULT_SAMPLES, "Bootstrap samples of the 95% intervals "
                          "(over problems); 0: none.", type=click.IntRange(min=0))
    seed: int = opt(0, "Seed for --bootstrap and the intervals.", type=int, show_default=True)
    regrade: bool = opt(False, "Re-extract every trace's answer from its text with today's "
                        "grader and recompute votes (runs made before a grader fix).",
                        is_flag=True)
    strict_gold: bool = opt(False, "A gold answer with no extractable final answer is an error "
                            "(default: the record is set aside and named).",
                            secondary="--no-strict-gold")
    eps: float = opt(1e-3, "TTSPM: saturation when the gain per extra sample drops below this.",
                     type=float)


def _check(record: dict, path: str, line: int, cfg: ScoreConfig) -> None:
    """Reject what would silently skew a score, naming file, line and field."""
    if record.get(cfg.answer_field) is None:
        raise TtxError("missing (the gold answer; see --answer-field)", path=path, line=line,
                       field=cfg.answer_field)
    if "pred" not in record:
        raise TtxError("missing (the predicted answer; null if the model gave none)",
                       path=path, line=line, field="pred")
    _check_answer(record["pred"], path, line, "pred")
    level = record.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 1):
        raise TtxError(f"expected a positive integer, got {level!r}", path=path, line=line,
                       field="level")
    if "traces" in record and not isinstance(record["traces"], list):
        raise TtxError("expected a list of traces", path=path, line=line, field="traces")
    for i, trace in enumerate(record.get("traces") or []):
        _check_trace(trace, path, line, f"traces[{i}]")
    if cfg.regrade and not record.get("traces"):
        raise TtxError("--regrade re-extracts answers from the traces' text, and this record "
                       "has no traces", path=path, line=line, field="traces")
    for name in _NUMERIC:
        _check_count(record.get(name), path, line, name)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_count(v, path: str, line: int, field: str) -> None:
    if v is None:
        return
    if not _is_number(v):
        raise TtxError(f"expected a number, got {_shown(v)}", path=path, line=line, field=field)
    if not math.isfinite(v) or v < 0:
        raise TtxError(f"expected a finite number >= 0, got {v!r}", path=path, line=line,
                       field=field)


def _check_answer(v, path: str, line: int, field: str) -> None:
    """An answer is text (a number is taken as its text) or null; a list or an object would be
    graded by its printed form."""
    if v is not None and not isinstance(v, str) and not _is_number(v):
        raise TtxError(f"expected an answer (a string, a number or null), got {_shown(v)}",
                       path=path, line=line, field=field)


def _check_trace(trace, path: str, line: int, field: str) -> None:
    if not isinstance(trace, dict):
        raise TtxError(f"expected a trace (an object with text, pred, ...), got {_shown(trace)}",
                       path=path, line=line, field=field)
    if "pred" in trace:
        _check_answer(trace["pred"], path, line, f"{field}.pred")
    if trace.get("text") is not None and not isinstance(trace["text"], str):
        raise TtxError(f"expected a string or null, got {_shown(trace['text'])}", path=path,
                       line=line, field=f"{field}.text")
    _check_count(trace.get("completion_tokens"), path, line, f"{field}.completion_tokens")
    if trace.get("score") is not None and not _is_number(trace["score"]):
        raise TtxError(f"expected a number or null, got {_shown(trace['score'])}", path=path,
                       line=line, field=f"{field}.score")


def _shown(v) -> str:
    """A value's type and a short form of it, for an error line."""
    text = repr(v)
    return f"{type(v).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def load_run(name: str, paths: Sequence[str], cfg: ScoreConfig) -> dict:
    """Read one run: its records, and for each its level, problem id and source line.

    A record's `level` wins; without one, file k of several is level k, and a single file is
    level 1. The problem id is the record's `id`, else its question, else its place in the file.
    Records whose gold answer has no extractable final answer are set aside (named in
    `no_gold`), or refused with --strict-gold. A second record of the same (id, level, repeat)
    is refused: it would count twice.
    """
    records, levels, ids, where, no_gold = [], [], [], [], []
    seen: dict[tuple, str] = {}
    for k, path in enumerate(paths, start=1):
        display = "<stdin>" if str(path) == "-" else str(path)
        n_before = len(records) + len(no_gold)
        for idx, (line, rec) in enumerate(iter_jsonl(path)):
            _check(rec, display, line, cfg)
            pid = rec.get("id")
            pid = str(pid) if pid is not None else str(rec.get("question") or f"#{idx + 1}")
            level = rec["level"] if rec.get("level") is not None else (k if len(paths) > 1 else 1)
            if gold_answer(rec, cfg.answer_field) is None:
                if cfg.strict_gold:
                    raise TtxError("no final answer found in the gold answer (--strict-gold)",
                                   path=display, line=line, field=cfg.answer_field)
                no_gold.append({"path": display, "line": line, "id": pid})
                continue
            key = (pid, level, rec.get("repeat", 0))
            if key in seen:
                raise TtxError(f"a second record of problem {pid!r} at level {level}, repeat "
                               f"{key[2]} (first at {seen[key]}): it would count twice",
                               path=display, line=line, field="id")
            seen[key] = f"{display}:{line}"
            records.append(rec)
            levels.append(level)
            ids.append(pid)
            where.append(f"{display}:{line}")
        if len(records) + len(no_gold) == n_before:
            raise TtxError("no records", path=display)
    if not records:
        raise TtxError(f"no record of run {name} has an extractable gold answer "
                       f"({len(no_gold)} set aside)", path=str(paths[0]))
    return {"name": name, "inputs": [str(p) for p in paths], "records": records,
            "levels": levels, "ids": ids, "where": where, "no_gold": no_gold,
            "unfinished": unfinished_inputs(paths)}


def unfinished_inputs(paths: Sequence[str]) -> list[str]:
    """The inputs whose manifest says the run writing them has not finished (status
    "running": killed, or still being written), so their records are a part of the run."""
    import json

    from ttx.io import manifest_path

    out = []
    for path in paths:
        target = manifest_path(path)
        if target is None or not target.is_file():
            continue
        try:
            manifest = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("status") == "running":
            out.append(str(path))
    return out


def regrade_run(run: dict) -> None:
    """Re-extract every trace's answer from its text with today's grader and recompute the
    record's prediction the way its strategy aggregates (ttx.tts.registry); the stored answers
    are kept as `old_pred` on the record and each trace."""
    from ttx.tts.registry import regrade_record

    run["records"] = [regrade_record(r) for r in run["records"]]


def _costs(records: Sequence[dict], cfg: ScoreConfig) -> list[float | None]:
    shapes = None
    if cfg.cost != "tokens":
        from ttx.models import model_shape

        names = {cfg.cost_model} if cfg.cost_model else {str(r.get("model")) for r in records}
        shapes = {}
        for name in names:
            if name in (None, "None"):
                raise TtxError(f"--cost {cfg.cost} needs the model's shape: the records name "
                               "no model; give --cost-model")
            try:
                shapes[name] = model_shape(name)
            except (TtxError, KeyError, ValueError, OSError) as exc:
                raise TtxError(f"--cost {cfg.cost}: cannot read the shape of model {name!r} "
                               f"({exc}); give --cost-model ALIAS|FOLDER|FILE.gguf") from None
        if cfg.cost_model:
            shapes = {str(r.get("model")): shapes[cfg.cost_model] for r in records}
    return record_costs(records, cfg.cost, basis=cfg.arise_tokens, shapes=shapes,
                        intensity=cfg.kinetics_intensity)


def evaluate_run(run: dict, cfg: ScoreConfig) -> dict:
    """Every metric of one run: an overall summary, one row per level, ARISE, s1 and TTSPM."""
    records, levels = run["records"], run["levels"]
    correct = [record_correct(r, cfg.answer_field) for r in records]
    run["correct"] = correct
    cost = _costs(records, cfg)
    opts = {"answer_field": cfg.answer_field, "ks": cfg.ks, "bootstrap": cfg.bootstrap,
            "invalid": cfg.invalid, "ci_samples": cfg.ci_samples}
    axis, values = ar.level_axis(records, levels)
    rows, per_problem = [], {}
    for j, lvl in enumerate(sorted(set(levels))):
        idx = [i for i, x in enumerate(levels) if x == lvl]
        row = summarize([records[i] for i in idx], correct=[correct[i] for i in idx],
                        ids=[run["ids"][i] for i in idx], seed=cfg.seed + 97 * j, **opts)
        per_problem[lvl] = row.pop("per_problem")
        row["mean_cost"] = _mean([cost[i] for i in idx], [run["ids"][i] for i in idx])
        rows.append({"level": lvl, "value": values.get(lvl), **row})
    curves = ar.problem_curves(records, correct, levels, run["ids"], cost)
    means = ar.level_means(curves)
    for m in means:
        m["value"] = values.get(m["level"])
    ttspm = None
    if axis == "n":
        ttspm = ar.fit_ttspm([m["value"] for m in means], [m["accuracy"] for m in means], cfg.eps)
    if len(rows) > 1:
        cell_ids = [f"{i}@{lv}" for i, lv in zip(run["ids"], levels)]
        summary = summarize(records, correct=correct, ids=cell_ids, seed=cfg.seed, **opts)
        summary.pop("per_problem")
        summary["mean_cost"] = _mean(cost, cell_ids)
    else:
        summary = {k: v for k, v in rows[0].items() if k not in ("level", "value")}
    return {
        "name": run["name"],
        "inputs": run["inputs"],
        "strategy": sorted({str(r["strategy"]) for r in records if r.get("strategy")}),
        "model": sorted({str(r["model"]) for r in records if r.get("model")}),
        "level_key": axis,
        "cost": {"kind": cfg.cost, "unit": UNITS[cfg.cost],
                 **({"token_basis": cfg.arise_tokens} if cfg.cost == "tokens" else {})},
        "summary": summary,
        "levels": rows,
        "arise": ar.arise_summary(curves),
        "level_means": means,
        "s1": ar.s1_metrics(means, axis, [m["value"] for m in means]),
        "ttspm": ttspm,
        "set_aside": {"no_gold_answer": run["no_gold"]},
        **({"unfinished": run["unfinished"]} if run.get("unfinished") else {}),
        "_per_problem": per_problem,     # for paired comparisons; dropped before output
    }


def _mean(values: Sequence[float | None], ids: Sequence[str]) -> float | None:
    groups = intervals.group([v for v in values if v is not None],
                             [i for v, i in zip(values, ids) if v is not None])
    return sum(sum(g) / len(g) for g in groups.values()) / len(groups) if groups else None


def compare_runs(base: dict, other: dict, cfg: ScoreConfig) -> dict:
    """`other` minus `base` at each level both have, per metric, with a paired 95% interval
    over the problems both answered (ttx.scoring.intervals.paired_ci)."""
    out = {}
    for lvl, mine in other["_per_problem"].items():
        theirs = base["_per_problem"].get(lvl)
        if theirs is None:
            continue
        out[str(lvl)] = {metric: intervals.paired_ci(theirs[metric], groups,
                                                     samples=cfg.ci_samples, seed=cfg.seed)
                         for metric, groups in mine.items() if metric in theirs}
    return out


def parse_compare(spec: str) -> tuple[str, list[str]]:
    name, sep, files = spec.partition("=")
    if not sep or not name.strip() or not files.strip():
        raise TtxError(f"--compare expects NAME=FILE (or NAME=FILE1,FILE2 in level order), "
                       f"got {spec!r}")
    return name.strip(), [f for f in files.split(",") if f]


def _refuse_repeated_files(specs: list[tuple[str, list[str]]]) -> None:
    from pathlib import Path

    seen: dict[str, str] = {}
    for name, files in specs:
        for f in files:
            if f == "-":
                continue
            key = str(Path(f).resolve())
            if key in seen:
                raise TtxError(f"given twice (runs {seen[key]} and {name}): its records would "
                               "count twice", path=f)
            seen[key] = name


def score(inputs: Sequence[str] = (), compare: Sequence[str] = (),
          cfg: ScoreConfig | None = None, *, per_record: str | None = None,
          plot: str | None = None, options: dict | None = None) -> dict:
    """Score one run (the -i files, in level order) and/or named runs (--compare NAME=FILE).

    Returns {"runs": [...], "ranked_by": "arise", "definitions": {...}}: runs sorted by dataset
    ARISE (best first) when there are several, each after the first with `vs_first`, its paired
    difference to the first run given. Writes per-record verdicts and a plot when asked, each
    with a manifest.
    """
    cfg = cfg or ScoreConfig()
    started = now_iso()
    if cfg.bootstrap < 0 or cfg.ci_samples < 0:
        raise TtxError("--bootstrap and --ci-samples must be >= 0")
    if cfg.eps <= 0:
        raise TtxError("--eps must be > 0")
    if cfg.kinetics_intensity <= 0:
        raise TtxError("--kinetics-intensity must be > 0")
    specs: list[tuple[str, list[str]]] = []
    if inputs:
        name = "input" if len(inputs) > 1 or str(inputs[0]) == "-" else _stem(inputs[0])
        specs.append((name, list(inputs)))
    specs += [parse_compare(s) for s in compare]
    if not specs:
        raise TtxError("nothing to score: give -i FILE or --compare NAME=FILE")
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise TtxError(f"run names must differ, got {names}")
    _refuse_repeated_files(specs)
    refuse_outputs_overlap({"--per-record": per_record, "--plot": plot},
                           [f for _, files in specs for f in files])

    loaded = [load_run(n, files, cfg) for n, files in specs]
    if cfg.regrade:
        for run in loaded:
            regrade_run(run)
    runs = [evaluate_run(r, cfg) for r in loaded]
    for run in loaded:
        _warn_set_aside(run)
        _warn_unfinished(run)
    for other in runs[1:]:
        other["vs_first"] = {"run": runs[0]["name"], "levels": compare_runs(runs[0], other, cfg)}
    if len(runs) > 1:
        runs.sort(key=lambda r: -r["arise"]["arise"])  # stable: ties keep the given order
    for rank, r in enumerate(runs, start=1):
        r["rank"] = rank
        r.pop("_per_problem")
    result = {"runs": runs, "ranked_by": "arise", "definitions": definitions(cfg)}

    all_inputs = [f for _, files in specs for f in files if f != "-"]
    manifest_summary = {r["name"]: {**r["summary"], "arise": r["arise"]["arise"]} for r in runs}
    manifest_options = {**(options or {}), "definitions": result["definitions"]}
    if per_record:
        out = [_per_record(rec, ok) for run in loaded
               for rec, ok in zip(run["records"], run["correct"])]
        write_jsonl(per_record, out)
        write_manifest(per_record, stage="score", options=manifest_options, inputs=all_inputs,
                       started=started, summary=manifest_summary)
    if plot:
        from ttx.scoring.plot import plot_runs

        plot_runs(runs, plot)
        write_manifest(plot, stage="score", options=manifest_options, inputs=all_inputs,
                       started=started, summary=manifest_summary)
    return result


def definitions(cfg: ScoreConfig) -> dict:
    """The named definitions this score used (recorded in --json and the manifest)."""
    return {"invalid_votes": cfg.invalid, "arise_tokens": cfg.arise_tokens, "cost": cfg.cost,
            "severe_rule": "reference (any drop, token ratio > 1.5)",
            "slope": "dataset (reference); slope_per_problem: mean of per-problem slopes",
            "ci": f"95% percentile bootstrap over problems, {cfg.ci_samples} samples, "
                  f"seed {cfg.seed}", "regrade": cfg.regrade,
            **({"kinetics_intensity": cfg.kinetics_intensity} if cfg.cost == "kinetics" else {})}


def _per_record(record: dict, ok: bool) -> dict:
    """The record with its verdict; after --regrade, the old prediction and verdict too where
    either differs."""
    out = {**record, "correct": ok}
    old = out.pop("old_pred", None)
    if "old_pred" in record:
        was = record_correct({**record, "pred": old})
        if old != record.get("pred") or was != ok:
            out["old_pred"], out["old_correct"] = old, was
    return out


def _warn_set_aside(run: dict) -> None:
    missing = run["no_gold"]
    if not missing:
        return
    shown = ", ".join(f"{m['path']}:{m['line']} (id {m['id']})" for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    print(f"score: run {run['name']}: {len(missing)} records set aside, their gold answer has "
          f"no extractable final answer: {shown}{more} (--strict-gold makes this an error)",
          file=sys.stderr)


def _warn_unfinished(run: dict) -> None:
    if run.get("unfinished"):
        print(f"score: warning: run {run['name']} is unfinished: {unfinished_note(run)}",
              file=sys.stderr)


def unfinished_note(run: dict) -> str:
    """One line on a run whose manifest says it is still running (the table and the page say
    it too)."""
    files = ", ".join(run["unfinished"])
    return (f"the manifest of {files} says 'running' (the run was killed or is still writing): "
            "these are the records written so far, not the whole run")


def _stem(path: str) -> str:
    from pathlib import Path

    return Path(path).stem or str(path)
