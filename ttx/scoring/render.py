"""`ttx score`'s text output: a ranking of runs, then one block per run (levels, intervals,
ARISE and its peers, the paired difference to the first run)."""

from __future__ import annotations

from collections.abc import Sequence

from ttx.io import safe_text
from ttx.scoring import arise as ar


def fmt_number(x, kind: str = "", *, grouped: bool = False, none: str = "-") -> str:
    """A table cell: ints whole (`grouped`: 1,234), `tok` one decimal, `signed` +0.0123,
    `slope` 3 significant digits, else 3 decimals (tiny values in e-notation); shared by
    `ttx score`'s text tables and `ttx report`'s HTML ones."""
    if x is None:
        return none
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}" if grouped else str(x)
    if kind == "tok":
        return f"{x:,.1f}" if grouped else f"{x:.1f}"
    if kind == "signed":
        return f"{x:+.4f}"
    if kind == "slope":
        return f"{x:.3g}"
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.001 else f"{x:.2e}"


def _with_ci(value, ci) -> str:
    """0.233 [0.100,0.400]: the value and its 95% interval."""
    if value is None:
        return "-"
    return f"{value:.3f}" if not ci else f"{value:.3f} [{ci[0]:.3f},{ci[1]:.3f}]"


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


def _metric_keys(summary: dict) -> list[str]:
    return [k for k in summary if k.startswith(("pass@", "maj@")) and not k.endswith("_ci")]


def _run_block(run: dict) -> str:
    ks = _metric_keys(run["summary"])
    axis = run["level_key"] or "value"
    cost = run["cost"]
    cost_cols = [] if cost["kind"] == "tokens" else [("mean_cost", cost["unit"], "")]
    headers = ["level", axis, "records", "accuracy [95% CI]", *ks,
               *(c[1] for c in _METRIC_COLS), *(c[1] for c in cost_cols)]
    rows = []
    total = [{"level": "all", "value": None, **run["summary"]}] if len(run["levels"]) > 1 else []
    for row in [*run["levels"], *total]:
        rows.append([str(row["level"]), fmt_number(row.get("value")), fmt_number(row["n_records"]),
                     _with_ci(row["accuracy"], row.get("accuracy_ci")),
                     *(_with_ci(row.get(k), row.get(f"{k}_ci")) for k in ks),
                     *(fmt_number(row.get(key), kind) for key, _, kind in _METRIC_COLS + cost_cols)])
    a = run["arise"]
    head = f"run {run['name']}: " + "; ".join(
        part for part in (", ".join("<stdin>" if p == "-" else p for p in run["inputs"]),
                          "strategy " + ", ".join(run["strategy"]) if run["strategy"] else "",
                          "model " + ", ".join(run["model"]) if run["model"] else "") if part)
    lines = [head, _table(headers, rows, [False] + [True] * (len(headers) - 1)), ""]
    if run.get("unfinished"):
        from ttx.score import unfinished_note

        lines.insert(1, f"UNFINISHED: {unfinished_note(run)}")
    basis = (f"{cost['token_basis']} tokens" if cost["kind"] == "tokens"
             else f"{cost['kind']} ({cost['unit']})")
    if a["n_levels"] > 1:
        lines.append(f"ARISE {a['arise']:+.4f} (std {a['arise_std']:.4f}, min "
                     f"{a['arise_min']:+.4f}, max {a['arise_max']:+.4f}) over "
                     f"{a['n_problems']} problems and {a['n_levels']} levels; cost: {basis}")
    else:
        lines.append("ARISE needs two or more levels: give one -i file per level, in order, "
                     "or records with `level`")
    lines.append(f"problems: always correct {a['always_correct']}, always wrong "
                 f"{a['always_wrong']}, improved {a['improved']}, degraded {a['degraded']}, "
                 f"mixed {a['mixed']}")
    lines.append(f"slope {fmt_number(a['slope'], 'slope')} accuracy/cost (dataset, as ARISE's "
                 f"reference; mean of per-problem slopes {fmt_number(a['slope_per_problem'], 'slope')});"
                 f"  s1: control {fmt_number(run['s1']['control'])}, scaling "
                 f"{fmt_number(run['s1']['scaling'], 'slope')} accuracy/cost, performance "
                 f"{fmt_number(run['s1']['performance'])}")
    if run["ttspm"]:
        t = run["ttspm"]
        lines.append(f"TTSPM fit F(N) = {t['f_max']:.3f} (1 - (1 - {t['p']:.3f})^N): gains "
                     f"fall below {t['eps']:g} per sample beyond N = {t['saturation_n']} "
                     f"(rmse {t['rmse']:.3f})")
    if a["n_levels"] > 1:
        lines.append(f"severe degradations (any accuracy drop with cost x{ar.SEVERE_RATIO:g} or "
                     f"more, strictly; the reference's rule): {a['n_severe']}; of them 1 -> 0: "
                     f"{a['n_severe_1_to_0']}")
        for d in a["severe_degradations"][:10]:
            lines.append(f"  {d['id']}: level {d['from_level']} -> {d['to_level']}, accuracy "
                         f"{d['acc_from']:.2f} -> {d['acc_to']:.2f}, cost {d['tokens_from']:.0f}"
                         f" -> {d['tokens_to']:.0f} (x{d['token_ratio']:.2f})")
        if a["n_severe"] > 10:
            lines.append(f"  ... and {a['n_severe'] - 10} more (see --json)")
    if run.get("vs_first"):
        lines += _vs_first_lines(run)
    aside = run["set_aside"]["no_gold_answer"]
    if aside:
        lines.append(f"set aside: {len(aside)} records whose gold answer has no extractable "
                     "final answer")
    return "\n".join(lines)


