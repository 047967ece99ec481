"""`--reward discover`: TTT-Discover (Yuksekgonul et al. 2026; test-time-training/discover) on a task
with a continuous score, the Countdown problems of ttx.data.countdown.

Each problem keeps an archive of its earlier valid answers (ttx.rl.puct.PUCTBuffer, one per problem,
starting from one empty state of value 0). At each rollout step the problem's group starts from the
state PUCT picks: the empty state asks the question as it is; any other shows that earlier answer,
its distance to the target and its parent's, and asks for a closer one (the reference's
_get_improvement_prompt shows the previous solution with its value before and after, e.g.
recipes/ttt/env_erdos.py:85-105). Each response earns the task's continuous reward, 1/(1 + |value −
T|), 0 when invalid (ttx.data.countdown). After the step every valid response is archived as a child
of its start state (and backs up its value), every invalid one counts as a visit without a value
(env_ttt.py:320-330), then the archive keeps its best children (sampler.py:601-617).

The archives, and the best reward seen so far per problem, are per-run state saved in every
checkpoint (state_dict), so a --resume continues them exactly. train_log.jsonl carries, per step,
the samples scored so far and the best-so-far reward (mean over the problems seen, and max).
The records need `numbers` and `target` (ttx.data.countdown's format); a record without them is
refused before a model loads.
"""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.rl.plugins import Group, Problem, Reward, Scored


class DiscoverReward(Reward):
    name = "discover"
    kl_default = 0.0                      # the reference's kl_penalty_coef (recipes/ttt/train.py:41)
    options = ("discover_c", "discover_topk", "discover_buffer")
    summary = ("reward_max", "best_so_far")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tasks: dict[str, tuple[list[int], int]] = {}   # problem key -> (numbers, target)
        self.buffers: dict = {}                               # problem key -> PUCTBuffer
        self.best: dict[str, float] = {}                      # problem key -> best reward so far
        self.samples = 0                                      # responses scored so far
        self.starts: dict[str, object] = {}                   # problem key -> this step's start state

    def check(self, problems: list[Problem]) -> None:
        """Every record must carry numbers and a target, read again from the input file (by id: the
        problems are its records)."""
        from ttx.data.countdown import problem_fields
        from ttx.records import read_records

        if str(self.cfg.input) == "-":
            raise TtxError("--reward discover reads each record's numbers and target from the input "
                           "file: give a file, not stdin", field="--input")
        rows = read_records(self.cfg.input, required=[self.cfg.question_field],
                            strings=[self.cfg.question_field], id_field=self.cfg.id_field,
                            limit=self.cfg.limit)
        by_id = {row.id: row for row in rows}
        for p in problems:
            row = by_id[str(p.id)]
            self.tasks[p.key] = problem_fields(row.data, self.cfg.input, row.line)

    def _buffer(self, key: str):
        from ttx.rl.puct import PUCTBuffer

        if key not in self.buffers:
            cfg = self.cfg
            self.buffers[key] = PUCTBuffer(cfg.discover_c, cfg.discover_topk, cfg.discover_buffer)
        return self.buffers[key]

    def prompt(self, problem: Problem, step: int, text):
        """The built prompt for the empty start state; otherwise the question with the earlier
        answer PUCT starts this group from, built the same way (--instruction, --system, --chat)."""
        from ttx.data.countdown import score_expression
        from ttx.prompts import build_prompt

        [start] = self._buffer(problem.key).select(1)
        self.starts[problem.key] = start
        if not start.text:
            return text
        numbers, target = self.tasks[problem.key]
        now = score_expression(start.text, numbers, target)
        lines = [problem.question, "",
                 f"A previous answer: {start.text} = {now.value:g}, off by {now.distance:g}."]
        if start.parent_values and start.parent_values[0] > 0:
            lines.append(f"The answer it improved on was off by {1 / start.parent_values[0] - 1:g}.")
        lines.append(f"Find an expression closer to {target}.")
        return build_prompt("\n".join(lines), instruction=self.cfg.instruction, system=self.cfg.system,
                            chat=self.cfg.chat)

    def score(self, group: Group) -> Scored:
        from ttx.data.countdown import check_finite, score_response

        numbers, target = self.tasks[group.problem.key]
        scores = [score_response(t, numbers, target) for t in group.texts]
        rewards = [check_finite(s.reward, f"problem {group.problem.id!r}, response {i}")
                   for i, s in enumerate(scores)]
        start = self.starts.get(group.problem.key)
        valid = [s for s in scores if s.valid]
        best = max(self.best.get(group.problem.key, 0.0), *rewards)
        where = None if start is None else {"id": start.id, "text": start.text, "value": start.value}
        record = {"reward_max": max(rewards), "best_so_far": best, "start": where,
                  "expressions": [s.expression for s in scores],
                  "distances": [s.distance for s in scores]}
        metrics = {"valid": len(valid) / len(scores), "reward_max": max(rewards)}
        if valid:
            metrics["distance_min"] = min(s.distance for s in valid)
        return Scored(rewards, record, metrics,
                      [{"expression": s.expression, "distance": s.distance} for s in scores])

    def end_step(self, step: int, groups: list[Group], scored: list[Scored]) -> dict[str, float]:
        for g, sc in zip(groups, scored):
            key = g.problem.key
            buf, start = self._buffer(key), self.starts[key]
            for info, r in zip(sc.infos, sc.rewards):
                if info["distance"] is None:
                    buf.failed(start)
                else:            # archived by the expression's text without spaces
                    buf.add(start, "".join(info["expression"].split()), r, step)
            buf.flush()
            self.best[key] = max(self.best.get(key, 0.0), *sc.rewards)
            self.samples += len(sc.rewards)
        self.starts = {}
        best = list(self.best.values())
        return {"samples": float(self.samples), "best_so_far": sum(best) / len(best),
                "best_so_far_max": max(best),
                "buffer_size": sum(len(b.states) for b in self.buffers.values()) / len(self.buffers)}

    def state_dict(self) -> dict:
        return {"buffers": {k: b.to_dict() for k, b in self.buffers.items()}, "best": dict(self.best),
                "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        from ttx.rl.puct import PUCTBuffer

        self.buffers = {str(k): PUCTBuffer.from_dict(v) for k, v in (state.get("buffers") or {}).items()}
        self.best = {str(k): float(v) for k, v in (state.get("best") or {}).items()}
        self.samples = int(state.get("samples", 0))


PLUGIN = DiscoverReward
