"""`--advantage grpo`: group-relative advantages, Â_i = (r_i − mean_g r) / (std_g r + ε)
(DeepSeekMath §4.1.2; verl's compute_grpo_outcome_advantage, ttx.rl.grpo.group_advantages)."""

from __future__ import annotations

from ttx.rl.plugins import Advantage


class GRPOAdvantage(Advantage):
    name = "grpo"

    def compute(self, rollouts: list, eps: float = 1e-6) -> dict[str, float]:
        from ttx.rl.grpo import group_advantages

        for r, a in zip(rollouts, group_advantages([r.reward for r in rollouts], [r.group for r in rollouts],
                                                   eps)):
            r.advantage = a
        return {}


PLUGIN = GRPOAdvantage
