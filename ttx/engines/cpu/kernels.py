"""ttx's float32 CPU kernels (ttx/engines/cpu/kernels.c) for the fused decoder (ttx.engines.cpu.fused).

- `decode_attention`: at decode shapes torch's bmm-softmax-bmm (and sdpa's kernel alike) runs
  about a hundred tiny products a layer, each dominated by its call's fixed cost; the kernel reads
  each cached column's K and V once for all query heads of its K/V head, and writes the decoded
  token's K/V into the cache on the way.
- `add_rms_norm`, `silu_mul`, `rotary_`: one call each for what takes two to six torch ops,
  each of which runs 3-5x its warm time between the weight matmuls of a decode step.

bench/decode_attention.py measures them against torch's ops. The library is compiled on first
use with the system's C compiler (gcc or clang; AVX2 and FMA, OpenMP) into `$TTX_HOME/native/`
(under a second; the file's name carries a hash of the source, the flags and the compiler's
version) and loaded with ctypes, by ttx.engines.cpu.native: only from a folder no other user can
write, and only a file whose SHA-256 matches its build's; a bad one is rebuilt once. Without a
compiler, on a CPU without AVX2, or with `TTX_NATIVE=0`, `available()` is False and the fused
forward keeps torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import torch

from ttx.engines.cpu import native
from ttx.models import ttx_home

SOURCE = Path(__file__).with_name("kernels.c")
# -ffp-contract=off: x cos + y sin rounds as torch rounds it (two products, then the sum)
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
DIMS = (64, 128)            # head sizes the kernel is specialised for
MAX_GROUP = 16              # query heads per K/V head

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_f32 = ctypes.c_float
_SIGNATURES = {   # name: (argument types, result type)
    "ttx_decode_attention": ([_ptr, _i64, _i64, _ptr, _i64, _i64, _i64, _ptr, _i64, _i64, _i64,
                              _ptr, _i64, _i64, _ptr, _i64, _i64, _ptr, _i64, _ptr, _ptr,
                              _ptr, _i64, _i64, _i64, _i64, _i64, _f32], ctypes.c_int),
    "ttx_add_rms_norm": ([_ptr, _ptr, _ptr, _f32, _ptr, _i64, _i64], None),
    "ttx_silu_mul": ([_ptr, _ptr, _i64, _i64], None),
    "ttx_rotary": ([_ptr, _i64, _i64, _i64, _i64, _ptr, _ptr], None),
}


@functools.cache
def _library():
    from ttx.engines.cpu import enabled

    if not enabled() or os.environ.get("TTX_NATIVE", "1") == "0" \
            or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    library, warning = native.load("kernels", SOURCE, FLAGS, _SIGNATURES, ttx_home() / "native")
    if warning:
        logging.getLogger(__name__).warning("%s", warning)
    if library is not None:
        for name, (args, result) in _SIGNATURES.items():
            fn = getattr(library, name)
            fn.argtypes, fn.restype = args, result
    return library


def available() -> bool:
    """Whether the kernels built and loaded here."""
    return _library() is not None


def serves_attention(head_dim: int, group: int) -> bool:
    """Whether decode attention serves heads of this size, `group` query heads per K/V head."""
    return head_dim in DIMS and 1 <= group <= MAX_GROUP and available()


def _fits(*tensors) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
               for t in tensors)


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """h += delta (in place; none when delta is None), then transformers' RMSNorm of h:
    weight * h / sqrt(mean(h^2) + eps) over the last dimension."""
    n = h.shape[-1]
    if not _fits(h, weight, *([] if delta is None else [delta])) or weight.shape != (n,) \
            or (delta is not None and delta.shape != h.shape):
        raise ValueError(f"add_rms_norm: h {tuple(h.shape)}, weight {tuple(weight.shape)}"
                         " (contiguous float32 on CPU)")
    out = torch.empty_like(h)
    _library().ttx_add_rms_norm(h.data_ptr(), None if delta is None else delta.data_ptr(),
                                weight.data_ptr(), eps, out.data_ptr(), h.numel() // n, n)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [..., gate | up] (the fused MLP's first matmul)."""
    inter = gate_up.shape[-1] // 2
    if not _fits(gate_up) or gate_up.shape[-1] != 2 * inter:
        raise ValueError(f"silu_mul: gate_up {tuple(gate_up.shape)} (contiguous float32 on CPU)")
    out = gate_up.new_empty((*gate_up.shape[:-1], inter))
    _library().ttx_silu_mul(gate_up.data_ptr(), out.data_ptr(), out.numel() // inter, inter)
    return out


def rotary_(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """In place on x [..., all heads, d] (contiguous): the first `heads` heads of each token get
    x cos + rotate_half(x) sin, with rotate_half's sign already on `sin`'s first half; cos and
    sin [..., d], one row per token."""
    d = x.shape[-1]
    tokens = x.numel() // (x.shape[-2] * d)
    if not _fits(x, cos, sin) or cos.shape != sin.shape or cos.numel() != tokens * d \
            or heads > x.shape[-2] or d % 2:
        raise ValueError(f"rotary: x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin "
                         f"{tuple(sin.shape)} (contiguous float32 on CPU)")
    _library().ttx_rotary(x.data_ptr(), tokens, x.shape[-2] * d, heads, d, cos.data_ptr(),
                          sin.data_ptr())


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     real: torch.Tensor, scale: float, new: tuple | None = None,
                     shared: tuple | None = None) -> torch.Tensor:
    """softmax(q K^T scale, over the columns where `real`) V for one query token per row.

    query [rows, heads, d], keys/values [rows, kv, cols, d] (views of the cache: written in
    place), real [rows, cols] bool, all on CPU, float32; returns [rows, heads, d]. `new`, the
    decoded token's (keys, values) [rows, kv, d], is first written into the last column of
    `keys` and `values` (what GrowingLayer.reserve leaves open). `shared`, (src, columns) int64
    [rows], says row r's first columns[r] columns of K/V equal row src[r]'s (the traces of one
    prompt): they are read from that row (rounded down to a multiple of 8 columns, below the
    new one), so one copy serves all (the result is the same to the bit)."""
    rows, heads, d = query.shape
    kv, cols = keys.shape[1], keys.shape[2]
    k_new, v_new = new if new is not None else (None, None)
    tensors = [t for t in (query, keys, values, k_new, v_new) if t is not None]
    if real.shape != (rows, cols) or values.shape != keys.shape or keys.shape[0] != rows \
            or (new is not None and not k_new.shape == v_new.shape == (rows, kv, d)) \
            or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors) \
            or keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError(f"decode attention: query {tuple(query.shape)}, keys "
                         f"{tuple(keys.shape)}, values {tuple(values.shape)}, mask "
                         f"{tuple(real.shape)} do not fit (float32 on CPU, rows of K/V "
                         f"contiguous)")
    query = query if query.stride(-1) == 1 else query.contiguous()
    if new is not None:
        k_new, v_new = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_new, v_new))
    real = real.contiguous()
    src = columns = None
    if shared is not None:
        src, columns = shared
        if any(t.dtype != torch.int64 or t.device.type != "cpu" or t.shape != (rows,)
               or not t.is_contiguous() for t in (src, columns)):
            raise ValueError(f"decode attention: shared rows {tuple(src.shape)} and columns "
                             f"{tuple(columns.shape)} must be contiguous int64 [{rows}] on CPU")
    out = query.new_empty((rows, heads, d))
    status = _library().ttx_decode_attention(
        query.data_ptr(), query.stride(0), query.stride(1),
        keys.data_ptr(), keys.stride(0), keys.stride(1), keys.stride(2),
        values.data_ptr(), values.stride(0), values.stride(1), values.stride(2),
        *((k_new.data_ptr(), k_new.stride(0), k_new.stride(1),
           v_new.data_ptr(), v_new.stride(0), v_new.stride(1)) if new is not None
          else (None, 0, 0, None, 0, 0)),
        real.data_ptr(), real.stride(0), None if src is None else src.data_ptr(),
        None if columns is None else columns.data_ptr(), out.data_ptr(),
        rows, kv, heads // kv, d, cols, scale)
    if status:
        raise RuntimeError(f"decode attention kernel refused heads of {d} in groups of "
                           f"{heads // kv}, or ran out of memory")
    return out
