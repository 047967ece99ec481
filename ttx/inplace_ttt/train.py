"""Continued training of an In-Place TTT model on long documents, through the shared loop.

Data: JSONL records, each one document in `text` (or the fields of --text-field joined by a
newline), or several documents in `documents` (a list of strings), packed into one sequence with
the fast weights reset at every document boundary. --join-records N concatenates N consecutive
records into one long document (e.g. GSM8K problems into long "workbooks"). A document longer
than --max-length tokens is cut into windows; each window is a sequence and starts from W_0.
Defaults follow the paper's continual training: AdamW lr 5e-6, warmup 2%, cosine, wd 0.1, clip 1.
"""

from __future__ import annotations

import math
from pathlib import Path

from ttx.errors import TtxError
from ttx.options import resume_may_change


def load_documents(path, text_field: str = "text", join_records: int = 1,
                   limit: int | None = None) -> list[list[str]]:
    """Training items from JSONL: each a list of documents (fast weights reset between them)."""
    from ttx.io import iter_jsonl

    fields = [f.strip() for f in str(text_field).split(",") if f.strip()]
    items: list[list[str]] = []
    pending: list[str] = []
    for lineno, record in iter_jsonl(path):
        if limit is not None and len(items) >= limit:
            break
        if "documents" in record:
            docs = record["documents"]
            if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs) or not docs:
                raise TtxError("expected a non-empty list of strings", path=str(path),
                               line=lineno, field="documents")
            items.append(docs)
            continue
        parts = []
        for field in fields:
            value = record.get(field)
            if not isinstance(value, str):
                raise TtxError("missing or not a string" if value is None else "not a string",
                               path=str(path), line=lineno, field=field)
            parts.append(value)
        pending.append("\n".join(parts))
        if len(pending) == join_records:
            items.append(["\n\n".join(pending)])
            pending = []
    if pending and (limit is None or len(items) < limit):
        items.append(["\n\n".join(pending)])
    if not items:
        raise TtxError("no training documents", path=str(path))
    return items


def make_sequences(tokenizer, items: list[list[str]], max_length: int) -> list[tuple[list, list]]:
    """(token ids, document index per token) windows of at most max_length tokens."""
    sequences = []
    eos = tokenizer.eos_token_id
    for docs in items:
        ids, segs = [], []
        for j, doc in enumerate(docs):
            tokens = tokenizer(doc, add_special_tokens=False).input_ids
            if eos is not None and j < len(docs) - 1:
                tokens = tokens + [eos]
            ids += tokens
            segs += [j] * len(tokens)
        for start in range(0, len(ids), max_length):
            window, seg = ids[start:start + max_length], segs[start:start + max_length]
            if len(window) >= 2:
                sequences.append((window, [s - seg[0] for s in seg]))
    return sequences


def make_batches(sequences, batch_size: int, pad_id: int) -> list[dict]:
    """Right-padded micro-batches: input_ids, attention_mask, labels (-100 on padding), segments."""
    from ttx.train.pad import pad

    batches = []
    for start in range(0, len(sequences), batch_size):
        group = sequences[start:start + batch_size]
        input_ids, mask = pad([ids for ids, _ in group], pad_id)
        width = input_ids.shape[1]     # padding continues a row's last segment
        segments, _ = pad([[*segs, *[segs[-1]] * (width - len(segs))] for _, segs in group], 0)
        labels = input_ids.masked_fill(mask == 0, -100)
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        if bool(segments.any()):
            batch["ttt_segment_ids"] = segments
        batches.append(batch)
    return batches


