"""`ttx rl --curriculum ttcs`: TTCS's self-evolving test-time curriculum (XMUDeepLIT/TTCS, built
on R-Zero; the rules are ttx/rl/ttcs.py).

A synthesizer and the solver are two LoRA adapters on one base model ("synthesizer" and the
stage's policy, "default"), switched in the engine with PEFT's set_adapter. Each rollout step,
before the solver samples:
  1. the synthesizer writes --ttcs-variants variants of each of the step's test questions (the
     reference's prompt_template.txt; parse rule reward_manager.py:177-192);
  2. the solver answers each parsed variant --ttcs-solver-votes times; p is its majority share;
  3. the synthesizer's reward is max(0, 1 - 2|p - 1/2| - cluster share) (BLEU clustering of the
     step's variants), and it takes a GRPO update (groups: the variants of one test question) with
     its own optimizer, KL to the base model (TTCS's challenger.sh: kl_loss_coef 0.01, lr 1e-6);
  4. variants with --ttcs-low <= p <= --ttcs-high, unseen before this step, at most --ttcs-keep,
     join the step's test questions: the solver trains on both with the stage's --reward.
The reference alternates phases (5 synthesizer steps, then 15 solver steps on 500 generated
questions, for 15 rounds, main.sh); ttx interleaves them per rollout step so the two co-evolve
on the same questions without a question server. Its synthesizer reward is R-Zero's uncertainty
(utils.py:271), as the paper states it; the release's question_reward=TTCS instead uses
(4p(1-p))^1.2 times a similarity-filter factor (utils.py:290-295, 365-374), not implemented.

Train log (train_log.jsonl, per rollout step): ttcs_parse_rate, ttcs_p_mean, ttcs_p_q10..q90
(the solver's shares), ttcs_kept, ttcs_reward_mean, ttcs_penalty_mean; every variant is a row of
ttcs.jsonl; the synthesizer's own optimizer log is synthesizer_train/train_log.jsonl."""

from __future__ import annotations

from pathlib import Path

from ttx.errors import TtxError
from ttx.rl.curriculum import Curriculum
from ttx.rl.plugins import Problem

SYNTH = "synthesizer"


