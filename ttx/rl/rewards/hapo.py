"""`--reward hapo`: History-Aware Policy Optimization (Huang et al. 2025, HCY123902/HAPO).

Each problem i keeps h_i, the shortest correct response length seen so far (unknown at first).
A response of L tokens with correctness c ∈ {0, 1} earns

    r = c + w · r_len,   r_len = cos(min(L / h_i, 2) · π/2), then max(−0.7, ·) if correct,
                                  min(0, ·) if not; r_len = 0 while h_i is unknown

(HAPO utils.py compute_len_reward, lines 38-55; the cosine type and w_lr = 1.0 of train_grpo.sh).
After the whole step is scored, h_i ← min(h_i, shortest correct L of the step) (grpo_trainer.py
combined_reward_func, mode "min", lines 85-106): the rewards of a step all use the history from
before it. Correctness is ttx's grader against the record's gold answer (as --reward gold);
L counts the response's token ids (HAPO re-tokenizes the decoded completion)."""

from __future__ import annotations

import math

from ttx.rl.plugins import Group, Problem, Reward, Scored
from ttx.rl.rewards.gold import correctness, require_gold


def length_reward(length: int, history: int | None, correct: bool) -> float:
    """r_len before the weight w (HAPO utils.py:38-55)."""
    if history is None or history <= 0:
        return 0.0
    r = math.cos(length / history * math.pi / 2) if length < 2 * history else math.cos(math.pi)
    return max(-0.7, r) if correct else min(0.0, r)


class HAPOReward(Reward):
    name = "hapo"
    needs_gold = True
    kl_default = 0.04                     # TRL GRPOConfig's beta, which HAPO's train_grpo.py keeps
    options = ("hapo_weight",)
    summary = ("accuracy", "correct_length")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.history: dict[str, int] = {}    # problem key -> h_i (absent: unknown)

    def check(self, problems: list[Problem]) -> None:
        require_gold(problems, self.cfg, self.name)

    def score(self, group: Group) -> Scored:
        h = self.history.get(group.problem.key)
        correct = correctness(group.answers, group.problem.gold)
        lens = [len(ids) for ids in group.response_ids]
        rewards = [c + self.cfg.hapo_weight * length_reward(n, h, c >= 1.0) for c, n in zip(correct, lens)]
        right = [n for c, n in zip(correct, lens) if c >= 1.0]
        acc = sum(correct) / len(correct)
        record = {"accuracy": round(acc, 6), "history": h, "lengths": lens}
        metrics = {"accuracy": acc}
        if right:
            metrics["correct_length"] = sum(right) / len(right)
            record["correct_length"] = round(metrics["correct_length"], 2)
        return Scored(rewards, record, metrics)

    def end_step(self, step: int, groups: list[Group], scored: list[Scored]) -> dict[str, float]:
        for g in groups:
            marks = correctness(g.answers, g.problem.gold)
            right = [len(ids) for ids, a in zip(g.response_ids, marks) if a >= 1.0]
            if right:
                old = self.history.get(g.problem.key)
                self.history[g.problem.key] = min(right) if old is None else min(old, min(right))
        known = list(self.history.values())
        return {"history_known": float(len(known)),
                **({"history_mean": sum(known) / len(known)} if known else {})}

    def state_dict(self) -> dict:
        return {"history": dict(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {str(k): int(v) for k, v in (state.get("history") or {}).items()}


PLUGIN = HAPOReward
