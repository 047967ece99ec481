"""A scripted world for the search strategies' reference tests: an engine whose steps are a fixed
function of the text they continue, and a process reward model whose step scores are a fixed
function of the step texts. The strategies under test run unchanged on them; the tests write the
reference algorithm beside them and compare iteration by iteration."""

from __future__ import annotations

import hashlib

from ttx.engines.base import Generation, Trace

SEP = "\n\n"


def unit(text: str) -> float:
    """A repeatable number in (0, 1) for a text (distinct for distinct texts, in practice)."""
    return (int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) + 1) / (16 ** 12 + 2)


class ScriptedEngine:
    """generate(): the j-th sample ever asked of a text is the step f"s<depth>.<j>"; a step ends
    with EOS instead of the blank line at `eos_depth`, or when unit(text + step) < eos_rate."""

    name = "scripted"
    model_name = "scripted"

    def __init__(self, prefix: str = "P|", eos_depth: int = 99, eos_rate: float = 0.0,
                 tokens: int = 3):
        self.prefix, self.eos_depth, self.eos_rate, self.tokens = prefix, eos_depth, eos_rate, tokens
        self.asked: dict[str, int] = {}
        self.calls: list[list[tuple[str, int, object]]] = []

    def step(self, text: str) -> tuple[str, bool]:
        """The next step of `text` and whether it ends with EOS (the reference side asks this
        too, one sample at a time, in the same order)."""
        depth = text.count(SEP) + 1
        j = self.asked.get(text, 0)
        self.asked[text] = j + 1
        step = f"s{depth}.{j}"
        return step, depth >= self.eos_depth or unit(text + step) < self.eos_rate

    def generate(self, prompts, n, params):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        per = [params] * len(prompts) if not isinstance(params, (list, tuple)) else list(params)
        self.calls.append([(p, k, q) for p, k, q in zip(prompts, counts, per)])
        out = []
        for prompt, k, p in zip(prompts, counts, per):
            text = prompt[len(self.prefix):]
            traces = []
            for _ in range(k):
                step, eos = self.step(text)
                separator = SEP in p.stop and not eos
                traces.append(Trace(text=step, completion_tokens=self.tokens,
                                    finish_reason="stop", stop_string=SEP if separator else None,
                                    logprobs=[-unit(text + step)] * self.tokens))
            out.append(Generation(traces=traces, prompt_tokens=len(prompt)))
        return out

    def close(self):
        pass


def step_scores(text: str) -> list[float]:
    """The scripted PRM: step k's score depends on the path up to and including step k."""
    steps = [s for s in text.split(SEP) if s.strip()]
    return [unit(SEP.join(steps[:k + 1])) for k in range(len(steps))]


class ScriptedPRM:
    is_reward_model = True
    needs_logprobs = False
    name = "scripted-prm"

    def __init__(self):
        self.paths = 0

    def score_paths(self, paths):
        self.paths += len(paths)
        return [step_scores(SEP.join(steps)) for _, steps in paths]

    def stats(self):
        return {"reward_sequences": self.paths}
