"""Step labels for a process reward model: from the trace's outcome, or Math-Shepherd rollouts.

Math-Shepherd (Wang et al., arXiv 2312.08935, sec. 3.3) labels step s_i of a solution by letting
a "completer" finish the solution N times from the prefix s_1..s_i and checking the N answers
against the gold answer a*:
  hard estimation (HE, eq. 3):  y_i = 1 if any completion reaches a*, else 0
  soft estimation (SE, eq. 4):  y_i = (number of completions reaching a*) / N
The last step closes the solution, whose answer is already written: its label is the trace's own
verdict, with no rollouts.

`outcome` labels need no generation: every step of a correct trace is good, every step of a wrong
trace is bad. This is SE with N = 1 whose single completion is the trace's own continuation: its
expectation is the probability that the policy, continuing from the prefix, reaches a*, which is
what SE estimates with N completions, only with more noise. Where HE is certain it agrees: a
correct trace is a completion that reaches a* from each of its prefixes (HE: all good), and the
last step of a wrong trace is bad. The alternative, marking only the last step of a wrong trace
bad and leaving its other steps unlabelled, would teach that intermediate steps are always good,
so a beam search reading them would learn nothing from them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ttx.errors import TtxError
from ttx.reward_inputs import STEP_SEPARATOR, split_steps
from ttx.verifier.data import Example

LABEL_TYPES = ("hard", "soft")


def outcome_labels(steps: list[str], correct: bool) -> list[float]:
    return [1.0 if correct else 0.0] * len(steps)


def step_prefixes(text: str) -> list[str]:
    """The trace's raw text up to the end of step k and the blank line after it, for each step
    but the last (the steps of reward_inputs.split_steps; the text itself is never re-joined)."""
    ends, pos = [], 0
    for piece in text.split(STEP_SEPARATOR):
        pos += len(piece)
        if piece.strip():
            ends.append(pos)
        pos += len(STEP_SEPARATOR)
    return [text[:end] + STEP_SEPARATOR for end in ends[:-1]]


def estimate(hits: list[bool], label_type: str) -> float:
    """Math-Shepherd eq. 3 (hard) or eq. 4 (soft) from the completions' verdicts."""
    if not hits:
        raise ValueError("no completions to estimate from")
    if label_type == "hard":
        return 1.0 if any(hits) else 0.0
    if label_type == "soft":
        return sum(hits) / len(hits)
    raise ValueError(f"label type must be hard or soft, got {label_type!r}")


def rollout_labels(example: Example, completions: list[list[str]], label_type: str) -> list[float]:
    """Labels of every step of a trace from the completions run after each of its prefixes
    (completions[k]: the texts generated after prefix k+1); the last step: its own verdict."""
    from ttx.scoring.answers import answers_equal, extract_answer

    prefixes = step_prefixes(example.text)
    if len(completions) != len(prefixes):
        raise ValueError(f"{len(prefixes)} prefixes but {len(completions)} completion lists")
    labels = []
    for prefix, texts in zip(prefixes, completions):
        hits = [answers_equal(extract_answer(prefix + c), example.gold) for c in texts]
        labels.append(estimate(hits, label_type))
    return labels + [1.0 if example.correct else 0.0]


@dataclass
class RolloutConfig:
    k: int = 8                                 # N completions per prefix (Math-Shepherd: 8)
    label_type: str = "hard"
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    chunk: int = 8                             # prefixes per engine call
    instruction: str | None = None             # how the policy's prompt was built (tts-run's)
    system: str | None = None
    chat: bool = True
    progress: bool = True


@dataclass
class RolloutCost:
    prefixes: int = 0
    completions: int = 0
    tokens: int = 0                            # completion tokens generated
    prompt_tokens: int = 0
    calls: int = 0
    reused: int = 0                            # prefixes read back from an earlier run
    wall_s: float = 0.0


