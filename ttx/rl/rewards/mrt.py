"""`--reward mrt`: Meta Reinforcement fine-Tuning (Qu et al. 2025, arXiv 2503.07572; CMU-AIRe/MRT).

Each response is cut into episodes (ttx.rl.mrt.episode_starts: paragraphs opening with "Wait",
"Alternatively", ... as the authors' analysis cuts them). J after a prefix is the share of m
answers, forced after it with the reference's "Time is up." text and sampled at temperature 0.6,
that ttx's grader finds equal to the gold answer (the text graded is prefix + forced text +
answer, as regret.ipynb grades prompt + completion). J_0 is forced after nothing (once per group:
the same distribution for every response); J_n, after the whole response, is its outcome.

    reward = outcome + α Σ_j r_prg(z_j),  r_prg(z_j) = J_j − J_{j−1}       (paper Def. 6.1, eq. 6.2)

The per-episode parts travel in each response's info (episode token starts, J values, outcome)
for `--advantage mrt`, which gives every token of episode j the group advantage of the outcome
plus α r_prg(z_j). The cumulative regret of the step's responses (ttx.rl.mrt.normalized_regret,
the reference's definition) is logged as `regret`."""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.rl import mrt
from ttx.rl.plugins import Group, Problem, Reward, Scored
from ttx.rl.rewards.gold import correctness, require_gold

FORCED_TOP_P = 0.95      # analysis/scripts/regret/pass_at_k_given_prefix.sh: --top_p 0.95


def forced_correct(prefix: str, answer: str, gold: str) -> float:
    """1 if the answer forced after `prefix` is right (ttx's grader, gold as --reward gold)."""
    from ttx.scoring.answers import answers_equal, extract_answer

    pred = extract_answer(prefix + mrt.FORCED_ANSWER + answer)
    return 1.0 if pred is not None and answers_equal(pred, gold) else 0.0


def char_to_token(tokenizer, ids: list[int], offset: int) -> int:
    """The number of leading tokens whose decoded text ends at or before `offset` (binary search
    on the decoded prefix length): the token an episode starting at that character starts at."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


class MRTReward(Reward):
    name = "mrt"
    needs_gold = True
    kl_default = 0.001                    # the gold reward's (verl's kl_loss_coef); MRT gives none
    options = ("mrt_alpha", "mrt_samples", "mrt_answer_tokens", "mrt_temperature", "mrt_max_episodes",
               "mrt_group", "mrt_budget")

    def check(self, problems: list[Problem]) -> None:
        require_gold(problems, self.cfg, self.name)

    def score(self, group: Group) -> Scored:
        from ttx.engines.base import SamplingParams, TokenPrompt
        from ttx.seeds import call_seed

        cfg, tok, gold = self.cfg, group.tokenizer, group.problem.gold
        if group.engine is None or tok is None:
            raise TtxError("needs the rollout engine to force answers", field="--reward")
        outcomes = correctness(group.answers, gold)
        cut = [mrt.episode_starts(t, cfg.mrt_max_episodes, cfg.mrt_group) for t in group.texts]
        prefixes = [mrt.forced_prefixes(mrt.episodes(t, cfg.mrt_max_episodes, cfg.mrt_group))
                    for t in group.texts]
        # one forced prompt for J_0 (shared), then one per response and inner boundary
        texts = [""] + [p for ps in prefixes for p in ps[1:]]
        prompts = [TokenPrompt([*group.prompt_ids,
                                *tok(p + mrt.FORCED_ANSWER, add_special_tokens=False).input_ids])
                   for p in texts]
        params = SamplingParams(max_new_tokens=cfg.mrt_answer_tokens, temperature=cfg.mrt_temperature,
                                top_p=FORCED_TOP_P, seed=call_seed(group.seed, 7))
        gens = group.engine.generate(prompts, cfg.mrt_samples, params)
        js, costs = [], []
        for text, prompt, gen in zip(texts, prompts, gens):
            js.append(sum(forced_correct(text, t.text, gold) for t in gen.traces) / len(gen.traces))
            # analysis/code/regret.ipynb cell 10: prompt tokens + answer tokens / 16
            costs.append(len(prompt.ids) + sum(t.completion_tokens for t in gen.traces)
                         / mrt.ANSWER_COST_DIVISOR)
        rewards, infos, curves, pos = [], [], [], 1
        budget_default = len(group.prompt_ids) + (group.params.max_new_tokens if group.params else 0)
        for i, (ids, starts) in enumerate(zip(group.response_ids, cut)):
            inner = len(starts) - 1
            j = [js[0], *js[pos:pos + inner], outcomes[i]]
            x = [costs[0], *costs[pos:pos + inner], len(group.prompt_ids) + len(ids)]
            pos += inner
            token_starts = [0] + [char_to_token(tok, ids, s) for s in starts[1:]]
            rewards.append(mrt.mrt_reward(outcomes[i], j, cfg.mrt_alpha))
            infos.append({"mrt_outcome": outcomes[i], "mrt_j": j, "mrt_token_starts": token_starts})
            curves.append((j, x, float(cfg.mrt_budget or budget_default or x[-1])))
        prg = [p for info in infos for p in mrt.progress(info["mrt_j"])]
        regret = mrt.cumulative_regret(curves)
        acc = sum(outcomes) / len(outcomes)
        record = {"accuracy": round(acc, 6), "j": [[round(v, 6) for v in i["mrt_j"]] for i in infos],
                  "episodes": [len(s) for s in cut], "regret": round(regret, 6)}
        metrics = {"accuracy": acc, "regret": regret, "j0": js[0],
                   "episodes": sum(len(s) for s in cut) / len(cut),
                   "progress_mean": sum(prg) / len(prg),
                   "forced_answers": float(len(prompts) * cfg.mrt_samples)}
        return Scored(rewards, record, metrics, infos)


PLUGIN = MRTReward
