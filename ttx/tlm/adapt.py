"""`ttx tlm-adapt`: Test-Time Learning on unlabeled test inputs (Hu et al., ICML 2025).

offline: CE_ref from the frozen base (adapter disabled), one pass of weighted perplexity
         minimisation over every input, then (optionally) answer them all.
online:  the stream is cut into blocks; each block is first answered by the current model, then
         learned from, with CE_ref from the current model. A checkpoint after every block.
Only the LoRA (or QLoRA) weights train; answers are never read.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch

from ttx.errors import TtxError
from ttx.io import now_iso, plain_modes, write_jsonl, write_manifest
from ttx.models import render_prompt
from ttx.options import resume_may_change
from ttx.tlm.config import TLMConfig
from ttx.tlm.loss import measure_ce, sample_weight, sequence_ce, tlm_loss


def load_inputs(cfg: TLMConfig, path: str) -> list[dict]:
    """Records as tts-run reads them (same fields, same validation); answers are never read."""
    from ttx.records import read_problems

    return read_problems(path, question_field=cfg.question_field, id_field=cfg.id_field,
                         limit=cfg.limit)


def encode(tokenizer, cfg: TLMConfig, problems: list[dict]) -> list[list[int]]:
    """Each input templated exactly as tts-run prompts it (chat template, headers included)."""
    from ttx.prompts import build_prompt

    out = []
    for p in problems:
        prompt = build_prompt(p[cfg.question_field], instruction=cfg.instruction, system=cfg.system,
                              chat=cfg.chat)
        text = render_prompt(tokenizer, prompt)
        out.append(tokenizer(text, add_special_tokens=isinstance(prompt, str)).input_ids[:cfg.max_length])
    return out


def attach_lora(model, cfg: TLMConfig):
    from ttx.train.lora import attach_lora as lora

    return lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                targets=cfg.lora_targets, seed=cfg.seed)


def reference_ce(model, sequences: list[list[int]], pad_id: int) -> list[float]:
    """CE under the frozen base model: the adapter is disabled whatever its weights are."""
    with model.disable_adapter():
        return measure_ce(model, sequences, pad_id)


def run_tlm(cfg: TLMConfig) -> dict:

    from ttx.io import output_dir
    from ttx.records import refuse_overlap
    from ttx.train.dist import writer_lock

    if cfg.mode not in ("offline", "online"):
        raise TtxError(f"unknown mode {cfg.mode!r} (offline or online)", field="--mode")
    if cfg.mode == "online" and cfg.steps is not None:
        raise TtxError("applies to --mode offline: online learns each block once", field="--steps")
    started = now_iso()
    problems = load_inputs(cfg, cfg.input)              # bad input fails before the model loads
    evals = {path: load_inputs(cfg, path) for path in cfg.eval}
    if not problems:
        raise TtxError("no inputs", path=cfg.input)
    if cfg.generate:
        refuse_overlap(cfg.generate, [cfg.input, *cfg.eval], option="--generate")
    with writer_lock(cfg.output):                        # a second writer is refused
        out = output_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
        return _adapt(cfg, problems, evals, out, started)


def _adapt(cfg: TLMConfig, problems: list[dict], evals: dict, out, started: str) -> dict:
    from ttx.models import load_model
    from ttx.train import TrainConfig, Trainer

    base, tokenizer, folder = load_model(cfg.model, cfg.device, cfg.dtype, cfg.load_in_4bit)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = attach_lora(base, cfg)
    sequences = encode(tokenizer, cfg, problems)
    eval_seqs = {path: encode(tokenizer, cfg, recs) for path, recs in evals.items()}
    ce_base = reference_ce(model, sequences, pad_id)   # the frozen base: CE before adaptation
    eval_before = {p: reference_ce(model, s, pad_id) for p, s in eval_seqs.items()}

    online = cfg.mode == "online"
    from dataclasses import asdict

    from ttx.records import content_digest, stage_fingerprint

    fingerprint = stage_fingerprint(asdict(cfg), volatile=resume_may_change(TLMConfig))
    fingerprint["input"] = content_digest(problems)    # the inputs, whatever file held them
    trainer = Trainer(model, TrainConfig(fingerprint=fingerprint,
        output_dir=out, lr=cfg.lr, schedule="constant" if online else "cosine",
        warmup_ratio=0.0 if online else cfg.warmup_ratio, epochs=cfg.epochs, max_steps=cfg.steps,
        grad_accum=cfg.grad_accum, max_grad_norm=None, save_every=0 if online else cfg.save_every,
        seed=cfg.seed, resume=cfg.resume, stop_after=None if online else cfg.stop_after,
        desc=f"tlm-adapt {cfg.mode}", progress=cfg.progress, report_to=cfg.report_to))
    t0 = time.perf_counter()
    seen = len(problems) * (cfg.epochs if not online else 1)
    if online:
        ce_ref, answered = _online(cfg, trainer, model, tokenizer, problems, sequences, pad_id)
        if ce_ref is None:
            return {"stopped_at_step": trainer.step_count, "output": str(out)}
    else:
        ce_ref = ce_base
        batches = [list(range(i, min(i + cfg.batch_size, len(sequences))))
                   for i in range(0, len(sequences), cfg.batch_size)]
        if not trainer.fit(batches, _loss_fn(cfg, sequences, ce_ref, pad_id)).finished:
            return {"stopped_at_step": trainer.step_count, "output": str(out)}
        if cfg.steps is not None:                      # the inputs the capped steps took
            seen = sum(len(batches[i]) for i in trainer.order_run(len(batches), trainer.step_count))
        answered = 0
    train_s = time.perf_counter() - t0
    result = trainer.result

    backward, skipped = trainer.accelerator.reduce(
        torch.tensor([result.backward, result.skipped]), "sum").tolist()    # over all processes
    if not trainer.is_main:
        trainer.accelerator.wait_for_everyone()
        return {}
    ce_after = measure_ce(model, sequences, pad_id)
    eval_after = {p: measure_ce(model, s, pad_id) for p, s in eval_seqs.items()}
    trainer.unwrapped.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    plain_modes(out)
    from ttx.models import write_base

    write_base(out, cfg.model, folder)                 # tts-run --adapter checks the base
    weights = sample_weight(torch.tensor(ce_ref), cfg.threshold, cfg.lam).tolist()
    samples = [{"id": p["id"], "ce_base": round(b, 5), "ce_ref": round(r, 5),
                "selected": r > cfg.threshold, "weight": round(w, 6), "ce_after": round(a, 5),
                "tokens": len(s)}
               for p, b, r, w, a, s in zip(problems, ce_base, ce_ref, weights, ce_after, sequences)]
    write_jsonl(out / "samples.jsonl", samples)
    if not online and cfg.generate:
        answered = _answer(cfg, model, tokenizer, problems, resume=cfg.resume)
    selected = sum(s["selected"] for s in samples)
    summary = {
        "seen": seen, "selected": selected,
        "backward_passes": backward, "skipped_backward": skipped,
        "skipped_fraction": round(skipped / max(1, backward + skipped), 4),
        "updates": result.updates,
        "mean_log_ppl_before": _mean(ce_base), "mean_log_ppl_after": _mean(ce_after),
        "eval": {p: {"mean_log_ppl_before": _mean(eval_before[p]),
                     "mean_log_ppl_after": _mean(eval_after[p]), "inputs": len(eval_before[p])}
                 for p in eval_seqs},
        "train_s": round(train_s, 2), "s_per_sample": round(train_s / len(samples), 4),
        "answered": answered, "peak_rss_mb": _peak_rss_mb(),
    }
    options = {**asdict(cfg), "base_model_folder": str(folder)}
    write_manifest(out, stage="tlm-adapt", options=options,
                   inputs=[cfg.input, *cfg.eval], started=started, summary=summary)
    trainer.remove_checkpoints()
    trainer.accelerator.wait_for_everyone()
    return summary


def _loss_fn(cfg: TLMConfig, sequences, ce_ref, pad_id):
    def loss_fn(module, batch: list[int]):
        refs = torch.tensor([ce_ref[i] for i in batch])
        if not bool((refs > cfg.threshold).any()):
            return None                                 # nothing selected: no forward, no update
        ce = sequence_ce(module, [sequences[i] for i in batch], pad_id)
        return tlm_loss(ce, refs.to(ce.device), cfg.threshold, cfg.lam), {"ce": float(ce.detach().mean())}
    return loss_fn


def _online(cfg, trainer, model, tokenizer, problems, sequences, pad_id) -> tuple[list[float], int]:
    """Answer each block with the current model, then learn from it; checkpoint per block."""
    ce_ref: list[float] = [math.nan] * len(problems)
    start = 0
    extras = trainer.resume() if cfg.resume else None
    if extras:                                          # blocks already learned from
        start = extras["block"]
        ce_ref[:len(extras["ce_ref"])] = extras["ce_ref"]
    answered = 0
    blocks = range(0, len(problems), cfg.stream_block)
    for b, lo in enumerate(blocks):
        if b < start:
            continue
        idx = list(range(lo, min(lo + cfg.stream_block, len(problems))))
        if cfg.generate and trainer.is_main:
            answered += _answer(cfg, model, tokenizer, [problems[i] for i in idx], resume=True)
        refs = measure_ce(model, [sequences[i] for i in idx], pad_id)   # CE_ref: current model
        for i, r in zip(idx, refs):
            ce_ref[i] = r
        loss_fn = _loss_fn(cfg, sequences, ce_ref, pad_id)
        for k in range(0, len(idx), cfg.batch_size):
            trainer.step(idx[k:k + cfg.batch_size], loss_fn)
        trainer.flush()
        trainer.save(extras={"block": b + 1, "ce_ref": ce_ref[:idx[-1] + 1]})
        if cfg.stop_after is not None and b + 1 - start >= cfg.stop_after and idx[-1] + 1 < len(problems):
            return None, answered
    return ce_ref, answered


def _answer(cfg: TLMConfig, model, tokenizer, problems: list[dict], resume: bool) -> int:
    """Greedy answers through tts-run's loop with the adapted model (records as tts-run writes)."""
    from ttx.engines import engine_over
    from ttx.engines.base import SamplingParams
    from ttx.tts.run import RunConfig, run_tts
    from ttx.tts.strategy import StrategyConfig

    model.eval()
    engine = engine_over(model, tokenizer, name=f"{cfg.model}+tlm:{cfg.output}")
    run = RunConfig(input=cfg.input, output=cfg.generate, question_field=cfg.question_field,
                    id_field=cfg.id_field, instruction=cfg.instruction, system=cfg.system,
                    chat=cfg.chat, resume=resume or cfg.resume, progress=cfg.progress,
                    strategy=StrategyConfig(strategy="greedy", n=1, params=SamplingParams(
                        max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)))
    return run_tts(engine, run, problems=problems, options={"tlm-adapt": asdict(cfg)})["written"]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
