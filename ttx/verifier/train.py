"""`ttx verifier-train`: an outcome (ORM) or process (PRM) reward model from scored traces.

    traces (ttx score --per-record) -> labels -> held-out split by problem -> shared Trainer
    -> held-out AUC / accuracy / best-of-n, before and after -> a plain Hugging Face folder
       (LoRA merged) + ttx_reward.json (how tts-run reads it) + ttx_manifest.json

ORM: ttx.verifier.orm (a sequence-classification head, one sigmoid label). PRM: ttx.verifier.prm
(Math-Shepherd's step tag and good/bad tokens), labels from ttx.verifier.labels (`outcome`, or
`rollout`: Math-Shepherd's completions from each step prefix, hard or soft).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from ttx.errors import TtxError
from ttx.options import resume_may_change
from ttx.verifier.config import VerifierConfig
from ttx.verifier.heads import HeadConfig

KINDS = ("orm", "prm")
# what marks a folder as verifier-train's own (--overwrite deletes only such a folder)
OWN_FILES = ("ttx_manifest.json", "ttx_reward.json", "train_log.jsonl", "checkpoints",
             "rollouts.jsonl")
PRM_LABELS = ("outcome", "rollout")



def check(cfg: VerifierConfig) -> None:
    if cfg.kind not in KINDS:
        raise TtxError(f"must be orm or prm, got {cfg.kind!r}", field="--kind")
    if cfg.prm_labels not in PRM_LABELS:
        raise TtxError(f"must be outcome or rollout, got {cfg.prm_labels!r}", field="--prm-labels")
    if cfg.label_type not in ("hard", "soft"):
        raise TtxError(f"must be hard or soft, got {cfg.label_type!r}", field="--label-type")
    if cfg.kind == "orm" and (cfg.cli or {}).get("prm_labels"):
        raise TtxError("--prm-labels applies to --kind prm", field="--prm-labels")
    rollout_only = [k for k in ("label_type", "rollouts", "rollout_model") if (cfg.cli or {}).get(k)]
    if rollout_only and not (cfg.kind == "prm" and cfg.prm_labels == "rollout"):
        raise TtxError(f"--{rollout_only[0].replace('_', '-')} applies to --kind prm "
                       "--prm-labels rollout")
    if cfg.resume and cfg.overwrite:
        raise TtxError("--resume continues the run in the output folder, --overwrite replaces "
                       "it: give one", field="--overwrite")
    if not 0 <= cfg.eval_fraction < 1:
        raise TtxError(f"must be in [0, 1), got {cfg.eval_fraction}", field="--eval-fraction")


def prepare_output(cfg: VerifierConfig) -> bool:
    """The output folder by ttx.io.output_dir's rule; True when it already holds a finished
    verifier and --resume asked to continue (nothing left to do)."""
    from ttx.io import output_dir
    from ttx.reward_inputs import READING_FILE

    out = output_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite, own=OWN_FILES,
                     stage="verifier-train")
    return cfg.resume and (out / READING_FILE).is_file() and (out / "ttx_manifest.json").is_file()




def run_verifier_train(cfg: VerifierConfig) -> dict:
    from ttx.models import resolve_model
    from ttx.train.dist import writer_lock
    from ttx.verifier.data import ReadConfig, read_examples

    check(cfg)
    read = ReadConfig(cfg.question_field, cfg.answer_field, cfg.id_field)
    examples = read_examples(cfg.input, read)            # bad input fails before any model loads
    held = read_examples(cfg.eval, read) if cfg.eval else None
    if not examples:
        raise TtxError("no traces to learn from", path=cfg.input)
    if held is not None:
        check_eval(cfg, examples, held)
    base = resolve_model(cfg.model)
    with writer_lock(cfg.output):                        # a second writer is refused
        return _train(cfg, examples, held, base)


def check_eval(cfg: VerifierConfig, examples: list, held: list) -> None:
    """--eval must not be the training data: held-out scores would measure memory, not skill."""
    from ttx.records import same_file

    if cfg.eval == cfg.input == "-":
        raise TtxError("-i and --eval both read stdin", field="--eval")
    seen = {(e.question, e.text) for e in examples}
    if same_file(cfg.eval, cfg.input) or (held and all((e.question, e.text) in seen for e in held)):
        raise TtxError(f"is the training input {cfg.input} (or holds only its traces): held-out "
                       "scores on training traces overstate the verifier; give other records, or "
                       "leave --eval out to hold out --eval-fraction of the problems",
                       path=cfg.eval, field="--eval")
    questions = {e.question for e in examples}
    shared = len({e.question for e in held if e.question in questions})
    if shared:
        print(f"verifier-train: {shared} of the {len({e.question for e in held})} --eval "
              "questions are training questions too: their held-out scores may be optimistic",
              file=sys.stderr)


def fingerprint(cfg: VerifierConfig, base: Path, examples: list, held: list | None) -> dict:
    """What decides the verifier: its options, the base model's content and the records' content
    (whatever their paths), so a --resume with any of them changed is refused."""
    from ttx.models import model_key
    from ttx.records import content_digest, stage_fingerprint

    fp = stage_fingerprint(asdict(cfg), volatile=resume_may_change(VerifierConfig))
    fp["model"] = model_key(base)
    fp["input"] = content_digest([asdict(e) for e in examples])
    fp["eval"] = None if held is None else content_digest([asdict(e) for e in held])
    return fp


def _resume_state(cfg: VerifierConfig, fp: dict) -> dict | None:
    """The manifest of the run --resume continues (ttx.records.resumed_manifest; a manifest of
    a version before fingerprints is not checked)."""
    from ttx.records import resumed_manifest

    return resumed_manifest(cfg.output, fp, resume=cfg.resume, required=False,
                            made="the verifier here was trained", hint="--overwrite trains a new one")


def _train(cfg: VerifierConfig, examples: list, held: list | None, base: Path) -> dict:
    from ttx.io import now_iso, plain_modes, write_json, write_jsonl, write_manifest
    from ttx.reward_inputs import READING_FILE
    from ttx.train import TrainConfig, Trainer
    from ttx.verifier.data import balance, split_problems
    from ttx.verifier.heads import length_batches, plain

    started = now_iso()
    finished = prepare_output(cfg)
    fp = fingerprint(cfg, base, examples, held)
    previous = _resume_state(cfg, fp)
    if finished:
        return {**(previous or {}).get("summary", {}), "already_trained": True}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [cfg.input] + ([cfg.eval] if cfg.eval else [])
    if previous is None:             # the run's fingerprint, for a later --resume to check
        write_manifest(out, stage="verifier-train", options=_options(cfg, base), inputs=inputs,
                       started=started, extra={"fingerprint": fp, "status": "running"})
    else:
        started = previous.get("started", started)
    if held is None:
        train, held = split_problems(examples, cfg.eval_fraction, cfg.seed)
    else:
        train = examples
    for name, group in (("training", train), ("held-out", held)):
        classes = {e.correct for e in group}
        if group and len(classes) == 1:
            print(f"verifier-train: every {name} trace is {'correct' if True in classes else 'wrong'}"
                  f" ({len(group)}): the verifier cannot learn to tell them apart", file=sys.stderr)

    rollout_cost = None
    if cfg.kind == "prm":
        rollout_cost = _step_labels(cfg, train + held, out)

    head = HeadConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      lora_targets=tuple(cfg.lora_targets), max_length=cfg.max_length, seed=cfg.seed)
    verifier = _build(cfg, base, head, train)
    items, kept = verifier.encode(train)
    eval_items, eval_kept = verifier.encode(held)
    if not items:
        raise TtxError("no trace fits: every one is longer than --max-length or has no step",
                       path=cfg.input)
    trainer = Trainer(verifier.model, TrainConfig(
        fingerprint=fp, output_dir=out, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine",
        warmup_ratio=cfg.warmup_ratio, epochs=cfg.epochs, max_steps=cfg.steps, grad_accum=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm, save_every=cfg.save_every, seed=cfg.seed, shuffle=True,
        mixed_precision=cfg.mixed_precision, resume=cfg.resume, stop_after=cfg.stop_after,
        desc=f"verifier-train {cfg.kind}", progress=cfg.progress, report_to=cfg.report_to))
    before = evaluate(verifier, trainer.unwrapped, eval_items, [held[i] for i in eval_kept])
    batches = length_batches([len(it.ids) for it in items], cfg.batch_size, cfg.seed)
    t0 = time.perf_counter()
    result = trainer.fit(batches, lambda module, batch: verifier.loss(module, [items[i] for i in batch]))
    if not result.finished:
        return {"stopped_at_step": trainer.step_count, "output": str(out)}
    train_s = time.perf_counter() - t0
    if not trainer.is_main:
        trainer.accelerator.wait_for_everyone()
        return {}
    model = trainer.unwrapped
    after = evaluate(verifier, model, eval_items, [held[i] for i in eval_kept], rows=True)
    write_jsonl(out / "eval_scores.jsonl", after.pop("rows"))

    saved = plain(model)
    saved.save_pretrained(str(out), safe_serialization=True)
    verifier.tokenizer.save_pretrained(str(out))
    plain_modes(out)
    reading = {**verifier.reading(), "labels": _label_name(cfg), "base_model": str(cfg.model)}
    summary = {
        "kind": cfg.kind, "labels": _label_name(cfg),
        "train": {**balance([train[i] for i in kept]), "left_out": len(train) - len(kept)},
        "held_out": {**balance([held[i] for i in eval_kept]), "left_out": len(held) - len(eval_kept)},
        "before": before, "after": after,
        "steps": result.steps, "updates": result.updates,
        "train_loss_first": _r(result.losses[0]) if result.losses else None,
        "train_loss_last": _r(result.losses[-1]) if result.losses else None,
        "train_tokens": _train_tokens(cfg, trainer, items, batches),
        "train_s": round(train_s, 2), "rollouts": rollout_cost, "reading": reading,
    }
    write_manifest(out, stage="verifier-train", options=_options(cfg, base), inputs=inputs,
                   started=started, summary=summary,
                   extra={"fingerprint": fp, "status": "finished"})
    write_json(out / READING_FILE, reading)               # last: the folder is now complete
    trainer.remove_checkpoints()
    trainer.accelerator.wait_for_everyone()
    return summary


def _train_tokens(cfg: VerifierConfig, trainer, items: list, batches: list) -> int:
    """Tokens trained on: --epochs passes, or what the --steps cap took."""
    if cfg.steps is None:
        return sum(len(it.ids) for it in items) * cfg.epochs
    run = trainer.order_run(len(batches), trainer.step_count)
    return sum(len(items[i].ids) for b in run for i in batches[b])


def _options(cfg: VerifierConfig, base: Path) -> dict:
    return {**asdict(cfg), "base_model_folder": str(base)}


def _label_name(cfg: VerifierConfig) -> str:
    if cfg.kind == "orm":
        return "outcome"
    return cfg.prm_labels if cfg.prm_labels == "outcome" else f"rollout-{cfg.label_type}"


def _build(cfg: VerifierConfig, base: Path, head: HeadConfig, train: list):
    """The verifier to train; --balance weights the rarer class up to the other's total."""
    if cfg.kind == "orm":
        from ttx.verifier.orm import OutcomeVerifier

        pos = sum(e.correct for e in train)
        weight = (len(train) - pos) / pos if cfg.balance and pos else None
        return OutcomeVerifier(base, head, pos_weight=weight)
    from ttx.verifier.prm import ProcessVerifier

    ys = [y for e in train for y in (e.step_labels or [])]
    pos = sum(ys)
    weight = (len(ys) - pos) / pos if cfg.balance and pos else None
    return ProcessVerifier(base, head, pos_weight=weight)


