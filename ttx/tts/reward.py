"""Scorers for best-of-n, beam and dora: the policy's own confidence, or a local reward model.

Policy scorers (no extra model): `logprob`, the geometric-mean token probability exp(mean log p)
of a step or trace, and `self-certainty`, the mean KL(U || p) (Kang et al. 2025).

`--reward-model PATH`, a Hugging Face folder, read by its architecture:
  *ForSequenceClassification  an outcome reward model (ORM): one score per trace, sigmoid(logit)
                              for one label, else the probability of the last label.
  *ForCausalLM                a process reward model (PRM) that predicts a good/bad token after
                              each step: `--prm-format tag` writes each step followed by
                              --prm-step-tag (Math-Shepherd: "ки") and reads, at the tag, the
                              probability of --prm-good-token ("+") against --prm-bad-token ("-");
                              `--prm-format chat` makes each step a user turn answered by the
                              good token and reads it there (RLHFlow's PRMs).
  *ForTokenClassification     a PRM with a 2-label head at each step tag (Qwen2.5-Math-PRM:
                              --prm-step-tag "<extra_0>"): P(label 1) there.
A trace scored by a PRM is split into steps at blank lines; its steps' scores are aggregated by
--agg (last, min, prod).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ttx.errors import TtxError
from ttx.tts.search import STEP_SEPARATOR, question_of, step_score


class PolicyScorer:
    """`logprob` or `self-certainty` from the engine's own per-token numbers."""

    needs_logprobs = True

    def __init__(self, name: str):
        self.name = name

    def score_steps(self, prompts, beams, traces) -> list[float | None]:
        return [step_score(t, self.name) for t in traces]


class RewardModel:
    """A local outcome or process reward model (see the module docstring)."""

    needs_logprobs = False

    def __init__(self, path: str, search, device: str = "cpu"):
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise TtxError("not a Hugging Face model folder (no config.json)", path=str(path),
                           field="--reward-model")
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
        kinds = {"ForSequenceClassification": ("outcome", AutoModelForSequenceClassification),
                 "ForCausalLM": ("process", AutoModelForCausalLM),
                 "ForTokenClassification": ("process", AutoModelForTokenClassification)}
        found = [(suffix, kind) for a in archs for suffix, kind in kinds.items()
                 if a.endswith(suffix)]
        if not found:
            raise TtxError(f"architecture {', '.join(archs) or '(none)'} is not a reward model "
                           "(expected *ForSequenceClassification, *ForCausalLM or "
                           "*ForTokenClassification)", path=str(path), field="architectures")
        self.head, (self.kind, auto) = found[0][0], found[0][1]
        self.search = search
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = auto.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.device = device
        if self.head == "ForCausalLM":
            self.good = self._one_token(search.prm_good_token, "--prm-good-token")
            self.bad = (self._one_token(search.prm_bad_token, "--prm-bad-token")
                        if search.prm_bad_token else None)

    def _one_token(self, text: str, option: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise TtxError(f"{option} {text!r} is {len(ids)} tokens for this reward model's "
                           "tokenizer; it must be exactly one", field=option)
        return ids[0]

    # ------------------------------------------------------------------ scoring

    def _forward(self, ids: list[int]):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device))
        return out.logits[0].float()

    def outcome(self, question: str, response: str) -> float:
        import torch

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question},
                 {"role": "assistant", "content": response}], tokenize=False)
        else:
            text = f"{question}\n\n{response}"
        logits = self._forward(self.tokenizer(text).input_ids)
        if logits.shape[-1] == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, -1)[-1])

    def _positions(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of the PRM input and the position read for each step."""
        enc = lambda s: self.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
        if self.search.prm_format == "chat" and self.head == "ForCausalLM":
            conversation, positions, ids = [], [], []
            for k, step in enumerate(steps):
                content = f"{question} {step.strip()}" if k == 0 else step.strip()
                conversation += [{"role": "user", "content": content},
                                 {"role": "assistant", "content": self.search.prm_good_token}]
                ids = enc(self.tokenizer.apply_chat_template(conversation, tokenize=False))
                where = [i for i, t in enumerate(ids) if t == self.good]
                if not where:
                    raise TtxError("the reward model's chat template does not keep "
                                   "--prm-good-token as a token of its own; use --prm-format tag")
                positions.append(where[-1] - 1)     # the logits that predict the good token
            return ids, positions
        ids = enc(question + "\n")
        positions = []
        for step in steps:
            ids += enc(step.strip() + " ") + enc(self.search.prm_step_tag)
            positions.append(len(ids) - 1)
            ids += enc("\n")
        return ids, positions

    def process(self, question: str, steps: list[str]) -> list[float]:
        """One score per step, each from a single forward pass over the whole path."""
        import torch

        steps = steps or [""]
        ids, positions = self._positions(question, steps)
        logits = self._forward(ids)[positions]
        if self.head == "ForTokenClassification":
            return torch.softmax(logits, -1)[:, 1].tolist()
        if self.bad is not None:
            pair = torch.softmax(logits[:, [self.good, self.bad]], -1)
            return pair[:, 0].tolist()
        return torch.softmax(logits, -1)[:, self.good].tolist()

    def score_steps(self, prompts, beams, traces) -> list[float]:
        """The newest step of each beam (a PRM reads the whole path; an ORM the text so far)."""
        out = []
        for b in beams:
            question = question_of(prompts[b.problem])
            if self.kind == "outcome":
                out.append(self.outcome(question, b.text))
            else:
                out.append(self.process(question, [st for st in b.steps if st.strip()])[-1])
        return out

    def score_text(self, question: str, text: str) -> tuple[float, list[float]]:
        """(score, step scores) of a whole trace; PRM steps are split at blank lines."""
        if self.kind == "outcome":
            value = self.outcome(question, text)
            return value, [value]
        steps = [st for st in text.split(STEP_SEPARATOR) if st.strip()]
        scores = self.process(question, steps)
        agg = self.search.agg
        value = scores[-1] if agg == "last" else min(scores) if agg == "min" else math.prod(scores)
        return value, scores


def make_scorer(engine, cfg):
    """The scorer a strategy config asks for: a reward model, or the policy's own numbers."""
    if cfg.search.reward_model:
        device = str(getattr(engine, "device", "cpu"))
        return RewardModel(cfg.search.reward_model, cfg.search, device)
    return PolicyScorer(cfg.scorer)


def run_best_of_n_reward(engine, prompts, cfg) -> list:
    """best-of-n with --reward-model: n traces per prompt, each scored by the reward model."""
    from ttx.tts.strategies import _best_of_n, aggregate

    scorer = make_scorer(engine, cfg)
    outcomes = []
    for prompt, gen in zip(prompts, engine.generate(prompts, cfg.n, cfg.params)):
        outcome = aggregate(cfg, gen)        # records, tokens; scores replaced below
        for record in outcome.traces:
            record["score"], record["step_scores"] = scorer.score_text(question_of(prompt),
                                                                       record["text"])
        outcome.pred = _best_of_n(outcome.traces, cfg.weighted, "reward-model")
        outcome.extra = {"reward_model": cfg.search.reward_model, "reward_kind": scorer.kind}
        outcomes.append(outcome)
    return outcomes
