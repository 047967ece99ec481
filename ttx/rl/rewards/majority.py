"""`--reward majority`: TTRL's majority-vote reward (Zuo et al. 2025, arXiv 2504.16084, eq. 2),

    r(y, ŷ) = 1 if answer(y) = ŷ else 0,   ŷ the majority answer of the group's N_vote responses.

Gold answers, when records have them, only measure the pseudo-labels (TTRL's ttt_metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ttx.rl.plugins import Group, Reward, Scored
from ttx.scoring.answers import answers_equal, extract_answer, vote_key, winner


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


class MajorityReward(Reward):
    name = "majority"
    kl_default = 0.001                    # TTRL's release (verl kl_loss_coef 0.001)
    options = ("invalid_votes",)
    summary = ("majority_ratio", "label_accuracy", "reward_accuracy")

    def score(self, group: Group) -> Scored:
        vote = majority_rewards(group.texts, self.cfg.invalid_votes)
        record = {"label": vote.label, "majority_ratio": round(vote.majority_ratio, 6)}
        metrics = {"majority_ratio": vote.majority_ratio}
        if group.problem.gold is not None:
            gm = gold_metrics(vote, group.problem.gold)
            record.update({k: round(v, 6) for k, v in gm.items()})
            metrics.update(gm)
        return Scored(vote.rewards, record, metrics)


PLUGIN = MajorityReward
