"""Does a memory bank help? Extract on one part of the arithmetic problems, answer a disjoint
part with and without memory: same model, strategy and budget.

    .venv/bin/python bench/memory.py [--train 16] [--test 24] [--max-new-tokens 192] [--threads 1]
    .venv/bin/python bench/memory.py --smoke        # 2 + 2 problems, one arm each way: ~3 min
    .venv/bin/python bench/memory.py --engine openai --base-url http://127.0.0.1:8000/v1 --model M

1. train part: majority, n = 2 at temperature 0.7 (two traces to contrast, MaTTS parallel);
   `correct` per record as `ttx score --per-record` writes it;
2. memory-extract into a fresh bank per arm: reasoningbank with field blocks, reasoningbank with
   `--item-format tips`, cheatsheet with tips (Dynamic Cheatsheet, problems in order), each asked
   for with a JSON schema (constrained decoding, ttx.memory.structured); the `-free` arms
   (blocks-free, tips-free, cheatsheet-free) ask for the same items as text, unconstrained;
3. test part: greedy without memory, then greedy with each bank (reasoningbank: --memory-k 1,
   BM25, leave-one-out; cheatsheet: --memory-k 0, the whole sheet), and greedy with
   --memory-update (reasoningbank tips, learning online over the test part, starting empty).
Reports accuracy, completion and prompt tokens per arm, the problems memory flipped, each bank's
size, the extractor's items parsed per extraction, malformed and copied-example counts, and its
decoding speed (completion tokens per second of extraction: constrained against free).
Writes bench/results/memory.json (--smoke: memory-smoke.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

ARMS = {  # name: (style, item_format, memory_k, structured)
    "blocks": ("reasoningbank", "blocks", 1, True), "blocks-free": ("reasoningbank", "blocks", 1, False),
    "tips": ("reasoningbank", "tips", 1, True), "tips-free": ("reasoningbank", "tips", 1, False),
    "cheatsheet": ("cheatsheet", "tips", 0, True), "cheatsheet-free": ("cheatsheet", "tips", 0, False)}


def _run(engine, problems_path, out, *, strategy, n, temperature, max_new_tokens, memory=None,
         memory_k=1, update=None):
    from ttx.engines import SamplingParams
    from ttx.tts.run import RunConfig, run_tts
    from ttx.tts.strategy import StrategyConfig

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    cfg = RunConfig(input=str(problems_path), output=str(out), progress=False,
                    strategy=StrategyConfig(strategy=strategy, n=n, params=params),
                    memory=str(memory) if memory else None, memory_k=memory_k)
    if update:
        cfg.memory_update = True
        cfg.memory_style, cfg.memory_item_format, cfg.memory_extract_tokens = update
    hooks = ()
    if memory:
        from ttx.memory.online import Recall, check_memory_options
        from ttx.tts.run import read_problems

        check_memory_options(cfg)
        hooks = (Recall(cfg, read_problems(cfg), engine),)
    t0 = time.perf_counter()
    run_tts(engine, cfg, hooks=hooks)
    records = [json.loads(line) for line in Path(out).read_text().splitlines()]
    return records, time.perf_counter() - t0


def _stats(records, wall):
    from ttx.scoring.metrics import record_correct

    ok = [record_correct(r) for r in records]
    return {"accuracy": sum(ok) / len(ok), "correct": sum(ok), "problems": len(ok),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "with_memory_items": sum(1 for r in records if r["memory_ids"]),
            "wall_s": round(wall, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--extract-tokens", type=int, default=256)
    ap.add_argument("--arms", default="blocks,blocks-free,tips,tips-free,cheatsheet,online",
                    help=f"memory arms to run (comma-separated): {', '.join(ARMS)}, online")
    ap.add_argument("--smoke", action="store_true",
                    help="2 train + 2 test problems, 48 tokens, arms blocks and blocks-free")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--engine", choices=["hf", "openai"], default="hf")
    ap.add_argument("--base-url", default=None, help="openai: a server with a larger model")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 is 3x faster than 2 on a 2-core machine shared with "
                         "another busy process)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/memory.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.test, args.max_new_tokens, args.extract_tokens = 2, 2, 48, 160
        args.arms = "blocks,blocks-free"
        if args.out == str(ROOT / "bench/results/memory.json"):
            args.out = str(ROOT / "bench/results/memory-smoke.json")

    from ttx.data.arith import generate
    from ttx.engines import SamplingParams, open_engine
    from ttx.io import write_jsonl
    from ttx.memory.bank import load_bank
    from ttx.memory.extract import ExtractConfig, extract_to_bank
    from ttx.score import score

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    problems = generate(args.train + args.test, args.seed)      # ids differ: disjoint parts
    work = Path(tempfile.mkdtemp(prefix="ttx-bench-memory-"))
    write_jsonl(work / "train.jsonl", problems[:args.train])
    write_jsonl(work / "test.jsonl", problems[args.train:])
    t0 = time.perf_counter()
    engine = open_engine(args.engine, model=args.model, base_url=args.base_url, max_batch_rows=64)
    load_s = time.perf_counter() - t0

    train, train_wall = _run(engine, work / "train.jsonl", work / "train_runs.jsonl",
                             strategy="majority", n=2, temperature=0.7,
                             max_new_tokens=args.max_new_tokens)
    score([str(work / "train_runs.jsonl")], per_record=str(work / "scored.jsonl"))
    from ttx.scoring.metrics import record_correct

    kw = dict(strategy="greedy", n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    base, base_wall = _run(engine, work / "test.jsonl", work / "baseline.jsonl", **kw)
    arms = ARMS
    result = {
        "setup": {"engine": args.engine, "model": args.model, "problems_seed": args.seed,
                  "train": args.train, "test": args.test, "train_strategy": "majority n=2 T=0.7",
                  "test_strategy": "greedy", "max_new_tokens": args.max_new_tokens,
                  "extract": {"max_new_tokens": args.extract_tokens, "temperature": 0.0},
                  "arms": {k: {"style": v[0], "item_format": v[1], "memory_k": v[2],
                               "structured": v[3]} for k, v in arms.items()},
                  "online": {"style": "reasoningbank", "item_format": "tips", "memory_k": 1},
                  "retrieval": "bm25s, leave-one-out"},
        "model_load_s": round(load_s, 1), "torch_threads_set": args.threads,
        "train": _stats(train, train_wall), "without_memory": _stats(base, base_wall),
        "arms": {}, "machine": None}
    for name in [a for a in args.arms.split(",") if a]:
        bank_path = work / f"bank-{name}.jsonl"
        t1 = time.perf_counter()
        if name == "online":          # learn over the test part itself, one problem at a time
            mem, mem_wall = _run(engine, work / "test.jsonl", work / "online.jsonl",
                                 memory=bank_path, update=("reasoningbank", "tips", args.extract_tokens),
                                 **kw)
            manifest = json.loads((work / "online.jsonl.manifest.json").read_text())
            extraction = manifest["summary"]["memory_update"]
        else:
            style, item_format, k, structured = arms[name]
            extraction = extract_to_bank(engine, str(work / "scored.jsonl"), str(bank_path),
                                         ExtractConfig(style=style, item_format=item_format,
                                                       structured=structured,
                                                       progress=False, params=SamplingParams(
                                                           max_new_tokens=args.extract_tokens,
                                                           seed=0)))
            extraction["wall_s"] = round(time.perf_counter() - t1, 1)
            extraction["tokens_per_s"] = round(extraction["completion_tokens"]
                                               / max(extraction["wall_s"], 1e-9), 2)
            mem, mem_wall = _run(engine, work / "test.jsonl", work / f"with-{name}.jsonl",
                                 memory=bank_path, memory_k=k, **kw)
        bank = load_bank(bank_path) if bank_path.exists() else []
        flips = [(record_correct(a), record_correct(b)) for a, b in zip(base, mem)]
        stats = _stats(mem, mem_wall)
        extracted = extraction.get("extracted", extraction.get("learned", 0))
        result["arms"][name] = {
            "extraction": extraction, "bank_items": len(bank),
            "items_parsed_per_extraction": round(extraction.get("items_parsed", 0)
                                                 / max(extracted, 1), 2),
            "bank_sample": [{k: it[k] for k in ("title", "text", "kind", "outcome", "uses")}
                            for it in bank[:5]],
            "with_memory": stats,
            "accuracy_delta": stats["accuracy"] - result["without_memory"]["accuracy"],
            "memory_helped": sum(1 for a, b in flips if not a and b),
            "memory_hurt": sum(1 for a, b in flips if a and not b)}
        print(name, json.dumps({k: result["arms"][name][k] for k in
                                ("bank_items", "items_parsed_per_extraction", "accuracy_delta",
                                 "memory_helped", "memory_hurt")}),
              f"parsed {extraction.get('items_parsed')} malformed {extraction.get('malformed')} "
              f"copied {extraction.get('copied_example')} "
              f"extract {extraction.get('tokens_per_s')} tok/s", flush=True)
    result["machine"] = machine(argv)
    engine.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"without_memory": result["without_memory"],
                      **{k: {"accuracy": v["with_memory"]["accuracy"], "bank": v["bank_items"],
                             "items_per_extraction": v["items_parsed_per_extraction"],
                             "copied_example": v["extraction"].get("copied_example"),
                             "extract_tokens_per_s": v["extraction"].get("tokens_per_s")}
                         for k, v in result["arms"].items()}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
