"""Float32 decode attention on CPU through ttx's C kernel (ttx/engines/attention.c).

At decode shapes torch's bmm-softmax-bmm (and sdpa's kernel alike) runs about a hundred tiny
products a layer, each dominated by its call's fixed cost: 1.6-1.8x slower than the kernel,
which reads each cached column's K and V once for all query heads of its K/V head and runs at the
machine's memory bandwidth (bench/tts_engine.py, `decode_attention`). The kernel is compiled on
first use with the system's C compiler (gcc or clang, AVX2 and FMA, OpenMP) into
`$TTX_HOME/native/` (under a second; the file's name carries a hash of the source, the flags and
the compiler's version) and loaded with ctypes. Without a compiler, on a CPU without AVX2, or
with `TTX_NATIVE=0`, `available()` is False and the fused forward keeps torch's matmuls.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ttx.models import ttx_home

SOURCE = Path(__file__).with_name("attention.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
DIMS = (64, 128)            # head sizes the kernel is specialised for
MAX_GROUP = 16              # query heads per K/V head

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_ARGS = [_ptr, _i64, _i64, _ptr, _i64, _i64, _i64, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr,
         _i64, _i64, _i64, _i64, _i64, ctypes.c_float]


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode())
    path = ttx_home() / "native" / f"attention-{key.hexdigest()[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                           text=True, check=True)
            os.replace(tmp, path)           # atomic: a concurrent build finds a whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


@functools.cache
def _kernel():
    if os.environ.get("TTX_NATIVE", "1") == "0" \
            or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        kernel = ctypes.CDLL(str(_build(compiler))).ttx_decode_attention
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        logging.getLogger(__name__).warning(
            "ttx's decode attention kernel did not build (%s); torch's matmuls serve instead",
            detail.strip().splitlines()[0] if detail.strip() else exc)
        return None
    kernel.argtypes, kernel.restype = _ARGS, ctypes.c_int
    return kernel


def available(head_dim: int, group: int) -> bool:
    """Whether the kernel serves heads of this size with `group` query heads per K/V head."""
    return head_dim in DIMS and 1 <= group <= MAX_GROUP and _kernel() is not None


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     real: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q K^T scale, over the columns where `real`) V for one query token per row.

    query [rows, heads, d], keys/values [rows, kv, cols, d] (views of the cache are fine),
    real [rows, cols] bool, all on CPU, float32; returns [rows, heads, d]."""
    rows, heads, d = query.shape
    kv, cols = keys.shape[1], keys.shape[2]
    if real.shape != (rows, cols) or values.shape != keys.shape or keys.shape[0] != rows \
            or any(t.dtype != torch.float32 or t.device.type != "cpu"
                   for t in (query, keys, values)):
        raise ValueError(f"decode attention: query {tuple(query.shape)}, keys "
                         f"{tuple(keys.shape)}, values {tuple(values.shape)}, mask "
                         f"{tuple(real.shape)} do not fit (float32 on CPU)")
    query, keys, values = (t if t.stride(-1) == 1 else t.contiguous()
                           for t in (query, keys, values))
    real = real.contiguous()
    out = query.new_empty((rows, heads, d))
    status = _kernel()(
        query.data_ptr(), query.stride(0), query.stride(1),
        keys.data_ptr(), keys.stride(0), keys.stride(1), keys.stride(2),
        values.data_ptr(), values.stride(0), values.stride(1), values.stride(2),
        real.data_ptr(), real.stride(0), out.data_ptr(),
        rows, kv, heads // kv, d, cols, scale)
    if status:
        raise RuntimeError(f"decode attention kernel refused heads of {d} in groups of "
                           f"{heads // kv}, or ran out of memory")
    return out
