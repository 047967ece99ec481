"""`ttx rl`: one test-time RL stage whose reward and advantage are plug-ins (ttx.rl.plugins,
ttx/rl/rewards/, ttx/rl/advantages/); `ttx ttrl` is this stage with --reward majority.

For each question of a rollout step, N_vote responses are sampled from the current policy (or,
with --etmr, ETTRL's entropy-fork trees, ttx.rl.etmr); the reward plug-in scores the whole group
(the majority vote needs all of it); then N_train of them (the first, as TTRL's release takes
them) update the policy with the advantage plug-in's advantages (default GRPO's) on the shared
GRPO loop (ttx.rl.grpo, ttx.rl.loop); --ear / --adv-clip reshape them (ttx.rl.ear). The plug-ins'
state across steps (HAPO's history) is saved in every checkpoint, so --resume is bit-exact.

Defaults are TTRL's release (PRIME-RL/TTRL verl/examples/ttrl/aime.sh and verl's
ppo_trainer.yaml): 64 votes, 32 trained, temperature 1.0, 8 questions per rollout step, one
question per update, micro-batches of 2, lr 5e-7 with 3% warmup and cosine decay, weight decay
0.01, clip 0.2 with dual-clip 3, grad-norm 1, 3072 new tokens; the KL coefficient is the reward's
(Reward.kl_default) unless --kl-coef is given. recipes/rl-<reward>.yaml hold each paper's own.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
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
from ttx.rl.config import RLConfig
from ttx.rl.grpo import GRPOConfig, Rollout
from ttx.rl.plugins import Group, Problem, Scored, load_advantage, load_reward
from ttx.scoring.answers import INVALID_VOTES, extract_answer


def read_questions(cfg: RLConfig, gold_used: bool = True) -> list[Problem]:
    """Questions as tts-run reads them (the record layer's checks); a gold answer, if present,
    must be a string or a number."""
    from ttx.records import read_records

    problems = []
    for i, row in enumerate(read_records(cfg.input, required=[cfg.question_field],
                                         strings=[cfg.question_field], id_field=cfg.id_field,
                                         limit=cfg.limit)):
        gold = row.data.get(cfg.answer_field)
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
            note = "" if gold_used else " (gold answers are only logged)"
            raise TtxError("expected a string or a number" + note, path=cfg.input, line=row.line,
                           field=cfg.answer_field)
        problems.append(Problem(key=str(i), id=row.data.get(cfg.id_field, row.line),
                                question=row.data[cfg.question_field],
                                gold=None if gold is None else str(gold)))
    if not problems:
        raise TtxError("no questions", path=cfg.input)
    return problems


def check_options(cfg: RLConfig) -> None:
    from ttx.rl.plugins import check_options as plugin_options

    plugin_options(cfg)
    from ttx.rl.curriculum import check_curriculum_options

    check_curriculum_options(cfg)
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
    # -- rollouts on a server (ttx/rl/served.py)
    if cfg.engine == "openai":
        if not cfg.base_url:
            raise TtxError("--engine openai needs --base-url or TTX_BASE_URL (e.g. http://127.0.0.1:8000/v1)",
                           field="--base-url")
        if cfg.full:
            raise TtxError("the server loads LoRA adapters: --engine openai trains LoRA, not --full",
                           field="--full")
    else:
        for name, default in (("served_adapters", None), ("concurrency", 8)):
            if getattr(cfg, name) != default:
                raise TtxError("is read only by --engine openai", field="--" + name.replace("_", "-"))


# what marks a folder as the stage's own (--overwrite deletes only such a folder)
OWN_FILES = ("ttx_manifest.json", "checkpoints", "train_log.jsonl")


def n_train(cfg: RLConfig) -> int:
    if cfg.n_train is not None:
        return cfg.n_train
    votes = cfg.etmr_trees * (1 + cfg.etmr_branches * cfg.etmr_forks) if cfg.etmr else cfg.n_votes
    return max(1, votes // 2)


def prepare_output(cfg: RLConfig, stage: str) -> Path:
    """The output folder by ttx.io.output_dir's rule (emptied by _run, after the model loads); a
    finished run is not resumed."""
    out = output_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite, own=OWN_FILES,
                     stage=stage, empty=False)
    if cfg.resume and (out / "ttx_manifest.json").exists() and not (out / "checkpoints").exists():
        raise TtxError("holds a finished run; --overwrite to train again", path=cfg.output)
    return out


def attach_policy(model, cfg: RLConfig):
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


def run_rl(cfg: RLConfig, *, stage: str = "rl", options: dict | None = None) -> dict:
    """The stage; `stage` names it in messages and the manifest, `options` (default: cfg's) are
    what the manifest records."""
    from ttx.train.dist import state as process_state
    from ttx.train.dist import writer_lock

    started = now_iso()
    check_options(cfg)
    reward = load_reward(cfg.reward)(cfg)
    advantage = load_advantage(cfg.advantage)(cfg)
    from ttx.rl.curriculum import load_curriculum

    curriculum = load_curriculum(cfg.curriculum)(cfg) if cfg.curriculum else None
    if curriculum is not None and cfg.engine == "openai":
        raise TtxError("--curriculum trains a second adapter in this process: use --engine hf",
                       field="--curriculum")
    problems = read_questions(cfg, gold_used=stage != "ttrl")   # bad input fails before anything is written
    reward.check(problems)                                       # (gold answers, ...) before a model loads
    if curriculum is not None:
        curriculum.check(problems)
    if options is None:            # the fingerprint keeps --kl-coef as given: a resume names --reward
        options = asdict(cfg)
    if cfg.kl_coef is None:
        cfg = replace(cfg, kl_coef=reward.kl_default)
    from ttx.rl.served import served_rollouts

    # several processes (accelerate launch): every rank samples the same rollouts (same weights,
    # same seeds) and trains on its share of each update's micro-batches (ttx.rl.loop._update);
    # rank 0 holds the lock and writes the folder
    dist = process_state()
    if dist.num_processes > 1 and cfg.engine == "openai":
        raise TtxError("--engine openai samples on one server for one trainer: run it in one "
                       "process (several processes would each load their adapter there)",
                       field="--engine")
    if dist.num_processes > 1 and curriculum is not None:
        raise TtxError("--curriculum runs in one process (its synthesizer's updates are not "
                       "shared between processes)", field="--curriculum")
    with writer_lock(cfg.output), served_rollouts(cfg) as served:   # a second writer is refused
        return _run(cfg, problems, started, stage, options, reward, advantage, served, curriculum)


def _run(cfg: RLConfig, problems: list[Problem], started: str, stage: str, options: dict | None,
         reward, advantage, served=None, curriculum=None) -> dict:
    import copy

    from ttx.engines import engine_over
    from ttx.models import load_model
    from ttx.rl.loop import LoopConfig, run_loop, updates_per_step
    from ttx.train import TrainConfig, Trainer

    out = prepare_output(cfg, stage)
    batch = min(cfg.batch_size, len(problems))
    steps = cfg.steps if cfg.steps is not None else max(1, -(-cfg.episodes * len(problems) // batch))
    grpo = GRPOConfig(clip_low=cfg.clip_low, clip_high=cfg.clip_high, clip_c=cfg.clip_c, kl_coef=cfg.kl_coef,
                      temperature=cfg.temperature, micro_batch_size=cfg.micro_batch_size,
                      groups_per_update=min(cfg.mini_batch_size, batch), epochs=cfg.ppo_epochs)
    extra = curriculum.extra(batch) if curriculum is not None else 0     # questions a curriculum adds
    updates, micro = updates_per_step(batch + extra, n_train(cfg), grpo)

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
    fields = options
    state = {k: v for k, v in _jsonable(fields).items() if k not in resume_may_change(RLConfig)}
    state["input"] = content_digest([asdict(p) for p in problems])   # the questions, whatever file held them
    trainer = Trainer(model, TrainConfig(
        fingerprint=state, output_dir=out, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine",
        warmup_ratio=cfg.warmup_ratio, grad_accum=-(-micro // dist.num_processes),   # per rank
        max_grad_norm=cfg.max_grad_norm or None,
        save_every=0, seed=cfg.seed, desc=stage, progress=False, report_to=cfg.report_to),
        total_steps=steps * updates)
    engine = engine_over(model, tokenizer, name=str(cfg.model))
    if curriculum is not None:
        curriculum.attach(model=model, tokenizer=tokenizer, engine=engine, out=out, pad_id=pad_id,
                          resume=cfg.resume)
    if served is not None:                         # --engine openai: rollouts on the server
        engine = served.over(engine, model)

    @contextmanager
    def reference():
        if reference_model is not None:
            yield reference_model
        else:
            with model.disable_adapter():
                yield model

    collect, records = _collector(cfg, engine, tokenizer, model, problems,
                                  question_order(len(problems), batch, steps, cfg.seed), pad_id, reward,
                                  curriculum)
    log = out / "rollouts.jsonl"

    def on_resume(start: int) -> None:
        if not dist.is_main_process:
            return
        if start == 0:                              # nothing to continue: no rows may stay behind
            (out / "train_log.jsonl").unlink(missing_ok=True)
        resume_log(log, keep=lambda r: r["step"] <= start)
        if curriculum is not None:
            curriculum.on_resume(start)

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

    def get_state() -> dict:
        return {"reward": reward.state_dict(), "advantage": advantage.state_dict()}

    def checkpoint_state() -> dict:                # a checkpoint: the curriculum saves its part too
        return {**get_state(), **({"curriculum": curriculum.save()} if curriculum is not None else {})}

    def set_state(saved: dict) -> None:
        reward.load_state_dict(saved.get("reward") or {})
        advantage.load_state_dict(saved.get("advantage") or {})
        if curriculum is not None:
            curriculum.load(saved.get("curriculum") or {})

    t0 = time.perf_counter()
    ran = run_loop(trainer, model, grpo, LoopConfig(steps=steps, save_every=cfg.save_every,
                                                    stop_after=cfg.stop_after, resume=cfg.resume,
                                                    progress=cfg.progress, desc=stage),
                   pad_id=pad_id, collect=collect, reference=reference if cfg.kl_coef else None,
                   shape=shape, on_step=on_step, on_resume=on_resume, state=state,
                   advantages=lambda trained: advantage.compute(trained, grpo.eps),
                   plugin_state=(checkpoint_state, set_state))
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
    summary = _summary(read_jsonl(log), steps, trainer, time.perf_counter() - t0, ran, reward)
    if reward.state_dict():
        summary["plugin_state"] = get_state()
    write_manifest(out, stage=stage, options={**_jsonable(fields), "base_model_folder": str(folder),
                                              "n_train": n_train(cfg), "steps": steps, "batch_size": batch,
                                              **({} if stage == "ttrl" else {"kl_coef": cfg.kl_coef})},
                   inputs=[cfg.input], started=started, summary=summary)
    trainer.remove_checkpoints()
    if curriculum is not None:
        curriculum.finish()
    dist.wait_for_everyone()
    return summary


def _collector(cfg, engine, tokenizer, model, problems, order, pad_id, reward, curriculum=None):
    """collect(step) for the loop, and the per-question records it leaves for on_step."""
    from ttx.engines.base import SamplingParams
    from ttx.prompts import build_prompt
    from ttx.rl.etmr import tree_rollouts
    from ttx.rl.grpo import sequence_logprobs
    from ttx.rl.tokenstats import token_stats
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

    def stats_of(prompt_ids, responses):
        cache: list = []

        def compute():
            if not cache:
                cache.append(token_stats(model, [prompt_ids] * len(responses), responses, pad_id,
                                         cfg.temperature, cfg.micro_batch_size))
            return cache[0]
        return compute

    def collect(step: int):
        qs = [problems[i] for i in order[step]]
        added: dict[str, float] = {}
        if curriculum is not None:                  # the curriculum's questions join the test ones
            more, added = curriculum.problems(step, qs)
            qs = qs + more
        prompts = [reward.prompt(q, step, build_prompt(q.question, instruction=cfg.instruction,
                                                       system=cfg.system, chat=cfg.chat))
                   for q in qs]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, seed=call_seed(cfg.seed, step, 0))
        model.eval()
        if cfg.engine == "openai":
            engine.sync(step)                # the server samples with the adapter as it is now
        if cfg.etmr:
            leaves = tree_rollouts(engine, tokenizer, prompts, params, trees=cfg.etmr_trees,
                                   forks=cfg.etmr_forks, branches=cfg.etmr_branches, entropy_fn=entropy_fn,
                                   branch_seed=call_seed(cfg.seed, step, 1))
            sampled = [[(leaf.response_ids, leaf.generated) for leaf in ls] for ls in leaves]
        else:
            gens = engine.generate(prompts, cfg.n_votes, params)
            sampled = [[(list(t.token_ids), t.completion_tokens) for t in g.traces] for g in gens]
        groups: list[Group] = []
        scored: list[Scored] = []
        for g, (q, prompt, leaves) in enumerate(zip(qs, prompts, sampled)):
            texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in leaves]
            prompt_ids = engine.encode(prompt)
            responses = [ids for ids, _ in leaves]
            group = Group(step=step, problem=q, prompt_ids=prompt_ids, response_ids=responses, texts=texts,
                          answers=[extract_answer(t) for t in texts],
                          token_stats=stats_of(prompt_ids, responses), engine=engine, tokenizer=tokenizer,
                          params=params, seed=call_seed(cfg.seed, step, 3, g))
            s = reward.score(group)
            _check_scored(s, len(leaves), cfg.reward, q)
            groups.append(group)
            scored.append(s)
        extra = reward.end_step(step, groups, scored) or {}
        rollouts, recs = [], []
        sums: dict[str, list[float]] = {}
        for g, (q, group, s, leaves) in enumerate(zip(qs, groups, scored, sampled)):
            if cfg.etmr:   # tree leaves are not exchangeable like i.i.d. samples: a seeded subset
                picked = sorted(random.Random(call_seed(cfg.seed, step, 2, g)).sample(range(len(leaves)),
                                                                                  min(keep, len(leaves))))
            else:          # TTRL's release trains on the first n_samples of the n_votes
                picked = list(range(min(keep, len(leaves))))
            for i in picked:
                info = {"leaf": i, **(s.infos[i] if s.infos is not None else {})}
                rollouts.append(Rollout(group=g, prompt_ids=group.prompt_ids, response_ids=leaves[i][0],
                                        reward=float(s.rewards[i]), info=info))
            rec = {"step": step + 1, "id": q.id, "group": g, **s.record, "votes": len(leaves),
                   "answers": group.answers, "trained_leaves": picked,
                   "generated_tokens": sum(n for _, n in leaves),
                   "mean_response_tokens": round(sum(len(ids) for ids, _ in leaves) / len(leaves), 2)}
            if q.gold is not None:
                rec["gold"] = q.gold
            for k, v in {**s.metrics, "votes": float(len(leaves)),
                         "rollout_tokens": float(rec["generated_tokens"])}.items():
                sums.setdefault(k, []).append(float(v))
            recs.append(rec)
        records[step] = recs
        metrics = {"questions": float(len(qs)), "rollout_tokens": sum(sums["rollout_tokens"])}
        for k, vs in sums.items():
            if k != "rollout_tokens":
                metrics[k] = sum(vs) / len(vs)       # over the groups that report it
        metrics.update(extra)
        metrics.update(added)
        return rollouts, metrics

    return collect, records


def _check_scored(s: Scored, n: int, name: str, q: Problem) -> None:
    if len(s.rewards) != n or (s.infos is not None and len(s.infos) != n):
        raise TtxError(f"--reward {name} gave {len(s.rewards)} rewards for {n} responses to question {q.id!r}")
    for r in s.rewards:
        if not math.isfinite(float(r)):
            raise TtxError(f"--reward {name} gave a reward that is not finite ({r}) to question {q.id!r}")


def _summary(rows: list[dict], steps: int, trainer, train_s: float, ran: dict, reward) -> dict:
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)

    def mean(key, recs):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return round(sum(vals) / len(vals), 6) if vals else None

    per_step = [{"step": s, **{k: mean(k, recs) for k in reward.summary},
                 "rollout_tokens": sum(r["generated_tokens"] for r in recs)}
                for s, recs in sorted(by_step.items())]
    return {"rollout_steps": steps, "updates": trainer.result.updates, "questions_seen": len(rows),
            "rollout_tokens": sum(r["generated_tokens"] for r in rows),
            "resumed_from_step": ran["start"] or None, "train_s_this_run": round(train_s, 2),
            "first_step": per_step[0] if per_step else None, "last_step": per_step[-1] if per_step else None,
            "per_step": per_step}


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
