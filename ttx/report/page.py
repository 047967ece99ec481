"""`ttx report`: score the runs with `ttx score`'s own function, gather each problem's records,
and write one self-contained HTML page (styles, script and data inlined; no network).

    ttx report -i runs.jsonl -o report.html
    ttx report --compare greedy=g.jsonl --compare majority=m.jsonl -o report.html

The page embeds two JSON blocks: a small index (one entry per problem: id, classes, final
accuracy) that the first view needs, and after the script the details (question, gold, every
record and trace), parsed only when a problem is opened or the text is searched.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import atomic_path, manifest_path, now_iso, safe_text, sha256_file, write_manifest
from ttx.records import refuse_outputs_overlap
from ttx.redact import redact_secrets
from ttx.report.classes import CLASSES, check_counts, problem_classes
from ttx.report.overview import manifest_section, overview
from ttx.report.problems import plain, record_view
from ttx.report.safe import escape
from ttx.report.svg import color
from ttx.score import ScoreConfig, load_run, parse_compare, regrade_run, score, unfinished_note
from ttx.scoring.metrics import gold_answer

SNIPPET = 160                      # characters of the question in the problem list


@contextmanager
def _stdin_spooled(inputs: Sequence[str], compare: Sequence[str]):
    """score() and load_run() each read the input; stdin can be read once, so it is spooled to
    a file named input.jsonl (score names a single stdin run "input" too), and errors and
    paths naming that file are given back as <stdin>."""
    uses = "-" in inputs or any(f == "-" for s in compare for f in s.partition("=")[2].split(","))
    if not uses:
        yield list(inputs), list(compare), None
        return
    with tempfile.TemporaryDirectory(prefix="ttx-report-") as tmp:
        spool = str(Path(tmp) / "input.jsonl")
        with open(spool, "w", encoding="utf-8") as f:
            f.write(sys.stdin.read())
        swap = lambda f: spool if f == "-" else f
        comp = [s.partition("=")[0] + "=" + ",".join(swap(f) for f in s.partition("=")[2].split(","))
                if "=" in s else s for s in compare]
        try:
            yield [swap(f) for f in inputs], comp, spool
        except TtxError as exc:
            if exc.path != spool:
                raise
            where = f"{exc.path}" + (f":{exc.line}" if exc.line is not None else "")
            where += f": field '{exc.field}'" if exc.field is not None else ""
            raise TtxError(str(exc)[len(where) + 2:], path="<stdin>", line=exc.line,
                           field=exc.field) from None


def _given_order(result: dict, inputs: Sequence[str], compare: Sequence[str]) -> list[dict]:
    """Score's runs in the order given (-i first, then --compare): the first is the baseline of
    the paired differences, and the order fixes each run's colour and column."""
    by_name = {r["name"]: r for r in result["runs"]}
    order = []
    if inputs:
        order += [r for r in result["runs"] if r["inputs"] == [str(p) for p in inputs]][:1]
    order += [by_name[s.partition("=")[0].strip()] for s in compare]
    return order


def _manifests(runs: Sequence[dict], spool: str | None) -> list[dict]:
    out = []
    for run in runs:
        for path in run["inputs"]:
            entry = {"run": run["name"], "path": "<stdin>" if path == spool else path,
                     "sha256": sha256_file(path) if os.path.isfile(path) else None,
                     "manifest": None, "note": "read from stdin: no manifest"}
            if path != spool:
                mp = manifest_path(path)
                entry["manifest_path"] = str(mp)
                entry["note"] = f"no manifest beside it ({mp.name})"
                if mp is not None and mp.is_file():
                    try:
                        # one an older ttx wrote may hold a URL's credentials: never shown
                        entry["manifest"] = redact_secrets(
                            plain(json.loads(mp.read_text(encoding="utf-8"))))
                    except (OSError, ValueError) as exc:
                        entry["note"] = f"{mp}: unreadable ({exc})"
                    if entry["manifest"] is not None and not isinstance(entry["manifest"], dict):
                        entry["manifest"], entry["note"] = None, f"{mp}: not a JSON object"
            out.append(entry)
    return out


def _ignore_str(manifest: dict | None) -> str | None:
    try:
        return manifest["options"]["run"]["strategy"]["search"]["ignore_str"]
    except (KeyError, TypeError):
        return None


