"""The test-time scaling strategies side by side on the default model, with ARISE per strategy.

    .venv/bin/python bench/strategies.py [--problems 16] [--max-new-tokens 192] [--fresh]

Besides accuracy and tokens: the search strategies run twice, with the hf engine's prefix reuse
and without it (prefill tokens actually computed and wall time, side by side), one beam search
scores with a process reward model (the default model read as a Math-Shepherd PRM: its scores
mean nothing, its forward count is what is measured: one per batch now, one per candidate
before), and bench/results/strategies_previous.json holds the previous session's table.

One run, the same problems (ttx.data.arith, seed 0) and the same engine for every strategy:
greedy, majority, best-of-n (logprob), ffs, budget-forcing, beam, dvts, dora, refine, deepconf,
tot, adaptive-consistency (n = 8 at most, stopped early by its Beta rule), particle-filter,
particle-gibbs and mcts. Each sampling
strategy runs at temperature 0.4 over its natural scaling axis (n, the thinking budget, or turns)
up to a comparable budget (n = 4, or 192 thinking tokens, or 3 turns), so the table compares
accuracy against mean completion and sequential tokens, and ARISE measures how each one scales.
Records go to bench/results/strategies/<name>.jsonl (rewritten on every run);
writes bench/results/strategies.json and bench/results/strategies.png (accuracy vs tokens); `--name X
--only ...` writes X.json and X/ instead (a subset beside the full table).
Sized for 2 shared CPU cores: 16 problems, at most 192 new tokens per trace.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

OUT = ROOT / "bench" / "results"
TEMPERATURE = 0.4
# name -> (strategy, n, levels, SearchConfig knobs); the last level is the compared budget
RUNS = {
    "greedy": ("greedy", 1, None, {}),
    "majority": ("majority", 4, "n=1,2,4", {}),
    "best-of-n": ("best-of-n", 4, "n=2,4", {}),
    "ffs": ("ffs", 4, "n=2,4", {}),
    # s1's own auto budget keeps 100 tokens and the prompt back: below 1 at these budgets
    "budget-forcing": ("budget-forcing", 1, "max_new_tokens=96,192",
                       {"num_ignore": 1, "auto_budget": "cpu"}),
    "budget-forcing-ttx": ("budget-forcing", 1, "max_new_tokens=96,192",
                           {"num_ignore": 1, "budget_style": "ttx"}),
    "beam": ("beam", 4, "n=2,4", {"beam_width": 2, "step_tokens": 64, "max_steps": 4}),
    "dvts": ("dvts", 4, "n=2,4", {"beam_width": 2, "step_tokens": 64, "max_steps": 4}),
    "dora": ("dora", 4, "n=2,4", {"step_tokens": 64, "max_steps": 4}),
    "refine": ("refine", 1, "turns=1,2,3", {}),
    # DeepConf online: 2 warm-up traces set the threshold, then one trace per round (the
    # consensus checked between them); a 32-token window fits 192-token traces. Measured
    # (strategies_issue35.json): with 2 warm-up traces the top-90% filter leaves one voter, whose
    # share 1.0 passes the 0.95 consensus, so every problem stops after the warm-up: this row is
    # "the more confident of 2 traces", not DeepConf's cancelling (bench/token_savings.py runs
    # the defaults)
    "deepconf": ("deepconf", 4, "n=2,4", {"deepconf_warmup": 2, "deepconf_round": 1,
                                          "deepconf_window": 32}),
    "tot": ("tot", 2, "n=1,2", {"tot_breadth": 2, "tot_evaluations": 2, "tot_depth": 4,
                                "tot_step_tokens": 64}),
    "beam-prm": ("beam", 4, "n=4", {"beam_width": 2, "step_tokens": 64, "max_steps": 4,
                                    "reward_model": "DEFAULT", "prm_format": "tag"}),
    # n is the maximum: Beta's rule cannot stop before 4 unanimous answers, so n = 8 is where it
    # can save draws (drawn < n in the records)
    "adaptive-consistency": ("adaptive-consistency", 8, "n=4,8", {"adaptive_batch": 2}),
    # particle filtering / particle Gibbs (its_hub), weighted by the policy's logprob score
    "particle-filter": ("particle-filter", 4, "n=2,4", {"step_tokens": 64, "max_steps": 4}),
    "particle-gibbs": ("particle-gibbs", 4, "n=2,4", {"step_tokens": 64, "max_steps": 4,
                                                      "pg_sweeps": 2}),
    # a step cut off by its cap is dropped (openr): each step gets the whole --max-new-tokens
    "mcts": ("mcts", 4, "n=2,4", {"mcts_width": 3, "mcts_depth": 4}),
}
SEARCH = ("budget-forcing", "budget-forcing-ttx", "beam", "dvts", "dora", "refine")
SEARCH += ("particle-filter", "particle-gibbs")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--only", nargs="*", default=list(RUNS), help="a subset of the strategies")
    ap.add_argument("--fresh", action="store_true", help="discard earlier records")
    ap.add_argument("--name", default="strategies",
                    help="results name: bench/results/NAME.json and NAME/ (a subset run beside "
                         "the full table, e.g. the strategies of one issue with their baselines)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, loaded 2-core machine 2 threads ran "
                         "13x slower than 1, measured)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    from ttx.data.arith import generate
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.score import score
    from ttx.tts.levels import parse_levels
    from ttx.tts.run import RunConfig, run_tts
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    folder = OUT / args.name
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    problems = folder / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(args.problems, 0)))
    from ttx.models import resolve_model

    engines = {"reuse": HFEngine(model="smollm2-135m-instruct", device="cpu"),
               "no_reuse": HFEngine(model="smollm2-135m-instruct", device="cpu",
                                    prefix_cache_mb=0)}
    before = machine(argv)
    walls, files, reuse, summaries = {}, {}, {}, {}
    for name in args.only:
        strategy, n, levels, knobs = RUNS[name]
        knobs = {k: (str(resolve_model("smollm2-135m-instruct")) if v == "DEFAULT" else v)
                 for k, v in knobs.items()}
        params = SamplingParams(max_new_tokens=args.max_new_tokens, seed=0,
                                temperature=0.0 if strategy == "greedy" else TEMPERATURE)
        for mode in (("reuse", "no_reuse") if name in SEARCH else ("reuse",)):
            suffix = "" if mode == "reuse" else ".no_reuse"
            cfg = RunConfig(input=str(problems), output=str(folder / f"{name}{suffix}.jsonl"),
                            strategy=StrategyConfig(strategy=strategy, n=n, params=params,
                                                    search=SearchConfig(**knobs)),
                            levels=parse_levels(levels) if levels else None, progress=True)
            t0 = time.perf_counter()
            summary = run_tts(engines[mode], cfg)
            wall = round(time.perf_counter() - t0, 1)
            records = [json.loads(line) for line in Path(cfg.output).read_text().splitlines()]
            prefill = sum(r.get("prefill_tokens", r["prompt_tokens"]) for r in records)
            cached = sum(r.get("cached_prefill_tokens", 0) for r in records)
            problems_n = len({r["id"] for r in records})
            reuse.setdefault(name, {})[mode] = {
                "wall_s": wall, "prefill_tokens_per_problem": round(prefill / problems_n, 1),
                "computed_prefill_tokens_per_problem": round((prefill - cached) / problems_n, 1)}
            if mode == "reuse":
                walls[name], files[name], summaries[name] = wall, cfg.output, summary
            print(f"{name} ({mode}): {wall} s", file=sys.stderr, flush=True)
    result = score(compare=[f"{name}={path}" for name, path in files.items()],
                   plot=str(OUT / f"{args.name}.png"))
    rows = []
    forwards = {name: {"reward_forwards_per_problem": round(s["reward_forwards"] / s["problems"], 1),
                       "reward_sequences_per_problem (forwards before batching)":
                           round(s["reward_sequences"] / s["problems"], 1)}
                for name, s in summaries.items() if s.get("reward_forwards")}
    for run in sorted(result["runs"], key=lambda r: list(RUNS).index(r["name"])):
        top = run["levels"][-1]
        rows.append({"strategy": run["name"], "level_key": run["level_key"],
                     "compared_level": top["value"], "accuracy": top["accuracy"],
                     "mean_completion_tokens": top["mean_completion_tokens"],
                     "mean_sequential_tokens": top["mean_sequential_tokens"],
                     "arise": run["arise"]["arise"] if len(run["levels"]) > 1 else None,
                     "wall_s_all_levels": walls.get(run["name"]),
                     "levels": [{"value": lv["value"], "accuracy": lv["accuracy"],
                                 "mean_completion_tokens": lv["mean_completion_tokens"],
                                 "mean_sequential_tokens": lv["mean_sequential_tokens"]}
                                for lv in run["levels"]]})
    report = {"bench": "strategies", "model": "smollm2-135m-instruct",
              "problems": args.problems, "problem_set": "ttx.data.arith seed 0",
              "max_new_tokens": args.max_new_tokens, "temperature": TEMPERATURE,
              "runs": {name: {"strategy": RUNS[name][0], "n": RUNS[name][1],
                              "levels": RUNS[name][2], "knobs": RUNS[name][3]} for name in files},
              "table": rows, "prefix_reuse": reuse, "reward_model_forwards": forwards,
              "machine": before, "load_average_1m_after": machine()["load_average_1m"]}
    (OUT / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'strategy':<15} {'level':>8} {'acc':>6} {'compl':>7} {'seq':>6} {'ARISE':>7} {'wall':>6}")
    for r in rows:
        arise = "" if r["arise"] is None else f"{r['arise']:+.3f}"
        print(f"{r['strategy']:<15} {str(r['compared_level']):>8} {r['accuracy']:>6.3f} "
              f"{r['mean_completion_tokens']:>7.1f} {r['mean_sequential_tokens']:>6.1f} "
              f"{arise:>7} {r['wall_s_all_levels']!s:>6}")
    print(json.dumps({"prefix_reuse": reuse, "reward_model_forwards": forwards}, indent=1))


if __name__ == "__main__":
    main()
