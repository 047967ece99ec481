"""ttx's C kernels (ttx/engines/cpu/kernels.c) against torch's ops, at the default model's decode shapes.

    .venv/bin/python bench/decode_attention.py [--repeats 5]

Part 1, decode attention of a whole step:
All 30 layers of SmolLM2-135M (9 query heads, 3 K/V heads, head dim 64), 32 rows (4 prompts x 8
traces), K/V as views of a cache buffer with room (each layer its own tensors, so none stays in
cache from the layer before), at several cached lengths: (kernel) ttx.engines.cpu.kernels, (bmm)
the fused forward's torch path (bmm, softmax, bmm with a bias mask), (sdpa) torch's kernel with
a boolean mask and the query heads of a K/V head as its queries, (kernel_shared_prompt) the
kernel reading each prompt's columns (all but the last 64: a trace 64 tokens in) from the
prompt's first trace, as the engine's traces share them. Best of `repeats` for each,
the largest difference from (bmm), and the bytes of K/V read per step against the memory
bandwidth measured in the same run (a plain sum over 800 MB).
Part 2, a layer's small ops at 32 rows, each timed right after a packed weight matmul as in the
engine (the matmul itself not counted) and warm (run again at once): RMSNorm with the residual
add before it (torch: add_, pow, mean, add, rsqrt, mul, mul), SiLU(gate) * up (split, silu,
mul_), the rotary embedding of q and k (cat, mul_, mul, add_); the largest difference too.

Writes bench/results/decode_attention.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

ROWS, HEADS, KV, DIM, LAYERS = 32, 9, 3, 64, 30
GROUP, SCALE = HEADS // KV, DIM ** -0.5


def _layers(cols: int):
    """Per layer, the query as the fused forward slices it and K/V views of a buffer with room."""
    g = torch.Generator().manual_seed(cols)
    out = []
    for _ in range(LAYERS):
        qkv = torch.randn(ROWS, 1, HEADS + 2 * KV, DIM, generator=g)
        k, v = (torch.randn(ROWS, KV, 2 * cols + 64, DIM, generator=g)[:, :, 10:10 + cols]
                for _ in range(2))
        out.append((qkv[:, :, :HEADS].transpose(1, 2), k, v))
    return out


def _best(fn, layers, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for layer in layers:
            fn(*layer)
        best = min(best, time.perf_counter() - t0)
    return best


def bandwidth_gbs() -> float:
    x = torch.ones(200_000_000)
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def small_ops(hidden: int = 576, inter: int = 1536, trials: int = 200) -> dict:
    """Per call, after a packed matmul and warm: torch's ops against the kernel, microseconds."""
    from ttx.engines.cpu import kernels
    from ttx.engines.cpu.fused import _rms_norm
    from ttx.engines.cpu.packed import pack, packed_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 1, hidden, generator=g)
    weight = pack(torch.randn(2 * inter, hidden, generator=g))     # the layer's gate|up matrix
    h, delta = torch.randn(ROWS, 1, hidden, generator=g), torch.randn(ROWS, 1, hidden, generator=g)
    norm = (torch.rand(hidden, generator=g) + 0.5, 1e-5)
    gate_up = torch.randn(ROWS, 1, 2 * inter, generator=g)
    qkv = torch.randn(ROWS, 1, HEADS + 2 * KV, DIM, generator=g)
    angle = torch.rand(ROWS, 1, DIM, generator=g) * 6
    cos, sin = angle.cos(), angle.sin()

    def torch_norm():
        hh = h.clone()
        return _rms_norm(hh.add_(delta), norm)

    def torch_silu():
        gate, up = gate_up.split(inter, dim=-1)
        return F.silu(gate).mul_(up)

    def torch_rotary():
        qk = qkv[:, :, :HEADS + KV]
        half = DIM // 2
        return torch.cat((qk[..., half:], qk[..., :half]), -1).mul_(sin[:, :, None]) \
            .add_(qk * cos[:, :, None])

    def kernel_rotary():
        y = qkv.clone()
        kernels.rotary_(y, HEADS + KV, cos, sin)
        return y[:, :, :HEADS + KV]

    pairs = {"add_rms_norm": (torch_norm, lambda: kernels.add_rms_norm(h.clone(), delta, *norm)),
             "silu_mul": (torch_silu, lambda: kernels.silu_mul(gate_up)),
             "rotary": (torch_rotary, kernel_rotary)}
    out = {}
    for name, (ours_torch, ours_c) in pairs.items():
        row = {"max_abs_diff": (ours_torch() - ours_c()).abs().max().item()}
        for label, fn in (("torch", ours_torch), ("kernel", ours_c)):
            after = warm = 0.0
            for _ in range(trials):
                packed_linear(x, weight)
                after += _timed(fn)
                warm += _timed(fn)
            row[f"{label}_after_matmul_us"] = round(after / trials * 1e6, 1)
            row[f"{label}_warm_us"] = round(warm / trials * 1e6, 1)
        out[name] = row
    return out


