"""`ttx ttrl`: Test-Time Reinforcement Learning (Zuo et al. 2025, arXiv 2504.16084) on unlabeled
test questions, with ETTRL's entropy mechanisms (Liu et al. 2025, arXiv 2508.11356) as options.

For each question of a rollout step, N_vote responses are sampled from the current policy; the
majority answer ŷ is the pseudo-label and each response is rewarded for agreeing with it,

    r(y, ŷ) = 1 if answer(y) = ŷ else 0                                      (TTRL, eq. 2)

then N_train of them (the first, as TTRL's release takes them) update the policy with GRPO
(ttx.rl.grpo on the shared loop, ttx.rl.loop). --etmr replaces the N_vote independent samples by
entropy-fork trees (ttx.rl.etmr); --ear reshapes the advantages by relative response entropy
(ttx.rl.ear). Gold answers, when the input has them, are never used for training: they only
measure the pseudo-labels (label accuracy, reward accuracy: TTRL's ttt_metrics.py) in the logs.

Defaults are the reference release's (PRIME-RL/TTRL verl/examples/ttrl/aime.sh and verl's
ppo_trainer.yaml): 64 votes, 32 trained, temperature 1.0, 8 questions per rollout step, one
question per update, micro-batches of 2, lr 5e-7 with 3% warmup and cosine decay, weight decay
0.01, clip 0.2 with dual-clip 3, grad-norm 1, KL loss 0.001 (k3), 3072 new tokens.
"""

from __future__ import annotations

import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import (
    JsonlAppender,
    now_iso,
    output_dir,
    plain_modes,
    read_jsonl,
    resume_log,
    write_manifest,
)
from ttx.options import resume_may_change
from ttx.records import content_digest
from ttx.rl.config import TTRLConfig
from ttx.rl.grpo import GRPOConfig, Rollout
from ttx.scoring.answers import INVALID_VOTES, answers_equal, extract_answer, vote_key, winner


@dataclass
class Vote:
    label: str | None            # the majority answer (None: the no-answer class won, or no vote)
    key: str | None              # its vote class
    answers: list[str | None]    # each response's extracted answer
    rewards: list[float]         # r(y, ŷ) per response
    majority_ratio: float        # share of the responses in the winning class


def majority_rewards(texts: list[str], invalid: str = "lm-eval") -> Vote:
    """TTRL's reward: the majority answer is the label; agreeing with it earns 1.

    Agreement is the vote class or, as TTRL grades it, mathematical equality to the label. With
    invalid="lm-eval" responses without an answer vote for one "no answer" class that can win
    (TTRL's extractor gives them the empty answer, which then agrees with itself); with "skip"
    they cast no vote and are never rewarded."""
    answers = [extract_answer(t) for t in texts]
    keys = [vote_key(a, invalid) for a in answers]
    w = winner(keys)
    if w is None:
        return Vote(None, None, answers, [0.0] * len(texts), 0.0)
    key, label = keys[w], answers[w]
    rewards = [1.0 if k == key or (label is not None and a is not None and answers_equal(a, label)) else 0.0
               for k, a in zip(keys, answers)]
    return Vote(label, key, answers, rewards, sum(k == key for k in keys) / len(keys))


def gold_metrics(vote: Vote, gold: str) -> dict[str, float]:
    """How good the pseudo-label is (TTRL's test_time_train_metrics): label accuracy, the share of
    rewards equal to the rewards gold would give, the share of correct responses, pass@n."""
    true = [1.0 if a is not None and answers_equal(a, gold) else 0.0 for a in vote.answers]
    return {"label_accuracy": 1.0 if vote.label is not None and answers_equal(vote.label, gold) else 0.0,
            "reward_accuracy": sum(r == t for r, t in zip(vote.rewards, true)) / len(true),
            "ground_truth_ratio": sum(true) / len(true),
            "pass_at_n": 1.0 if any(true) else 0.0}


def read_questions(cfg: TTRLConfig) -> list[dict]:
    """Questions as tts-run reads them (the record layer's checks); a gold answer, if present,
    must be a string or a number."""
    from ttx.records import read_records

    problems = []
    for row in read_records(cfg.input, required=[cfg.question_field],
                            strings=[cfg.question_field], id_field=cfg.id_field, limit=cfg.limit):
        gold = row.data.get(cfg.answer_field)
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
            raise TtxError("expected a string or a number (gold answers are only logged)",
                           path=cfg.input, line=row.line, field=cfg.answer_field)
        problems.append({"id": row.data.get(cfg.id_field, row.line),
                         "question": row.data[cfg.question_field],
                         "gold": None if gold is None else str(gold)})
    if not problems:
        raise TtxError("no questions", path=cfg.input)
    return problems


