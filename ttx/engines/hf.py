"""Local generation with transformers: n traces per prompt decoded in lockstep from one prefill.

Each prompt is encoded once; its KV cache is repeated n times (not n prefills). Traces that
finish leave the batch at once, so later steps only pay for live rows, and a caller can cancel a
prompt's remaining traces once k of them have finished (First Finish Search).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ttx.engines.base import Generation, Prompt, SamplingParams, TokenPrompt, Trace, per_prompt
from ttx.engines.kv import GrowingLayer, growing
from ttx.models import load_model, render_prompt


@dataclass
class _Row:
    prompt: int                      # index of the prompt within the group
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    certainty: list[float] = field(default_factory=list)
    stop: str | None = None          # the stop string that ended the row
    stop_token: int | None = None    # the stop token (SamplingParams.stop_token_ids) that did
    guide: object = None             # the row's constraint matcher (ttx.engines.constrain.Guide)
    confidences: list[float] = field(default_factory=list)   # DeepConf C_i (ConfidenceStop)
    window_sum: float = 0.0          # sum of the last `window` confidences


class HFEngine:
    name = "hf"
    supports_constraints = True

    def __init__(self, model: str = "smollm2-135m-instruct", device: str = "auto",
                 dtype: str = "auto", adapter: str | None = None, max_batch_rows: int = 64,
                 loaded=None, prefix_cache_mb: int | None = None,
                 packed_weights: bool | None = None):
        """`loaded` takes an already loaded (model, tokenizer) pair instead of a spec;
        `prefix_cache_mb` bounds the K/V kept for prefix reuse across calls (0: none). Kept K/V
        are only right while the weights stay as they were, so an engine over a `loaded` model
        (a stage that trains it between calls: ttrl, perk, tlm) keeps none unless asked.
        `packed_weights` runs the linear layers on oneDNN-packed copies of their weights on CPU
        (ttx.engines.cpu.packed: 1.5x float32 decode, one more copy of those weights in memory); by
        default on for a model the engine loads, off for a `loaded` one. With it, Llama-family
        models run ttx's own forward on fused packed weights (ttx.engines.cpu.fused)."""
        folder = None
        if loaded is None:
            self.model, self.tokenizer, folder = load_model(model, device, dtype)
        else:
            self.model, self.tokenizer = loaded
        if adapter:
            from ttx.models import load_adapter

            self.model = load_adapter(self.model, adapter, folder).eval()
        self.model_name = str(model)
        self.device = next(self.model.parameters()).device
        if packed_weights is None:
            packed_weights = loaded is None
        from ttx.engines.cpu.packed import pack_linears

        self.packed_linears = pack_linears(self.model) if packed_weights else 0
        from ttx.engines.cpu.fused import FusedDecoder

        # Llama-family models run on fused packed weights, outside transformers' modules
        self.fused = FusedDecoder.build(self.model) if self.packed_linears else None
        self.max_batch_rows = max_batch_rows
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)
        config = getattr(self.model, "config", None)
        text = getattr(config, "text_config", None) or config
        self.max_positions = getattr(text, "max_position_embeddings", None)
        from ttx.engines.prefix import PrefixStore

        if prefix_cache_mb is None:
            prefix_cache_mb = 1024 if loaded is None else 0
        self.prefix = PrefixStore(prefix_cache_mb << 20) if prefix_cache_mb > 0 else None
        self._plain_cache: bool | None = None
        self._constrainer = None             # built on the first constraint (constrain.py)

    def close(self) -> None:
        pass

    @torch.inference_mode()
    def hidden_states(self, texts, layer: int = -1) -> list[torch.Tensor]:
        """Each text's hidden states at `layer` (base.LocalEngine), one forward per text."""
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            states = self.model(ids.to(self.device), output_hidden_states=True).hidden_states
            out.append(states[layer][0].float())
        return out

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)
        text = render_prompt(self.tokenizer, prompt)
        # A chat template already wrote the special tokens; raw text gets the model's usual ones,
        # unless it is already templated text (a continued trace) that starts with them.
        bos = self.tokenizer.bos_token
        special = isinstance(prompt, str) and not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=special).input_ids

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], n, params) -> list[Generation]:
        """n traces per prompt; `n` and `params` may be per prompt (base.per_prompt)."""
        counts, per = per_prompt(len(prompts), n, params)
        self._check_constraints(per)
        if self.fused is not None:
            self.fused.refresh()                    # weights changed since the last call
        generator = None
        if per and per[0].seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(per[0].seed)
        return self._decode([self.encode(p) for p in prompts], counts, per, generator)

    def _prefill(self, encoded: list[list[int]], n: int, max_new_tokens: int | None = None):
        """Encode prompts once, then repeat each prompt's cache n times; with prefix reuse only
        what no earlier call encoded is computed (the cached part joins the batch left-padded,
        the new part left-padded after it: masked columns in between).

        Returns (cache, logits, mask, next_pos, reused) for len(encoded) * n rows (sum(n) for a
        list), `reused` the tokens of each prompt taken from the prefix store. With
        `max_new_tokens` the K/V buffers are sized for the whole decode where that costs at most
        twice the usual room (ttx.engines.kv)."""
        from transformers import DynamicCache

        counts = [n] * len(encoded) if isinstance(n, int) else list(n)
        if not isinstance(n, int):                  # per-prompt counts (DORA's allocation)
            n = torch.tensor(n, device=self.device)
        hits = [self.prefix.match(ids, limit=len(ids) - 1) if self.prefix is not None else (0, None)
                for ids in encoded]
        reused = [m for m, _ in hits]
        past = max(reused)
        suffix = [ids[m:] for ids, m in zip(encoded, reused)]
        width = max(len(ids) for ids in suffix)
        rows = len(encoded)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, past + width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        for i, (ids, m) in enumerate(zip(suffix, reused)):   # left padding in both parts
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, past - m:past] = 1
            mask[i, past + width - len(ids):] = 1
            positions[i, width - len(ids):] = torch.arange(m, m + len(ids))
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        cache = DynamicCache(config=self.model.config)
        growing(cache)                              # appends write in place (ttx.engines.kv)
        if past:
            self._load_past(cache, hits, past)
        logits = self._forward(input_ids, mask, positions, cache)
        if self.prefix is not None:
            self._store_prompts(cache, encoded, reused, suffix, past, width)
        # Share the prefill: repeat each prompt's cache n times instead of encoding it n times.
        limit = past + width + max_new_tokens if max_new_tokens else None
        _batch_rows(cache, lambda t: t.repeat_interleave(n, dim=0), repeat=counts, limit=limit)
        return (cache, logits.repeat_interleave(n, dim=0),
                mask.repeat_interleave(n, dim=0), positions[:, -1].repeat_interleave(n, dim=0) + 1,
                reused)

    def _load_past(self, cache, hits, past: int) -> None:
        """Put the stored prefixes into a fresh cache, each row left-padded to `past`."""
        for j, layer in enumerate(_layers(cache)):
            keys, values = [], []
            for m, kv in hits:
                ref = next(kv for m2, kv in hits if m2)[j][0]
                k = kv[j][0] if m else ref[:, :0]
                v = kv[j][1] if m else ref[:, :0]
                pad = (0, 0, past - m, 0)
                keys.append(torch.nn.functional.pad(k, pad))
                values.append(torch.nn.functional.pad(v, pad))
            layer.update(torch.stack(keys).to(self.device), torch.stack(values).to(self.device))

    def _store_prompts(self, cache, encoded, reused, suffix, past: int, width: int) -> None:
        """Keep each prompt's newly computed K/V for later calls."""
        if not self._reusable(cache):
            return
        for i, (ids, m, new) in enumerate(zip(encoded, reused, suffix)):
            cols = slice(past + width - len(new), past + width)
            self.prefix.insert(ids, [(layer.keys[i, :, cols].detach().cpu(),
                                      layer.values[i, :, cols].detach().cpu())
                                     for layer in _layers(cache)], start=m)

    def _store_row(self, cache, mask, b: int, ids: list[int]) -> None:
        """Keep a finished row's K/V (its prompt and the tokens it fed) for later calls."""
        if self.prefix is None or not self._reusable(cache):
            return
        cols = mask[b].nonzero().squeeze(1)
        if len(cols) != len(ids):
            return
        self.prefix.insert(ids, [(layer.keys[b][:, cols].detach().cpu(),
                                  layer.values[b][:, cols].detach().cpu())
                                 for layer in _layers(cache)], start=0)

    def _reusable(self, cache) -> bool:
        """Whether every cache layer is plain attention K/V (cut-able at any prefix)."""
        if self._plain_cache is None:
            self._plain_cache = all(type(layer).__name__ in ("DynamicLayer", "GrowingLayer")
                                    and not _recurrent(layer) and not hasattr(layer, "batch_rows")
                                    for layer in _layers(cache))
            if not self._plain_cache:
                self.prefix = None                 # recurrent or sliding state: no reuse
        return self._plain_cache

    def _decode(self, encoded: list[list[int]], n: list[int], per: list[SamplingParams],
                generator) -> list[Generation]:
        """Continuous batching: prompts join the batch as soon as rows for all n traces are free,
        so a long trace never holds a whole chunk of short ones hostage."""
        params = per[0]                             # the batch's shared sampling settings
        pending = [p for p in range(len(encoded)) if n[p] > 0]   # not yet admitted, in order
        rows: list[_Row] = []
        traces: list[list[tuple[int, Trace]]] = [[] for _ in encoded]   # (row, trace)
        finished_count = [0] * len(encoded)
        started = [0.0] * len(encoded)
        ended = [0.0] * len(encoded)
        left = list(n)                              # traces of each prompt still running
        live: list[int] = []                        # rows in the batch, in batch order
        cache = logits = mask = next_pos = None
        stop_after = params.stop_after_finished
        cached = [0] * len(encoded)                 # prompt tokens taken from the prefix store

        def done(row_index: int, trace: Trace) -> None:
            prompt = rows[row_index].prompt
            traces[prompt].append((row_index, trace))
            left[prompt] -= 1
            if left[prompt] == 0:
                ended[prompt] = time.perf_counter()

        while pending or live:
            take, room = 0, self.max_batch_rows - len(live)
            # a prompt too wide for the batch runs alone
            while take < len(pending) and (n[pending[take]] <= room or (take == 0 and not live)):
                room -= n[pending[take]]
                take += 1
            if take:
                admit, pending = pending[:take], pending[take:]
                now = time.perf_counter()
                for p in admit:
                    started[p] = now
                *new, reused = self._prefill([encoded[p] for p in admit], [n[p] for p in admit],
                                             max(per[p].max_new_tokens for p in admit))
                for p, m in zip(admit, reused):
                    cached[p] = m
                first = len(rows)
                rows += [_Row(prompt=p, guide=self._guide(per[p])) for p in admit for _ in range(n[p])]
                new_live = list(range(first, len(rows)))
                if live:
                    cache, logits, mask, next_pos = _merge((cache, logits, mask, next_pos), new)
                else:
                    cache, logits, mask, next_pos = new
                live += new_live

            scores = self._suppress_eos(logits, live, rows, per)
            if any(rows[r].guide is not None for r in live):      # constrained rows: mask
                from ttx.engines.constrain import mask_logits
                scores = mask_logits(scores, logits, [rows[r].guide for r in live])
            tokens = self._sample(scores, params, generator)
            if params.logprobs:
                logp = torch.log_softmax(logits, dim=-1)
                chosen = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
                # Self-certainty: KL(U || p) = -log V - mean_j log p_j (Kang et al. 2025, eq. 4)
                certainty = (-math.log(logp.shape[-1]) - logp.mean(-1)).tolist()
            confs = self._confidences(logits, live, rows, per)
            token_list = tokens.tolist()
            keep: list[int] = []
            for b, r in enumerate(live):
                row = rows[r]
                tok = token_list[b]
                row.ids.append(tok)
                if params.logprobs:
                    row.logprobs.append(chosen[b])
                    row.certainty.append(certainty[b])
                low = confs is not None and _low_confidence(row, confs[b],
                                                            per[row.prompt].confidence)
                reason, text = self._finish(row, tok, per[row.prompt])
                if reason is None and low:      # DeepConf: cancelled, its tokens counted
                    done(r, self._trace(row, None, "cancelled", None))
                    continue
                if reason is None:
                    keep.append(b)
                    continue
                self._store_row(cache, mask, b, encoded[row.prompt] + row.ids[:-1])
                done(r, self._trace(row, text, reason, finished_count))
            # First Finish Search: cancel the other traces of prompts that have k finished ones.
            if stop_after is not None:
                for b in keep:
                    row = rows[live[b]]
                    if finished_count[row.prompt] >= stop_after:
                        done(live[b], self._trace(row, None, "cancelled", None))
                keep = [b for b in keep if finished_count[rows[live[b]].prompt] < stop_after]
            if len(keep) < len(live):             # finished traces leave the batch
                keep = _fill_holes(keep)
                live = [live[b] for b in keep]
                if not live:
                    cache = logits = mask = next_pos = None
                    continue
                index = torch.tensor(keep, device=self.device)
                _batch_rows(cache, lambda t, rows=index: t[rows], keep)
                tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
                cache, mask = _trim_left(cache, mask)
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            shared = (_shared_prompt(live, rows, mask.shape[1])
                      if self.fused is not None and self.fused.native_attention else None)
            logits = self._forward(tokens[:, None], mask, next_pos[:, None], cache, shared)
            next_pos = next_pos + 1
        # traces in row order (sampling order), whatever order they finished in
        return [Generation(traces=[trace for _, trace in sorted(t, key=lambda rt: rt[0])],
                           prompt_tokens=len(ids), wall_s=ended[i] - started[i],
                           cached_prompt_tokens=cached[i])
                for i, (t, ids) in enumerate(zip(traces, encoded))]

    def _forward(self, input_ids, mask, positions, cache, shared=None) -> torch.Tensor:
        """The last position's logits (float32) for each row, the new K/V written to `cache`;
        `shared` (_shared_prompt) lets the fused forward read a prompt's K/V once for its rows."""
        if self.fused is not None:
            return self.fused.forward(input_ids, mask, positions, cache, shared)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, generator) -> torch.Tensor:
        if params.temperature <= 0:
            return logits.argmax(dim=-1)
        # softmax's numerator exp((l - max l) / T), unnormalised (the inverse CDF takes each row's
        # total), in one full-vocabulary buffer: no fresh tensors to page-fault in every step
        probs = (logits - logits.amax(-1, keepdim=True)).div_(params.temperature).exp_()
        if params.top_p < 1.0:                      # nucleus: keep the smallest set with mass >= p
            probs = probs.div_(probs.sum(-1, keepdim=True))
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
        return _inverse_cdf(probs, torch.rand((probs.shape[0], 1), generator=generator,
                                              dtype=torch.float64, device=probs.device))

    @staticmethod
    def _confidences(logits: torch.Tensor, live: list[int], rows: list[_Row],
                     per: list[SamplingParams]) -> list[float | None] | None:
        """Each live row's DeepConf token confidence -(1/k) sum of its top-k log-probabilities
        (temperature 1; arXiv 2508.15260 eq. 2), None for rows that do not ask for it."""
        wanted = [per[rows[r].prompt].confidence for r in live]
        if all(c is None for c in wanted):
            return None
        most = max(c.top_k for c in wanted if c is not None)
        top = torch.log_softmax(logits, dim=-1).topk(min(most, logits.shape[-1]), dim=-1).values
        top = top.double().cumsum(-1).tolist()
        return [None if c is None else -top[b][min(c.top_k, len(top[b])) - 1]
                / min(c.top_k, len(top[b])) for b, c in enumerate(wanted)]

    def _suppress_eos(self, logits: torch.Tensor, live: list[int], rows: list[_Row],
                      per: list[SamplingParams]) -> torch.Tensor:
        """Rows short of their min_new_tokens cannot sample EOS (log-probabilities stay raw)."""
        short = [b for b, r in enumerate(live)
                 if len(rows[r].ids) < per[rows[r].prompt].min_new_tokens]
        if not short:
            return logits
        logits = logits.clone()
        for b in short:                 # vLLM's min_tokens: EOS and stop tokens are held back
            banned = self.eos_ids | set(per[rows[live[b]].prompt].stop_token_ids)
            if banned:
                logits[b, sorted(banned)] = -math.inf
        return logits

    def _guide(self, params: SamplingParams):
        """A new row's constraint matcher (None without a constraint)."""
        if params.constraint is None:
            return None
        return self._constrainer_of().guide(params.constraint)

    def _constrainer_of(self):
        if self._constrainer is None:
            from ttx.engines.constrain import Constrainer
            vocab = max(len(self.tokenizer), getattr(self.model.config, "vocab_size", 0) or 0)
            self._constrainer = Constrainer(self.tokenizer, vocab, self.eos_ids)
        return self._constrainer

    def _check_constraints(self, per: list[SamplingParams]) -> None:
        """Every constraint of the call compiles and can be met, before any row decodes."""
        for c in {id(p.constraint): p.constraint for p in per if p.constraint is not None}.values():
            self._constrainer_of().check(c)

    def _finish(self, row: _Row, tok: int, params: SamplingParams):
        """(finish_reason, text) when the row is done after `tok`, else (None, None)."""
        complete = row.guide is not None and row.guide.advance(tok)   # the constraint is met
        if tok in self.eos_ids and not params.ignore_eos:
            return "stop", self.tokenizer.decode(row.ids[:-1], skip_special_tokens=True)
        if tok in params.stop_token_ids:
            row.stop_token = tok
            return "stop", self.tokenizer.decode(row.ids[:-1], skip_special_tokens=True)
        if params.stop and len(row.ids) >= params.min_new_tokens and self._stop_in_tail(row, params):
            # a stop string can only have appeared in the text that this token added
            window = max(len(s) for s in params.stop) + 16
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            found = [i for i in (text.find(s, max(0, len(text) - window)) for s in params.stop)
                     if i >= 0]
            if found:
                # a stop string that ended before min_new_tokens was reached does not count
                floor = 0
                if params.min_new_tokens > 1:
                    floor = len(self.tokenizer.decode(row.ids[:params.min_new_tokens - 1],
                                                      skip_special_tokens=True))
                hits = [(text.find(s, max(0, floor - len(s) + 1)), s) for s in params.stop]
                hits = [h for h in hits if h[0] >= 0]
                if hits:
                    row.stop = min(hits)[1]
                    return "stop", text[:min(hits)[0]]
        if complete:                    # nothing but EOS may follow: done now
            ids = row.ids[:-1] if tok in self.eos_ids else row.ids
            return "stop", self.tokenizer.decode(ids, skip_special_tokens=True)
        if len(row.ids) >= params.max_new_tokens:
            return "length", self.tokenizer.decode(row.ids, skip_special_tokens=True)
        return None, None

    def _stop_in_tail(self, row: _Row, params: SamplingParams) -> bool:
        """Whether a stop string shows in the decoded last tokens: the whole text is decoded
        only then (decoding it every step is quadratic in the trace's length). The tail spans
        enough tokens for the longest stop string even as single bytes."""
        k = 4 * max(len(s) for s in params.stop) + 8
        tail = self.tokenizer.decode(row.ids[-k:], skip_special_tokens=True)
        return any(s in tail for s in params.stop)

    def _trace(self, row: _Row, text: str | None, reason: str, finished_count) -> Trace:
        order = None
        if finished_count is not None:
            order = finished_count[row.prompt]
            finished_count[row.prompt] += 1
        if text is None:
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        return Trace(text=text, completion_tokens=len(row.ids), finish_reason=reason,
                     token_ids=list(row.ids),
                     logprobs=list(row.logprobs) if row.logprobs else None,
                     self_certainty=list(row.certainty) if row.certainty else None,
                     finish_order=order, stop_string=row.stop, stop_token=row.stop_token,
                     confidences=list(row.confidences) if row.confidences else None)


