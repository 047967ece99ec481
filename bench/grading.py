"""Answer grading: agreement with the field's conformance suites, and cases per second, for ttx's
path (extract_answer on both sides, then answers_equal) and for math-verify alone.

    .venv/bin/python bench/grading.py

tests/data/grading/conformance.jsonl: the cases of Math-Verify's tests/test_all.py and
tests/test_yujianll.py, Hendrycks MATH's math_equivalence_test.py and Qwen2.5-Math's grader.py
(only those a reference tests with its default options); tests/data/grading/gsm8k_style.jsonl:
realistic GSM8K-style outputs. math-verify alone is its own parse() on both sides (a bare answer
wrapped in $...$, as it expects) and verify(gold, pred), in process with its own defaults.
Writes bench/results/grading.json.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

DATA = ROOT / "tests" / "data" / "grading"
OUT = ROOT / "bench" / "results" / "grading.json"


def rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ttx_verdict(r: dict) -> bool:
    from ttx.scoring.answers import answers_equal, extract_answer

    return answers_equal(extract_answer(r["prediction"]), extract_answer(r["gold"]))


def mv_verdict(r: dict) -> bool:
    from math_verify import parse, verify

    from ttx.scoring.checker import wrap

    def side(text: str) -> str:
        text = text.replace("####", "").strip() if text.lstrip().startswith("####") else text
        return wrap(text) if r.get("kind", "full_text") == "answer_only" else text

    return bool(verify(parse(side(r["gold"])), parse(side(r["prediction"]))))


def measure(name: str, cases: list[dict], verdict) -> dict:
    verdict(cases[0])                                   # warm: imports, the checker child
    t0 = time.perf_counter()
    wrong = [r for r in cases if verdict(r) != r["expected"]]
    wall = time.perf_counter() - t0
    by_suite: dict[str, list[int]] = {}
    for r in cases:
        n = by_suite.setdefault(r.get("suite", "gsm8k-style"), [0, 0])
        n[0] += 1
        n[1] += r not in wrong
    return {"agree": len(cases) - len(wrong), "cases": len(cases),
            "agreement": round(1 - len(wrong) / len(cases), 4),
            "by_suite": {k: {"agree": a, "cases": n} for k, (n, a) in by_suite.items()},
            "cases_per_s": round(len(cases) / wall, 1),
            "disagreements": [r.get("source") or r["prediction"][:80] for r in wrong]}


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    suites = {"conformance": [r for r in rows("conformance.jsonl") if r["needs_options"] is None],
              "gsm8k_style": rows("gsm8k_style.jsonl")}
    for r in suites["gsm8k_style"]:
        r["suite"] = "gsm8k-style"
    result = {"machine": machine(), "suites": {}}
    for suite, cases in suites.items():
        result["suites"][suite] = {"ttx": measure("ttx", cases, ttx_verdict),
                                   "math-verify": measure("math-verify", cases, mv_verdict)}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'suite':<14} {'grader':<12} {'agree':>9} {'agreement':>10} {'cases/s':>9}")
    for suite, graders in result["suites"].items():
        for name, m in graders.items():
            print(f"{suite:<14} {name:<12} {m['agree']:>4}/{m['cases']:<4} "
                  f"{m['agree'] / m['cases']:>10.1%} {m['cases_per_s']:>9}")   # not the rounded field


if __name__ == "__main__":
    main()