def _step_labels(cfg: VerifierConfig, examples: list, out: Path) -> dict | None:
    """PRM step labels in place: from outcomes, or from rollouts with the policy."""
    from ttx.verifier.labels import RolloutConfig, label_by_rollouts, outcome_labels

    if cfg.prm_labels == "outcome":
        for e in examples:
            e.step_labels = outcome_labels(e.steps, e.correct)
        return None
    from ttx.engines import open_engine

    policy = cfg.rollout_model
    if policy is None:
        models = sorted({e.model for e in examples if e.model})
        if len(models) != 1:
            raise TtxError(f"the records name {len(models)} policy models "
                           f"({', '.join(models) or 'none'}): give --rollout-model",
                           field="--rollout-model")
        policy = models[0]
    try:
        engine = open_engine("hf", model=policy, device=cfg.device, dtype=cfg.dtype,
                             max_batch_rows=cfg.batch_rows)
    except TtxError as exc:
        if cfg.rollout_model:
            raise
        raise TtxError(f"the records' policy model {policy!r} cannot be opened here ({exc}): "
                       "give --rollout-model", field="--rollout-model") from None
    rc = RolloutConfig(k=cfg.rollouts, label_type=cfg.label_type, temperature=cfg.temperature,
                       top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                       chunk=max(1, cfg.batch_rows // cfg.rollouts), instruction=cfg.instruction,
                       system=cfg.system, chat=cfg.chat, progress=cfg.progress)
    from ttx.train.dist import state as process_state

    dist = process_state()           # several processes: rank 0 labels, the others read its rows
    others = dist.num_processes > 1 and not dist.is_main_process
    if others:
        dist.wait_for_everyone()
    try:
        cost = label_by_rollouts(engine, examples, rc, out / "rollouts.jsonl", resume=cfg.resume or others)
    finally:
        engine.close()
    if dist.num_processes > 1 and dist.is_main_process:
        dist.wait_for_everyone()
    return {**asdict(cost), "policy": policy, "wall_s": round(cost.wall_s, 2)}


def evaluate(verifier, module, items: list, examples: list, rows: bool = False) -> dict:
    """Held-out AUC, accuracy at 0.5, best-of-n selection and loss (a PRM: also per step)."""
    import torch

    from ttx.verifier.metrics import accuracy, auc, rounded, selection

    if not items:
        return {"traces": 0}
    if verifier.kind == "orm":
        scores = verifier.scores(module, items)
        steps = None
    else:
        steps = verifier.step_scores(module, items)
        scores = [s[-1] for s in steps]                   # tts-run's default --agg last
    labels = [e.correct for e in examples]
    pools: dict[str, list] = {}
    for s, e in zip(scores, examples):
        pools.setdefault(e.problem, []).append((s, e.correct))
    with torch.inference_mode():
        losses = [float(verifier.loss(module, items[b:b + 8])) * len(items[b:b + 8])
                  for b in range(0, len(items), 8)]
    out = {"traces": len(items), "auc": auc(scores, labels), "accuracy": accuracy(scores, labels),
           "loss": sum(losses) / len(items), "mean_score_correct": _mean(scores, labels, True),
           "mean_score_wrong": _mean(scores, labels, False)}
    sel = selection(pools)
    out.update({"best_of_n": sel["best_of_n"], "random_trace": sel["random"],
                "oracle": sel["oracle"], "problems": sel["problems"]})
    if steps is not None:
        flat = [p for s in steps for p in s]
        ys = [y >= 0.5 for it in items for y in it.labels]
        out.update({"step_auc": auc(flat, ys), "step_accuracy": accuracy(flat, ys),
                    "steps": len(flat)})
    out = rounded(out)
    if rows:
        out["rows"] = [{"problem": e.problem, "trace": e.index, "correct": e.correct,
                        "score": round(s, 6),
                        **({"step_scores": [round(v, 6) for v in st], "step_labels": it.labels}
                           if steps is not None else {})}
                       for e, s, it, st in zip(examples, scores, items, steps or [None] * len(items))]
    return out


def _mean(scores, labels, which: bool):
    chosen = [s for s, y in zip(scores, labels) if y == which]
    return sum(chosen) / len(chosen) if chosen else None


def _r(x):
    return None if x is None else round(x, 5)