class TTCS(Curriculum):
    name = "ttcs"
    options = ("ttcs_variants", "ttcs_solver_votes", "ttcs_max_new_tokens", "ttcs_temperature", "ttcs_lr",
               "ttcs_kl_coef", "ttcs_keep", "ttcs_low", "ttcs_high")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.updates = 0            # synthesizer optimizer updates so far
        self.kept_total = 0
        self.seen: set[str] = set()

    def check(self, problems: list[Problem]) -> None:
        if self.cfg.full:
            raise TtxError("needs LoRA: the synthesizer and the solver are two adapters on one base",
                           field="--full")
        if self.cfg.ttcs_low > self.cfg.ttcs_high:
            raise TtxError(f"{self.cfg.ttcs_low} exceeds --ttcs-high {self.cfg.ttcs_high}", field="--ttcs-low")
        if self.cfg.etmr:
            raise TtxError("is not combined with --curriculum ttcs", field="--etmr")
        from ttx.rl.plugins import load_reward

        if load_reward(self.cfg.reward).needs_gold:
            raise TtxError("needs gold answers, which synthetic questions lack; --curriculum ttcs trains "
                           "with a label-free reward (majority)", field="--reward")

    def keep(self, batch: int) -> int:
        return batch if self.cfg.ttcs_keep is None else self.cfg.ttcs_keep   # data_merge.py:61

    def extra(self, batch: int) -> int:
        return self.keep(batch)

    def attach(self, *, model, tokenizer, engine, out: Path, pad_id: int, resume: bool) -> None:
        import torch
        from peft import LoraConfig

        from ttx.rl.grpo import GRPOConfig
        from ttx.seeds import call_seed
        from ttx.train import TrainConfig, Trainer

        cfg = self.cfg
        self.model, self.tokenizer, self.engine, self.out, self.pad_id = model, tokenizer, engine, out, pad_id
        torch.manual_seed(call_seed(cfg.seed, 7))               # the synthesizer's LoRA A init
        model.add_adapter(SYNTH, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                            lora_dropout=cfg.lora_dropout,
                                            target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
        self._use("default")
        for n, p in model.named_parameters():                   # its trainer holds its adapter only
            if _adapter_of(n) == "default":
                p.requires_grad_(False)
        self.grpo = GRPOConfig(clip_low=cfg.clip_low, clip_high=cfg.clip_high, clip_c=cfg.clip_c,
                               kl_coef=cfg.ttcs_kl_coef, temperature=cfg.ttcs_temperature,
                               micro_batch_size=cfg.micro_batch_size,
                               groups_per_update=min(cfg.mini_batch_size, cfg.batch_size))
        micro = -(-self.grpo.groups_per_update * cfg.ttcs_variants // cfg.micro_batch_size)
        self.trainer = Trainer(model, TrainConfig(
            output_dir=out / "synthesizer_train", lr=cfg.ttcs_lr, weight_decay=cfg.weight_decay,
            schedule="constant", grad_accum=micro, max_grad_norm=cfg.max_grad_norm or None, save_every=0,
            seed=cfg.seed, desc="ttcs", progress=False, keep_checkpoints=2))
        self._use("default")                                    # both adapters trainable, the solver active

    def _use(self, name: str) -> None:
        """Activate one adapter; both stay trainable, so every stage checkpoint holds both."""
        self.model.set_adapter(name)
        for n, p in self.model.named_parameters():
            if _adapter_of(n) is not None:
                p.requires_grad_(True)

    # -- one rollout step ---------------------------------------------------------------------
    def problems(self, step: int, questions: list[Problem]) -> tuple[list[Problem], dict[str, float]]:
        from ttx.engines.base import SamplingParams
        from ttx.prompts import build_prompt
        from ttx.rl import ttcs
        from ttx.scoring.answers import extract_answer
        from ttx.seeds import call_seed

        cfg, tok = self.cfg, self.tokenizer
        self.model.eval()
        self._use(SYNTH)
        prompts = [build_prompt(ttcs.synth_prompt(q.question), instruction=None, chat=cfg.chat)
                   for q in questions]
        gens = self.engine.generate(prompts, cfg.ttcs_variants, SamplingParams(
            max_new_tokens=cfg.ttcs_max_new_tokens, temperature=cfg.ttcs_temperature, top_p=1.0,
            seed=call_seed(cfg.seed, step, 20)))
        rows = []                  # one per variant: (group, prompt_ids, response_ids, question, answer)
        for g, (prompt, gen) in enumerate(zip(prompts, gens)):
            prompt_ids = self.engine.encode(prompt)
            for t in gen.traces:
                q, a = ttcs.parse_variant(tok.decode(list(t.token_ids), skip_special_tokens=True))
                rows.append((g, prompt_ids, list(t.token_ids), q, a))
        self._use("default")
        parsed = [i for i, r in enumerate(rows) if r[3]]
        shares: list[float | None] = [None] * len(rows)
        if parsed:
            solver_prompts = [build_prompt(rows[i][3], instruction=cfg.instruction, system=cfg.system,
                                           chat=cfg.chat) for i in parsed]
            outs = self.engine.generate(solver_prompts, cfg.ttcs_solver_votes, SamplingParams(
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                seed=call_seed(cfg.seed, step, 21)))
            for i, gen in zip(parsed, outs):
                shares[i] = ttcs.majority_share([extract_answer(t.text) for t in gen.traces])
        rewards, penalty = ttcs.synth_rewards([r[3] for r in rows], shares)
        train = self._update(step, rows, rewards)
        kept = self._kept(step, rows, shares, questions)
        self._log(step, rows, shares, rewards, penalty, kept, questions)
        ps = [p for p in shares if p is not None]
        metrics = {"ttcs_parse_rate": len(parsed) / len(rows), "ttcs_kept": float(len(kept)),
                   "ttcs_reward_mean": sum(rewards) / len(rewards),
                   "ttcs_penalty_mean": sum(penalty) / len(penalty), **train}
        if ps:
            metrics["ttcs_p_mean"] = sum(ps) / len(ps)
            metrics.update({f"ttcs_p_{k}": v for k, v in ttcs.quantiles(ps).items()})
        return kept, metrics

    def _update(self, step: int, rows: list, rewards: list[float]) -> dict[str, float]:
        """One GRPO step of the synthesizer: its variants of one test question form a group."""
        from ttx.rl.grpo import Rollout, group_advantages, score_rollouts, update_batches
        from ttx.rl.loop import _update

        rollouts = [Rollout(group=g, prompt_ids=p, response_ids=r, reward=float(w))
                    for (g, p, r, _, _), w in zip(rows, rewards)]
        updates = update_batches(rollouts, self.grpo)
        micro = [m for u in updates for m in u]
        self._use(SYNTH)
        score_rollouts(self.model, micro, self.pad_id, self.grpo.temperature)
        if self.grpo.kl_coef:
            with self.model.disable_adapter():
                score_rollouts(self.model, micro, self.pad_id, self.grpo.temperature, reference=True)
        trained = [r for u in micro for r in u]
        for r, a in zip(trained, group_advantages([r.reward for r in trained], [r.group for r in trained],
                                                   self.grpo.eps)):
            r.advantage = a
        row = {"rollout_step": step + 1}
        for update in updates:
            _update(self.trainer, update, self.grpo, self.pad_id, row)
        self.updates += len(updates)
        self._use("default")
        self.model.eval()
        return {"ttcs_updates": float(len(updates))}

    def _kept(self, step: int, rows: list, shares: list, questions: list[Problem]) -> list[Problem]:
        """Variants inside the band, new (data_merge.py:49-59: not a test question, not kept
        before), the first keep(batch) of them in the order written."""
        from ttx.rl import ttcs

        seen = self.seen | {q.question for q in questions}
        kept: list[Problem] = []
        band = (self.cfg.ttcs_low, self.cfg.ttcs_high)
        for i, ((_, _, _, q, _), p) in enumerate(zip(rows, shares)):
            if len(kept) >= self.keep(len(questions)):
                break
            if q and p is not None and ttcs.in_band(p, band) and q not in seen:
                seen.add(q)
                name = f"ttcs-{step + 1}-{i}"
                kept.append(Problem(key=name, id=name, question=q))
        self.seen |= {q.question for q in kept}
        self.kept_total += len(kept)
        return kept

    def _log(self, step, rows, shares, rewards, penalty, kept, questions) -> None:
        from ttx.io import JsonlAppender

        kept_q = {k.question for k in kept}
        with JsonlAppender(self.out / "ttcs.jsonl", resume=True) as w:
            for (g, _, _, q, a), p, r, pen in zip(rows, shares, rewards, penalty):
                w.write({"step": step + 1, "source": questions[g].id, "question": q, "answer": a,
                         "p": p, "penalty": round(pen, 6), "reward": round(r, 6), "kept": q in kept_q})

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> dict:
        # the stage's KL pass (disable_adapter) leaves only the active adapter trainable: mark both
        # again so the stage's checkpoint, taken right after this, holds both
        self._use("default")
        self.trainer.save(extras={"ttcs_updates": self.updates})
        return {"updates": self.updates, "window": self.trainer.step_count, "kept_total": self.kept_total,
                "seen": sorted(self.seen)}

    def load(self, state: dict) -> None:
        extras = self.trainer.resume()
        window = state.get("window", 0)
        if (extras is None and window) or (extras is not None and self.trainer.step_count != window):
            raise TtxError(f"the synthesizer's checkpoint is not the one of the solver's (window {window})",
                           path=str(self.out / "synthesizer_train"))
        self.updates = int(state.get("updates", 0))
        self.kept_total = int(state.get("kept_total", 0))
        self.seen = set(state.get("seen", []))
        self._use("default")

    def finish(self) -> None:
        self.trainer.remove_checkpoints()

    def on_resume(self, start: int) -> None:
        from ttx.io import resume_log

        if start == 0:
            (self.out / "ttcs.jsonl").unlink(missing_ok=True)
        resume_log(self.out / "ttcs.jsonl", keep=lambda r: r["step"] <= start)


def _adapter_of(name: str) -> str | None:
    """The LoRA adapter a parameter belongs to ("...lora_A.<adapter>.weight"), None for the base."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            return parts[i + 1]
    return None


PLUGIN = TTCS
