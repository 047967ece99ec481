"""An LLM as judge: `--reward-model judge:self | judge:FOLDER | judge:URL` (--judge-scale).

The judge reads the question and a (partial) solution and answers in one of two scales:

  0-10    its_hub's LLMJudge (Red-Hat-AI-Innovation-Team/its_hub,
          its_hub/core/reward_models/llm_judge.py, "LLMJudge"): its DEFAULT_JUDGE_PROMPT over the
          conversation written `role: content` per line (_format_conversation), the answer read by
          _parse_score (JSON, a ```json block, the first {...}, then the regex "score": N) and
          divided by 10. An answer it cannot read gets its fallback_score 5.0 (0.5 here).
  yes-no  "Is the last answer correct? Yes or No" (ttx's wording: neither reference has a yes/no
          judge), read by thinkbooster's critic parser (IINemo/thinkbooster,
          llm_tts/scorers/step_scorer_llm_critic.py _parse_value_output) with yes/no as its labels
          and correct / incorrect, wrong as their synonyms; unmatched text gets its 0.0.
          Score: P(yes) from the answer's log-probabilities where the engine returns them
          (p of "Yes", else 1 - p of "No", p the probability of the label's first token as the
          engine reports it), else 1 or 0.

An answer that does not parse is never an error: it is counted (`judge_unparsed` in the run's
manifest) and scored as the reference scores it. Where the engine honours output constraints
(both ttx engines), the answer is constrained to the scale (`{"score": N}` with N an integer
0-10, or exactly Yes / No), so it parses unless cut off.

Outcome judging (best-of-n) judges the whole solution; step judging (beam, dvts, dora) judges
each prefix of the path (the question and the steps so far, as its_hub's judge reads a
conversation), so a path's step scores are the judge's scores of its prefixes; a prefix judged
once is not judged again (greedy answers: the same prompt, the same answer).

The judge: `self` is the policy engine; a folder opens a local model (hf); an http(s) URL an
OpenAI-compatible server (the openai engine, with its deadline, size caps and redirect refusal;
$TTX_TIMEOUT_S, $TTX_MAX_RETRIES, $TTX_DEADLINE_S apply). Its prompt and completion tokens are
counted in the manifest (`judge_prompt_tokens`, `judge_completion_tokens`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ttx.errors import TtxError

PREFIX = "judge:"
SCALES = ("0-10", "yes-no")

# its_hub/core/reward_models/llm_judge.py, LLMJudge.DEFAULT_JUDGE_PROMPT (the text the judge reads)
RATING_PROMPT = """Score the following conversation on a scale of 0-10.
Return only a JSON object with your score.

Conversation:
{conversation}

Format: {{"score": <number>}}"""
RATING_FALLBACK = 5.0          # LLMJudge(fallback_score=5.0)
RATING_MAX = 10.0              # the prompt's scale: a rating r scores r / 10

# ttx's own wording, in the rating prompt's shape
YES_NO_PROMPT = """Is the last answer in the following conversation correct?
Answer with only Yes or No.

Conversation:
{conversation}

