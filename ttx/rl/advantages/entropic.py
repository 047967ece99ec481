"""`--advantage entropic`: TTT-Discover's entropic advantages (ttx.rl.entropic), β per group so that
KL(q_β || uniform) = ln 2 (the reference's entropic_adaptive_beta) or fixed by --entropic-beta (its
"entropic", train.py:62-71). Groups whose rewards are all equal are dropped as the reference drops
them (data_processing.py:196): their advantages are 0, so they add no policy gradient (they still
count in the token mean and the KL term, which the reference leaves out with them)."""

from __future__ import annotations

from ttx.rl.plugins import Advantage


class EntropicAdvantage(Advantage):
    name = "entropic"
    options = ("entropic_beta",)

    def compute(self, rollouts: list, eps: float = 1e-6) -> dict[str, float]:
        from ttx.rl.entropic import group_entropic

        adv, betas = group_entropic([r.reward for r in rollouts], [r.group for r in rollouts],
                                    self.cfg.entropic_beta)
        for r, a in zip(rollouts, adv):
            r.advantage = 0.0 if a is None else a
        groups = len({r.group for r in rollouts})
        out = {"groups_dropped": float(groups - len(betas))}
        if betas:
            out["entropic_beta"] = sum(betas.values()) / len(betas)
        return out


PLUGIN = EntropicAdvantage
