"""`--advantage mrt`: MRT's per-episode advantages (Qu et al. 2025, arXiv 2503.07572), with
`--reward mrt`. Every token of episode j of a response gets

    A_t = Â(outcome) + α r_prg(z_j),   Â = (c_i − mean_g c) / (std_g c + ε)

the group-relative advantage of the 0/1 outcome (ttx.rl.grpo.group_advantages) plus α times the
episode's progress (the dense bonus of paper eq. 6.2, credited to the episode that earned it; MRT's
train/rl/README.md: an advantage against the termination reward J of the prefix, not a group mean,
for the bonus). The rollout's scalar `advantage` is Â(outcome)."""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.rl.plugins import Advantage


class MRTAdvantage(Advantage):
    name = "mrt"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.reward != "mrt":
            raise TtxError(f"needs --reward mrt (its episodes and progress), not {cfg.reward}",
                           field="--advantage")

    def compute(self, rollouts: list, eps: float = 1e-6) -> dict[str, float]:
        from ttx.rl import mrt
        from ttx.rl.grpo import group_advantages

        outcomes = [float(r.info["mrt_outcome"]) for r in rollouts]
        for r, a in zip(rollouts, group_advantages(outcomes, [r.group for r in rollouts], eps)):
            r.advantage = a
            r.token_advantages = mrt.token_advantages(a, r.info["mrt_token_starts"], len(r.response_ids),
                                                      r.info["mrt_j"], self.cfg.mrt_alpha)
        n = sum(len(r.token_advantages) for r in rollouts)
        return {"token_advantage_abs": sum(abs(v) for r in rollouts for v in r.token_advantages) / max(1, n)}


PLUGIN = MRTAdvantage
