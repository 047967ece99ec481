"""`ttx sft`: supervised fine-tuning on the shared Trainer, loss on the response tokens only.

    pairs (-i prompt/response JSONL, or --from scored records [--only-correct])
    -> tokens as tts-run prompts them -> LoRA / QLoRA / full weights
    -> Trainer (ttx/train/loop.py) with CE or DCO (ttx/sft/loss.py)
    -> the PEFT adapter (tts-run --adapter) or a full model folder, train_log.jsonl, ttx_manifest.json
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ttx.errors import TtxError
from ttx.options import resume_may_change
from ttx.sft.config import SFTConfig

# what marks a folder as sft's own (--overwrite deletes only such a folder)
OWN_FILES = ("ttx_manifest.json", "train_log.jsonl", "checkpoints", "adapter_config.json")


def check(cfg: SFTConfig) -> None:
    """Options that cannot go together, refused before anything is read."""
    given = cfg.cli or {}
    if (cfg.input is None) == (cfg.from_records is None):
        raise TtxError("give the training pairs with -i (prompt, response JSONL) or --from "
                       "(tts-run records), one of them", field="--input")
    if cfg.only_correct and cfg.from_records is None:
        raise TtxError("applies to --from records (their traces are judged against gold)",
                       field="--only-correct")
    if cfg.loss not in ("ce", "dco"):
        raise TtxError(f"must be ce or dco, got {cfg.loss!r}", field="--loss")
    if cfg.loss != "dco" and given.get("dco_n"):
        raise TtxError("applies to --loss dco", field="--dco-n")
    if cfg.dco_n < 1:
        raise TtxError(f"must be at least 1, got {cfg.dco_n}", field="--dco-n")
    if cfg.load_in_4bit and cfg.lora_r == 0:
        raise TtxError("QLoRA trains a LoRA over the 4-bit weights: give --lora-r above 0",
                       field="--load-in-4bit")
    if cfg.resume and cfg.overwrite:
        raise TtxError("--resume continues the run in the output folder, --overwrite replaces "
                       "it: give one", field="--overwrite")


def run_sft(cfg: SFTConfig) -> dict:
    from ttx.models import resolve_model
    from ttx.records import refuse_overlap
    from ttx.sft.data import read_pairs

    check(cfg)
    source = cfg.input if cfg.input is not None else cfg.from_records
    refuse_overlap(cfg.output, [source])
    pairs, counts = read_pairs(cfg)                 # bad input fails before any model loads
    base = resolve_model(cfg.model)
    from ttx.train.dist import writer_lock

    with writer_lock(cfg.output):                   # a second writer is refused
        return _train(cfg, pairs, counts, base)


def fingerprint(cfg: SFTConfig, base: Path, pairs: list) -> dict:
    """What decides the weights: the options, the base model's content and the pairs' content
    (whatever file held them); a --resume with any of them changed is refused, naming it."""
    from ttx.models import model_key
    from ttx.records import content_digest, stage_fingerprint

    fp = stage_fingerprint(asdict(cfg), volatile=resume_may_change(SFTConfig))
    fp["model"] = model_key(base)
    fp["input"] = content_digest([asdict(p) for p in pairs])
    fp["source"] = "-i" if cfg.input is not None else "--from"
    return fp


def _previous(cfg: SFTConfig, fp: dict) -> dict | None:
    """The manifest of the run --resume continues (ttx.records.resumed_manifest)."""
    from ttx.records import resumed_manifest

    return resumed_manifest(cfg.output, fp, resume=cfg.resume, made="the run here was trained",
                            hint="--overwrite starts a new one")


class Prepared:
    """The model, its tokenizer, the Trainer, the micro-batches and the loss function: what the
    stage runs, and what bench/sft.py drives epoch by epoch."""

    def __init__(self, cfg: SFTConfig, pairs: list, base: Path, out: Path, fp: dict):
        from ttx.models import load_model
        from ttx.sft.data import encode_pairs
        from ttx.train import TrainConfig, Trainer

        model, self.tokenizer, self.folder = load_model(str(base), cfg.device, cfg.dtype,
                                                        cfg.load_in_4bit)
        self.pad_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id)
        self.rows, self.kept = encode_pairs(self.tokenizer, cfg, pairs)
        if not self.rows:
            raise TtxError(f"no pair fits: every one is longer than --max-length {cfg.max_length}",
                           field="--max-length")
        if cfg.lora_r > 0:
            from ttx.train.lora import attach_lora

            model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                targets=cfg.lora_targets, seed=cfg.seed)
        self.model = model
        self.batches = [list(range(i, min(i + cfg.batch_size, len(self.rows))))
                        for i in range(0, len(self.rows), cfg.batch_size)]
        self.trainer = Trainer(model, TrainConfig(
            fingerprint=fp, output_dir=out, lr=cfg.lr, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio, epochs=cfg.epochs,
            max_steps=cfg.steps, grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm,
            save_every=cfg.save_every, seed=cfg.seed, shuffle=True,
            mixed_precision=cfg.mixed_precision, resume=cfg.resume, stop_after=cfg.stop_after,
            desc=f"sft {cfg.loss}", progress=cfg.progress, report_to=cfg.report_to))
        self.loss_fn = make_loss_fn(self.rows, self.pad_id, cfg.loss, cfg.dco_n)


def make_loss_fn(rows: list[tuple[list[int], int]], pad_id: int, loss: str, n: int):
    """The Trainer's loss_fn: mean over the micro-batch's pairs of the per-pair loss, with the
    mean p, F and response tokens for train_log.jsonl."""
    import torch

    from ttx.sft.loss import response_logprobs, sequence_loss

    def loss_fn(module, batch: list[int]):
        logp, tokens = response_logprobs(module, [rows[i][0] for i in batch],
                                         [rows[i][1] for i in batch], pad_id)
        per, factor = sequence_loss(logp, loss, n)
        p = torch.exp(logp.detach())
        return per.mean(), {"p_mean": float(p.mean()), "factor_mean": float(factor.mean()),
                            "ce": float(-logp.detach().mean()),
                            "response_tokens": float(tokens.sum())}
    return loss_fn


def _train(cfg: SFTConfig, pairs: list, counts: dict, base: Path) -> dict:
    from ttx.io import now_iso, output_dir, plain_modes, write_manifest

    started = now_iso()
    out = output_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite, own=OWN_FILES,
                     stage="sft")
    fp = fingerprint(cfg, base, pairs)
    previous = _previous(cfg, fp)
    if previous is not None and previous.get("status") == "finished":
        return {**previous.get("summary", {}), "already_trained": True}
    inputs = [cfg.input if cfg.input is not None else cfg.from_records]
    out.mkdir(parents=True, exist_ok=True)
    if previous is None:             # the run's fingerprint, for a later --resume to check
        write_manifest(out, stage="sft", options=_options(cfg, base), inputs=inputs,
                       started=started, extra={"fingerprint": fp, "status": "running"})
    else:
        started = previous.get("started", started)
        from ttx.train.checkpoint import checkpoint_dirs

        if not checkpoint_dirs(out):                # stopped before its first checkpoint:
            (out / "train_log.jsonl").unlink(missing_ok=True)   # it starts over, log included
    prep = Prepared(cfg, pairs, base, out, fp)
    trainer = prep.trainer
    t0 = time.perf_counter()
    result = trainer.fit(prep.batches, prep.loss_fn)
    if not result.finished:
        return {"stopped_at_step": trainer.step_count, "output": str(out)}
    train_s = time.perf_counter() - t0
    if not trainer.is_main:
        trainer.accelerator.wait_for_everyone()
        return {}
    model = trainer.unwrapped
    model.save_pretrained(str(out), safe_serialization=True)
    prep.tokenizer.save_pretrained(str(out))
    if cfg.lora_r > 0:
        from ttx.models import write_base

        write_base(out, cfg.model, prep.folder)      # tts-run --adapter checks the base
    plain_modes(out)
    summary = {
        **counts, "trained_pairs": len(prep.rows), "left_out_long": len(pairs) - len(prep.rows),
        "loss": cfg.loss, "dco_n": cfg.dco_n if cfg.loss == "dco" else None,
        "weights": "lora" if cfg.lora_r > 0 else "full",
        "steps": result.steps, "updates": result.updates,
        "train_loss_first": _r(result.losses[0]) if result.losses else None,
        "train_loss_last": _r(result.losses[-1]) if result.losses else None,
        "train_s": round(train_s, 2),
    }
    write_manifest(out, stage="sft", options=_options(cfg, base), inputs=inputs, started=started,
                   summary=summary, extra={"fingerprint": fp, "status": "finished"})
    trainer.remove_checkpoints()
    trainer.accelerator.wait_for_everyone()
    return summary


def _options(cfg: SFTConfig, base: Path) -> dict:
    return {**asdict(cfg), "base_model_folder": str(base)}


def _r(x):
    return None if x is None else round(x, 5)
