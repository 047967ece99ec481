"""The report's static parts as HTML: the summary table, the plot, each run's levels and
ARISE, and the manifests. Every number comes from score's result (ttx.score.score)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ttx.report.classes import CLASSES
from ttx.report.safe import escape
from ttx.report.svg import accuracy_cost_svg, color
from ttx.scoring.render import fmt_number, render_table, vs_first_levels

CLASS_SHORT = {"always_correct": "always ✓", "always_wrong": "always ✗", "improved": "improved",
               "degraded": "degraded", "mixed": "mixed"}
CLASS_LABELS = {"always_correct": "always correct", "always_wrong": "always wrong",
                "improved": "improved", "degraded": "degraded", "mixed": "mixed"}


def _num(x, kind: str = "") -> str:
    return fmt_number(x, kind, grouped=True, none="–")


def _ci(value, ci) -> str:
    """0.233 [0.100, 0.400], as `ttx score` prints it."""
    if value is None:
        return "–"
    if not ci:
        return f"{value:.3f}"
    return f'{value:.3f} <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'


def _metric_keys(rows: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k.startswith(("pass@", "maj@")) and not k.endswith("_ci") and k not in keys:
                keys.append(k)
    return sorted(keys, key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])))


def summary_table(runs: Sequence[dict], names: Sequence[str]) -> str:
    """One row per run, ranked by ARISE as `ttx score` ranks them."""
    keys = _metric_keys([r["summary"] for r in runs])
    costly = any(r["cost"]["kind"] != "tokens" for r in runs)
    models = {tuple(r["model"]) for r in runs}
    one_model = len(models) == 1                   # then it is said once, above the table
    # the strategy column only where a run's name does not already say it
    named = all(r["strategy"] == [r["name"]] for r in runs)
    head = ["rank", "run", *([] if named else ["strategy"]), *([] if one_model else ["model"]),
            "levels", "problems", "records", "accuracy [95% CI]", "best level", "ARISE", "std",
            "slope", "severe", *(CLASS_SHORT[c] for c in CLASSES), "compl. tokens",
            "seq. tokens", *(["cost"] if costly else []), *keys]
    out = [f'<p class="model">model: <b>{escape(", ".join(next(iter(models))) or "–")}</b></p>'
           if one_model else "",
           '<div class="scroll"><table class="summary" id="summary-table"><thead><tr>',
           "".join(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in runs:
        s, a = r["summary"], r["arise"]
        i = list(names).index(r["name"])
        cells = [str(r["rank"]),
                 f'<span class="swatch" style="background:{color(i)}"></span>{escape(r["name"])}',
                 *([] if named else [escape(", ".join(r["strategy"]) or "–")]),
                 *([] if one_model else [escape(", ".join(r["model"]) or "–")]),
                 str(a["n_levels"]), str(a["n_problems"]), _num(s["n_records"]),
                 _ci(s["accuracy"], s.get("accuracy_ci")), _num(r["s1"]["performance"]),
                 _num(a["arise"], "signed") if a["n_levels"] > 1 else "–",
                 _num(a["arise_std"]) if a["n_levels"] > 1 else "–",
                 _num(a["slope"], "slope"), str(a["n_severe"]),
                 *(f'<button class="cls-link cls-{c}" data-run="{i}" data-cls="{c}" '
                   f'title="show the {a[c]} {CLASS_LABELS[c]} problems of {escape(r["name"])}">'
                   f'{a[c]}</button>' for c in CLASSES),
                 _num(s.get("mean_completion_tokens"), "tok"),
                 _num(s.get("mean_sequential_tokens"), "tok"),
                 *([f'{_num(s.get("mean_cost"), "tok")} {escape(r["cost"]["unit"])}'] if costly else []),
                 *(_ci(s.get(k), s.get(f"{k}_ci")) for k in keys)]
        text = 2 + (not named) + (not one_model)   # the cells after these are numbers
        out.append(f'<tr class="run-row" data-run="{escape(r["name"])}">'
                   + "".join(f'<td{"" if k < text else " class=n"}>{c}</td>'
                             for k, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _level_table(run: dict) -> str:
    keys = _metric_keys(run["levels"])
    axis = run["level_key"] or "value"
    costly = run["cost"]["kind"] != "tokens"
    head = ["level", axis, "records", "accuracy [95% CI]", *keys, "compl. tokens",
            "seq. tokens", "prompt tokens", "acc / 1k tokens", "wall s",
            *([run["cost"]["unit"]] if costly else [])]
    rows = list(run["levels"])
    if len(rows) > 1:
        rows.append({"level": "all", "value": None, **run["summary"]})
    out = ['<div class="scroll"><table class="levels"><thead><tr>',
           "".join(f"<th>{escape(str(h))}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = [escape(str(row["level"])), _num(row.get("value")), _num(row["n_records"]),
                 _ci(row["accuracy"], row.get("accuracy_ci")),
                 *(_ci(row.get(k), row.get(f"{k}_ci")) for k in keys),
                 _num(row.get("mean_completion_tokens"), "tok"),
                 _num(row.get("mean_sequential_tokens"), "tok"),
                 _num(row.get("mean_prompt_tokens"), "tok"), _num(row.get("accuracy_per_1k_tokens")),
                 _num(row.get("total_wall_s")),
                 *([_num(row.get("mean_cost"), "tok")] if costly else [])]
        out.append("<tr>" + "".join(f'<td{" class=n" if k else ""}>{c}</td>'
                                    for k, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _problem_link(pid: str) -> str:
    return f'<a class="pid" href="#problem/{escape(_hash_id(pid))}">{escape(pid)}</a>'


def _hash_id(pid: str) -> str:
    from urllib.parse import quote

    return quote(pid, safe="")


def run_block(run: dict, names: Sequence[str]) -> str:
    """One run: its levels, ARISE, classes, s1, TTSPM, severe drops and paired difference."""
    a, i = run["arise"], list(names).index(run["name"])
    inputs = ", ".join("<stdin>" if p == "-" else p for p in run["inputs"])
    parts = [f'<details class="run-block" open><summary><span class="swatch" '
             f'style="background:{color(i)}"></span>run <b>{escape(run["name"])}</b>'
             f'<span class="muted"> · {escape(inputs)}</span></summary>', _level_table(run), "<ul>"]
    cost = run["cost"]
    basis = (f"{cost['token_basis']} tokens" if cost["kind"] == "tokens"
             else f"{cost['kind']} ({cost['unit']})")
    if a["n_levels"] > 1:
        parts.append(f"<li>ARISE <b>{a['arise']:+.4f}</b> (std {a['arise_std']:.4f}, min "
                     f"{a['arise_min']:+.4f}, max {a['arise_max']:+.4f}) over {a['n_problems']} "
                     f"problems and {a['n_levels']} levels; cost: {escape(basis)}</li>")
    else:
        parts.append("<li>ARISE needs two or more levels (one -i file per level, or records "
                     "with <code>level</code>)</li>")
    parts.append("<li>problems: " + ", ".join(
        f'<button class="cls-link cls-{c}" data-run="{i}" data-cls="{c}">{CLASS_LABELS[c]} '
        f'{a[c]}</button>' for c in CLASSES) + "</li>")
    s1 = run["s1"]
    parts.append(f"<li>slope {_num(a['slope'], 'slope')} accuracy/cost (dataset; mean of "
                 f"per-problem slopes {_num(a['slope_per_problem'], 'slope')}); s1: control "
                 f"{_num(s1['control'])}, scaling {_num(s1['scaling'], 'slope')}, performance "
                 f"{_num(s1['performance'])}</li>")
    if run.get("ttspm"):
        t = run["ttspm"]
        parts.append(f"<li>TTSPM fit F(N) = {t['f_max']:.3f} (1 − (1 − {t['p']:.3f})<sup>N"
                     f"</sup>): gains fall below {t['eps']:g} per sample beyond N = "
                     f"{t['saturation_n']} (rmse {t['rmse']:.3f})</li>")
    if a["n_levels"] > 1:
        sev = a["severe_degradations"]
        items = "".join(f"<li>{_problem_link(d['id'])}: level {d['from_level']} → "
                        f"{d['to_level']}, accuracy {d['acc_from']:.2f} → {d['acc_to']:.2f}, cost "
                        f"{d['tokens_from']:,.0f} → {d['tokens_to']:,.0f} (×{d['token_ratio']:.2f})"
                        "</li>" for d in sev)
        parts.append(f"<li>severe degradations (an accuracy drop with cost ×1.5 or more; the "
                     f"reference's rule): {a['n_severe']}; of them 1 → 0: {a['n_severe_1_to_0']}"
                     + (f'<details class="severe"><summary>list</summary><ul>{items}</ul>'
                        "</details>" if sev else "") + "</li>")
    if run.get("vs_first"):
        vs = run["vs_first"]
        rows = [f"<li>level {escape(level)}: {text.replace('  (', ' (')}</li>"
                for level, text in vs_first_levels(run, sep=", ")]
        parts.append(f"<li>vs {escape(vs['run'])} (paired over shared problems, 95% CI):"
                     f"<ul>{''.join(rows) or '<li>no level in common</li>'}</ul></li>")
    aside = run["set_aside"]["no_gold_answer"]
    if aside:
        parts.append(f"<li>set aside: {len(aside)} records whose gold answer has no extractable "
                     "final answer: " + ", ".join(f"{escape(m['path'])}:{m['line']}"
                                                  for m in aside[:20])
                     + (" …" if len(aside) > 20 else "") + "</li>")
    parts.append("</ul></details>")
    return "".join(parts)


def overview(result: dict, names: Sequence[str]) -> str:
    runs = result["runs"]
    defs = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in result["definitions"].items())
    return "".join([
        "<h2>Summary</h2>",
        '<p class="muted">Runs ranked by dataset ARISE (higher is better), the numbers of '
        "<code>ttx score --json</code>. Click a class count to list its problems.</p>",
        summary_table(runs, names),
        '<div class="plot-wrap">', accuracy_cost_svg(runs, names), "</div>",
        "<h2>Runs</h2>", *(run_block(r, names) for r in runs),
        '<details class="defs"><summary>Definitions</summary><table class="kv">', defs,
        "</table></details>",
        '<details class="score-text"><summary><code>ttx score</code> output</summary><pre>',
        escape(render_table(result)), "</pre></details>"])


def _kv_rows(d: dict) -> str:
    return "".join(f"<tr><th>{escape(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in d.items())


def _value(v) -> str:
    if isinstance(v, dict) and len(v) <= 8 and all(
            x is None or isinstance(x, (str, int, float, bool)) for x in v.values()):
        return " · ".join(f"{escape(str(k))} <b>{escape(json.dumps(x))}</b>" for k, x in v.items())
    if isinstance(v, (dict, list)):
        return f"<pre>{escape(json.dumps(v, indent=2, ensure_ascii=False))}</pre>"
    return escape("null" if v is None else str(v))


def manifest_section(entries: Sequence[dict]) -> str:
    """Each input file: its sha256 now and the manifest written beside it (model, options,
    versions, input hashes), so a report can be traced to the run that made it."""
    out = ["<h2>Manifests</h2>", '<p class="muted">Each records file as read for this report, and '
           "the manifest its stage wrote beside it (<code>&lt;file&gt;.manifest.json</code>).</p>"]
    for e in entries:
        out.append(f'<section class="manifest" data-run="{escape(e["run"])}"><h3>run '
                   f'{escape(e["run"])} · <code>{escape(e["path"])}</code></h3><table class="kv">')
        out.append(f"<tr><th>records sha256</th><td><code>{escape(e['sha256'] or '–')}</code></td></tr>")
        m = e.get("manifest")
        if m is None:
            out.append(f"<tr><th>manifest</th><td>{escape(e['note'])}</td></tr></table>")
        else:
            opts = m.get("options") if isinstance(m.get("options"), dict) else {}
            run = opts.get("run") if isinstance(opts.get("run"), dict) else {}
            strategy = run.get("strategy") if isinstance(run.get("strategy"), dict) else {}
            facts = {"manifest": e["manifest_path"], "stage": m.get("stage"),
                     "ttx version": m.get("ttx_version"), "model": opts.get("model"),
                     "engine": opts.get("engine"), "strategy": strategy.get("strategy"),
                     "levels": run.get("levels"), "started": m.get("started"),
                     "finished": m.get("finished"), "host": m.get("host")}
            out.append(_kv_rows({k: v for k, v in facts.items() if v is not None}))
            hashes = m.get("inputs") if isinstance(m.get("inputs"), list) else []
            out.append("<tr><th>its inputs</th><td><table class='hashes'>" + "".join(
                f"<tr><td><code>{escape(str(h.get('path')))}</code></td><td><code>"
                f"{escape(str(h.get('sha256')))}</code></td></tr>"
                for h in hashes if isinstance(h, dict)) + "</table></td></tr>")
            if m.get("summary"):
                out.append(f"<tr><th>summary</th><td>{_value(m['summary'])}</td></tr>")
            out.append("</table><details><summary>options</summary>"
                       f"{_value(m.get('options'))}</details>"
                       f"<details><summary>whole manifest</summary>{_value(m)}</details>")
        out.append("</section>")
    return "".join(out)
