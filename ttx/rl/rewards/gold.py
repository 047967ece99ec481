"""`--reward gold`: the verifiable reward of RLVR, the baseline of every paper in this family:
r(y) = 1 if ttx's grader finds answer(y) equal to the record's gold answer, else 0
(ttx.scoring.answers: the same extraction and equality tts-run's scoring uses)."""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.rl.plugins import Group, Problem, Reward, Scored
from ttx.scoring.answers import answers_equal


def correctness(answers: list[str | None], gold: str) -> list[float]:
    return [1.0 if a is not None and answers_equal(a, gold) else 0.0 for a in answers]


def require_gold(problems: list[Problem], cfg, name: str) -> None:
    """Refuse, naming the first record without a gold answer."""
    for p in problems:
        if p.gold is None:
            raise TtxError(f"--reward {name} needs a gold answer on every record; record {p.id!r} "
                           "has none", path=cfg.input, field=cfg.answer_field)


class GoldReward(Reward):
    name = "gold"
    needs_gold = True
    kl_default = 0.001                    # verl's kl_loss_coef, as for TTRL
    summary = ("accuracy",)

    def check(self, problems: list[Problem]) -> None:
        require_gold(problems, self.cfg, self.name)

    def score(self, group: Group) -> Scored:
        rewards = correctness(group.answers, group.problem.gold)
        acc = sum(rewards) / len(rewards)
        return Scored(rewards, {"accuracy": round(acc, 6)},
                      {"accuracy": acc, "pass_at_n": 1.0 if any(rewards) else 0.0})


PLUGIN = GoldReward