def _low_confidence(row: _Row, conf: float | None, rule) -> bool:
    """Record the row's token confidence; whether its group confidence (the mean over the last
    `window` tokens, once that many exist) fell below the rule's threshold (deepconf
    processors.py:43-51: a running window sum, the check only on a full window)."""
    if conf is None:
        return False
    row.confidences.append(conf)
    row.window_sum += conf
    if len(row.confidences) > rule.window:
        row.window_sum -= row.confidences[-rule.window - 1]
    return (rule.threshold is not None and len(row.confidences) >= rule.window
            and row.window_sum / rule.window < rule.threshold)


_BLOCK = 256        # vocabulary entries per block of the two-level inverse CDF


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative probability first exceeds u * total, per row (u in [0, 1)).

    Two levels: the CDF over blocks of _BLOCK entries picks a block, the CDF inside it the token.
    The same token a full-vocabulary cumsum would give, for a tenth of its cost (one pass to sum
    the blocks instead of a float64 scan of 49k entries per row). A token of probability zero
    (masked by a constraint or top-p) is never drawn, whatever the rounding."""
    rows, vocab = probs.shape
    blocks = -(-vocab // _BLOCK)
    if blocks * _BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, blocks * _BLOCK - vocab))
    grid = probs.view(rows, blocks, _BLOCK)
    # block sums in the probabilities' dtype (a float64 copy of the whole vocabulary cost more
    # than the rest of the draw), their CDF in float64
    mass = grid.sum(-1).double()
    cdf = mass.cumsum(-1)
    u = u * cdf[:, -1:]
    # u * total can round up to total: the last block with any mass, not a masked one after it
    block = torch.minimum(torch.searchsorted(cdf, u, right=True), _last_positive(mass))
    below = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner = grid[torch.arange(rows, device=probs.device), block.squeeze(1)]
    index = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64), u - below, right=True)
    return (block * _BLOCK + torch.minimum(index, _last_positive(inner))).squeeze(1)


def _shared_prompt(live: list[int], rows: list["_Row"], columns: int):
    """Per batch row, the first row of its prompt and how many leading cache columns the two hold
    equal. The traces of a prompt join the batch together, as copies of its K/V, and decode in
    lockstep (one token each per step), so whatever merges, trims and moves the batch did, a row's
    own tokens are its last len(ids) columns and everything before them is its prompt's, the
    same in all of them."""
    first: dict[int, int] = {}
    src = [first.setdefault(rows[r].prompt, b) for b, r in enumerate(live)]
    return torch.tensor(src), torch.tensor([columns - len(rows[r].ids) for r in live])


def _last_positive(x: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last positive entry, [rows, 1]."""
    return torch.where(x > 0, torch.arange(x.shape[-1], device=x.device), -1).amax(-1, keepdim=True)


