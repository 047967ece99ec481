"""Cost per record beyond tokens: FLOPs, and Kinetics' memory-aware eFLOPs.

P parameters, L layers, n_q attention and n_kv KV heads of size d; a record's prompt has L_in
tokens and trace i generated L_i. D = 2 n_kv d L is the KV-cache elements per token (K and V over
every layer) and r = n_q / n_kv the GQA group size.

`flops`: what the forward passes compute. Decoding a trace costs 2 P L_i (every weight once per
token) plus attention over the growing context, 2 r D (L_in L_i + L_i (L_i - 1) / 2) (QK^T and
AV, 2 FLOPs per multiply-add, for context lengths L_in .. L_in + L_i - 1); the prompt's prefill
costs 2 P L_pre + r D L_in^2 / 2 once per record (one prefill shared by the traces; L_pre is
`prefill_tokens` where a search re-encodes its continuations, else L_in).

`kinetics`: eFLOPs of Kinetics (Sadhukhan et al. 2025, arXiv 2506.05333; Infini-AI-Lab/Kinetics
cost_model/utils.py:45-56 `dense_cost`), C_comp + I C_mem with
    C_comp = sum_i [2 P L_i + 2 r L_in D L_i + r D L_i^2]
    C_mem  = 2 L_in D max_i L_i + sum_i D L_i^2      (bytes of KV cache read, bf16)
The prompt's KV is read once per decoding step for all traces (their shared prefix); each trace
reads its own generated KV. Parameter reads are left out, as the paper does (amortised over large
batches), and so is prefill. I is the accelerator's arithmetic intensity in FLOPs per byte:
Kinetics uses 562.5 (B200); `--kinetics-intensity` sets another (e.g. about 295 for an H100 and
206 for an H200 at dense BF16 peak over HBM bandwidth).
"""

from __future__ import annotations

from collections.abc import Sequence

COSTS = ("tokens", "flops", "kinetics")
KINETICS_INTENSITY = 562.5
UNITS = {"tokens": "tokens", "flops": "GFLOP", "kinetics": "G eFLOP"}
_SCALE = {"tokens": 1.0, "flops": 1e-9, "kinetics": 1e-9}


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def trace_lengths(record: dict) -> list[float]:
    """Generated tokens of each trace; a record without traces is one trace of all its tokens."""
    lengths = [_number(t.get("completion_tokens")) for t in record.get("traces") or []
               if isinstance(t, dict)]
    lengths = [x for x in lengths if x is not None]
    if lengths:
        return lengths
    total = _number(record.get("completion_tokens"))
    return [total] if total is not None else []


def flops(record: dict, shape: dict) -> float | None:
    """FLOPs of one record (module docstring)."""
    lengths = trace_lengths(record)
    prompt = _number(record.get("prompt_tokens")) or 0.0
    if not lengths:
        return None
    p, d, r = _dims(shape)
    prefill = _number(record.get("prefill_tokens")) or prompt
    total = 2 * p * prefill + r * d * prompt * prompt / 2
    for n in lengths:
        total += 2 * p * n + 2 * r * d * (prompt * n + n * (n - 1) / 2)
    return total


def kinetics(record: dict, shape: dict, intensity: float = KINETICS_INTENSITY) -> float | None:
    """Kinetics eFLOPs of one record (module docstring)."""
    lengths = trace_lengths(record)
    if not lengths:
        return None
    prompt = _number(record.get("prompt_tokens")) or 0.0
    p, d, r = _dims(shape)
    compute = sum(2 * p * n + 2 * r * prompt * d * n + r * d * n * n for n in lengths)
    memory = 2 * prompt * d * max(lengths) + sum(d * n * n for n in lengths)
    return compute + intensity * memory


def _dims(shape: dict) -> tuple[float, float, float]:
    d = 2 * shape["kv_heads"] * shape["head_dim"] * shape["layers"]
    return float(shape["params"]), float(d), shape["heads"] / shape["kv_heads"]


def token_cost(record: dict, basis: str = "total") -> float | None:
    """Tokens of one record: `total` = prompt + completion (ARISE's evaluate.py uses the API's
    total_tokens), `completion` = generated tokens only."""
    completion = _number(record.get("completion_tokens"))
    if completion is None:
        return None
    if basis == "completion":
        return completion
    return completion + (_number(record.get("prompt_tokens")) or 0.0)


def record_costs(records: Sequence[dict], kind: str, *, basis: str = "total",
                 shapes: dict[str, dict] | None = None,
                 intensity: float = KINETICS_INTENSITY) -> list[float | None]:
    """Cost per record in the units of UNITS[kind]; `shapes` maps a record's `model` to its
    model_shape (flops and kinetics)."""
    if kind == "tokens":
        return [token_cost(r, basis) for r in records]
    out = []
    for r in records:
        shape = (shapes or {}).get(str(r.get("model")))
        value = flops(r, shape) if kind == "flops" else kinetics(r, shape, intensity)
        out.append(None if value is None else value * _SCALE[kind])
    return out
