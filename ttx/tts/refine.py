"""Self-refinement, the turn axis of 3D test-time scaling (arXiv 2511.15738).

Turn 1 answers the question (n traces; with n > 1 they vote). Each later turn shows the model its
previous solution (the first trace that gave the turn's answer) and asks it to check and correct
it. Every turn's answer is kept in the record (`refine.turns`); `pred` is the last turn's answer, or the
majority over all turns' answers (--turn-aggregate majority). `traces` holds the last turn's traces.
Each turn is one batched engine call for the whole chunk. sequential_tokens sums the longest trace
of each turn (a turn waits for the one before).
"""

from __future__ import annotations

from dataclasses import replace

from ttx.scoring.answers import majority_vote, normalize_answer
from ttx.tts.search import Account, round_seed, trace_record
from ttx.tts.strategy import Outcome, Strategy, register

REFINE_REQUEST = ("Check your solution above step by step. If you find a mistake, correct it. "
                  "Then state the final answer.")


def next_prompt(prompt, solution: str):
    """The previous turn's prompt with its solution and the request to check and correct it."""
    if isinstance(prompt, str):                          # a base model's plain text
        return f"{prompt} {solution.strip()}\n\n{REFINE_REQUEST}\nAnswer:"
    return list(prompt) + [{"role": "assistant", "content": solution.strip()},
                           {"role": "user", "content": REFINE_REQUEST}]


@register
class Refine(Strategy):
    name = "refine"
    rank = 15
    summary = "Self-refinement: T turns of answer, then check-and-correct (n traces vote per turn)."
    knobs = ("turns", "turn_aggregate")
    axes = ("n", "max_new_tokens", "turns")

    def run(self, engine, prompts, cfg):
        s, params = cfg.search, cfg.params
        accounts = [Account() for _ in prompts]
        turns: list[list[dict]] = [[] for _ in prompts]
        last_traces: list[list[dict]] = [[] for _ in prompts]
        current = list(prompts)
        for turn in range(s.turns):
            gens = engine.generate(current, cfg.n,
                                   replace(params, seed=round_seed(params.seed, turn)))
            for i, gen in enumerate(gens):
                if turn == 0:
                    accounts[i].prompt_tokens = gen.prompt_tokens
                tokens = [t.completion_tokens for t in gen.traces]
                accounts[i].add(tokens, gen.prompt_tokens, gen.cached_prompt_tokens)
                records = [trace_record(t.text, t.completion_tokens, t.finish_reason)
                           for t in gen.traces]
                preds = [r["pred"] for r in records]
                pred = majority_vote(preds, cfg.invalid_votes)
                turns[i].append({"turn": turn + 1, "pred": pred, "preds": preds,
                                 "completion_tokens": sum(tokens),
                                 "sequential_tokens": max(tokens)})
                last_traces[i] = records
                # the solution shown next: the first trace that gave the turn's answer
                key = normalize_answer(pred) if pred is not None else None
                shown = next((r for r in records if r["pred"] is not None
                              and normalize_answer(r["pred"]) == key), records[0])
                current[i] = next_prompt(current[i], shown["text"])
        outcomes = []
        for i, account in enumerate(accounts):
            preds = [t["pred"] for t in turns[i]]
            outcomes.append(Outcome(traces=last_traces[i],
                                    pred=self.pick(preds, s.turn_aggregate, cfg.invalid_votes),
                                    completion_tokens=account.completion,
                                    sequential_tokens=account.sequential,
                                    prompt_tokens=account.prompt_tokens,
                                    extra={"refine": {"turns": turns[i],
                                                      "turn_aggregate": s.turn_aggregate},
                                           **account.extra()}))
        return outcomes

    @staticmethod
    def pick(turn_preds: list, how: str, invalid: str):
        return turn_preds[-1] if how == "last" else majority_vote(turn_preds, invalid)

    @classmethod
    def aggregate(cls, record, preds, invalid):
        """The last turn's vote is recomputed from its (stored) traces; earlier turns keep their
        recorded answers (their traces are not stored)."""
        info = record.get("refine") or {}
        turns = [t.get("pred") for t in info.get("turns") or []]
        last = majority_vote(preds, invalid)
        turns = turns[:-1] + [last] if turns else [last]
        return cls.pick(turns, info.get("turn_aggregate", "last"), invalid)