def _layers(cache):
    return cache.layers        # transformers >= 5: DynamicCache.layers[i].keys / .values


def _recurrent(layer) -> list[dict]:
    """A Mamba layer's per-row state dicts (hybrid models such as Bamba): conv and SSM states,
    [batch, ...] with no sequence axis. Attention layers have none."""
    return [d for d in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None))
            if d is not None]


def _batch_rows(cache, pick, keep: list[int] | None = None, repeat: list[int] | None = None,
                limit: int | None = None) -> None:
    """Apply a batch-axis operation (repeat, select) to every layer's state: K/V or Mamba state.
    A selection also gives `keep`, the kept rows, which a GrowingLayer moves inside its buffer;
    a repeat gives `repeat`, each row's count, which a GrowingLayer writes once into a buffer
    with room to grow (to `limit` columns where known)."""
    for layer in _layers(cache):
        for states in _recurrent(layer):
            for i, t in states.items():
                if t is not None:
                    states[i] = pick(t)
        if getattr(layer, "keys", None) is not None and layer.get_seq_length() > 0:
            if keep is not None and isinstance(layer, GrowingLayer):
                layer.select_rows(keep)
            elif repeat is not None and isinstance(layer, GrowingLayer):
                layer.repeat_rows(repeat, limit)
            else:
                layer.keys, layer.values = pick(layer.keys), pick(layer.values)
        if hasattr(layer, "batch_rows"):   # per-row state besides keys/values (In-Place TTT)
            layer.batch_rows(pick)


