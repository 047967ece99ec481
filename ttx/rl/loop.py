"""Online GRPO on the shared training loop: collect rollouts, score them, update, checkpoint.

One rollout step: the stage's `collect(step)` samples responses through the engine and rewards
them; the responses are scored under the sampling policy (log π_old, entropy) and, with a KL term,
under the reference; group-relative advantages are computed (ttx.rl.grpo) and optionally reshaped;
then the rollout batch is cut into updates of `groups_per_update` prompts, each an accumulation
window of micro-batches on ttx.train.Trainer (one optimizer step per update, `epochs` passes).

Checkpoints are taken at rollout-step boundaries (Trainer.save with the step in its extras), so
a resumed run restores weights, optimizer, schedule and RNG there and regenerates the next step
exactly as an uninterrupted run would: every sampling seed derives from (seed, step).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ttx.errors import TtxError
from ttx.rl.grpo import GRPOConfig, Rollout, group_advantages, grpo_loss, score_rollouts, update_batches

Collect = Callable[[int], tuple[list[Rollout], dict]]


@dataclass
class LoopConfig:
    steps: int                       # rollout steps in the whole run
    save_every: int = 1              # checkpoint every N rollout steps (0: only when stopping early)
    stop_after: int | None = None    # stop after N rollout steps in this invocation (checkpointed)
    resume: bool = False
    progress: bool = True
    desc: str = "grpo"


def updates_per_step(groups: int, rollouts_per_group: int, cfg: GRPOConfig) -> tuple[int, int]:
    """(optimizer updates per rollout step, micro-batches per update) for full groups."""
    updates = -(-groups // cfg.groups_per_update)
    micro = -(-min(groups, cfg.groups_per_update) * rollouts_per_group // cfg.micro_batch_size)
    return updates * cfg.epochs, micro


def run_loop(trainer, model, grpo: GRPOConfig, loop: LoopConfig, *, pad_id: int, collect: Collect,
             reference: Callable[[], AbstractContextManager] | None = None,
             shape: Callable[[list[Rollout]], None] | None = None,
             on_step: Callable[[int, list[Rollout], dict], None] | None = None,
             on_resume: Callable[[int], None] | None = None, state: dict | None = None,
             advantages: Callable[[list[Rollout]], dict] | None = None,
             plugin_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None) -> dict:
    """Run rollout steps [start, loop.steps); returns {"start", "done", "stopped"}.

    reference(): a context in which the yielded model is the reference policy (needed when
    grpo.kl_coef > 0). shape(rollouts): reshape the advantages in place after normalisation.
    on_step(step, rollouts, metrics): called once a step's updates are made, before its checkpoint.
    on_resume(start): called before the first step with its index (0 for a fresh start), so the
    stage can cut its own logs back. state: saved in every checkpoint; a resume whose saved state
    differs is refused. advantages(trained): sets the advantages in place (default: GRPO's group
    normalisation) and returns numbers for the step's log row. plugin_state: (get, set) of the
    plug-ins' state across steps, saved in every checkpoint and set back on resume."""
    from tqdm import tqdm

    if grpo.kl_coef and reference is None:
        raise ValueError("a KL term needs the reference policy")
    start = 0
    if loop.resume:
        extras = trainer.resume()
        if extras is not None:
            saved = extras.get("state") or {}
            if state is not None and saved != state:
                diff = sorted(k for k in set(saved) | set(state) if saved.get(k) != state.get(k))
                changes = ", ".join(f"{k}: {saved.get(k)!r} then, {state.get(k)!r} now" for k in diff[:4])
                raise TtxError(f"the checkpoint was made with other options ({changes}); rerun with "
                               "the same options or without --resume",
                               path=str(trainer.output_dir / "checkpoints"))
            start = int(extras["rollout_step"])
            if plugin_state is not None:
                plugin_state[1](extras.get("plugins") or {})
    if on_resume is not None:
        on_resume(start)
    bar = tqdm(total=loop.steps, initial=start, desc=loop.desc, unit="step", file=sys.stderr,
               disable=not (loop.progress and trainer.is_main), dynamic_ncols=True)
    stopped, done = False, start
    for step in range(start, loop.steps):
        rollouts, metrics = collect(step)
        updates = update_batches(rollouts, grpo)
        micro = [m for u in updates for m in u]
        score_rollouts(model, micro, pad_id, grpo.temperature)
        if grpo.kl_coef:
            with reference() as ref:
                score_rollouts(ref, micro, pad_id, grpo.temperature, reference=True)
        trained = [r for u in micro for r in u]
        adv_metrics = {}
        if advantages is not None:
            adv_metrics = advantages(trained) or {}
        else:
            for r, a in zip(trained, group_advantages([r.reward for r in trained],
                                                      [r.group for r in trained], grpo.eps)):
                r.advantage = a
        if shape is not None:
            shape(trained)
        row = {"rollout_step": step + 1, **metrics, **adv_metrics, **_batch_metrics(trained)}
        for _ in range(grpo.epochs):
            for update in updates:
                _update(trainer, update, grpo, pad_id, row)
        if on_step is not None:
            on_step(step, rollouts, metrics)
        bar.update(1)
        done = step + 1
        if loop.stop_after is not None and done - start >= loop.stop_after and done < loop.steps:
            trainer.save(extras=_extras(done, state, plugin_state))
            stopped = True
            break
        if loop.save_every and done % loop.save_every == 0 and done < loop.steps:
            trainer.save(extras=_extras(done, state, plugin_state))
    bar.close()
    return {"start": start, "done": done, "stopped": stopped}


def _extras(done: int, state: dict | None, plugin_state) -> dict:
    extras = {"rollout_step": done, "state": state}
    if plugin_state is not None:
        extras["plugins"] = plugin_state[0]()
    return extras


def _batch_metrics(trained: list[Rollout]) -> dict[str, float]:
    """What every GRPO step logs: mean reward, response entropy and length, |advantage|."""
    n = max(1, len(trained))
    return {"reward_mean": sum(r.reward for r in trained) / n,
            "entropy": sum(r.mean_entropy() for r in trained) / n,
            "response_tokens": sum(len(r.response_ids) for r in trained) / n,
            "abs_advantage": sum(abs(r.advantage) for r in trained) / n}


def _update(trainer, update: list[list[Rollout]], grpo: GRPOConfig, pad_id: int, row: dict) -> None:
    """One optimizer update: its micro-batches as one accumulation window (a mean over them).
    Several processes: rank r takes micro-batches r, r + world, ...; a rank with one fewer pads
    with a skipped micro-batch (the Trainer's zero loss); the Trainer averages the gradients over
    the ranks, hence the factor world here."""
    world, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
    mine = update[rank::world]
    mine += [None] * (-(-len(update) // world) - len(mine))
    if len(mine) > trainer.config.grad_accum:
        raise ValueError(f"an update of {len(update)} micro-batches exceeds grad_accum "
                         f"{trainer.config.grad_accum}")
    weight = trainer.config.grad_accum * world / len(update)    # the Trainer divides by grad_accum
    sums: dict[str, float] = {}
    seen = [0]

    def loss_fn(module, batch):
        if batch is None:
            return None
        loss, stats = grpo_loss(module, batch, grpo, pad_id)
        seen[0] += 1
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        # the Trainer keeps the last micro-batch's extras: give it the window's means so far
        return loss, {**row, **{k: v / seen[0] for k, v in sums.items()}}

    for batch in mine:
        trainer.step(batch, loss_fn, weight=weight)
    trainer.flush()
