"""How fast does a big `ttx report` page come up? A synthetic run of 1,000 problems x 8 traces
(majority votes over traces of realistic length), built with `ttx report`'s own function and
opened from disk in headless Chromium (`make browser`).

    .venv/bin/python bench/report.py                      # 1,000 x 8, writes bench/results/report.json
    .venv/bin/python bench/report.py --problems 100 --loads 1 --no-save     # a smoke run, seconds
    .venv/bin/python bench/report.py --screenshots docs   # docs/report-*.png from the real runs

Measured per page load (the median over --loads loads, each in a fresh browser): first view (navigation start to
the overview painted with the problem list ready: `window.ttxFirstView`), DOMContentLoaded and
load; then the Problems tab (the list and the first problem, which parses the embedded details),
opening another problem (a click), moving to the next one (j), and a text search over every
trace (from the input event, less the box's 120 ms wait for more typing). The build time is Python: score + the
per-problem data + the HTML. The goal: the first view under 2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

WORDS = ("first", "we", "add", "the", "apples", "then", "subtract", "those", "given", "away",
         "so", "each", "box", "holds", "more", "which", "makes", "total", "left", "over")


def synthetic_records(problems: int, traces: int, levels: int, chars: int, seed: int) -> list[dict]:
    """Records as tts-run writes them for majority voting: n = traces at the last level (halved
    per level below it), each trace ~`chars` characters ending in its answer."""
    from ttx.scoring.answers import majority_vote

    rng = random.Random(seed)
    out = []
    for i in range(problems):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        gold = a + b
        skill = rng.random()
        for level in range(1, levels + 1):
            n = max(1, traces // 2 ** (levels - level))
            tr = []
            for t in range(n):
                pred = gold if rng.random() < skill else gold + rng.choice((-10, -1, 1, 2, 10))
                words = []
                while sum(len(w) + 1 for w in words) < chars:
                    words.append(rng.choice(WORDS))
                text = " ".join(words) + f". {a} + {b} = {pred}. The answer is {pred}."
                tr.append({"text": text, "pred": str(pred), "completion_tokens": len(text) // 4,
                           "finish_reason": "stop", "finish_order": t, "score": None})
            out.append({"id": f"syn-{i}", "question": f"Ann has {a} apples and gets {b} more. "
                        "How many apples does she have?", "answer": f"#### {gold}",
                        "strategy": "majority", "n": n, "level_key": "n", "level": level,
                        "repeat": 0, "traces": tr, "pred": majority_vote([x["pred"] for x in tr]),
                        "completion_tokens": sum(x["completion_tokens"] for x in tr),
                        "sequential_tokens": max(x["completion_tokens"] for x in tr),
                        "prompt_tokens": 40, "wall_s": 0.1, "model": "synthetic",
                        "memory_ids": []})
    return out


OPEN_JS = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();          /* route() listens first: this runs once it is done */
window.addEventListener('hashchange', () => done(performance.now() - t0), {once: true});
location.hash = '#problems';
"""
SEARCH_JS = """
const done = arguments[arguments.length - 1];
const box = document.querySelector('#q'), count = document.querySelector('#count');
const before = count.textContent;
const obs = new MutationObserver(() => { obs.disconnect(); done(performance.now() - window._t0); });
obs.observe(count, {childList: true, characterData: true, subtree: true});
window._t0 = performance.now() + 120;          /* the box waits 120 ms for more typing */
box.value = arguments[0];
box.dispatchEvent(new Event('input'));
"""