def _banks(bank: str | None, manifests: Sequence[dict]) -> list[str]:
    """--memory BANK, then the banks the runs' manifests name."""
    banks = [bank] if bank else []
    for e in manifests:
        try:
            banks.append(e["manifest"]["options"]["run"]["memory"])
        except (KeyError, TypeError):
            continue
    return [b for b in dict.fromkeys(banks) if isinstance(b, str) and b]


def _memory_items(bank: str | None, manifests: Sequence[dict], wanted: set[str]) -> dict:
    """The retrieved items' texts, from --memory BANK or the bank a run's manifest names."""
    from ttx.memory.bank import load_bank

    if not wanted:
        return {}
    items = {}
    for b in _banks(bank, manifests):
        if not os.path.isfile(b):
            if b == bank:
                raise TtxError("no such file (--memory)", path=b)
            continue
        for item in load_bank(b):
            if item["id"] in wanted and item["id"] not in items:
                items[item["id"]] = {k: item.get(k) for k in ("title", "kind", "outcome", "text")}
    return items


def build_report(inputs: Sequence[str] = (), compare: Sequence[str] = (),
                 cfg: ScoreConfig | None = None, *, output: str, title: str | None = None,
                 question_field: str = "question", memory: str | None = None,
                 options: dict | None = None) -> dict:
    """Write the page (and its manifest); returns score's result, which the page shows."""
    cfg = cfg or ScoreConfig()
    started = now_iso()
    given = [*inputs, *(f for spec in compare for f in parse_compare(spec)[1]), memory]
    refuse_outputs_overlap({"-o": output}, given)
    with _stdin_spooled(inputs, compare) as (ins, comp, spool):
        result = score(ins, comp, cfg, options=options)
        runs = _given_order(result, ins, comp)
        loaded = [load_run(r["name"], r["inputs"], cfg) for r in runs]
        if cfg.regrade:
            for run in loaded:
                regrade_run(run)
        manifests = _manifests(runs, spool)
        index, detail = _problem_data(runs, loaded, cfg, question_field, manifests)
        wanted = {i for d in detail for rr in d["runs"] if rr for rec in rr["recs"]
                  for i in rec.get("memory", [])}
        detail_blob = {"problems": detail, "memory": _memory_items(memory, manifests, wanted)}
        if spool:
            for r in result["runs"]:
                r["inputs"] = ["-" if p == spool else p for p in r["inputs"]]
    refuse_outputs_overlap({"-o": output}, [*given, *_banks(memory, manifests)])
    names = [r["name"] for r in runs]
    html = safe_text(render_page(result, names, index, detail_blob, manifests,   # non-UTF-8
                                 title or "ttx report: " + ", ".join(names)))   # paths, --title
    if str(output) == "-":
        sys.stdout.write(html)
    else:
        with atomic_path(output) as tmp:
            tmp.write_text(html, encoding="utf-8")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)          # a page to share, not a private temp file
        write_manifest(output, stage="report", options={**(options or {}),
                                                        "definitions": result["definitions"]},
                       inputs=[p for r in runs for p in r["inputs"] if p != "-"],
                       started=started,
                       summary={r["name"]: {"accuracy": r["summary"]["accuracy"],
                                            "arise": r["arise"]["arise"]} for r in runs})
    return result


