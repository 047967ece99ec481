"""`ttx score`: load tts-run records, compute every metric per run and level, render a table.

    ttx score -i runs.jsonl                              # a table
    ttx score -i n1.jsonl -i n2.jsonl -i n4.jsonl --json # files in level order, JSON summary
    ttx score --compare base=a.jsonl --compare ffs=b.jsonl --plot cmp.png
"""

from __future__ import annotations

from collections.abc import Sequence

from ttx.errors import TtxError
from ttx.io import iter_jsonl, now_iso, write_jsonl, write_manifest
from ttx.scoring import arise as ar
from ttx.scoring.metrics import gold_answer, record_correct, summarize

_NUMERIC = ("completion_tokens", "sequential_tokens", "prompt_tokens", "wall_s")


def _check(record: dict, path: str, line: int, answer_field: str) -> None:
    """Reject what would silently skew a score, naming file, line and field."""
    if record.get(answer_field) is None:
        raise TtxError("missing (the gold answer; see --answer-field)", path=path, line=line,
                       field=answer_field)
    if gold_answer(record, answer_field) is None:
        raise TtxError("no final answer found in the gold answer", path=path, line=line,
                       field=answer_field)
    if "pred" not in record:
        raise TtxError("missing (the predicted answer; null if the model gave none)",
                       path=path, line=line, field="pred")
    level = record.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 1):
        raise TtxError(f"expected a positive integer, got {level!r}", path=path, line=line,
                       field="level")
    if "traces" in record and not isinstance(record["traces"], list):
        raise TtxError("expected a list of traces", path=path, line=line, field="traces")
    for field in _NUMERIC:
        v = record.get(field)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TtxError(f"expected a number, got {v!r}", path=path, line=line, field=field)


def load_run(name: str, paths: Sequence[str], answer_field: str = "answer") -> dict:
    """Read one run: its records, and for each its level and problem id.

    A record's `level` wins; without one, file k of several is level k, and a single file is
    level 1. The problem id is the record's `id`, else its question, else its place in the file.
    """
    records, levels, ids = [], [], []
    for k, path in enumerate(paths, start=1):
        n_before = len(records)
        for idx, (line, rec) in enumerate(iter_jsonl(path)):
            display = "<stdin>" if str(path) == "-" else str(path)
            _check(rec, display, line, answer_field)
            records.append(rec)
            levels.append(rec["level"] if rec.get("level") is not None
                          else (k if len(paths) > 1 else 1))
            pid = rec.get("id")
            ids.append(str(pid) if pid is not None else str(rec.get("question") or f"#{idx + 1}"))
        if len(records) == n_before:
            raise TtxError("no records", path=str(path))
    return {"name": name, "inputs": [str(p) for p in paths], "records": records,
            "levels": levels, "ids": ids}


def evaluate_run(run: dict, *, answer_field: str = "answer", ks: Sequence[int] = (),
                 bootstrap: int = 0, seed: int = 0, eps: float = 1e-3) -> dict:
    """Every metric of one run: an overall summary, one row per level, ARISE, s1 and TTSPM."""
    records, levels = run["records"], run["levels"]
    correct = [record_correct(r, answer_field) for r in records]
    run["correct"] = correct
    opts = {"answer_field": answer_field, "ks": ks, "bootstrap": bootstrap}
    axis, values = ar.level_axis(records, levels)
    rows = []
    for j, lvl in enumerate(sorted(set(levels))):
        idx = [i for i, x in enumerate(levels) if x == lvl]
        rows.append({"level": lvl, "value": values.get(lvl),
                     **summarize([records[i] for i in idx], correct=[correct[i] for i in idx],
                                 ids=[run["ids"][i] for i in idx], seed=seed + j, **opts)})
    curves = ar.problem_curves(records, correct, levels, run["ids"])
    means = ar.level_means(curves)
    for m in means:
        m["value"] = values.get(m["level"])
    ttspm = None
    if axis == "n":
        ttspm = ar.fit_ttspm([m["value"] for m in means], [m["accuracy"] for m in means], eps)
    return {
        "name": run["name"],
        "inputs": run["inputs"],
        "strategy": sorted({str(r["strategy"]) for r in records if r.get("strategy")}),
        "model": sorted({str(r["model"]) for r in records if r.get("model")}),
        "level_key": axis,
        "summary": (summarize(records, correct=correct, ids=[f"{i}@{lv}" for i, lv in zip(
                        run["ids"], levels)], seed=seed, **opts) if len(rows) > 1 else
                    {k: v for k, v in rows[0].items() if k not in ("level", "value")}),
        "levels": rows,
        "arise": ar.arise_summary(curves),
        "level_means": means,
        "s1": ar.s1_metrics(means, axis, [m["value"] for m in means]),
        "ttspm": ttspm,
    }