def measure(page: Path, loads: int, query: str) -> dict:

    from ttx.report.browser import chromium

    rows = []
    for _ in range(loads):                     # each load in a fresh browser: nothing cached
        with chromium(1400, 900) as d:
            d.set_script_timeout(60)
            d.get(page.as_uri())
            end = time.time() + 60
            while not d.execute_script("return document.body.dataset.ready") and time.time() < end:
                time.sleep(0.02)
            nav = d.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                                   "return [window.ttxFirstView, n.domContentLoadedEventEnd,"
                                   " n.loadEventEnd]")
            to_problems = d.execute_async_script(OPEN_JS)
            first_open = d.execute_script(
                "const t = performance.now(); document.querySelectorAll('#list .item')[1].click();"
                "return performance.now() - t")
            next_one = d.execute_script(
                "const t = performance.now(); document.body.dispatchEvent(new KeyboardEvent("
                "'keydown', {key: 'j', bubbles: true})); return performance.now() - t")
            search = d.execute_async_script(SEARCH_JS, query)
            rows.append({"first_view_ms": nav[0], "dom_content_loaded_ms": nav[1],
                         "load_ms": nav[2], "problems_tab_ms": to_problems,
                         "open_a_problem_ms": first_open,
                         "next_problem_ms": next_one, "text_search_ms": search})
    return ({k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}
            | {"first_view_max_ms": round(max(r["first_view_ms"] for r in rows), 1), "loads": rows})


SHOT_RUNS = ("beam", "majority", "dora", "budget-forcing", "refine", "best-of-n", "greedy")


def screenshots(folder: Path, problem: str) -> None:
    """The overview and one problem of a report on bench/strategies.py's real runs."""
    import os

    from ttx.report.browser import chromium
    from ttx.report.page import build_report
    from ttx.score import ScoreConfig

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)                               # the page shows the inputs' paths as given
    runs = Path("bench") / "results" / "strategies"
    with tempfile.TemporaryDirectory(prefix="ttx-shots-") as tmp:
        page = Path(tmp) / "report.html"
        build_report([], [f"{s}={runs / (s + '.jsonl')}" for s in SHOT_RUNS], ScoreConfig(),
                     output=str(page), title="ttx report: seven strategies on 16 problems")
        for name, fragment, size in (("overview", "", (1400, 1000)),
                                     ("problem", f"#problem/{problem}", (1400, 1250))):
            with chromium(*size) as d:
                d.get(page.as_uri() + fragment)
                while not d.execute_script("return document.body.dataset.ready"):
                    time.sleep(0.05)
                d.save_screenshot(str(folder / f"report-{name}.png"))
    print(f"wrote {folder}/report-overview.png, {folder}/report-problem.png", file=sys.stderr)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--traces", type=int, default=8)
    ap.add_argument("--levels", type=int, default=1, help="levels n = traces/2^k .. traces")
    ap.add_argument("--chars", type=int, default=800, help="characters per trace")
    ap.add_argument("--loads", type=int, default=3, help="fresh page loads (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "report.json"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--screenshots", metavar="DIR", help="only write the docs' screenshots there")
    ap.add_argument("--shot-problem", default="arith-0-6")
    args = ap.parse_args(argv)
    if args.screenshots:
        screenshots(Path(args.screenshots), args.shot_problem)
        return {}

    from ttx.report.page import build_report
    from ttx.score import ScoreConfig

    with tempfile.TemporaryDirectory(prefix="ttx-bench-report-") as tmp:
        runs = Path(tmp) / "runs.jsonl"
        recs = synthetic_records(args.problems, args.traces, args.levels, args.chars, args.seed)
        runs.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        page = Path(tmp) / "report.html"
        t0 = time.perf_counter()
        build_report([str(runs)], [], ScoreConfig(), output=str(page))
        build_s = time.perf_counter() - t0
        query = recs[len(recs) // 2]["traces"][0]["text"][:40]
        browser = measure(page, args.loads, query)
        result = {
            "bench": "report",
            "setting": {"problems": args.problems, "traces": args.traces, "levels": args.levels,
                        "chars_per_trace": args.chars, "records": len(recs),
                        "total_traces": sum(len(r["traces"]) for r in recs)},
            "records_mb": round(runs.stat().st_size / 2**20, 2),
            "page_mb": round(page.stat().st_size / 2**20, 2),
            "build_s": round(build_s, 2),
            **{k: v for k, v in browser.items() if k != "loads"},
            "first_view_under_2s": browser["first_view_max_ms"] < 2000,
            "loads": browser["loads"],
            "browser": _chromium_version(),
            "machine": machine(argv),
        }
    print(json.dumps({k: v for k, v in result.items() if k not in ("loads", "machine")}, indent=2))
    if not args.no_save:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return result


def _chromium_version() -> str | None:
    import subprocess

    from ttx.report.browser import CHROMIUM

    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