def _problem_data(runs, loaded, cfg: ScoreConfig, question_field: str, manifests) -> tuple:
    order: dict[str, int] = {}
    per_run = []
    for run, lr in zip(runs, loaded):
        classes, correct = problem_classes(lr, cfg.answer_field)
        check_counts(run["name"], classes, run["arise"])
        recs: dict[str, list] = {}
        first: dict[str, dict] = {}
        for rec, ok, lvl, pid, where in zip(lr["records"], correct, lr["levels"], lr["ids"],
                                           lr["where"]):
            order.setdefault(pid, len(order))
            first.setdefault(pid, rec)
            recs.setdefault(pid, []).append(record_view(
                rec, ok, where, lvl, answer_field=cfg.answer_field, invalid=cfg.invalid,
                level_key=run["level_key"]))
        per_run.append((classes, recs, first))
    index, detail = [], []
    for pid in order:
        rec = next(f[pid] for _, _, f in per_run if pid in f)
        q = rec.get(question_field)
        q = q if isinstance(q, str) else ("" if q is None else json.dumps(plain(q)))
        gold = rec.get(cfg.answer_field)
        entry = {"id": pid, "q": q[:SNIPPET], "c": [], "f": [], "ar": []}
        full = {"q": q, "gold": None if gold is None else str(gold),
                "goldx": gold_answer(rec, cfg.answer_field), "runs": []}
        for run, (classes, recs, _) in zip(runs, per_run):
            if pid not in classes:
                for key in ("c", "f", "ar"):
                    entry[key].append(None)
                full["runs"].append(None)
                continue
            c = classes[pid]
            entry["c"].append(c["class"])
            entry["f"].append(c["a"][-1])
            entry["ar"].append(run["arise"]["per_problem"].get(pid))
            full["runs"].append({"a": c["a"], "levels": c["levels"],
                                 "recs": sorted(recs[pid], key=lambda r: (r["level"],
                                                                          str(r["repeat"])))})
        index.append(entry)
        detail.append(full)
    meta = []
    for i, run in enumerate(runs):
        ignore = next((_ignore_str(m["manifest"]) for m in manifests
                       if m["run"] == run["name"] and _ignore_str(m["manifest"])), None)
        meta.append({"name": run["name"], "color": color(i), "strategy": run["strategy"],
                     "model": run["model"], "level_key": run["level_key"],
                     "ignore_str": ignore or "Wait"})
    return {"runs": meta, "classes": list(CLASSES), "problems": index}, detail


def _script_json(obj) -> str:
    """JSON safe inside <script>: every '<' escaped, so no text can close the tag."""
    return json.dumps(plain(obj), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).replace("<", "\\u003c")


def _asset(name: str) -> str:
    return resources.files("ttx.report").joinpath(name).read_text(encoding="utf-8")


def render_page(result: dict, names: Sequence[str], index: dict, detail: dict,
                manifests: Sequence[dict], title: str) -> str:
    from ttx import __version__

    by_name = {r["name"]: r for r in result["runs"]}
    runs = [by_name[n] for n in names]
    generated = now_iso()
    sub = " · ".join(escape(r["name"]) + f' <span class="muted">({escape(", ".join(r["strategy"]))})'
                     "</span>" for r in runs)
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_asset('report.css')}</style></head><body>",
        f'<header><div class="brand"><h1>{escape(title)}</h1><div class="sub">{sub} · '
        f'generated {escape(generated)} by ttx {escape(__version__)}</div></div>',
        '<nav><a href="#overview" data-tab="overview">Overview</a>'
        '<a href="#problems" data-tab="problems">Problems</a>'
        '<a href="#manifest" data-tab="manifest">Manifest</a></nav></header>',
        *(f'<div class="banner unfinished" data-run="{escape(r["name"])}"><b>Unfinished run '
          f'{escape(r["name"])}</b>: {escape(unfinished_note(r))}.</div>'
          for r in runs if r.get("unfinished")),
        "<main>",
        f'<section id="tab-overview" class="tab">{overview(result, names)}</section>',
        '<section id="tab-problems" class="tab" hidden><div class="explorer"><aside>',
        '<div class="filters"><input id="q" type="search" placeholder="search id or text  (/)" '
        'autocomplete="off"><div class="row"><label>run <select id="f-run"></select></label>'
        '<label>class <select id="f-cls"><option value="">any</option></select></label></div>'
        '<div class="row"><label>answer <select id="f-ok"><option value="">any</option>'
        '<option value="right">right</option><option value="wrong">wrong</option>'
        '<option value="partly">partly right</option></select></label>'
        '<label id="f-dis-wrap"><input id="f-dis" type="checkbox"> runs disagree</label></div>'
        '<div id="count" class="muted"></div><div id="legend" class="muted"></div></div>'
        '<div id="list" tabindex="0"><div id="list-inner"></div></div>'
        '<div class="keys muted">j / k or ↓ / ↑: next / previous · /: search</div></aside>'
        '<article id="detail"><p class="muted">Select a problem.</p></article></div></section>',
        f'<section id="tab-manifest" class="tab" hidden>{manifest_section(manifests)}</section>',
        "</main>",
        f'<script type="application/json" id="ttx-index">{_script_json(index)}</script>',
        f'<script type="application/json" id="ttx-score">{_script_json(result)}</script>',
        # the script runs before the parser reaches the (large) details: the first view does
        # not wait for them
        f"<script>{_asset('report.js')}</script>",
        f'<script type="application/json" id="ttx-detail">{_script_json(detail)}</script>',
        "</body></html>"])
