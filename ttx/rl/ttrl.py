"""`ttx ttrl`: Test-Time Reinforcement Learning (Zuo et al. 2025, arXiv 2504.16084) on unlabeled
test questions, with ETTRL's entropy mechanisms (Liu et al. 2025, arXiv 2508.11356) as options.

It is `ttx rl --reward majority` (ttx.rl.stage) with TTRL's defaults: for each question N_vote
responses are sampled, the majority answer ŷ is the pseudo-label and each response is rewarded for
agreeing with it, r(y, ŷ) = 1 if answer(y) = ŷ else 0 (TTRL, eq. 2; ttx.rl.rewards.majority);
N_train of them update the policy with GRPO. Gold answers, when the input has them, are never used
for training: they only measure the pseudo-labels in the logs. Defaults are the reference
release's (PRIME-RL/TTRL verl/examples/ttrl/aime.sh, verl's ppo_trainer.yaml), KL loss 0.001 (k3).
"""

from __future__ import annotations

from dataclasses import asdict

from ttx.rl.config import RLConfig, TTRLConfig
from ttx.rl.rewards.majority import Vote, gold_metrics, majority_rewards
from ttx.rl.stage import OWN_FILES, n_train, question_order

__all__ = ["OWN_FILES", "TTRLConfig", "Vote", "gold_metrics", "majority_rewards", "n_train", "question_order",
           "run_ttrl", "to_rl"]


def to_rl(cfg: TTRLConfig) -> RLConfig:
    """ttrl's options as `ttx rl --reward majority --advantage grpo`'s."""
    return RLConfig(**asdict(cfg), reward="majority", advantage="grpo")


def run_ttrl(cfg: TTRLConfig) -> dict:
    from ttx.rl.stage import run_rl

    return run_rl(to_rl(cfg), stage="ttrl", options=asdict(cfg))
