"""Scorers for best-of-n, beam, dvts and dora: the policy's own confidence, or a reward model.

Policy scorers (no extra model): `logprob`, the geometric-mean token probability exp(mean log p)
of a step or trace, and `self-certainty`, the mean KL(U || p) (Kang et al. 2025).

`--reward-model PATH`, a local Hugging Face folder, loaded once per run and read by its
`ttx_reward.json` (written by verifier-train) or else by its architecture; the input conventions
are in ttx.reward_inputs:
  *ForSequenceClassification  an outcome reward model (ORM): one score per solution, sigmoid of
                              a single logit, else the probability of the last label.
  *ForCausalLM                a process reward model (PRM) predicting a good/bad token per step:
                              `tag` (Math-Shepherd: read at each " ки", P(+) against P(-)) or
                              `chat` (RLHFlow: each step a user turn answered by "+").
  *ForTokenClassification     a PRM with a per-token head (Qwen2.5-Math-PRM style, `qwen`: steps
                              joined by <extra_0>, P(label 1) there; one label: its sigmoid, a
                              Skywork-style value head).
  Qwen2ForProcessRewardModel  Qwen2.5-Math-PRM itself (`qwen`), and
  Qwen2ForPrmModel            Skywork-o1-Open-PRM (`skywork`: steps one per line, the sigmoid
                              of its value head at each step's closing newline): their folders
                              ask for remote code; ttx loads them with its own classes
                              (ttx.prm_models) and never runs the folder's.
A PRM input is built as search-and-learn's PRM classes build it or as the model card says
(--prm-input, ttx.reward_inputs): the option, else the folder's ttx_reward.json `prm_input`
(verifier-train writes `model-card`, the construction it trains on), else the strategy's default.
Any other folder that needs its own Python code (trust_remote_code) is refused: ttx never runs
it.
Every scoring call is batched: sequences go through the model in right-padded batches of
--reward-batch-size, one forward per batch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ttx import reward_inputs as ri
from ttx.errors import TtxError
from ttx.tts.search import PRM_FORMATS, step_score


class PolicyScorer:
    """`logprob` or `self-certainty` from the engine's own per-token numbers."""

    is_reward_model = False
    needs_logprobs = True

    def __init__(self, name: str):
        self.name = name

    def segment(self, trace) -> float | None:
        """The score of one generated segment (a step): its own numbers."""
        return step_score(trace, self.name)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def _aggregate(scores: list[float], agg: str) -> float | None:
    """search-and-learn's aggregate_scores (src/sal/utils/score.py:33-43)."""
    if not scores:
        return None
    if agg == "last":
        return scores[-1]
    if agg == "min":
        return min(scores)
    return math.prod(scores)


_HEADS = {"ForSequenceClassification": "orm", "ForCausalLM": "prm", "ForTokenClassification": "prm"}
_DEFAULT_FORMAT = {"ForCausalLM": "tag", "ForTokenClassification": "qwen"}
_DEFAULT_TAG = {"qwen": ri.QWEN_STEP_TAG, "skywork": ri.SKYWORK_STEP_TAG}