def lm_loss(module, batch):
    """Next-token cross-entropy (transformers shifts the labels)."""
    device = next(module.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    converted = str(getattr(getattr(module, "config", None), "model_type", "")).startswith(
        "inplace_ttt_")
    if not converted:
        batch.pop("ttt_segment_ids", None)    # a plain model has no fast weights to reset
    return module(**batch).loss


def train_model(model, batches: list[dict], output_dir: Path, *, lr=5e-6, warmup_ratio=0.02,
                weight_decay=0.1, max_grad_norm=1.0, epochs=1, max_steps=None, grad_accum=1,
                save_every=0, resume=False, seed=0, trainable="all", progress=True,
                desc="inplace-ttt", fingerprint=None, stop_after=None, report_to="none"):
    """Train `model` (converted or plain: the bench trains both the same way) in place."""
    from ttx.train import TrainConfig, Trainer

    if trainable not in ("all", "ttt"):
        raise TtxError(f"--trainable {trainable!r}: expected all or ttt", field="trainable")
    for name, p in model.named_parameters():
        p.requires_grad_(trainable == "all" or ".mlp.ttt_" in name)
    cfg = TrainConfig(output_dir=Path(output_dir), lr=lr, weight_decay=weight_decay,
                      schedule="cosine", warmup_ratio=warmup_ratio, max_steps=max_steps,
                      epochs=epochs, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                      save_every=save_every, seed=seed, resume=resume, stop_after=stop_after, desc=desc,
                      progress=progress, fingerprint=fingerprint or {}, report_to=report_to)
    trainer = Trainer(model, cfg)
    result = trainer.fit(batches, lm_loss)
    model.eval().requires_grad_(False)
    return trainer, result


def train_converted(ttt_model, tokenizer, output: Path, cfg, source=None):
    """--train: documents -> sequences -> batches -> the shared loop. Returns (trainer, stats).
    A resume with options (or documents, or a source model) that differ is refused."""
    from dataclasses import asdict

    from ttx.records import stage_fingerprint

    items = load_documents(cfg.train, cfg.text_field, cfg.join_records, cfg.limit)
    sequences = make_sequences(tokenizer, items, cfg.max_length)
    if not sequences:
        raise TtxError("no training sequence has 2 tokens or more", path=str(cfg.train))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = make_batches(sequences, cfg.batch_size, pad or 0)
    sources = [cfg.train] + ([str(Path(source) / "config.json")] if source else [])
    fingerprint = stage_fingerprint(asdict(cfg), sources, volatile=resume_may_change(type(cfg)))
    trainer, result = train_model(
        ttt_model, batches, output, lr=cfg.lr, warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, epochs=cfg.epochs,
        max_steps=cfg.steps, grad_accum=cfg.grad_accum, save_every=cfg.save_every,
        resume=cfg.resume, seed=cfg.seed, trainable=cfg.trainable, progress=cfg.progress,
        fingerprint=fingerprint, stop_after=cfg.stop_after, report_to=cfg.report_to)
    tokens = sum(len(ids) for ids, _ in sequences)
    stats = {"documents": len(items), "sequences": len(sequences), "tokens": tokens,
             "steps": result.steps, "finished": result.finished,
             "first_loss": result.losses[0] if result.losses else None,
             "last_loss": result.losses[-1] if result.losses else None,
             "resumed_from": result.resumed_from, "wall_s": round(result.wall_s, 1)}
    return trainer, stats


def chunk_losses(model, sequences, chunk: int) -> list[list[tuple[float, int]]]:
    """Per sequence and chunk of `chunk` tokens: (summed next-token loss, tokens), parallel form."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for ids, _ in sequences:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
            # nll[t - 1] is the loss of token t, which belongs to chunk t // chunk
            owner = torch.arange(1, len(ids), device=device) // chunk
            sums = torch.zeros(int(owner[-1]) + 1, device=device).index_add_(0, owner, nll)
            counts = torch.bincount(owner)
            out.append([(float(a), int(b)) for a, b in zip(sums, counts)])
    return out


def later_chunk_perplexity(per_sequence, skip: int = 1) -> float:
    """exp(mean token loss over chunks >= skip): how well a model uses what it has read."""
    later = [pair for chunks in per_sequence for pair in chunks[skip:]]
    tokens = sum(n for _, n in later)
    return math.exp(sum(s for s, _ in later) / tokens) if tokens else float("nan")