def _fill_holes(keep: list[int]) -> list[int]:
    """The kept batch rows (ascending) in their new order: rows past the new batch size move into
    the holes that finished rows left, the others stay where they are, so a step where one trace
    finishes moves at most one row's K/V (GrowingLayer.select_rows)."""
    size, kept = len(keep), set(keep)
    tail = [b for b in keep if b >= size]
    return [b if b in kept else tail.pop() for b in range(size)]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _merge(old, new):
    """Stack two batches' decoding state; the shorter one is left-padded (masked) to align."""
    (c1, l1, m1, p1), (c2, l2, m2, p2) = old, new
    width = max(m1.shape[1], m2.shape[1])
    for a, b in zip(_layers(c1), _layers(c2)):
        for sa, sb in zip(_recurrent(a), _recurrent(b)):     # Mamba state: rows stack as they are
            for i in sa:
                if sa[i] is not None:
                    sa[i] = torch.cat([sa[i], sb[i]], dim=0)
        if getattr(a, "keys", None) is None:
            continue
        a.keys = torch.cat([_pad_left(a.keys, width, 2), _pad_left(b.keys, width, 2)], dim=0)
        a.values = torch.cat([_pad_left(a.values, width, 2), _pad_left(b.values, width, 2)], dim=0)
        if hasattr(a, "batch_concat"):     # per-row state besides keys/values (In-Place TTT)
            a.batch_concat(b)
    mask = torch.cat([_pad_left(m1, width, 1), _pad_left(m2, width, 1)], dim=0)
    return c1, torch.cat([l1, l2]), mask, torch.cat([p1, p2])


def _trim_left(cache, mask):
    """Drop leading cache columns that no remaining row attends to (left padding gone stale)."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return cache, mask
    for layer in _layers(cache):
        if isinstance(layer, GrowingLayer):
            layer.trim_left(first)
            continue
        if getattr(layer, "keys", None) is None:
            continue                                          # Mamba state has no columns
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]
    return cache, mask[:, first:]