class RewardModel:
    """A local outcome or process reward model (see the module docstring)."""

    is_reward_model = True
    needs_logprobs = False
    name = "reward-model"

    def __init__(self, path: str, search, device: str = "cpu",
                 default_input: str = ri.CARD_INPUT):
        folder = Path(path)
        config = _read_config(folder)
        reading = _read_reading(folder)
        self.native = _native(config, folder)
        self.head = "ForTokenClassification" if self.native else _head(config, folder)
        self.kind = reading.get("kind") or _HEADS[self.head]
        self.format = (search.prm_format or reading.get("format")
                       or ri.NATIVE_PRMS.get(self.native) or _DEFAULT_FORMAT.get(self.head))
        self.step_tag = (search.prm_step_tag or reading.get("step_tag")
                         or _DEFAULT_TAG.get(self.format, ri.MATH_SHEPHERD_TAG))
        self.good = search.prm_good_token or reading.get("good_token") or "+"
        self.bad = (search.prm_bad_token if search.prm_bad_token is not None
                    else reading.get("bad_token", "-"))
        self.prm_input = search.prm_input or reading.get("prm_input") or default_input
        self.system = search.prm_system or ""   # search-and-learn's Math-Shepherd input opens with it
        self.batch_size = search.reward_batch_size
        self.agg = search.agg
        self.device = device
        self.forwards = 0
        self.sequences = 0
        self._load(folder)

    def _load(self, folder: Path) -> None:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        auto = {"ForSequenceClassification": AutoModelForSequenceClassification,
                "ForCausalLM": AutoModelForCausalLM,
                "ForTokenClassification": AutoModelForTokenClassification}[self.head]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            if self.native:
                self.model = _load_native(self.native, folder).to(self.device).eval()
            else:
                self.model = auto.from_pretrained(folder, dtype=torch.float32,
                                                  trust_remote_code=False).to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise TtxError(f"cannot load the reward model ({str(exc).splitlines()[0]})",
                           path=str(folder), field="--reward-model") from None
        if self.format == "skywork" and self.tokenizer.bos_token is None:
            raise TtxError("the skywork PRM input opens with the tokenizer's bos_token, which "
                           "this tokenizer does not set (tokenizer_config.json)",
                           path=str(folder), field="bos_token")
        from ttx.engines.cpu.packed import pack_linears

        pack_linears(self.model)             # frozen; on CPU its matmuls run on packed weights
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        if self.kind == "orm" and getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.pad_id     # the head pools the last real token
        if self.head == "ForCausalLM":
            self.good_id = self._token(self.good, "--prm-good-token")
            self.bad_id = self._token(self.bad, "--prm-bad-token") if self.bad else None

    def _token(self, text: str, option: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise TtxError(f"{option} {text!r} is no token for this reward model", field=option)
        return ids[-1]       # the Math-Shepherd card reads tokenizer.encode("+")[-1] too

    # ------------------------------------------------------------------ inputs
    def _encode(self, text: str, special: bool):
        enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        return enc.input_ids, enc.offset_mapping

    def _at_chars(self, offsets, chars: list[int]) -> list[int]:
        """The token covering each character index."""
        out = []
        for c in chars:
            pos = next((i for i, (a, b) in enumerate(offsets) if a <= c < b), None)
            if pos is None:
                pos = next(i for i, (a, b) in reversed(list(enumerate(offsets))) if a <= c)
            out.append(pos)
        return out

    def _process_input(self, question: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of a PRM input and the position whose logits score each step (`steps` as
        reward_inputs.steps_of splits them for self.prm_input)."""
        steps = steps or [""]
        sal = self.prm_input == ri.SAL_INPUT
        if self.format == "chat":
            mark = "\ue000"
            text = self.tokenizer.apply_chat_template(ri.chat_turns(question, steps, mark),
                                                      tokenize=False)
            chars = [i for i, ch in enumerate(text) if ch == mark]
            text = text.replace(mark, self.good)
            shift = len(self.good) - 1
            chars = [c + k * shift for k, c in enumerate(chars)]
            ids, offsets = self._encode(text, special=False)
            return ids, [p - 1 for p in self._at_chars(offsets, chars)]   # predicts the "+"
        if self.format == "skywork":
            return ri.skywork_ids(self.tokenizer, question, steps, self.step_tag)
        if self.format == "qwen":
            text = ri.qwen_text(self.tokenizer, question, steps)
            special = False
        elif sal:
            text = ri.sal_tag_text(self.system, question, steps, self.step_tag)
            special = True                      # RM:49: the tokenizer's default, BOS first
        else:
            text = ri.tag_text(question, steps, self.step_tag)
            special = True                      # the card encodes with BOS
        ends, at = [], text.find(self.step_tag)     # each tag: its last character
        while at >= 0 and (sal or len(ends) < len(steps)):   # SAL reads every tag (RM:55, 379);
            ends.append(at + len(self.step_tag) - 1)        # the card one per step
            at = text.find(self.step_tag, at + len(self.step_tag))
        ids, offsets = self._encode(text, special)
        return ids, self._at_chars(offsets, ends)

    def _outcome_input(self, question: str, response: str) -> list[int]:
        text = ri.orm_text(self.tokenizer, question, response)
        return self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template).input_ids

    # ------------------------------------------------------------------ forwards
    def _forward(self, batch: list[list[int]]):
        """Logits of right-padded sequences: [batch, T, ...] (token heads) or [batch, labels]."""
        import torch

        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        self.forwards += 1
        self.sequences += len(batch)
        return out.logits.float().cpu()

    def _batched(self, inputs: list[tuple[list[int], list[int] | None]], read) -> list:
        """read(logits of one sequence, its positions) for every (ids, positions) input."""
        out = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            logits = self._forward([ids for ids, _ in chunk])
            out += [read(logits[i], positions) for i, (_, positions) in enumerate(chunk)]
        return out

    def _read_steps(self, logits, positions) -> list[float]:
        import torch

        at = logits[positions]
        if self.head == "ForTokenClassification":
            return (torch.sigmoid(at[:, 0]) if at.shape[-1] == 1 else torch.softmax(at, -1)[:, 1]
                    ).tolist()
        if self.bad_id is not None:
            return torch.softmax(at[:, [self.good_id, self.bad_id]], -1)[:, 0].tolist()
        return torch.softmax(at, -1)[:, self.good_id].tolist()

    def _read_outcome(self, logits, positions) -> float:
        import torch

        if logits.shape[-1] == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, -1)[-1])

    # ------------------------------------------------------------------ scoring
    def score_paths(self, paths: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Step scores of whole paths (question, steps), all in batched forwards; an ORM gives
        one score for the path's text."""
        if self.kind == "orm":
            texts = [(self._outcome_input(q, ri.STEP_SEPARATOR.join(steps)), None)
                     for q, steps in paths]
            return [[s] for s in self._batched(texts, self._read_outcome)]
        inputs = [self._process_input(q, steps) for q, steps in paths]
        return self._batched(inputs, self._read_steps)

    def score_texts(self, pairs: list[tuple[str, str]]) -> list[tuple[float, list[float]]]:
        """(score, step scores) of whole solutions; PRM steps split at blank lines, their
        scores aggregated by --agg."""
        if self.kind == "orm":
            texts = [(self._outcome_input(q, text), None) for q, text in pairs]
            return [(s, [s]) for s in self._batched(texts, self._read_outcome)]
        steps = self.score_paths([(q, ri.steps_of(text, self.prm_input)) for q, text in pairs])
        return [(_aggregate(s, self.agg), s) for s in steps]

    def stats(self) -> dict:
        return {"reward_forwards": self.forwards, "reward_sequences": self.sequences}

    def close(self) -> None:
        pass


def _read_config(folder: Path) -> dict:
    """config.json, after ttx.models.check_folder's refusals (remote code, pickles)."""
    from ttx.models import check_folder

    return check_folder(folder, "reward model", native=ri.NATIVE_PRMS)


def _read_reading(folder: Path) -> dict:
    path = folder / ri.READING_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TtxError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from None
    if data.get("kind") not in (None, "orm", "prm") \
            or data.get("format") not in (None, *PRM_FORMATS) \
            or data.get("prm_input") not in (None, ri.SAL_INPUT, ri.CARD_INPUT):
        raise TtxError(f"expected kind orm|prm, format {'|'.join(PRM_FORMATS)} and prm_input "
                       f"{ri.SAL_INPUT}|{ri.CARD_INPUT}", path=str(path))
    return data


def _native(config: dict, folder: Path) -> str | None:
    """The architecture name when ttx has its own class for it (ttx.prm_models), which reads a
    qwen2 config only."""
    archs = config.get("architectures") or []
    name = next((a for a in archs if a in ri.NATIVE_PRMS), None)
    if name and config.get("model_type") != "qwen2":
        raise TtxError(f"{name} expects model_type qwen2, got {config.get('model_type')!r}",
                       path=str(folder), field="model_type")
    return name


def _load_native(name: str, folder: Path):
    """ttx's class for `name` from the folder's safetensors; a checkpoint lacking any of its head
    or decoder weights is refused, naming them (they would be left random)."""
    import torch

    from ttx.prm_models import NATIVE

    model, info = NATIVE[name].from_pretrained(folder, dtype=torch.float32, use_safetensors=True,
                                               output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise TtxError(f"not a {name} checkpoint: no {', '.join(missing[:3])}"
                       f"{' ...' if len(missing) > 3 else ''} in its weights",
                       path=str(folder), field="--reward-model")
    return model


def _head(config: dict, folder: Path) -> str:
    archs = config.get("architectures") or []
    for a in archs:
        for suffix in _HEADS:
            if a.endswith(suffix):
                return suffix
    raise TtxError(f"architecture {', '.join(archs) or '(none)'} is not a reward model "
                   "(expected *ForSequenceClassification, *ForCausalLM, *ForTokenClassification, "
                   f"{' or '.join(ri.NATIVE_PRMS)})", path=str(folder), field="architectures")


def make_scorer(engine, cfg, default_input: str = ri.CARD_INPUT):
    """The scorer a strategy config asks for: an LLM judge (`judge:...`, ttx.tts.judge), a reward
    model (loaded here, once per run; its PRM inputs built as `default_input` unless told
    otherwise), or the policy's own numbers."""
    if cfg.search.reward_model and cfg.search.reward_model.startswith("judge:"):
        from ttx.tts.judge import open_judge

        return open_judge(engine, cfg.search)
    if cfg.search.reward_model:
        from ttx.engines.base import local

        policy = local(engine)
        device = str(policy.device) if policy else "cpu"
        return RewardModel(cfg.search.reward_model, cfg.search, device, default_input)
    return PolicyScorer(cfg.scorer)


def path_score(step_scores: list[float], agg: str) -> float | None:
    return _aggregate(step_scores, agg)