def main() -> None:
    from ttx.engines.cpu import kernels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not kernels.serves_attention(DIM, GROUP):
        sys.exit("the kernel did not build here (no C compiler with AVX2/OpenMP?)")
    torch.set_grad_enabled(False)
    gbs = bandwidth_gbs()
    rows = []
    for cols in (60, 120, 250, 500):
        layers = _layers(cols)
        real = torch.ones(ROWS, cols, dtype=torch.bool)
        for r in range(ROWS):
            real[r, :r % 8] = False                                 # left padding
        bias = torch.zeros(ROWS, 1, 1, cols).masked_fill_(~real[:, None, None], -math.inf)
        attend = real[:, None, None, :]

        def kernel(q, k, v, real=real):
            return kernels.decode_attention(q[:, :, 0], k, v, real, SCALE).view(ROWS, KV, GROUP, DIM)

        prompt = max(cols - 64, 0)
        share = (torch.arange(ROWS) // 8 * 8, torch.full((ROWS,), prompt))   # a prompt's first row

        def kernel_shared_prompt(q, k, v, real=real, share=share):
            return kernels.decode_attention(q[:, :, 0], k, v, real, SCALE, shared=share)

        def bmm(q, k, v, bias=bias):
            scores = torch.matmul(q.reshape(ROWS, KV, GROUP, DIM), k.transpose(-1, -2))
            return torch.matmul(scores.mul_(SCALE).add_(bias).softmax(-1), v)

        def sdpa(q, k, v, attend=attend):
            return F.scaled_dot_product_attention(q.reshape(ROWS, KV, GROUP, DIM), k, v,
                                                  attn_mask=attend, scale=SCALE)

        diff = max((kernel(*layer) - bmm(*layer)).abs().max().item() for layer in layers[:3])
        times = {name: _best(fn, layers, args.repeats)
                 for name, fn in (("kernel", kernel), ("bmm", bmm), ("sdpa", sdpa),
                                  ("kernel_shared_prompt", kernel_shared_prompt))}
        read = 2 * ROWS * KV * cols * DIM * 4 * LAYERS
        row = {"cached_columns": cols, **{f"{k}_ms": round(v * 1e3, 2) for k, v in times.items()},
               "kernel_speedup_over_bmm": round(times["bmm"] / times["kernel"], 2),
               "kernel_speedup_over_sdpa": round(times["sdpa"] / times["kernel"], 2),
               "shared_prompt_columns": prompt,
               "shared_prompt_speedup_over_kernel":
                   round(times["kernel"] / times["kernel_shared_prompt"], 2),
               "kv_read_mb": round(read / 1e6, 1),
               "kernel_gb_per_s": round(read / times["kernel"] / 1e9, 1),
               "max_abs_diff_vs_bmm": diff}
        print(row, flush=True)
        rows.append(row)
    result = {"machine": machine(), "memory_bandwidth_gb_per_s (sum over 800 MB)": round(gbs, 1),
              "settings": {"rows": ROWS, "heads": HEADS, "kv_heads": KV, "head_dim": DIM,
                           "layers": LAYERS, "repeats": args.repeats},
              "attention": rows, "small_ops": small_ops()}
    print(result["small_ops"])
    out = ROOT / "bench" / "results" / "decode_attention.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
