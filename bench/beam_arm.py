"""One arm of bench/tts_engine.py's beam-search part, in a process of its own.

    .venv/bin/python bench/beam_arm.py [--engine-kwargs '{"prefix_cache_mb": 0}'] [--ttx-root DIR]

Beam search (ttx style, the policy's own scores) at n = 8, width 2, 4 steps of at most 64 tokens,
on the first --problems arithmetic problems; prints one JSON line: wall time, completion tokens
(and per second), prefill tokens per problem and those actually computed (prefill minus cached).
--ttx-root imports ttx from another checkout (a git worktree of an earlier commit: the engine
before prefix reuse), so only what both versions' APIs share is used here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROBLEMS = 8
SETTINGS = {"n": 8, "beam_width": 2, "max_steps": 4, "step_tokens": 64, "max_new_tokens": 192,
            "temperature": 0.4}


def run(engine_kwargs: dict, problems: int) -> dict:
    from ttx.data.arith import generate
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.prompts import build_prompt
    from ttx.tts.registry import strategy as strategy_class
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    s = SETTINGS
    prompts = [build_prompt(p["question"]) for p in generate(problems, 0)]
    cfg = StrategyConfig(strategy="beam", n=s["n"], params=SamplingParams(
        max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], seed=0),
        search=SearchConfig(beam_width=s["beam_width"], step_tokens=s["step_tokens"],
                            max_steps=s["max_steps"]))
    engine = HFEngine(device="cpu", **engine_kwargs)
    runner = strategy_class("beam")(cfg)
    runner.setup(engine)
    runner.run(engine, prompts[:1], cfg)                             # warm-up
    prefix = getattr(engine, "prefix", None)
    if prefix is not None:
        engine.prefix = type(prefix)(prefix.max_bytes)               # nothing kept from it
    t0 = time.perf_counter()
    outcomes = runner.run(engine, prompts, cfg)
    wall = time.perf_counter() - t0
    prefill = sum(o.extra.get("prefill_tokens", 0) for o in outcomes)
    cached = sum(o.extra.get("cached_prefill_tokens", 0) for o in outcomes)
    tokens = sum(o.completion_tokens for o in outcomes)
    return {"wall_s": round(wall, 1), "completion_tokens": tokens,
            "completion_tokens_per_s": round(tokens / wall, 1),
            "prefill_tokens_per_problem": round(prefill / problems, 1),
            "computed_prefill_tokens_per_problem": round((prefill - cached) / problems, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-kwargs", default="{}")
    parser.add_argument("--ttx-root", default=None)
    parser.add_argument("--problems", type=int, default=PROBLEMS)
    args = parser.parse_args()
    if args.ttx_root:
        sys.path.insert(0, args.ttx_root)
    else:
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(run(json.loads(args.engine_kwargs), args.problems)), flush=True)


if __name__ == "__main__":
    main()
