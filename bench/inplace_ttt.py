"""In-Place TTT on the default model: does a short continued training make the fast weights pay,
and what does the TTT path cost?

    .venv/bin/python bench/inplace_ttt.py        # 12 steps x 512 tokens per model; a step took
                                                 # ~5 min on the 2 shared cores under load ~11
    .venv/bin/python bench/inplace_ttt.py --steps 200 --seq 2048 --chunk 256   # a real run

1. Data: GSM8K "workbooks": --join consecutive problems (question + worked answer) form one long
   document, cut into --seq-token sequences; train from train.jsonl, held out from test.jsonl.
2. Convert the default model (every 6th layer, --chunk, eta 3); check it equals the original.
3. Continue training the converted model AND the unconverted one, same data, steps, optimizer
   (ttx.train: AdamW, warmup 2%, cosine, wd 0.1, clip 1; --lr).
4. Per-chunk loss on held-out sequences: perplexity on the later chunks (index >= 1), where the
   fast weights have read something, for original / plain-trained / TTT-trained.
5. Forward cost, each in a fresh process: tokens/s and peak RSS growth of a --cost-seq forward,
   plain vs TTT; and greedy decoding tokens/s through ttx's hf engine (the TTT cache path).
Writes bench/results/inplace_ttt.json and bench/results/inplace_ttt.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
RESULTS = ROOT / "bench" / "results"


def sequences(tokenizer, path, join, seq, count):
    from ttx.inplace_ttt.train import load_documents, make_sequences

    items = load_documents(path, "question,answer", join_records=join, limit=count * 2)
    return [s for s in make_sequences(tokenizer, items, seq) if len(s[0]) == seq][:count]


def measure_cost(kind: str, seq: int, chunk: int) -> dict:
    """In this (fresh) process: forward tokens/s and peak RSS growth; engine decode tokens/s."""
    import torch

    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.inplace_ttt.convert import convert
    from ttx.models import load_model

    model, tokenizer, _ = load_model("smollm2-135m-instruct", device="cpu")
    if kind == "ttt":
        model = convert(model, chunk=chunk)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids[:, :chunk * 2])                      # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine = HFEngine(loaded=(model, tokenizer), max_batch_rows=4)
    prompt = " ".join(["Natalia sold clips to 48 of her friends in April."] * 20)   # ~240 tokens
    t0 = time.perf_counter()
    gens = engine.generate([prompt] * 4, n=1,
                           params=SamplingParams(max_new_tokens=48, ignore_eos=True))
    decode_s = time.perf_counter() - t0
    return {"forward_tokens_per_s": round(seq / min(times), 1),
            "forward_s": [round(t, 2) for t in times],
            "forward_peak_rss_growth_mb": round((after - before) / 1024, 1),
            "decode_tokens_per_s": round(sum(g.traces[0].completion_tokens for g in gens)
                                         / decode_s, 1),
            "decode_prompt_tokens": gens[0].prompt_tokens}


def cost_in_subprocess(kind, seq, chunk):
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--cost-seq", str(seq),
                          "--chunk", str(chunk)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per model")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--join", type=int, default=8, help="GSM8K problems per document")
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--cost-seq", type=int, default=1024)
    ap.add_argument("--measure", choices=["plain", "ttt"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_cost(args.measure, args.cost_seq, args.chunk)))
        return

    import torch

    from bench.common import machine
    from ttx.inplace_ttt.convert import convert
    from ttx.inplace_ttt.train import chunk_losses, later_chunk_perplexity, make_batches, train_model
    from ttx.models import load_model

    torch.manual_seed(0)
    t_start = time.perf_counter()
    original, tokenizer, _ = load_model("smollm2-135m-instruct", device="cpu")
    train = sequences(tokenizer, GSM8K / "train.jsonl", args.join, args.seq, args.steps)
    held = sequences(tokenizer, GSM8K / "test.jsonl", args.join, args.seq, args.eval_docs)
    batches = make_batches(train, 1, tokenizer.eos_token_id)
    result = {"machine": machine(), "settings": vars(args) | {"train_sequences": len(train),
                                                             "held_out_sequences": len(held)}}

    ttt = convert(original, chunk=args.chunk)
    x = torch.tensor([held[0][0]])
    with torch.no_grad():
        diff = float((ttt(input_ids=x).logits - original(input_ids=x).logits).abs().max())
    result["max_abs_logit_diff_after_conversion"] = diff
    print(f"converted layers {ttt.config.resolved_ttt_layers()}: max |logit diff| {diff:.2e}",
          flush=True)

    evals = {"original": chunk_losses(original, held, args.chunk)}
    print("original evaluated", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("ttt_trained", ttt), ("plain_trained", original)):
            t0 = time.perf_counter()
            _, res = train_model(model, batches, Path(tmp) / name, lr=args.lr, max_steps=args.steps,
                                 seed=0, progress=False, desc=name)
            runs[name] = {"steps": res.steps, "first_loss": res.losses[0],
                          "last_loss": res.losses[-1], "losses": [round(v, 4) for v in res.losses],
                          "wall_s": round(time.perf_counter() - t0, 1)}
            evals[name] = chunk_losses(model, held, args.chunk)
            print(f"{name}: trained {res.steps} steps in {runs[name]['wall_s']} s, "
                  f"loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f}", flush=True)
    conv_norm = float(sum(m.ttt_conv.weight.norm() ** 2 for m in ttt.ttt_mlps().values()) ** 0.5)
    n_chunks = args.seq // args.chunk
    per_chunk = {}
    for name, losses in evals.items():
        curve = []
        for k in range(n_chunks):
            pairs = [c[k] for c in losses if len(c) > k]
            curve.append(round(sum(s for s, _ in pairs) / sum(n for _, n in pairs), 4))
        per_chunk[name] = curve
    result["training"] = runs
    result["ttt_conv_weight_norm_after_training"] = conv_norm
    result["per_chunk_mean_loss"] = per_chunk
    result["later_chunk_perplexity"] = {k: round(later_chunk_perplexity(v, 1), 3)
                                        for k, v in evals.items()}
    result["first_chunk_perplexity"] = {k: round(later_chunk_perplexity([c[:1] for c in v], 0), 3)
                                        for k, v in evals.items()}
    print(json.dumps(result["later_chunk_perplexity"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inplace_ttt.json").write_text(json.dumps(result, indent=2) + "\n")   # so far
    plot(per_chunk, args, RESULTS / "inplace_ttt.png")
    del ttt, original
    result["cost"] = {k: cost_in_subprocess(k, args.cost_seq, args.chunk) for k in ("plain", "ttt")}
    print(json.dumps(result["cost"]), flush=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["machine_after"] = {"load_average_1m": machine()["load_average_1m"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inplace_ttt.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(per_chunk, args, RESULTS / "inplace_ttt.png")
    print(f"wrote {RESULTS / 'inplace_ttt.json'} in {result['wall_s']} s")


def plot(per_chunk: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in per_chunk.items():
        ax.plot(range(len(curve)), curve, marker="o", label=name)
    ax.set_xlabel(f"chunk index ({args.chunk} tokens each)")
    ax.set_ylabel("mean next-token loss, held-out GSM8K workbooks")
    ax.set_title(f"In-Place TTT vs plain, {args.steps} training steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
