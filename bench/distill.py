"""distill-to-mamba on the default model: quality after each stage, and the cost of generating.

    nice -n 5 .venv/bin/python -u bench/distill.py [--fractions 0.5,0.25] [--align-steps 2]
        [--steps 2] [--train 8] [--eval 2] [--max-length 128] [--lengths 64,256,512]

Data: GSM8K train question + answer as one-turn chats (/work/shared/data/gsm8k, no download);
the first --train records train, the last --eval records of the file are held out.
1. Per attention fraction: convert with the identity and with the default conv init and measure
   the held-out KL and perplexity of each (the lower KL is kept), then after stage 1 (hidden-state
   alignment) and after stage 2 (end-to-end reverse KL) with the shared training loop.
2. Decoding at growing context length, teacher against the student of the smallest fraction:
   prefill L tokens, then time single-token steps with the cache (rows decoded together), and
   measure the cache's bytes (K/V grow with L; a Mamba layer's conv + SSM state does not).
Writes bench/results/distill.json and distill.png. On CPU the Mamba mixers use transformers'
pure-PyTorch path (no mamba-ssm kernels), with chunk size 64 (faster than 256 for short inputs on
CPU; the chunked scan computes the same function).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def _batches(records, tokenizer, max_length, batch):
    from ttx.mamba import data as D

    seqs = [D.tokenize(D.parse_record(r, str(GSM8K), i), tokenizer, max_length)
            for i, r in enumerate(records)]
    return D.make_batches([s for s in seqs if s], batch, tokenizer.pad_token_id or 0)


def _cpu_chunks(model, chunk):
    for layer in model.model.layers:
        if hasattr(layer, "mamba"):
            layer.mamba.chunk_size = chunk


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            total += t.numel() * t.element_size() if t is not None else 0
        for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            total += sum(t.numel() * t.element_size() for t in states.values() if t is not None)
    return total


def decode_cost(model, context_ids, rows: int, steps: int) -> dict:
    """Prefill `rows` copies of the context, then time `steps` single-token forwards."""
    import torch
    from transformers import DynamicCache

    ids = torch.tensor([context_ids] * rows)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - t0
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        pos = ids.shape[1]
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, cache=cache, use_cache=True,
                        position_ids=torch.full((rows, 1), pos))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            pos += 1
        decode = time.perf_counter() - t0
    return {"prefill_s": round(prefill, 3), "decode_tokens_per_s": round(rows * steps / decode, 3),
            "cache_mb": round(cache_bytes(cache) / 2**20, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--eval", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--align-steps", type=int, default=2)
    ap.add_argument("--align-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lengths", default="64,256,512")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--decode-steps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill.json"))
    args = ap.parse_args()

    import torch

    from ttx.io import read_jsonl, write_json
    from ttx.mamba.convert import choose_attn_layers, convert
    from ttx.mamba.distill import evaluate, run_align, run_distill
    from ttx.models import load_model
    from ttx.train import TrainConfig

    t_start = time.perf_counter()
    torch.manual_seed(0)
    records = read_jsonl(GSM8K)
    teacher, tok, _ = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    for p in teacher.parameters():
        p.requires_grad_(False)
    train = _batches(records[:args.train], tok, args.max_length, args.batch)
    held = _batches(records[-args.eval:], tok, args.max_length, args.batch)
    cached: list = []
    layers = teacher.config.num_hidden_layers
    result = {"machine": machine(), "args": vars(args), "fractions": {}, "decode": {}}

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    student = None
    for fraction in [float(x) for x in args.fractions.split(",")]:
        attn = choose_attn_layers(layers, attn_fraction=fraction)
        row = {"attn_layers": attn, "stages": {}}
        best = None
        for conv in ("identity", "default"):
            s, _ = convert(teacher, attn, conv)
            _cpu_chunks(s, args.chunk)
            m = evaluate(s, teacher, held, teacher_cache=cached)
            row["stages"][f"converted_{conv}"] = m
            log(f"f={fraction} conv={conv}: {m}")
            if best is None or m["kl_reverse"] < best[1]["kl_reverse"]:
                best = (conv, m, s)
        row["conv_init_kept"], _, student = best
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            cfg = TrainConfig(output_dir=Path(work) / "align", lr=args.align_lr,
                              max_steps=args.align_steps, progress=False)
            res, _ = run_align(student, teacher, train, cfg,
                               [i for i in range(layers) if i not in attn])
            row["align_wall_s"] = round(time.perf_counter() - t0, 1)
            row["align_losses"] = res.losses
            row["stages"]["aligned"] = evaluate(student, teacher, held, teacher_cache=cached)
            log(f"f={fraction} aligned: {row['stages']['aligned']}")
            t0 = time.perf_counter()
            cfg = TrainConfig(output_dir=Path(work) / "distill", lr=args.lr, weight_decay=0.1,
                              warmup_ratio=0.05, max_steps=args.steps, progress=False)
            res, trainer = run_distill(student, teacher, train, cfg, kind="reverse",
                                       kl_weight=1.0, temperature=1.0, freeze_mlp=False)
            student = trainer.unwrapped.eval()
            row["distill_wall_s"] = round(time.perf_counter() - t0, 1)
            row["distill_losses"] = res.losses
            row["stages"]["distilled"] = evaluate(student, teacher, held, teacher_cache=cached)
            log(f"f={fraction} distilled: {row['stages']['distilled']}")
        result["fractions"][str(fraction)] = row
        write_json(args.out, result)

    text = " ".join(r["question"] + " " + r["answer"] for r in records[100:400])
    ids = tok(text).input_ids
    for name, model in (("teacher", teacher), ("student", student)):
        result["decode"][name] = {}
        for length in [int(x) for x in args.lengths.split(",")]:
            m = decode_cost(model, ids[:length], args.rows, args.decode_steps)
            result["decode"][name][str(length)] = m
            log(f"decode {name} L={length}: {m}")
            write_json(args.out, result)
    result["decode"]["student_attn_layers"] = choose_attn_layers(
        layers, attn_fraction=float(args.fractions.split(",")[-1]))
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["machine_end_load_average_1m"] = machine()["load_average_1m"]
    write_json(args.out, result)
    _plot(result, Path(args.out).with_suffix(".png"))
    log(f"wrote {args.out}")


def _plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for fraction, row in result["fractions"].items():
        names = list(row["stages"])
        axes[0].plot(names, [row["stages"][n]["kl_reverse"] for n in names], "o-",
                     label=f"attention fraction {fraction}")
    axes[0].set_ylabel("held-out KL(student || teacher) per token")
    axes[0].set_yscale("log")
    axes[0].legend()
    for name, runs in result["decode"].items():
        if not isinstance(runs, dict):
            continue
        lengths = [int(x) for x in runs]
        axes[1].plot(lengths, [runs[k]["decode_tokens_per_s"] for k in runs], "o-", label=name)
        axes[2].plot(lengths, [runs[k]["cache_mb"] for k in runs], "o-", label=name)
    axes[1].set_xlabel("context length")
    axes[1].set_ylabel("decode tokens/s (CPU)")
    axes[2].set_xlabel("context length")
    axes[2].set_ylabel("cache MB")
    for ax in axes[1:]:
        ax.set_xscale("log", base=2)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
