"""`ttx distill-to-mamba`: load the teacher, convert it, align, distill, evaluate, save, manifest.

Layout of the output folder: the Bamba checkpoint (config.json, model.safetensors, tokenizer,
generation config), ttx_manifest.json, and train/ (per-stage logs; checkpoints while training,
removed once the model is saved; teacher_data.jsonl with --teacher-generate).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import now_iso, plain_modes, read_jsonl, write_manifest
from ttx.mamba.config import DistillConfig
from ttx.options import resume_may_change
from ttx.records import stage_fingerprint


def _log(msg: str) -> None:
    print(f"distill-to-mamba: {msg}", file=sys.stderr, flush=True)


def _split_eval(examples: list, eval_records: int) -> tuple[list, list]:
    """Hold out the last records (never trained on) for the held-out KL and perplexity."""
    n = min(eval_records, len(examples) // 2)
    return (examples[:-n], examples[-n:]) if n else (examples, [])


def _save_checkpoint(model, tokenizer, output: Path) -> None:
    """Write the checkpoint to a temporary folder, then move each file into place."""
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=output))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        plain_modes(tmp)
        for f in sorted(tmp.iterdir()):
            os.replace(f, output / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_distill_to_mamba(cfg: DistillConfig) -> dict:
    """The stage: read the data, convert, stage 1 (align), stage 2 (distill), save, manifest.
    A resume with options or inputs that differ from the interrupted run's is refused."""
    from ttx.mamba import data as D
    from ttx.mamba.convert import choose_attn_layers, convert
    from ttx.mamba.distill import evaluate, run_align, run_distill
    from ttx.models import load_model
    from ttx.train import TrainConfig
    from ttx.train.dist import state as process_state

    started = now_iso()
    from ttx.io import output_dir

    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise TtxError("expected a folder for the checkpoint, found a file", path=str(output))
    if not cfg.resume:                      # a finished or foreign folder is never replaced
        output_dir(output, overwrite=cfg.overwrite)
    train_steps = cfg.steps                 # None: --epochs over the data; 0: convert only
    training = (train_steps is None or train_steps > 0) or cfg.align_steps > 0
    if training and not cfg.input:
        raise TtxError("training needs -i/--input (or --steps 0 --align-steps 0 to only convert)")
    if cfg.teacher_generate and not cfg.input:
        raise TtxError("--teacher-generate needs -i/--input prompts")
    state = process_state()
    device = state.device if cfg.device == "auto" else cfg.device
    # training keeps float32 master weights; use --mixed-precision bf16 on GPUs
    dtype = "float32" if cfg.dtype == "auto" else cfg.dtype

    # read every input before the slow work, so a bad line fails in seconds
    examples = eval_examples = []
    if cfg.input:
        examples = D.read_examples(cfg.input, need_target=not cfg.teacher_generate)
    if cfg.eval_input:
        eval_examples = D.read_examples(cfg.eval_input, need_target=not cfg.teacher_generate)
    else:
        examples, eval_examples = _split_eval(examples, cfg.eval_records)

    teacher, tokenizer, folder = load_model(cfg.model, str(device), dtype)
    for p in teacher.parameters():
        p.requires_grad_(False)
    layers = teacher.config.num_hidden_layers
    attn_layers = choose_attn_layers(layers, cfg.attn_layers, cfg.attn_every, cfg.attn_fraction)
    student, report = convert(teacher, attn_layers, cfg.conv_init, cfg.seed)
    student.to(teacher.device)
    _log(f"{len(attn_layers)}/{layers} layers stay attention {attn_layers}; "
         f"{len(report['mamba_layers'])} Mamba-2 layers, conv init {cfg.conv_init}")

    work = output / "train"
    if not cfg.resume and work.exists() and state.is_main_process:
        shutil.rmtree(work)
    state.wait_for_everyone()
    if cfg.teacher_generate:
        data_path = work / "teacher_data.jsonl"
        if state.is_main_process:
            work.mkdir(parents=True, exist_ok=True)
            generated = D.teacher_completions(
                examples + eval_examples, teacher, tokenizer, data_path,
                max_new_tokens=cfg.gen_max_new_tokens, temperature=cfg.gen_temperature,
                seed=cfg.seed, batch=cfg.batch_size * 4, progress=cfg.progress)
        state.wait_for_everyone()
        if not state.is_main_process:      # the other ranks read what rank 0 wrote
            done = {r["index"]: r["completion"] for r in read_jsonl(data_path)}
            generated = [D.Example(e.prompt, done[i], e.line)
                         for i, e in enumerate(examples + eval_examples)]
        examples, eval_examples = generated[:len(examples)], generated[len(examples):]

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    def batches_of(items):
        seqs = [s for s in (D.tokenize(e, tokenizer, cfg.max_length) for e in items) if s]
        return D.make_batches(seqs, cfg.batch_size, pad)
    train_batches, eval_batches = batches_of(examples), batches_of(eval_examples)
    if training and not train_batches:
        raise TtxError("no training tokens: every record is empty after tokenization",
                       path=cfg.input)

    cached: list = []                     # the teacher's held-out logits, computed once
    metrics = {"converted": evaluate(student, teacher, eval_batches, teacher.device, cached)}
    if metrics["converted"]:
        _log(f"after conversion: {_fmt(metrics['converted'])}")
    common = dict(schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed,
                  resume=cfg.resume, mixed_precision=cfg.mixed_precision,
                  save_every=cfg.save_every, grad_accum=cfg.grad_accum,
                  max_grad_norm=cfg.max_grad_norm, progress=cfg.progress, report_to=cfg.report_to,
                  fingerprint=stage_fingerprint(
                      asdict(cfg), [p for p in (cfg.input, cfg.eval_input) if p],
                      volatile=resume_may_change(DistillConfig)))
    align_result = distill_result = None
    trainer = None
    budget = cfg.stop_after                 # steps this run may take, both stages together
    if cfg.align_steps > 0 and report["mamba_layers"]:
        tc = TrainConfig(output_dir=work / "align", lr=cfg.align_lr, weight_decay=0.0,
                         max_steps=cfg.align_steps, desc="align", stop_after=budget, **common)
        align_result, _ = run_align(student, teacher, train_batches, tc,
                                                report["mamba_layers"])
        if not align_result.finished:
            return _stopped("align", align_result, output)
        budget = _left(budget, align_result)
        metrics["aligned"] = evaluate(student, teacher, eval_batches, teacher.device, cached)
        _log(f"after stage 1 ({align_result.steps} steps): {_fmt(metrics['aligned'])}")
    if train_steps is None or train_steps > 0:
        if budget == 0:                     # stage 1 took them all: stage 2 starts on --resume
            return _stopped("align", align_result, output)
        tc = TrainConfig(output_dir=work / "distill", lr=cfg.lr, weight_decay=cfg.weight_decay,
                         max_steps=train_steps, epochs=cfg.epochs, desc="distill",
                         stop_after=budget, **common)
        distill_result, trainer = run_distill(
            student, teacher, train_batches, tc, kind=cfg.kl, kl_weight=cfg.kl_weight,
            temperature=cfg.temperature, freeze_mlp=cfg.freeze_mlp)
        if not distill_result.finished:
            return _stopped("distill", distill_result, output)
        student = trainer.unwrapped
        metrics["distilled"] = evaluate(student, teacher, eval_batches, teacher.device, cached)
        _log(f"after stage 2 ({distill_result.steps} steps): {_fmt(metrics['distilled'])}")

    final = metrics.get("distilled") or metrics.get("aligned") or metrics["converted"]
    summary = {**report, "num_layers": layers, "teacher": str(folder),
               "init": {"x_B_C_out": "V, K, Q (expanded per query head), o_proj",
                        "A_log": "log U(1,16)", "D": 1.0,
                        "dt_bias": "softplus^-1(exp U(log 1e-3, log 1e-1)), dt >= 1e-4",
                        "conv": cfg.conv_init, "z_and_norm": "default"},
               "align_steps": align_result.steps if align_result else 0,
               "align_loss_last": _last(align_result),
               "distill_steps": distill_result.steps if distill_result else 0,
               "distill_loss_last": _last(distill_result),
               "kl": cfg.kl, "train_sequences": sum(len(b["input_ids"]) for b in train_batches),
               "eval_sequences": sum(len(b["input_ids"]) for b in eval_batches),
               "metrics": metrics, "final": final}
    if state.is_main_process:
        student.eval()
        _save_checkpoint(student, tokenizer, output)
        if trainer is not None:
            trainer.remove_checkpoints()
        shutil.rmtree(work / "align" / "checkpoints", ignore_errors=True)
        inputs = [p for p in (cfg.input, cfg.eval_input) if p]
        write_manifest(output, stage="distill-to-mamba", options=asdict(cfg),
                       inputs=inputs + [str(Path(folder) / "config.json")], started=started,
                       summary=summary)
    state.wait_for_everyone()
    return summary


def _left(budget: int | None, result) -> int | None:
    """--stop-after's steps left after a stage took its own in this run."""
    return None if budget is None else budget - (result.steps - (result.resumed_from or 0))


def _stopped(stage: str, result, output: Path) -> dict:
    """--stop-after ended the run in `stage`, checkpointed under OUTPUT/train: --resume goes on."""
    return {"stopped_in": stage, "stopped_at_step": result.steps, "output": str(output)}


def _last(result):
    return result.losses[-1] if result is not None and result.losses else None


def _fmt(m: dict) -> str:
    return (f"KL(s||t) {m['kl_reverse']:.4f}, KL(t||s) {m['kl_forward']:.4f}, "
            f"ppl student {m['ppl_student']:.3f} vs teacher {m['ppl_teacher']:.3f} "
            f"({m['tokens']} tokens)")
