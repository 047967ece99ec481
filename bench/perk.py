"""Does meta-learning help PERK? Held-out accuracy on the synthetic recall task at several context
lengths, three arms on the same records and the same base model:

  (a) perk       the meta-learned LoRA init, step sizes and weighting head, then the inner loop
                 on the context; the question is asked without the context (ttx perk-encode)
  (b) fresh      the same inner loop (same steps, same initial step sizes, zero head) from a
                 fresh LoRA that was not meta-learned
  (c) prompted   the base model with the whole context in the prompt (chat template, as
                 `ttx tts-run` prompts an instruct model; the raw `...\nAnswer:` prompt made the
                 135M model answer with an empty line), no learning

    .venv/bin/python bench/perk.py                      # the sized-for-CPU run (~25 min, 2 cores)
    .venv/bin/python bench/perk.py --steps 200 --eval-words 100,400,1600 --eval-n 30 --threads 2

Sized for 2 shared CPU cores: LoRA r=8 (not the paper's 256), 2 inner steps (1 unrolled; the
paper: 4 and 2), short training contexts, few outer steps, one fact per context (a needle in a
haystack; `--facts 3` asks for one of three). Writes bench/results/perk.json and
bench/results/perk.png. Beside accuracy it reports how often the answer is one of the context's
numbers at all (with several facts, picking one of them at random is right 1 time in `facts`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402


def _prompted(engine, records, max_new_tokens):
    """(c): the whole context in the prompt, the same question wording otherwise."""
    from ttx.engines.base import SamplingParams
    from ttx.tts.sampling import Greedy
    from ttx.tts.strategy import StrategyConfig

    cfg = StrategyConfig(strategy="greedy", n=1, params=SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0.0))
    rows = []
    for r in records:
        t0 = time.perf_counter()
        prompt = [{"role": "user", "content": f"{r['context']}\n\n{r['question']}"}]
        gen = engine.generate([prompt], 1, cfg.params)[0]
        out = Greedy(cfg).outcome(gen, cfg)
        rows.append({**r, "pred": out.pred, "traces": out.traces,
                     "prompt_tokens": out.prompt_tokens, "wall_s": time.perf_counter() - t0})
    return rows


def _stats(rows):
    from ttx.scoring.metrics import record_correct

    ok = [record_correct(r) for r in rows]
    in_context = [r["pred"] is not None and r["pred"] in re.findall(r"\d+", r["context"])
                  for r in rows]
    return {"accuracy": round(sum(ok) / len(ok), 4), "correct": sum(ok), "records": len(ok),
            "answer_is_a_context_number": round(sum(in_context) / len(rows), 4),
            "mean_wall_s": round(sum(r["wall_s"] for r in rows) / len(rows), 2),
            "preds": [r["pred"] for r in rows]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=80, help="outer (meta-training) steps")
    ap.add_argument("--train-words", type=int, default=60)
    ap.add_argument("--eval-words", default="60,250,1000")
    ap.add_argument("--eval-n", type=int, default=8, help="held-out records per length")
    ap.add_argument("--facts", type=int, default=1)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--inner-steps", type=int, default=2)
    ap.add_argument("--unroll", type=int, default=1)
    ap.add_argument("--inner-lr", type=float, default=0.5,
                    help="initial inner SGD rate (scanned on a fresh r=8 LoRA: 0.3 is stable for "
                    "4 steps, 3 diverges at the second; 1.0 spiked the outer loss now and then)")
    ap.add_argument("--lr", type=float, default=1e-3, help="outer AdamW rate")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids OpenMP stalls on a loaded shared machine)")
    ap.add_argument("--work", default="/tmp/ttx-bench-perk")
    ap.add_argument("--resume", action="store_true",
                    help="keep --work (meta-training resumes; answers are recomputed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "perk.json"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ttx.data.recall import generate
    from ttx.engines.hf import HFEngine
    from ttx.io import write_jsonl
    from ttx.models import load_model
    from ttx.perk import module as pm
    from ttx.perk.encode import EncodeConfig, encode
    from ttx.perk.metatrain import MetaTrainConfig, metatrain

    work = Path(args.work)
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    perk_cfg = pm.PerkConfig(model=args.model, lora_r=args.lora_r, inner_steps=args.inner_steps,
                             unroll=args.unroll, inner_lr=args.inner_lr)
    train = work / "train.jsonl"
    write_jsonl(train, generate(args.steps, args.train_words, seed=0, facts=args.facts))
    t0 = time.perf_counter()
    meta = metatrain(MetaTrainConfig(input=str(train), output=str(work / "perk"), perk=perk_cfg,
                                     steps=args.steps, lr=args.lr, save_every=10, resume=True,
                                     progress=False))
    meta_wall = time.perf_counter() - t0
    print(f"meta-training: {meta}", file=sys.stderr, flush=True)

    base, tokenizer, _ = load_model(args.model)
    prompted_engine = HFEngine(model=args.model, loaded=(base, tokenizer))
    fresh_base, _, _ = load_model(args.model)
    torch.manual_seed(0)
    fresh = pm.build(fresh_base, perk_cfg)               # (b): LoRA init as PEFT makes it
    for p in fresh.parameters():
        p.requires_grad_(False)

    lengths = []
    for words in [int(w) for w in args.eval_words.split(",")]:
        records = generate(args.eval_n, words, seed=1, facts=args.facts)
        path = work / f"eval-{words}.jsonl"
        write_jsonl(path, records)
        tokens = sum(len(tokenizer(r["context"]).input_ids) for r in records) / len(records)
        row = {"context_words": words, "mean_context_tokens": round(tokens, 1)}
        for arm, module in (("perk", None), ("fresh", fresh)):
            out = work / f"{arm}-{words}.jsonl"
            cfg = EncodeConfig(input=str(path), output=str(out), perk=str(work / "perk"),
                               max_new_tokens=args.max_new_tokens, progress=False)
            encode(cfg, module=module, tokenizer=tokenizer if module is not None else None)
            row[arm] = _stats([json.loads(line) for line in out.read_text().splitlines()])
        row["prompted"] = _stats(_prompted(prompted_engine, records, args.max_new_tokens))
        lengths.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else
                              {kk: vv for kk, vv in v.items() if kk != "preds"})
                          for k, v in row.items()}), file=sys.stderr, flush=True)

    result = {"bench": "perk", "machine": machine(argv), "args": vars(args),
              "setup": {"model": args.model, "lora": f"r={args.lora_r} rsLoRA alpha 16 on q,k,v,o,"
                        "gate,up,down", "inner_steps": args.inner_steps, "unroll": args.unroll,
                        "train_records": args.steps, "train_context_words": args.train_words,
                        "facts_per_context": args.facts},
              "metatrain": {**meta, "wall_s": round(meta_wall, 1)},
              "lengths": lengths, "total_wall_s": round(time.time() - started, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _plot(lengths, Path(args.out).with_suffix(".png"))
    print(json.dumps({"lengths": [{k: (v["accuracy"] if isinstance(v, dict) else v)
                                   for k, v in row.items()} for row in lengths]}, indent=1))


def _plot(lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["mean_context_tokens"] for row in lengths]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm, label in (("perk", "(a) PERK, meta-learned"), ("fresh", "(b) same inner loop, fresh LoRA"),
                       ("prompted", "(c) context in the prompt")):
        ax.plot(x, [row[arm]["accuracy"] for row in lengths], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