def check_options(cfg: TTRLConfig) -> None:
    if cfg.invalid_votes not in INVALID_VOTES:
        raise TtxError(f"expected one of {', '.join(INVALID_VOTES)}", field="--invalid-votes")
    votes = cfg.etmr_trees * (1 + cfg.etmr_branches * cfg.etmr_forks) if cfg.etmr else cfg.n_votes
    if n_train(cfg) > votes:
        raise TtxError(f"{n_train(cfg)} exceeds the {votes} responses voted on per question",
                       field="--n-train")
    if cfg.mini_batch_size > cfg.batch_size:
        raise TtxError(f"{cfg.mini_batch_size} exceeds --batch-size {cfg.batch_size}",
                       field="--mini-batch-size")
    if cfg.clip_c is not None and cfg.clip_c <= 1:
        raise TtxError("the dual-clip bound must exceed 1", field="--clip-c")
    if cfg.temperature <= 0:
        raise TtxError("sampling needs a temperature above 0", field="--temperature")


# what marks a folder as ttrl's own (--overwrite deletes only such a folder)
OWN_FILES = ("ttx_manifest.json", "checkpoints", "train_log.jsonl")


def n_train(cfg: TTRLConfig) -> int:
    if cfg.n_train is not None:
        return cfg.n_train
    votes = cfg.etmr_trees * (1 + cfg.etmr_branches * cfg.etmr_forks) if cfg.etmr else cfg.n_votes
    return max(1, votes // 2)


def prepare_output(cfg: TTRLConfig) -> Path:
    """The output folder by ttx.io.output_dir's rule (emptied by _run, after the model loads); a
    finished run is not resumed."""
    out = output_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite, own=OWN_FILES,
                     stage="ttrl", empty=False)
    if cfg.resume and (out / "ttx_manifest.json").exists() and not (out / "checkpoints").exists():
        raise TtxError("holds a finished run; --overwrite to train again", path=cfg.output)
    return out


def attach_policy(model, cfg: TTRLConfig):
    """LoRA (the default) or every parameter trainable (--full)."""
    import torch

    torch.manual_seed(cfg.seed)
    if cfg.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from ttx.train.lora import attach_lora

    return attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       targets=cfg.lora_targets)


def question_order(count: int, batch: int, steps: int, seed: int) -> list[list[int]]:
    """The questions of each rollout step: a stream of seeded permutations, batch at a time."""
    from ttx.seeds import call_seed

    stream: list[int] = []
    epoch = 0
    while len(stream) < steps * batch:
        perm = list(range(count))
        random.Random(call_seed(seed, epoch)).shuffle(perm)
        stream += perm
        epoch += 1
    return [stream[s * batch:(s + 1) * batch] for s in range(steps)]


def run_ttrl(cfg: TTRLConfig) -> dict:
    from contextlib import nullcontext

    from ttx.train.dist import state as process_state

    started = now_iso()
    check_options(cfg)
    problems = read_questions(cfg)                 # bad input fails before anything is written
    from ttx.records import folder_lock

    # several processes (accelerate launch): every rank samples the same rollouts (same weights,
    # same seeds) and trains on its share of each update's micro-batches (ttx.rl.loop._update);
    # rank 0 holds the lock and writes the folder
    main = process_state().is_main_process
    with folder_lock(cfg.output) if main else nullcontext():     # a second writer is refused
        return _run(cfg, problems, started)