def _parse_compare(spec: str) -> tuple[str, list[str]]:
    name, sep, files = spec.partition("=")
    if not sep or not name.strip() or not files.strip():
        raise TtxError(f"--compare expects NAME=FILE (or NAME=FILE1,FILE2 in level order), "
                       f"got {spec!r}")
    return name.strip(), [f for f in files.split(",") if f]


def score(inputs: Sequence[str] = (), compare: Sequence[str] = (), *, answer_field: str = "answer",
          ks: Sequence[int] = (), bootstrap: int = 0, seed: int = 0, eps: float = 1e-3,
          per_record: str | None = None, plot: str | None = None,
          options: dict | None = None) -> dict:
    """Score one run (the -i files, in level order) and/or named runs (--compare NAME=FILE).

    Returns {"runs": [...], "ranked_by": "arise"}: runs sorted by dataset ARISE (best first)
    when there are several. Writes per-record verdicts and a plot when asked, each with a
    manifest.
    """
    started = now_iso()
    if bootstrap < 0:
        raise TtxError("--bootstrap must be >= 0")
    if eps <= 0:
        raise TtxError("--eps must be > 0")
    specs: list[tuple[str, list[str]]] = []
    if inputs:
        name = "input" if len(inputs) > 1 or str(inputs[0]) == "-" else _stem(inputs[0])
        specs.append((name, list(inputs)))
    specs += [_parse_compare(s) for s in compare]
    if not specs:
        raise TtxError("nothing to score: give -i FILE or --compare NAME=FILE")
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise TtxError(f"run names must differ, got {names}")

    loaded = [load_run(n, files, answer_field) for n, files in specs]
    runs = [evaluate_run(r, answer_field=answer_field, ks=ks, bootstrap=bootstrap, seed=seed,
                         eps=eps) for r in loaded]
    if len(runs) > 1:
        runs.sort(key=lambda r: -r["arise"]["arise"])  # stable: ties keep the given order
    for rank, r in enumerate(runs, start=1):
        r["rank"] = rank
    result = {"runs": runs, "ranked_by": "arise"}

    all_inputs = [f for _, files in specs for f in files if f != "-"]
    manifest_summary = {r["name"]: {**r["summary"], "arise": r["arise"]["arise"]} for r in runs}
    if per_record:
        out = [{**rec, "correct": ok} for run in loaded
               for rec, ok in zip(run["records"], run["correct"])]
        write_jsonl(per_record, out)
        write_manifest(per_record, stage="score", options=options or {}, inputs=all_inputs,
                       started=started, summary=manifest_summary)
    if plot:
        from ttx.scoring.plot import plot_runs

        plot_runs(runs, plot)
        write_manifest(plot, stage="score", options=options or {}, inputs=all_inputs,
                       started=started, summary=manifest_summary)
    return result


def _stem(path: str) -> str:
    from pathlib import Path

    return Path(path).stem or str(path)


# --- rendering -----------------------------------------------------------------------------

def _fmt(x, kind: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, int):  # bool too
        return str(x)
    if kind == "tok":
        return f"{x:.1f}"
    if kind == "slope":
        return f"{x:.3g}"
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.001 else f"{x:.2e}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if ra else c.ljust(w)
                         for c, w, ra in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


_METRIC_COLS = [("mean_completion_tokens", "compl_tok", "tok"),
                ("mean_sequential_tokens", "seq_tok", "tok"),
                ("mean_prompt_tokens", "prompt_tok", "tok"),
                ("accuracy_per_1k_tokens", "acc/1k_tok", ""),
                ("total_wall_s", "wall_s", "")]


