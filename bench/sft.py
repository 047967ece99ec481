"""Does DCO keep pass@N where cross-entropy loses it? (arXiv 2502.07154, the direct-answer test)

    .venv/bin/python bench/sft.py [--train 256] [--held 64] [--epochs 4] [--dco-n 16] [--smoke]

Direct-answer SFT on generated arithmetic (ttx/data/arith.py: the prompt is the question, the
response the number; the training and held-out problems come from different seeds and share no
question). The real stage's pieces (ttx.sft.train.Prepared: the same tokens, LoRA, Trainer and
loss) train CE and DCO from the same start, epoch by epoch with a constant learning rate. Before
training and after every epoch, on the held-out problems: greedy accuracy; pass@1 and pass@16 by
the unbiased estimator (ttx.scoring.metrics.pass_at_k) over --samples samples at temperature 1;
and the mean max-answer probability: per problem, the largest sequence probability p(answer +
EOS | prompt) among the distinct answers sampled and the greedy one (the model's confidence in
its favourite answer; only answers that ended with EOS within 8 tokens count, 0 when none did).
Intervals: 95% bootstrap over problems (ttx.scoring.intervals). The paper's
prediction: pass@16 falls with CE epochs while the max-answer probability climbs; DCO holds it.
--smoke: toy size (8 pairs, 4 held-out, 2 epochs, 4 samples, pass@4) to check the bench runs;
it writes to a temporary folder unless --out is given. Writes bench/results/sft.json.
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


def _problems(train: int, held: int) -> tuple[list[dict], list[dict]]:
    from ttx.data.arith import generate

    train_set = generate(train, seed=1)
    seen = {p["question"] for p in train_set}
    held_set = [p for p in generate(held * 2, seed=0) if p["question"] not in seen][:held]
    return train_set, held_set


def _ci(values: dict[str, float]) -> list[float] | None:
    from ttx.scoring.intervals import bootstrap_ci

    return bootstrap_ci({k: [v] for k, v in values.items()})


def evaluate(prep, cfg, held: list[dict], samples: int, ks: list[int], seed: int) -> dict:
    """Greedy accuracy, pass@k and the mean max-answer probability on the held-out problems."""
    import torch

    from ttx.engines import engine_over
    from ttx.engines.base import SamplingParams
    from ttx.prompts import build_prompt
    from ttx.scoring.answers import answers_equal, extract_answer
    from ttx.scoring.metrics import pass_at_k
    from ttx.sft.data import Pair, encode_pairs
    from ttx.sft.loss import response_logprobs

    model = prep.trainer.unwrapped
    model.eval()
    engine = engine_over(model, prep.tokenizer, name="bench-sft")
    prompts = [build_prompt(p["question"], instruction=cfg.instruction, system=cfg.system,
                            chat=cfg.chat) for p in held]
    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens=8, temperature=0.0))
    sampled = engine.generate(prompts, samples, SamplingParams(max_new_tokens=8, temperature=1.0,
                                                               seed=seed))
    right = lambda text, gold: answers_equal(extract_answer(text), str(gold))
    acc, passes, maxp = {}, {k: {} for k in ks}, {}
    for p, g, s in zip(held, greedy, sampled):
        pid = str(p["id"])
        acc[pid] = float(right(g.traces[0].text, p["answer"]))
        c = sum(right(t.text, p["answer"]) for t in s.traces)
        for k in ks:
            passes[k][pid] = pass_at_k(len(s.traces), c, k)
        answers = sorted({t.text.strip() for t in [g.traces[0], *s.traces]
                          if t.finish_reason == "stop" and t.text.strip()})
        rows, _ = encode_pairs(prep.tokenizer, cfg, [Pair(pid, p["question"], a) for a in answers])
        with torch.no_grad():
            logp = (response_logprobs(model, [r for r, _ in rows], [n for _, n in rows],
                                      prep.pad_id)[0] if rows else torch.tensor([float("-inf")]))
        maxp[pid] = float(torch.exp(logp.max()))
    model.train()
    mean = lambda d: round(sum(d.values()) / len(d), 4)
    out = {"greedy": mean(acc), "greedy_ci": _ci(acc),
           "max_answer_p": mean(maxp), "max_answer_p_ci": _ci(maxp)}
    for k in ks:
        out[f"pass@{k}"] = mean(passes[k])
        out[f"pass@{k}_ci"] = _ci(passes[k])
    return out


def run(loss: str, args, pairs_path: str, held: list[dict], tmp: Path) -> list[dict]:
    from ttx.models import resolve_model
    from ttx.sft.config import SFTConfig
    from ttx.sft.data import read_pairs
    from ttx.sft.train import Prepared, check, fingerprint

    cfg = SFTConfig(input=pairs_path, output=str(tmp / loss), loss=loss, dco_n=args.dco_n,
                    model=args.model, lr=args.lr, schedule="constant", epochs=args.epochs,
                    batch_size=args.batch_size, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                    save_every=0, seed=args.seed, progress=False)
    check(cfg)
    pairs, _ = read_pairs(cfg)
    base = resolve_model(cfg.model)
    prep = Prepared(cfg, pairs, base, Path(cfg.output), fingerprint(cfg, base, pairs))
    ks = sorted({1, min(16, args.samples)})
    per_epoch = len(prep.batches)
    prep.trainer.config.stop_after = per_epoch           # fit() stops after each epoch
    rows = []
    for epoch in range(args.epochs + 1):
        t0 = time.perf_counter()
        if epoch:
            prep.trainer.fit(prep.batches, prep.loss_fn)
        train_s = time.perf_counter() - t0
        log = [json.loads(x) for x in (Path(cfg.output) / "train_log.jsonl").read_text().splitlines()] \
            if epoch else []
        last = log[-per_epoch:]
        row = {"loss": loss, "epoch": epoch, "train_s": round(train_s, 1),
               "train_loss": round(sum(r["loss"] for r in last) / len(last), 4) if last else None,
               "train_p": round(sum(r["p_mean"] for r in last) / len(last), 4) if last else None,
               "train_factor": round(sum(r["factor_mean"] for r in last) / len(last), 4) if last else None,
               **evaluate(prep, cfg, held, args.samples, ks, args.seed + epoch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--held", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--dco-n", type=int, default=16)
    ap.add_argument("--samples", type=int, default=16, help="samples per held-out problem")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="toy size: checks that the bench runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.held, args.epochs, args.samples = 8, 4, 2, 4
    out = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="bench-sft-smoke-")) / "sft.json" if args.smoke
        else ROOT / "bench" / "results" / "sft.json")

    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    train, held = _problems(args.train, args.held)
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": p["id"], "prompt": p["question"],
                                         "response": str(p["answer"])}) + "\n" for p in train))
    rows = []
    for loss in ("ce", "dco"):
        rows += run(loss, args, str(pairs), held, tmp)
    result = {"bench": "sft", "model": args.model, "smoke": args.smoke,
              "data": {"train": f"ttx.data.arith seed 1, {len(train)} problems, direct answers",
                       "held_out": f"ttx.data.arith seed 0, {len(held)} problems not in train"},
              "settings": {"epochs": args.epochs, "dco_n": args.dco_n, "samples": args.samples,
                           "temperature": 1.0, "lr": args.lr, "schedule": "constant",
                           "lora_r": args.lora_r, "batch_size": args.batch_size},
              "notes": "pass@k: unbiased estimator over the samples; max_answer_p: per problem the "
                       "largest p(answer + EOS | prompt) among distinct sampled and greedy answers; "
                       "intervals: 95% bootstrap over problems",
              "machine": machine(argv), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
