"""`--reward self-certainty`: Intuitor's label-free reward (Zhao et al. 2025, arXiv 2505.19590):
the mean over the response of KL(U ‖ p_θ(· | q, o_<t)),

    r(o) = (1/|o|) Σ_t [logsumexp_v z_t,v − (1/V) Σ_v z_t,v]   (− log V, a constant, dropped),

as sunblaze-ucb/Intuitor computes it (verl-intuitor/verl/utils/torch_functional.py:151
self_certainty_from_logits; open-r1-intuitor intuitor_trainer.py:835-890, a token mean per
response), on the logits of the current policy at the sampling temperature (verl's convention).
Label-free RL collapses: the KL default is Intuitor's β = 0.005 and the collapse indicators
(answer diversity, entropy) are logged."""

from __future__ import annotations

from ttx.rl.plugins import Group, Reward, Scored
from ttx.rl.rewards.entropy import label_free_metrics


class SelfCertaintyReward(Reward):
    name = "self-certainty"
    label_free = True
    summary = ("answer_diversity", "mean_entropy", "accuracy")
    kl_default = 0.005                    # open-r1-intuitor recipes/Qwen2.5-3B/intuitor/config_demo.yaml:15

    def score(self, group: Group) -> Scored:
        stats = group.token_stats()
        rewards = [sum(s["self_certainty"]) / len(s["self_certainty"]) if s["self_certainty"] else 0.0
                   for s in stats]
        return Scored(rewards, *label_free_metrics(group, stats))


PLUGIN = SelfCertaintyReward