def _run_block(run: dict) -> str:
    ks = [k for k in run["summary"] if k.startswith(("pass@", "maj@"))]
    axis = run["level_key"] or "value"
    headers = ["level", axis, "records", "accuracy", *ks, *(c[1] for c in _METRIC_COLS)]
    rows = []
    total = [{"level": "all", "value": None, **run["summary"]}] if len(run["levels"]) > 1 else []
    for row in [*run["levels"], *total]:
        rows.append([str(row["level"]), _fmt(row.get("value")), _fmt(row["n_records"]),
                     _fmt(row["accuracy"]), *(_fmt(row.get(k)) for k in ks),
                     *(_fmt(row.get(key), kind) for key, _, kind in _METRIC_COLS)])
    a = run["arise"]
    head = f"run {run['name']}: " + "; ".join(
        part for part in (", ".join("<stdin>" if p == "-" else p for p in run["inputs"]),
                          "strategy " + ", ".join(run["strategy"]) if run["strategy"] else "",
                          "model " + ", ".join(run["model"]) if run["model"] else "") if part)
    lines = [head, _table(headers, rows, [False] + [True] * (len(headers) - 1)), ""]
    if a["n_levels"] > 1:
        lines.append(f"ARISE {a['arise']:+.4f} (std {a['arise_std']:.4f}, min "
                     f"{a['arise_min']:+.4f}, max {a['arise_max']:+.4f}) over "
                     f"{a['n_problems']} problems and {a['n_levels']} levels")
    else:
        lines.append("ARISE needs two or more levels: give one -i file per level, in order, "
                     "or records with `level`")
    lines.append(f"problems: always correct {a['always_correct']}, always wrong "
                 f"{a['always_wrong']}, improved {a['improved']}, degraded {a['degraded']}, "
                 f"mixed {a['mixed']}")
    lines.append(f"slope {_fmt(a['slope'], 'slope')} accuracy/token;  s1: control "
                 f"{_fmt(run['s1']['control'])}, scaling {_fmt(run['s1']['scaling'], 'slope')}"
                 f" accuracy/token, performance {_fmt(run['s1']['performance'])}")
    if run["ttspm"]:
        t = run["ttspm"]
        lines.append(f"TTSPM fit F(N) = {t['f_max']:.3f} (1 - (1 - {t['p']:.3f})^N): gains "
                     f"fall below {t['eps']:g} per sample beyond N = {t['saturation_n']} "
                     f"(rmse {t['rmse']:.3f})")
    if a["severe_degradations"]:
        lines.append(f"severe degradations (1 -> 0 with tokens x{ar.SEVERE_RATIO:g}+): "
                     f"{a['n_severe']}")
        for d in a["severe_degradations"][:10]:
            lines.append(f"  {d['id']}: level {d['from_level']} -> {d['to_level']}, tokens "
                         f"{d['tokens_from']:.0f} -> {d['tokens_to']:.0f} "
                         f"(x{d['token_ratio']:.2f})")
        if a["n_severe"] > 10:
            lines.append(f"  ... and {a['n_severe'] - 10} more (see --json)")
    return "\n".join(lines)


def render_table(result: dict) -> str:
    """The summary as aligned text: a ranking when several runs, then one block per run."""
    runs = result["runs"]
    parts = []
    if len(runs) > 1:
        headers = ["rank", "run", "ARISE", "std", "slope", "best_acc", "compl_tok", "improved",
                   "degraded", "severe"]
        rows = [[str(r["rank"]), r["name"], f"{r['arise']['arise']:+.4f}",
                 f"{r['arise']['arise_std']:.4f}", _fmt(r["arise"]["slope"], "slope"),
                 _fmt(r["s1"]["performance"]),
                 _fmt(r["summary"]["mean_completion_tokens"], "tok"),
                 str(r["arise"]["improved"]), str(r["arise"]["degraded"]),
                 str(r["arise"]["n_severe"])] for r in runs]
        parts.append("runs ranked by ARISE (higher is better)\n"
                     + _table(headers, rows, [True, False] + [True] * 8))
    parts += [_run_block(r) for r in runs]
    return "\n\n".join(parts)
