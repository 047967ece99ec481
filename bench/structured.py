"""Constrained decoding on the default model: llguidance against xgrammar, and against none.

    .venv/bin/python bench/structured.py [--seeds 8] [--max-new-tokens 160] [--threads 1]
    .venv/bin/python bench/structured.py --smoke          # 2 seeds, 2 prompts: about 2 minutes

Needs both libraries (`pip install xgrammar` besides ttx's llguidance). Per arm (free text,
llguidance, xgrammar), rounds interleaved so that the machine's load hits every arm alike:
- speed: n=2 traces of 4 memory-extraction prompts at temperature 0.7, completion tokens per
  second of the whole generate call;
- overhead: the library's own time per token (fill the next-token mask + accept the token),
  replayed over the traces it produced, ttx's masking of a batch of rows (mask_logits, per step),
  and the time to set the library up for the tokenizer (first use);
- tokens per second compare arms only roughly: constrained traces end when their JSON closes, so
  their batches shrink sooner (fewer rows per forward pass) than free text that runs to the limit;
- correctness: every trace under the reasoningbank item schema parses and validates
  (jsonschema); a regex and a choice constraint are checked the same way.
Writes bench/results/structured.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

TASKS = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
         "A box holds 12 pens. How many pens are in 4 boxes?",
         "Sara had 20 stickers and gave away 7. How many are left?",
         "A train travels 60 km per hour for 3 hours. How far does it go?"]
REGEX = r"The answer is [0-9]{1,4}\."


def _prompts(count: int) -> list:
    from ttx.memory.structured import format_text

    return [[{"role": "user", "content": f"Problem: {q}\n\nWrite up to 3 memory items: general "
              f"strategies for problems like this one.\n\n{format_text('reasoningbank', 'blocks')}"}]
            for q in TASKS[:count]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="2 seeds, 2 prompts, 96 tokens")
    ap.add_argument("--out", default=str(ROOT / "bench/results/structured.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.prompts, args.max_new_tokens = 2, 2, 96
        if args.out == str(ROOT / "bench/results/structured.json"):
            args.out = str(ROOT / "bench/results/structured-smoke.json")

    import jsonschema
    import torch

    from ttx.engines import Constraint, SamplingParams
    from ttx.engines.constrain import Constrainer, mask_logits
    from ttx.engines.hf import HFEngine
    from ttx.memory.structured import item_schema

    torch.set_num_threads(args.threads)
    engine = HFEngine("smollm2-135m-instruct", device="cpu")
    vocab = max(len(engine.tokenizer), engine.model.config.vocab_size)
    schema = item_schema("reasoningbank", "blocks", 3, args.max_new_tokens)
    prompts = _prompts(args.prompts)
    arms = ["free", "llguidance", "xgrammar"]
    setup_s, builders = {}, {}
    for backend in arms[1:]:
        t0 = time.perf_counter()
        builders[backend] = Constrainer(engine.tokenizer, vocab, engine.eos_ids, backend=backend)
        builders[backend].guide(Constraint.json_schema(schema))       # compile once (cached)
        setup_s[backend] = round(time.perf_counter() - t0, 3)
    res = {a: {"tokens": 0, "wall_s": 0.0, "traces": 0, "valid": 0, "cut": 0, "invalid": [],
               "texts": []} for a in arms}
    for seed in range(args.seeds):
        for arm in (arms if seed % 2 == 0 else arms[::-1]):           # alternate the order
            constraint = None if arm == "free" else Constraint.json_schema(schema)
            if arm != "free":
                engine._constrainer = builders[arm]
            params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7,
                                    seed=seed, constraint=constraint)
            t0 = time.perf_counter()
            gens = engine.generate(prompts, 2, params)
            r = res[arm]
            r["wall_s"] += time.perf_counter() - t0
            for g in gens:
                for t in g.traces:
                    r["tokens"] += t.completion_tokens
                    r["traces"] += 1
                    if t.finish_reason == "length":
                        r["cut"] += 1
                        continue
                    try:
                        jsonschema.validate(json.loads(t.text), schema)
                        r["valid"] += 1
                    except (ValueError, jsonschema.ValidationError):
                        if arm != "free":
                            r["invalid"].append(t.text[:200])
                    r["texts"].append(t.token_ids)
        print(f"seed {seed}: " + ", ".join(f"{a} {res[a]['tokens'] / max(res[a]['wall_s'], 1e-9):.1f} "
                                           f"tok/s" for a in arms), flush=True)
    # the library's own cost per token, replayed over its traces (no model in the loop)
    for backend in arms[1:]:
        steps, t0 = 0, time.perf_counter()
        for ids in res[backend]["texts"]:
            guide = builders[backend].guide(Constraint.json_schema(schema))
            for tok in ids:
                guide.advance(tok)
                steps += 1
        res[backend]["overhead_ms_per_token"] = round(1000 * (time.perf_counter() - t0)
                                                      / max(steps, 1), 3)
        guides = [builders[backend].guide(Constraint.json_schema(schema)) for _ in range(8)]
        logits = torch.randn(8, vocab)
        t0 = time.perf_counter()
        for _ in range(50):
            mask_logits(logits, logits, guides)
        res[backend]["mask_8_rows_ms_per_step"] = round(1000 * (time.perf_counter() - t0) / 50, 3)
    # regex and choice, both libraries, a few seeds
    other = {}
    for backend in arms[1:]:
        engine._constrainer = builders[backend]
        ok = total = 0
        for seed in range(args.seeds):
            for c, check in ((Constraint.regex(REGEX), lambda s: re.fullmatch(REGEX, s)),
                             (Constraint.choice(["yes", "no"]), lambda s: s in ("yes", "no"))):
                p = SamplingParams(max_new_tokens=24, temperature=1.0, seed=seed, constraint=c)
                for g in engine.generate(prompts, 2, p):
                    for t in g.traces:
                        total += 1
                        ok += bool(check(t.text)) and t.finish_reason == "stop"
        other[backend] = {"valid": ok, "traces": total}
    out = {"setup": {"model": "smollm2-135m-instruct", "seeds": args.seeds, "prompts": args.prompts,
                     "n": 2, "temperature": 0.7, "max_new_tokens": args.max_new_tokens,
                     "schema": "reasoningbank items (ttx.memory.structured.item_schema, 3 items)",
                     "torch_threads": args.threads, "smoke": args.smoke},
           "arms": {a: {"tokens_per_s": round(r["tokens"] / max(r["wall_s"], 1e-9), 2),
                        "completion_tokens": r["tokens"], "wall_s": round(r["wall_s"], 1),
                        "traces": r["traces"], "valid_json_for_schema": r["valid"],
                        "cut_by_max_new_tokens": r["cut"], "invalid_samples": r["invalid"][:3],
                        **({"overhead_ms_per_token": r["overhead_ms_per_token"],
                            "mask_8_rows_ms_per_step": r["mask_8_rows_ms_per_step"],
                            "setup_s": setup_s[a]} if a != "free" else {})}
                    for a, r in res.items()},
           "regex_and_choice": other, "machine": machine(argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["arms"], indent=2), json.dumps(other), f"wrote {args.out}", sep="\n")


if __name__ == "__main__":
    main()
