"""The In-Place TTT MLP: a gated MLP whose down projection is a chunk-wise fast weight.

Feng et al., "In-Place Test-Time Training" (2026), section 3:

    Z = act(H W_gate^T) * (H W_up^T)            slow weights, unchanged
    O_i = Z_i (W_{i-1})^T                        chunk i is read with the weight before its update
    W_i = W_{i-1} + eta * V_i^T Z_i              one step on -<Z W^T, V>_F          (eq. 1)
    V = Conv1D(X) W_target                       LM-aligned target                     (eq. 2)

Parallel form (Algorithm 1): dW_i = V_i^T Z_i for all chunks at once, then an exclusive prefix
sum gives W_{i-1} = W_0 + eta * sum_{j<i} dW_j. Generation keeps, per row, the current chunk's
X and Z (left-aligned, `fill` tokens) and `delta` = W - W_0, and folds a chunk in when it fills.

Chunk positions are counted per row from its first real token: tokens with mask 0 (left padding)
take no part, so a padded batch computes what each row alone would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FastWeightState:
    """One converted layer's test-time state for B rows (lives in the KV cache layer)."""

    fill: torch.Tensor                  # (B,) tokens of the current, unfinished chunk
    x: torch.Tensor                     # (B, P, d) their target inputs X, left-aligned, P >= fill
    z: torch.Tensor                     # (B, P, f) their gated activations Z
    delta: torch.Tensor | None          # (B, d, f) W - W_0 (None: no chunk finished in any row)


@dataclass
class TTTContext:
    """What one forward call tells the TTT MLPs besides the hidden states."""

    valid: torch.Tensor | None = None          # (B, T) bool: real tokens (None: all real)
    cache_layer: object = None                 # KV cache layer that holds the FastWeightState
    embeddings: torch.Tensor | None = None     # (B, T, d) token embeddings (ttt_input="embedding")
    segments: torch.Tensor | None = None       # (B, T) document index per token (training)