def vs_first_levels(run: dict, sep: str = ",") -> list[tuple[str, str]]:
    """(level, "accuracy +0.033 [-0.010,+0.080] over 30 problems (verdict)") for each level of
    the paired comparison with the first run; shared by `ttx score` and `ttx report`."""
    out = []
    for level, metrics in run["vs_first"]["levels"].items():
        acc = metrics.get("accuracy")
        if not acc:
            continue
        ci = acc["ci"]
        verdict = ("" if not ci else "  (interval excludes 0)" if ci[0] > 0 or ci[1] < 0
                   else "  (interval includes 0: not distinguishable from noise)")
        span = f" [{ci[0]:+.3f}{sep}{ci[1]:+.3f}]" if ci else ""
        out.append((level, f"accuracy {acc['difference']:+.3f}{span} over "
                           f"{acc['n_problems']} problems{verdict}"))
    return out


def _vs_first_lines(run: dict) -> list[str]:
    return ([f"vs {run['vs_first']['run']} (paired over shared problems, 95% CI):"]
            + [f"  level {level}: {text}" for level, text in vs_first_levels(run)])


def render_table(result: dict) -> str:
    """The summary as aligned text: a ranking when several runs, then one block per run."""
    runs = result["runs"]
    parts = []
    if len(runs) > 1:
        headers = ["rank", "run", "ARISE", "std", "slope", "best_acc", "compl_tok", "improved",
                   "degraded", "severe"]
        rows = [[str(r["rank"]), r["name"] + (" (UNFINISHED)" if r.get("unfinished") else ""),
                 f"{r['arise']['arise']:+.4f}",
                 f"{r['arise']['arise_std']:.4f}", fmt_number(r["arise"]["slope"], "slope"),
                 fmt_number(r["s1"]["performance"]),
                 fmt_number(r["summary"]["mean_completion_tokens"], "tok"),
                 str(r["arise"]["improved"]), str(r["arise"]["degraded"]),
                 str(r["arise"]["n_severe"])] for r in runs]
        parts.append("runs ranked by ARISE (higher is better)\n"
                     + _table(headers, rows, [True, False] + [True] * 8))
    parts += [_run_block(r) for r in runs]
    return safe_text("\n\n".join(parts))      # a file name that is not UTF-8: printable