Answer (Yes or No):"""
YES_NO_LABELS = {"yes": 1.0, "no": 0.0}
YES_NO_SYNONYMS = {"correct": 1.0, "incorrect": 0.0, "wrong": 0.0}
YES_NO_FALLBACK = 0.0          # thinkbooster's parser: unmatched text scores 0.0

RATING_PATTERN = r'\{"score": (10|[0-9])\}'
ANSWER_TOKENS = {"0-10": 16, "yes-no": 4}   # a constrained answer fits in these
FREE_TOKENS = 512              # reward_hub's PointwiseJudgeModel(max_tokens=512), free text


def parse_spec(value: str) -> tuple[str, str]:
    """("self" | "url" | "folder", target) of a `judge:...` value; one TtxError line if bad."""
    target = value[len(PREFIX):].strip()
    if not target:
        raise TtxError("judge: names no judge (judge:self, judge:FOLDER or judge:http(s)://...)",
                       field="--reward-model")
    if target == "self":
        return "self", target
    if "://" in target:
        scheme = target.split("://", 1)[0].lower()
        if scheme not in ("http", "https") or not target.split("://", 1)[1].strip("/"):
            raise TtxError(f"judge:{target}: a judge server's URL must be http(s)://host[...]",
                           field="--reward-model")
        return "url", target
    if not Path(target).is_dir():
        raise TtxError(f"judge:{target}: no such model folder (judge:self, judge:FOLDER or "
                       "judge:http(s)://...)", field="--reward-model")
    return "folder", target


def is_judge(reward_model: str | None) -> bool:
    return bool(reward_model) and reward_model.startswith(PREFIX)


def conversation(question: str, response: str) -> str:
    """LLMJudge._format_conversation of [user question, assistant response]."""
    return f"user: {question}\nassistant: {response}"


def judge_prompt(scale: str, question: str, response: str) -> str:
    template = RATING_PROMPT if scale == "0-10" else YES_NO_PROMPT
    return template.format(conversation=conversation(question, response))


def _json_object(text: str):
    """LLMJudge._extract_json: the text as JSON, else a ```json block's, else the first {...}'s."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    block = re.search(r"```(?:json)?\s*\n?(.*?)\n?```", text, re.DOTALL)
    if block:
        try:
            return json.loads(block.group(1).strip())
        except json.JSONDecodeError:
            pass
    brace = re.search(r"\{[^{}]*\}", text)
    if brace:
        try:
            return json.loads(brace.group(0))
        except json.JSONDecodeError:
            pass
    return None


def parse_rating(text: str) -> float | None:
    """The 0-10 rating in a judge's answer as LLMJudge._parse_score reads it; None where it falls
    back (no JSON, no usable "score", no "score": N in the text)."""
    parsed = _json_object(text)
    if parsed is not None:
        try:
            value = float(parsed.get("score", math.nan))
        except (ValueError, TypeError, AttributeError):
            return None
        return value if math.isfinite(value) else None
    match = re.search(r'"score"\s*:\s*([\d.]+)', text)
    if match:
        try:
            return float(match.group(1))
        except ValueError:
            pass
    return None


def parse_yes_no(text: str) -> float | None:
    """1.0 (yes) or 0.0 (no) as thinkbooster's _parse_value_output finds a label; None where it
    finds none (it scores that 0.0)."""
    lower = text.lower().strip()
    words = {**YES_NO_LABELS, **YES_NO_SYNONYMS}
    by_length = sorted(words, key=len, reverse=True)
    lines = [line.strip() for line in lower.splitlines() if line.strip()]
    if lines:
        last = re.sub(r"[^a-z]+", " ", lines[-1]).strip()
        if last in YES_NO_LABELS:
            return YES_NO_LABELS[last]
        for token in last.split():
            if token in words:
                return words[token]
    for word in by_length:
        if lower.startswith(word):
            return words[word]
    for word in by_length:
        if re.search(r"\b" + re.escape(word) + r"\b", lower):
            return words[word]
    for token in re.sub(r"[^a-z\s]+", " ", lower).split():
        if token in words:
            return words[token]
    return None


class Judge:
    """A judge model as a scorer (the interface of ttx.tts.reward.RewardModel)."""

    is_reward_model = True
    needs_logprobs = False
    name = "judge"
    prm_input = None           # steps split as the strategy's construction says

    def __init__(self, engine, scale: str, owned: bool = False):
        self.engine, self.scale, self.owned = engine, scale, owned
        self.counts = {"judge_calls": 0, "judge_cached": 0, "judge_prompt_tokens": 0,
                       "judge_completion_tokens": 0, "judge_unparsed": 0,
                       "judge_out_of_range": 0}
        self._seen: dict[tuple[str, str], float] = {}

    def _params(self):
        from ttx.engines.base import Constraint, SamplingParams

        if not self.engine.supports_constraints:
            return SamplingParams(max_new_tokens=FREE_TOKENS, temperature=0.0, seed=0,
                                  logprobs=self.scale == "yes-no")
        constraint = (Constraint.regex(RATING_PATTERN) if self.scale == "0-10"
                      else Constraint.choice(("Yes", "No")))
        return SamplingParams(max_new_tokens=ANSWER_TOKENS[self.scale], temperature=0.0, seed=0,
                              logprobs=self.scale == "yes-no", constraint=constraint)

    def _read(self, trace) -> float:
        if self.scale == "0-10":
            rating = parse_rating(trace.text)
            if rating is None:
                self.counts["judge_unparsed"] += 1
                rating = RATING_FALLBACK
            if not 0.0 <= rating <= RATING_MAX:
                self.counts["judge_out_of_range"] += 1
                rating = min(max(rating, 0.0), RATING_MAX)
            return rating / RATING_MAX
        label = parse_yes_no(trace.text)
        if label is None:
            self.counts["judge_unparsed"] += 1
            return YES_NO_FALLBACK
        if trace.logprobs and trace.text.strip().lower() in YES_NO_LABELS:
            p = math.exp(trace.logprobs[0])        # the label's first token (EOS may follow)
            return p if label == 1.0 else 1.0 - p
        return label

    def judge(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The judge's score in [0, 1] of each (question, response), in one engine call."""
        todo = sorted({pair for pair in pairs if pair not in self._seen})
        self.counts["judge_cached"] += len(pairs) - len(todo)
        if todo:
            prompts = [[{"role": "user", "content": judge_prompt(self.scale, q, r)}]
                       for q, r in todo]
            gens = self.engine.generate(prompts, 1, self._params())
            self.counts["judge_calls"] += len(todo)
            for pair, gen in zip(todo, gens):
                self.counts["judge_prompt_tokens"] += gen.prompt_tokens
                self.counts["judge_completion_tokens"] += sum(t.completion_tokens
                                                              for t in gen.traces)
                self._seen[pair] = self._read(gen.traces[0])
        return [self._seen[pair] for pair in pairs]

    def score_texts(self, pairs: list[tuple[str, str]]) -> list[tuple[float, list[float]]]:
        """Outcome judging: (score, [score]) of whole solutions."""
        return [(s, [s]) for s in self.judge(pairs)]

    def score_paths(self, paths: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Step judging: each path's scores of its prefixes (question, steps[:k])."""
        from ttx.reward_inputs import STEP_SEPARATOR

        pairs = [[(q, STEP_SEPARATOR.join(steps[:k + 1])) for k in range(len(steps) or 1)]
                 for q, steps in paths]
        flat = iter(self.judge([pair for prefixes in pairs for pair in prefixes]))
        return [[next(flat) for _ in prefixes] for prefixes in pairs]

    def stats(self) -> dict:
        return dict(self.counts)

    def close(self) -> None:
        if self.owned:
            self.engine.close()


def open_judge(engine, search) -> Judge:
    """The judge `search.reward_model` names, over the policy engine or one opened here."""
    from ttx.engines import open_engine
    from ttx.engines.base import local

    kind, target = parse_spec(search.reward_model)
    scale = search.judge_scale or "0-10"
    if kind == "self":
        return Judge(engine, scale)
    if kind == "folder":
        policy = local(engine)
        device = str(policy.device) if policy else "auto"
        return Judge(open_engine("hf", model=target, device=device), scale, True)
    from ttx.models import DEFAULT_MODEL

    # the default alias: the server's first served model
    return Judge(open_engine("openai", model=DEFAULT_MODEL, base_url=target), scale, True)