class InPlaceTTTMLP(nn.Module):
    """A family's gated MLP with W_down as the fast weight, plus the target conv and W_target."""

    def __init__(self, mlp: nn.Module, hidden_size: int, chunk: int, lr: float,
                 kernel: int = 5, ttt_input: str = "hidden"):
        super().__init__()
        for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
            setattr(self, name, getattr(mlp, name))
        self.chunk, self.lr, self.ttt_input = int(chunk), float(lr), ttt_input
        weight = mlp.down_proj.weight
        # depthwise, centred (padding kernel//2), no bias; zero init -> V = 0 -> the original model
        self.ttt_conv = nn.Conv1d(hidden_size, hidden_size, kernel, padding=kernel // 2,
                                  groups=hidden_size, bias=False, device=weight.device,
                                  dtype=weight.dtype)
        self.ttt_target = nn.Linear(hidden_size, hidden_size, bias=False, device=weight.device,
                                    dtype=weight.dtype)
        self.ttt_context: TTTContext | None = None

    def reset_ttt_parameters(self, seed: int = 0) -> None:
        """Conv = 0 (exactly the original model); W_target diagonal with N(0, 0.02) entries."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.ttt_conv.weight.zero_()
            d = self.ttt_target.weight.shape[0]
            diag = torch.randn(d, generator=g, dtype=torch.float32) * 0.02
            self.ttt_target.weight.copy_(torch.diag(diag).to(self.ttt_target.weight))

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """V = Conv1D(X) W_target over (N, C, d) chunks; the conv never crosses a chunk (eq. 2)."""
        conv = self.ttt_conv(x.transpose(1, 2)).transpose(1, 2)
        return self.ttt_target(conv)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act_fn(self.gate_proj(h)) * self.up_proj(h)
        out = self.down_proj(z)                  # Z W_0^T: the original model's output
        ctx = self.ttt_context or TTTContext()
        x = ctx.embeddings if self.ttt_input == "embedding" else h
        if ctx.embeddings is None and self.ttt_input == "embedding":
            raise RuntimeError("ttt_input='embedding' needs the model's forward to pass embeddings")
        layer = ctx.cache_layer
        state = getattr(layer, "ttt_state", None) if layer is not None else None
        if (state is not None and h.shape[1] == 1 and ctx.segments is None
                and (ctx.valid is None or bool(ctx.valid.all()))):
            extra, new_state = self.decode_step(x, z, state)
        else:
            extra, new_state = self.parallel(x, z, ctx.valid, state, ctx.segments,
                                             want_state=layer is not None)
        if layer is not None:
            layer.ttt_state = new_state
        return out if extra is None else out + extra

    def chunk_update(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """dW = V^T Z for whole chunks: x (N, C, d), z (N, C, f) -> (N, d, f) (eq. 1)."""
        return torch.einsum("ncd,ncf->ndf", self.targets(x), z)

    def parallel(self, x, z, valid, state: FastWeightState | None, segments=None,
                 want_state: bool = False):
        """Parallel form over (cached partial chunk + new tokens); returns (extra or None, state)."""
        B, T, d = x.shape
        f, C = z.shape[-1], self.chunk
        if valid is None:
            valid = torch.ones((B, T), dtype=torch.bool, device=x.device)
        valid = valid.bool()
        delta = None
        if state is not None:                    # prepend the unfinished chunk: it starts at slot 0
            P = state.x.shape[1]
            slots = torch.arange(P, device=x.device)
            valid = torch.cat([slots[None, :] < state.fill[:, None], valid], dim=1)
            x = torch.cat([state.x.to(x.dtype), x], dim=1)
            z = torch.cat([state.z.to(z.dtype), z], dim=1)
            delta = state.delta
        else:
            P = 0
        L = x.shape[1]
        # virtual rows: one per (row, document); fast weights start from W_0 in each
        if segments is not None:
            if state is not None:
                raise ValueError("document segments are for training forwards, not cached decoding")
            S = int(segments.max()) + 1 if segments.numel() else 1
            vrow = torch.arange(B, device=x.device)[:, None] * S + segments.long()
            V = B * S
        else:
            vrow = torch.arange(B, device=x.device)[:, None].expand(B, L)
            V = B
        vflat, keep = vrow.reshape(-1), valid.reshape(-1)
        count = torch.zeros(V, dtype=torch.long, device=x.device).index_add_(
            0, vflat, keep.long())
        before = torch.cumsum(count, 0) - count          # valid tokens of earlier virtual rows
        phase = torch.cumsum(keep.long(), 0) - 1 - before[vflat]   # position within the document
        K = max(1, int(((count + C - 1) // C).max()) if V else 1)
        finished = count // C                             # chunks that are complete per vrow
        if K == 1 and delta is None and not want_state:
            return None, None                             # nothing read here has an update yet
        need_updates = K > 1 or (want_state and bool((finished > 0).any()))
        if not need_updates and delta is None and not want_state:
            return None, None                             # nothing read here has an update yet
        idx = torch.nonzero(keep).squeeze(1)
        grid_index = vflat[idx] * (K * C) + phase[idx]    # (vrow, chunk, slot) flattened
        xg = x.new_zeros(V * K * C, d).index_put((grid_index,), x.reshape(-1, d)[idx])
        zg = z.new_zeros(V * K * C, f).index_put((grid_index,), z.reshape(-1, f)[idx])
        xg, zg = xg.view(V, K, C, d), zg.view(V, K, C, f)
        S = None
        if need_updates:
            dW = self.chunk_update(xg.view(V * K, C, d), zg.view(V * K, C, f)).view(V, K, d, f)
            # S[:, i] = sum_{j<i} dW_j for i = 0..K: the exclusive prefix sum (Algorithm 1)
            S = torch.cat([dW.new_zeros(V, 1, d, f), torch.cumsum(dW, dim=1)], dim=1)
        extra = None
        if K > 1 or delta is not None:
            M = self.lr * S[:, :K] if S is not None else None
            if delta is not None:
                M = delta[:, None].to(z.dtype) if M is None else M + delta[:, None].to(M.dtype)
            eg = torch.einsum("vkcf,vkdf->vkcd", zg, M.expand(V, K, d, f)).reshape(V * K * C, d)
            extra = x.new_zeros(B * L, d).index_put((idx,), eg[grid_index]).view(B, L, d)[:, P:]
        if not want_state:
            return extra, None
        with torch.no_grad():                             # the cache carries values, not graphs
            rows = torch.arange(V, device=x.device)
            new_delta = delta
            if S is not None and bool((finished > 0).any()):
                new_delta = self.lr * S[rows, finished]
                if delta is not None:
                    new_delta = new_delta + delta
            fill = count - finished * C
            width = int(fill.max()) if V else 0
            last = finished.clamp(max=K - 1)
            new_x = xg[rows, last, :width].detach().clone()
            new_z = zg[rows, last, :width].detach().clone()
        return extra, FastWeightState(fill=fill, x=new_x, z=new_z,
                                      delta=None if new_delta is None else new_delta.detach())

    @torch.no_grad()
    def decode_step(self, x, z, state: FastWeightState):
        """One new token per row: read with W_0 + delta, then append; fold chunks that fill."""
        B = x.shape[0]
        extra = None
        if state.delta is not None:
            extra = torch.bmm(z, state.delta.transpose(1, 2).to(z.dtype))
        fill = state.fill.clone()
        sx, sz = state.x, state.z
        if sx.shape[1] <= int(fill.max()):                # grow the buffer geometrically (<= C)
            grow = max(1, min(sx.shape[1], self.chunk - sx.shape[1]))
            sx = torch.cat([sx, sx.new_zeros(B, grow, sx.shape[2])], dim=1)
            sz = torch.cat([sz, sz.new_zeros(B, grow, sz.shape[2])], dim=1)
        rows = torch.arange(B, device=x.device)
        sx[rows, fill] = x[:, 0].to(sx.dtype)             # slots past `fill` are never read
        sz[rows, fill] = z[:, 0].to(sz.dtype)
        fill += 1
        delta = state.delta
        full = torch.nonzero(fill == self.chunk).squeeze(1)
        if len(full):                                     # W_i = W_{i-1} + eta V_i^T Z_i (eq. 1)
            dW = self.chunk_update(sx[full, :self.chunk], sz[full, :self.chunk])
            if delta is None:
                delta = dW.new_zeros(B, *dW.shape[1:])
            delta[full] += self.lr * dW
            fill[full] = 0
        return extra, FastWeightState(fill=fill, x=sx, z=sz, delta=delta)

def reference_recurrent(mlp: InPlaceTTTMLP, h: torch.Tensor, x: torch.Tensor | None = None):
    """Chunk-by-chunk loop over one unpadded batch: the definition the parallel form must match."""
    x = h if x is None else x
    C = mlp.chunk
    z = mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h)
    W = mlp.down_proj.weight.unsqueeze(0).expand(h.shape[0], -1, -1)
    bias = mlp.down_proj.bias
    outs = []
    for start in range(0, h.shape[1], C):
        zc, xc = z[:, start:start + C], x[:, start:start + C]
        o = torch.einsum("bcf,bdf->bcd", zc, W)              # O_i = Z_i W_{i-1}^T
        outs.append(o if bias is None else o + bias)
        v = mlp.ttt_target(F.conv1d(xc.transpose(1, 2), mlp.ttt_conv.weight,
                                    padding=mlp.ttt_conv.padding[0],
                                    groups=xc.shape[-1]).transpose(1, 2))
        W = W + mlp.lr * torch.einsum("bcd,bcf->bdf", v, zc)  # W_i = W_{i-1} + eta V^T Z
    return torch.cat(outs, dim=1)