def _run(cfg: TTRLConfig, problems: list[dict], started: str) -> dict:
    import copy

    from ttx.engines import engine_over
    from ttx.models import load_model
    from ttx.rl.loop import LoopConfig, run_loop, updates_per_step
    from ttx.train import TrainConfig, Trainer

    out = prepare_output(cfg)
    batch = min(cfg.batch_size, len(problems))
    steps = cfg.steps if cfg.steps is not None else max(1, -(-cfg.episodes * len(problems) // batch))
    grpo = GRPOConfig(clip_low=cfg.clip_low, clip_high=cfg.clip_high, clip_c=cfg.clip_c, kl_coef=cfg.kl_coef,
                      temperature=cfg.temperature, micro_batch_size=cfg.micro_batch_size,
                      groups_per_update=min(cfg.mini_batch_size, batch), epochs=cfg.ppo_epochs)
    updates, micro = updates_per_step(batch, n_train(cfg), grpo)

    base, tokenizer, folder = load_model(cfg.model, cfg.device, cfg.dtype)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reference_model = copy.deepcopy(base).eval().requires_grad_(False) if cfg.full and cfg.kl_coef else None
    model = attach_policy(base, cfg)
    from ttx.train.dist import state as process_state

    dist = process_state()
    if cfg.overwrite and out.exists() and dist.is_main_process:
        shutil.rmtree(out)
    dist.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in _jsonable(asdict(cfg)).items() if k not in resume_may_change(TTRLConfig)}
    state["input"] = content_digest(problems)     # the questions, whatever file held them
    trainer = Trainer(model, TrainConfig(
        fingerprint=state, output_dir=out, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine",
        warmup_ratio=cfg.warmup_ratio, grad_accum=-(-micro // dist.num_processes),   # per rank
        max_grad_norm=cfg.max_grad_norm or None,
        save_every=0, seed=cfg.seed, desc="ttrl", progress=False, report_to=cfg.report_to),
        total_steps=steps * updates)
    engine = engine_over(model, tokenizer, name=str(cfg.model))

    @contextmanager
    def reference():
        if reference_model is not None:
            yield reference_model
        else:
            with model.disable_adapter():
                yield model

    collect, records = _collector(cfg, engine, tokenizer, model, problems,
                                  question_order(len(problems), batch, steps, cfg.seed), pad_id)
    log = out / "rollouts.jsonl"

    def on_resume(start: int) -> None:
        if not dist.is_main_process:
            return
        if start == 0:                              # nothing to continue: no rows may stay behind
            (out / "train_log.jsonl").unlink(missing_ok=True)
        resume_log(log, keep=lambda r: r["step"] <= start)

    def on_step(step: int, rollouts: list[Rollout], metrics: dict) -> None:
        if not dist.is_main_process:
            records.pop(step)
            return
        with JsonlAppender(log, resume=True) as w:
            for rec in records.pop(step):
                trained = [r for r in rollouts if r.group == rec["group"]]
                rec.update(trained=len(trained), rewards=[r.reward for r in trained],
                           advantages=[round(r.advantage, 6) for r in trained],
                           entropy=round(sum(r.mean_entropy() for r in trained) / max(1, len(trained)), 6))
                del rec["group"]
                w.write(rec)

    shape = None
    if cfg.ear or cfg.adv_clip is not None:
        from ttx.rl.ear import adv_clip, adv_reshape

        def shape(rollouts):
            if cfg.ear:
                adv_reshape(rollouts)
            if cfg.adv_clip is not None:
                adv_clip(rollouts, cfg.adv_clip)

    t0 = time.perf_counter()
    ran = run_loop(trainer, model, grpo, LoopConfig(steps=steps, save_every=cfg.save_every,
                                                    stop_after=cfg.stop_after, resume=cfg.resume,
                                                    progress=cfg.progress, desc="ttrl"),
                   pad_id=pad_id, collect=collect, reference=reference if cfg.kl_coef else None,
                   shape=shape, on_step=on_step, on_resume=on_resume, state=state)
    if ran["stopped"]:
        return {"stopped_at_step": ran["done"], "output": str(out)}
    model.eval()
    if not dist.is_main_process:
        dist.wait_for_everyone()
        return {}
    trainer.unwrapped.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    plain_modes(out)
    from ttx.models import write_base

    write_base(out, cfg.model, folder)                 # tts-run --adapter checks the base
    summary = _summary(read_jsonl(log), steps, trainer, time.perf_counter() - t0, ran)
    write_manifest(out, stage="ttrl", options={**_jsonable(asdict(cfg)), "base_model_folder": str(folder),
                                               "n_train": n_train(cfg), "steps": steps, "batch_size": batch},
                   inputs=[cfg.input], started=started, summary=summary)
    trainer.remove_checkpoints()
    dist.wait_for_everyone()
    return summary


def _collector(cfg, engine, tokenizer, model, problems, order, pad_id):
    """collect(step) for the loop, and the per-question records it leaves for on_step."""
    from ttx.engines.base import SamplingParams
    from ttx.prompts import build_prompt
    from ttx.rl.etmr import tree_rollouts
    from ttx.rl.grpo import sequence_logprobs
    from ttx.seeds import call_seed

    records: dict[int, list[dict]] = {}
    keep = n_train(cfg)

    def entropy_fn(prompt_ids, response_ids):
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(prompt_ids), cfg.micro_batch_size):
                p, r = prompt_ids[i:i + cfg.micro_batch_size], response_ids[i:i + cfg.micro_batch_size]
                _, _, ent = sequence_logprobs(model, p, r, pad_id, cfg.temperature, entropy=True)
                k = ent.shape[1]
                out += [ent[j, k - len(r[j]):].tolist() for j in range(len(r))]
        return out

    def collect(step: int):
        qs = [problems[i] for i in order[step]]
        prompts = [build_prompt(q["question"], instruction=cfg.instruction, system=cfg.system, chat=cfg.chat)
                   for q in qs]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, seed=call_seed(cfg.seed, step, 0))
        model.eval()
        if cfg.etmr:
            leaves = tree_rollouts(engine, tokenizer, prompts, params, trees=cfg.etmr_trees,
                                   forks=cfg.etmr_forks, branches=cfg.etmr_branches, entropy_fn=entropy_fn,
                                   branch_seed=call_seed(cfg.seed, step, 1))
            groups = [[(leaf.response_ids, leaf.generated) for leaf in ls] for ls in leaves]
        else:
            gens = engine.generate(prompts, cfg.n_votes, params)
            groups = [[(list(t.token_ids), t.completion_tokens) for t in g.traces] for g in gens]
        rollouts, recs = [], []
        sums: dict[str, float] = {}
        for g, (q, prompt, leaves) in enumerate(zip(qs, prompts, groups)):
            texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in leaves]
            vote = majority_rewards(texts, cfg.invalid_votes)
            if cfg.etmr:   # tree leaves are not exchangeable like i.i.d. samples: a seeded subset
                picked = sorted(random.Random(call_seed(cfg.seed, step, 2, g)).sample(range(len(leaves)),
                                                                                  min(keep, len(leaves))))
            else:          # TTRL's release trains on the first n_samples of the n_votes
                picked = list(range(min(keep, len(leaves))))
            prompt_ids = engine.encode(prompt)
            for i in picked:
                rollouts.append(Rollout(group=g, prompt_ids=prompt_ids, response_ids=leaves[i][0],
                                        reward=vote.rewards[i], info={"leaf": i}))
            rec = {"step": step + 1, "id": q["id"], "group": g, "label": vote.label,
                   "majority_ratio": round(vote.majority_ratio, 6), "votes": len(leaves),
                   "answers": vote.answers, "trained_leaves": picked,
                   "generated_tokens": sum(n for _, n in leaves),
                   "mean_response_tokens": round(sum(len(ids) for ids, _ in leaves) / len(leaves), 2)}
            stats = {"majority_ratio": vote.majority_ratio, "votes": float(len(leaves)),
                     "rollout_tokens": float(rec["generated_tokens"])}
            if q["gold"] is not None:
                gm = gold_metrics(vote, q["gold"])
                rec.update(gold=q["gold"], **{k: round(v, 6) for k, v in gm.items()})
                stats.update(gm)
                stats["with_gold"] = 1.0
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            recs.append(rec)
        records[step] = recs
        metrics = {"questions": float(len(qs)), "rollout_tokens": sums["rollout_tokens"],
                   "majority_ratio": sums["majority_ratio"] / len(qs), "votes": sums["votes"] / len(qs)}
        if sums.get("with_gold"):
            for k in ("label_accuracy", "reward_accuracy", "ground_truth_ratio", "pass_at_n"):
                metrics[k] = sums[k] / sums["with_gold"]
        return rollouts, metrics

    return collect, records


def _summary(rows: list[dict], steps: int, trainer, train_s: float, ran: dict) -> dict:
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)

    def mean(key, recs):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return round(sum(vals) / len(vals), 6) if vals else None

    per_step = [{"step": s, "majority_ratio": mean("majority_ratio", recs),
                 "label_accuracy": mean("label_accuracy", recs),
                 "reward_accuracy": mean("reward_accuracy", recs),
                 "rollout_tokens": sum(r["generated_tokens"] for r in recs)}
                for s, recs in sorted(by_step.items())]
    return {"rollout_steps": steps, "updates": trainer.result.updates, "questions_seen": len(rows),
            "rollout_tokens": sum(r["generated_tokens"] for r in rows),
            "resumed_from_step": ran["start"] or None, "train_s_this_run": round(train_s, 2),
            "first_step": per_step[0] if per_step else None, "last_step": per_step[-1] if per_step else None,
            "per_step": per_step}


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
