"""`ttx perk-metatrain`: learn the LoRA initialisation, the inner step sizes and the token-weighting
head so that a few inner steps on a context memorise it (Chen et al. 2025, §3, eq. 3):

    min_{phi_0, alpha, head}  E_(context, question, answer) [ CE(answer | question; phi_N) ],
    phi_N = InnerLoop(phi_0, context; alpha, head)        (ttx.perk.inner)

The outer loop is ttx's one training loop (ttx.train.Trainer): one record per micro-batch (the
paper's batch 1), AdamW, warmup + cosine, clipping, checkpoints and exact resume. The outer
loss_fn runs the inner loop functionally and returns the answer cross-entropy; time and memory of
every outer step go into output/train_log.jsonl.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import now_iso, write_manifest
from ttx.options import resume_may_change
from ttx.perk.config import MetaTrainConfig, PerkConfig

STAGE = "perk-metatrain"


@dataclass
class Example:
    """One tokenized record: its context segments and its answer-only target."""

    id: str
    segments: object                   # ttx.perk.segments.Segments
    input_ids: object
    labels: object


def read_records(path: str, fields: tuple[str, ...], limit: int | None = None,
                 id_field: str = "id", unique: bool = False) -> list[dict]:
    """Records with string context, question and answer (a number is taken as its text), each
    with its id (the line number when it has none); through the record layer's checks."""
    from ttx.records import read_records as read

    rows = read(path, required=fields, strings=fields, id_field=id_field, limit=limit,
                unique=unique, numbers_as_text=True)
    for row in rows:
        row.data.setdefault(id_field, row.line)
    return [row.data for row in rows]


def _fingerprint(cfg) -> dict:
    from dataclasses import asdict

    from ttx.records import stage_fingerprint

    flat = {**{k: v for k, v in asdict(cfg).items() if k != "perk"}, **asdict(cfg.perk)}
    return stage_fingerprint(flat, [cfg.input], volatile=resume_may_change(MetaTrainConfig, PerkConfig))


def tokenize(records: list[dict], tokenizer, cfg: MetaTrainConfig) -> list[Example]:
    from ttx.perk.segments import answer_example, context_segments

    out = []
    for r in records:
        segments = context_segments(tokenizer, r[cfg.context_field], cfg.perk.segment_tokens)
        ids, labels = answer_example(tokenizer, r[cfg.question_field], r[cfg.answer_field],
                                     segments.count)
        out.append(Example(str(r.get("id")), segments, ids, labels))
    return out


def peak_memory_mb(device) -> float:
    """Peak memory so far: CUDA allocations on a GPU, the process's peak RSS on CPU."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_outer_loss(unroll: int, grad_accum: int):
    """loss_fn(module, example) for Trainer.fit: inner loop, then the answer cross-entropy."""
    import torch

    from ttx.perk.inner import adapt, answer_loss

    def outer_loss(module, example: Example):
        perk = getattr(module, "module", module)          # unwrap DDP
        device = perk.inner_lrs.device
        start = time.perf_counter()
        wall = time.time()
        params, history = adapt(perk, example.segments.to(device), unroll=unroll,
                                grad_accum=grad_accum)
        loss = answer_loss(perk, params, example.input_ids.to(device), example.labels.to(device))
        if not torch.isfinite(loss):
            return None
        return loss, {"inner_loss_first": history[0], "inner_loss_last": history[-1],
                      "forward_s": round(time.perf_counter() - start, 3),
                      "started_at": round(wall, 3),
                      "peak_memory_mb": round(peak_memory_mb(device), 1),
                      "mean_inner_lr": float(perk.inner_lrs.detach().mean())}

    return outer_loss


def metatrain(cfg: MetaTrainConfig, options: dict | None = None) -> dict:
    """Meta-train a PERK folder at cfg.output (`options`: what the user gave, for the manifest);
    returns the manifest summary."""
    import torch

    from ttx.models import load_model
    from ttx.perk import module as pm
    from ttx.train import TrainConfig, Trainer

    started = now_iso()
    p = cfg.perk
    if not 0 <= p.unroll <= p.inner_steps:
        raise TtxError(f"--unroll {p.unroll} must be between 0 and --inner-steps {p.inner_steps}")
    fields = (cfg.context_field, cfg.question_field, cfg.answer_field)
    records = read_records(cfg.input, fields, cfg.limit)     # bad input fails before loading
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise TtxError("exists and is not a folder", path=str(out))
    finished = _finished_summary(out) if cfg.resume else None
    if finished is not None:
        print(f"{STAGE}: {out} is already meta-trained; nothing to resume", file=sys.stderr)
        return finished
    from ttx.io import output_dir

    output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
    torch.manual_seed(cfg.seed)
    base, tokenizer, folder = load_model(p.model, cfg.device, cfg.dtype)
    module = pm.build(base, p)
    examples = tokenize(records, tokenizer, cfg)
    train_cfg = TrainConfig(output_dir=out, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio,
                            max_steps=cfg.steps, epochs=cfg.epochs, grad_accum=cfg.grad_accum,
                            max_grad_norm=cfg.max_grad_norm, save_every=cfg.save_every,
                            keep_checkpoints=1, seed=cfg.seed, resume=cfg.resume,
                            stop_after=cfg.stop_after, desc=STAGE, progress=cfg.progress,
                            report_to=cfg.report_to, fingerprint=_fingerprint(cfg))
    trainer = Trainer(module, train_cfg)
    result = trainer.fit(examples, make_outer_loss(p.unroll, cfg.inner_grad_accum))
    summary = {"records": len(records), "outer_steps": result.steps, "updates": result.updates,
               "skipped": result.skipped, "finished": result.finished,
               "resumed_from": result.resumed_from,
               "first_loss": result.losses[0] if result.losses else None,
               "last_loss": result.losses[-1] if result.losses else None,
               "mean_loss_last_10": (sum(result.losses[-10:]) / len(result.losses[-10:])
                                     if result.losses else None),
               "wall_s": round(result.wall_s, 2), **_step_costs(out / "train_log.jsonl"),
               "inner_lrs_mean_by_step": [round(float(x), 8) for x in
                                          trainer.unwrapped.inner_lrs.detach().mean(1)]}
    if trainer.is_main:
        pm.save(trainer.unwrapped, out, folder)
        write_manifest(out, stage=STAGE,
                       options={"cli": options or {}, "run": _jsonable(asdict(cfg)),
                                "model_folder": str(folder)},
                       inputs=[cfg.input], started=started, summary=summary)
        if result.finished:
            trainer.remove_checkpoints()
    print(f"{STAGE}: {result.steps} outer steps, last loss {summary['last_loss']}", file=sys.stderr)
    return summary


def _finished_summary(out: Path) -> dict | None:
    """The summary of a finished run in `out` (its manifest says so), else None."""
    import json

    from ttx.io import manifest_path

    path = manifest_path(out) if out.is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text()).get("summary") or {}
    except json.JSONDecodeError:
        return None
    return summary if summary.get("finished") else None


def _step_costs(log: Path) -> dict:
    """Mean seconds per outer step and peak memory, from the per-step log."""
    import json

    if not log.exists():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = [r["started_at"] for r in rows if r.get("started_at") is not None]
    gaps = [b - a for a, b in zip(times, times[1:]) if 0 < b - a < 86400]
    peaks = [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb") is not None]
    return {"mean_outer_step_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "peak_memory_mb": max(peaks) if peaks else None}


def _jsonable(d: dict) -> dict:
    return {k: (_jsonable(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v)
            for k, v in d.items()}
