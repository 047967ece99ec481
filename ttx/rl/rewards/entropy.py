"""`--reward entropy`: negative trajectory entropy, one of the label-free (URLVR) rewards the TTRL
authors study (ttx issue 36; the same reward as RENT, Prabhudesai et al. 2025, and the
trajectory-level entropy minimisation of Agarwal et al. 2025; no reference code was read for it):
r(o) = −(1/|o|) Σ_t H(p_θ(· | q, o_<t)), the policy's token entropies at the
sampling temperature (the entropies ttx.rl.grpo computes). Label-free RL collapses (entropy and
answer diversity fall to zero): the KL default is 0.005 (Intuitor's β, our choice here) and the
collapse indicators are logged: answer_diversity (distinct answers / responses) and
mean_entropy per group, averaged per step in train_log.jsonl."""

from __future__ import annotations

from ttx.rl.plugins import Group, Reward, Scored
from ttx.scoring.answers import vote_key


def label_free_metrics(group: Group, stats: list[dict]) -> tuple[dict, dict]:
    """The collapse indicators of a group: share of distinct answers among its responses (no
    answer counts as one class), mean token entropy; with gold answers, the true accuracy."""
    keys = [vote_key(a, "lm-eval") for a in group.answers]
    diversity = len(set(keys)) / len(keys) if keys else 0.0
    ents = [sum(s["entropy"]) / len(s["entropy"]) if s["entropy"] else 0.0 for s in stats]
    mean_ent = sum(ents) / len(ents) if ents else 0.0
    record = {"answer_diversity": round(diversity, 6), "mean_entropy": round(mean_ent, 6)}
    metrics = {"answer_diversity": diversity, "mean_entropy": mean_ent}
    if group.problem.gold is not None:
        from ttx.rl.rewards.gold import correctness

        acc = sum(correctness(group.answers, group.problem.gold)) / len(group.answers)
        record["accuracy"] = round(acc, 6)
        metrics["accuracy"] = acc
    return record, metrics


class EntropyReward(Reward):
    name = "entropy"
    label_free = True
    summary = ("answer_diversity", "mean_entropy", "accuracy")
    kl_default = 0.005

    def score(self, group: Group) -> Scored:
        stats = group.token_stats()
        rewards = [-(sum(s["entropy"]) / len(s["entropy"])) if s["entropy"] else 0.0 for s in stats]
        return Scored(rewards, *label_free_metrics(group, stats))


PLUGIN = EntropyReward