def label_by_rollouts(engine, examples: list[Example], cfg: RolloutConfig, log: Path | None,
                      resume: bool = False) -> RolloutCost:
    """Set example.step_labels from K completions after each step prefix, through the engine.

    Every prefix's completions are appended to `log` (rollouts.jsonl) chunk by chunk; with
    `resume`, chunks already there are read back instead of generated again (each chunk's seed
    derives from --seed and the chunk's index, so a resumed run gets the same labels)."""
    from tqdm import tqdm

    from ttx.engines.base import SamplingParams, local
    from ttx.io import JsonlAppender, resume_log
    from ttx.models import render_prompt
    from ttx.prompts import build_prompt
    from ttx.seeds import call_seed

    if cfg.label_type not in LABEL_TYPES:
        raise TtxError(f"must be hard or soft, got {cfg.label_type!r}", field="--label-type")
    policy = local(engine)
    if policy is None:
        raise TtxError("process labels continue each step prefix as raw templated text, which "
                       "needs the policy's tokenizer: use --engine hf", field="--engine")
    jobs = []                                  # (example index, step, raw prompt text)
    heads: dict[str, str] = {}
    for i, e in enumerate(examples):
        prefixes = step_prefixes(e.text)
        if prefixes and e.question not in heads:
            prompt = build_prompt(e.question, instruction=cfg.instruction, system=cfg.system,
                                  chat=cfg.chat)
            heads[e.question] = render_prompt(policy.tokenizer, prompt)
        jobs += [(i, k, heads[e.question] + p) for k, p in enumerate(prefixes)]
    chunks = [jobs[c:c + cfg.chunk] for c in range(0, len(jobs), cfg.chunk)]
    done: dict[int, list[dict]] = {}
    if log is not None and resume:
        for row in resume_log(log):
            done.setdefault(int(row["chunk"]), []).append(row)
    cost = RolloutCost(prefixes=len(jobs))
    texts: dict[tuple[int, int], list[str]] = {}
    t0 = time.perf_counter()
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p)
    appender = JsonlAppender(log, resume=True) if log is not None else None
    try:
        bar = tqdm(total=len(jobs), desc="rollouts", unit="prefix", disable=not cfg.progress,
                   dynamic_ncols=True)
        for c, chunk in enumerate(chunks):
            rows = done.get(c, [])
            if len(rows) == len(chunk):
                for (i, k, prompt), row in zip(chunk, rows):
                    if row["prefix_sha"] != _sha(prompt) or row["trace"] != examples[i].key:
                        raise TtxError("rollouts.jsonl was written for other traces; rerun with "
                                       "--overwrite", path=str(log), field="prefix_sha")
                    texts[(i, k)] = row["completions"]
                cost.reused += len(chunk)
                bar.update(len(chunk))
                continue
            gens = engine.generate([p for _, _, p in chunk], cfg.k,
                                   _seeded(params, call_seed(cfg.seed, c)))
            cost.calls += 1
            for (i, k, prompt), gen in zip(chunk, gens):
                completions = [t.text for t in gen.traces]
                texts[(i, k)] = completions
                tokens = sum(t.completion_tokens for t in gen.traces)
                cost.tokens += tokens
                cost.prompt_tokens += gen.prompt_tokens
                if appender is not None:
                    appender.write({"chunk": c, "trace": examples[i].key, "step": k + 1,
                                    "prefix_sha": _sha(prompt), "completions": completions,
                                    "completion_tokens": tokens})
            bar.update(len(chunk))
        bar.close()
    finally:
        if appender is not None:
            appender.close()
    cost.completions = len(jobs) * cfg.k
    for i, e in enumerate(examples):
        n = len(step_prefixes(e.text))
        e.step_labels = rollout_labels(e, [texts[(i, k)] for k in range(n)], cfg.label_type)
        assert len(e.step_labels) == len(split_steps(e.text))
    cost.wall_s = time.perf_counter() - t0
    return cost


def _seeded(params, seed):
    from dataclasses import replace

    return replace(params, seed=seed)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
