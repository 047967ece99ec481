"""What the search strategies share: their knobs and their checks, templated text, accounting.

Budget forcing (s1, arXiv 2501.19393), step-level beam search and DVTS (Snell et al. 2024, arXiv
2408.03314; search-and-learn), DORA (arXiv 2506.15707) and self-refinement continue traces the
model has already
written. A continued trace is a new prompt that is the raw templated text: the chat template
applied to the question (with the generation prompt) and the text generated so far appended as it
is. The hf engine encodes such a str prompt without adding special tokens twice; the openai engine
sends it to /v1/completions, so it needs the model's tokenizer locally to apply the template.

Token accounting (docs/tts-run.md): `completion_tokens` counts every generated token of every
call, never the forced text ("Wait", "Final Answer:") nor the re-encoded prompt; that re-encoding
is reported as `prefill_tokens`. `sequential_tokens` is what the batched procedure actually waited
for: the sum over its rounds (engine calls) of the longest segment of the problem in that round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import click

from ttx.engines.base import Prompt, Trace
from ttx.errors import TtxError
from ttx.options import opt
from ttx.scoring.answers import extract_answer

STEP_SEPARATOR = "\n\n"              # a reasoning step ends at a blank line (search-and-learn)
AGGREGATIONS = ("last", "min", "prod")
TURN_AGGREGATES = ("last", "majority")
PRM_FORMATS = ("tag", "chat", "qwen", "skywork")


BUDGET_STYLES = ("s1", "ttx")
AUTO_BUDGETS = ("s1", "cpu")
BEAM_STYLES = ("search-and-learn", "ttx")
LOOKAHEAD_SCORING = ("path", "rollout")
DORA_RULES = ("code", "paper")
PRM_INPUTS = ("search-and-learn", "model-card")
JUDGE_SCALES = ("0-10", "yes-no")      # ttx.tts.judge.SCALES
ADAPTIVE_RULES = ("beta", "dirichlet", "entropy", "majority", "random", "its-hub-beta")
DEEPCONF_MODES = ("online", "offline")
DEEPCONF_VARIANTS = ("low", "high")
DEEPCONF_MEASURES = ("lowest", "bottom10", "tail")
MCTS_ANSWERS = ("majority", "max", "vote")


def _knob(default, help, **kw):
    return opt(default, help, unset=True, **kw)


_POS = click.IntRange(min=1)
_NONNEG = click.IntRange(min=0)
_POSF = click.FloatRange(min=0, min_open=True)
_DIR = click.Path(exists=True, file_okay=False)


class _RewardModel(click.Path):
    """A reward model folder, or `judge:...` (checked by SearchConfig.validate)."""

    def __init__(self):
        super().__init__(exists=True, file_okay=False)
        self.name = "folder|judge:..."

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("judge:"):
            return value
        return super().convert(value, param, ctx)


@dataclass
class SearchConfig:
    """The search strategies' knobs (one tts-run option each); a strategy refuses knobs it does
    not read (Strategy.knobs)."""

    # budget forcing (s1)
    budget_style: str = _knob("s1", "budget-forcing: s1's evaluation harness, or ttx's variant "
                              "(remaining budget per round, a minimum, a short forced answer).",
                              type=click.Choice(BUDGET_STYLES))
    min_thinking_tokens: int | None = _knob(None, "budget-forcing: continue a trace that stops "
                                            "before this many tokens (ttx style; s1: the minimum "
                                            "of one round, with --num-ignore 0).", type=_NONNEG)
    max_thinking_tokens: int | None = _knob(None, "budget-forcing: the thinking budget (default: "
                                            "s1: --auto-budget; ttx: --max-new-tokens).",
                                            type=_POS)
    auto_budget: str = _knob("s1", "budget-forcing s1 without --max-thinking-tokens: s1's rule "
                             "(--max-new-tokens less the call's longest prompt, the delimiters "
                             "and 100) or cpu (less the delimiters and min(100, half), for the "
                             "small budgets of CPU runs).", type=click.Choice(AUTO_BUDGETS))
    num_ignore: int = _knob(1, "budget-forcing: stops ignored at most K times per trace.",
                            type=_NONNEG)
    ignore_str: str = _knob("Wait", "budget-forcing: appended when a stop is ignored.")
    think_start: str | None = _knob(None, "budget-forcing s1: the text opening the thinking "
                                    "(default '<|im_start|>think').")
    think_end: str | None = _knob(None, "budget-forcing: end-of-thinking text (s1 default "
                                  "'<|im_start|>answer'; ttx: '</think>' when the model has it, "
                                  "else none).")
    answer_tokens: int = _knob(32, "budget-forcing ttx: tokens of the answer after a forced end.",
                               type=_POS)
    # beam / dvts / dora
    beam_style: str | None = _knob(None, "beam: search-and-learn's algorithm (default with "
                                   "--reward-model) or ttx's expansion (default otherwise).",
                                   type=click.Choice(BEAM_STYLES))
    beam_width: int = _knob(2, "beam/dvts: M; n/M beams (subtrees) kept, each expanded M ways.",
                            type=_POS)
    step_tokens: int | None = _knob(None, "beam/dvts/dora: a step ends at a blank line or after "
                                    "this many tokens (default: --max-new-tokens; ttx beam and "
                                    "dora: 64).", type=_POS)
    max_steps: int = _knob(4, "beam/dvts/dora: iterations; the last runs to EOS.", type=_POS)
    agg: str = _knob("last", "beam/dvts/dora (and PRM best-of-n): step scores -> path score.",
                     type=click.Choice(AGGREGATIONS))
    lookahead: int = _knob(0, "beam (search-and-learn)/dvts: greedy steps rolled out before a "
                           "step is scored (needs --reward-model).", type=_NONNEG)
    lookahead_scoring: str = _knob("path", "beam (search-and-learn) with --lookahead: what the "
                                   "PRM scores: the path alone, the rollout generated but unread "
                                   "(path: search-and-learn's beam_search.py) or the path with "
                                   "its rollout (rollout: Snell et al.'s lookahead search, "
                                   "search-and-learn's DVTS).", type=click.Choice(LOOKAHEAD_SCORING))
    filter_duplicates: bool = _knob(False, "beam (search-and-learn): keep one beam of each text.",
                                    is_flag=True)
    sort_completed: bool = _knob(False, "beam (search-and-learn)/dora: answer from the n best "
                                 "completed beams, not the first n.", is_flag=True)
    dora_tau: float = _knob(0.1, "dora: softmax temperature of the quality weight.", type=_POSF)
    dora_alpha: float = _knob(0.01, "dora: temperature of the similarity row-softmax.",
                              type=_POSF)
    dora_rule: str = _knob("code", "dora: the allocation of DORA's code (code: paths whose "
                           "quality share rounds to 0 dropped first; behind the paper's numbers) "
                           "or the paper's eq. 10-13 over every open path (paper: DORA's "
                           "rebase_diverse module).", type=click.Choice(DORA_RULES))
    embedder: str | None = _knob(None, "dora: a local embedding model folder (default: the "
                                 "policy's hidden states).", type=_DIR)
    # refine
    turns: int = _knob(1, "refine: rounds of check-and-correct.", type=_POS)
    turn_aggregate: str = _knob("last", "refine: the last turn's answer, or a vote over all "
                                "turns.", type=click.Choice(TURN_AGGREGATES))
    # reward model scorer (best-of-n, beam, dvts, dora)
    reward_model: str | None = _knob(None, "best-of-n/beam/dvts/dora: a local outcome or process "
                                     "reward model (replaces --scorer); loaded once per run; "
                                     "or an LLM judge: judge:self (the policy), judge:FOLDER, "
                                     "judge:http(s)://server/v1.",
                                     type=_RewardModel())
    reward_batch_size: int = _knob(8, "Sequences per reward-model forward.", type=_POS)
    prm_format: str | None = _knob(None, "PRM input: steps followed by a tag (Math-Shepherd), "
                                   "chat turns (RLHFlow) or <extra_0>-joined steps "
                                   "(Qwen2.5-Math-PRM) or steps one per line after BOS and the "
                                   "question (Skywork-o1-Open-PRM) (default: ttx_reward.json, "
                                   "else by architecture).", type=click.Choice(PRM_FORMATS))
    prm_step_tag: str | None = _knob(None, "PRM: text after each step, scored there (default "
                                     "'ки'; qwen '<extra_0>', skywork a newline).")
    prm_good_token: str | None = _knob(None, "PRM: the token whose probability is the score "
                                       "(default '+').")
    prm_bad_token: str | None = _knob(None, "PRM: its opposite; '' scores against the whole "
                                      "vocabulary (default '-').")
    prm_input: str | None = _knob(None, "PRM input built as search-and-learn's PRM classes do "
                                  "(steps split at every blank line, empty ones kept; "
                                  "Math-Shepherd: system prompt first, the blank lines kept) or "
                                  "as the model card (model-card: empty steps dropped) (default: "
                                  "ttx_reward.json's, else search-and-learn for beam's "
                                  "search-and-learn style, dvts and dora, else model-card).",
                                  type=click.Choice(PRM_INPUTS))
    # the run's system message (--system): search-and-learn's Math-Shepherd input opens with it
    prm_system: str | None = opt(None, cli=False)
    # openai engine: the tokenizer that applies the chat template to continued traces
    tokenizer: str | None = opt(None, cli=False)
    # judge scorer (--reward-model judge:...)
    judge_scale: str | None = _knob(None, "--reward-model judge:...: the judge's answer, a 0-10 "
                                    "rating (its_hub's LLMJudge, score = rating / 10) or yes-no "
                                    "(score = P(yes)) (default: 0-10).",
                                    type=click.Choice(JUDGE_SCALES))
    # adaptive-consistency
    adaptive_rule: str = _knob("beta", "adaptive-consistency: the stopping rule after each "
                               "batch (AdaptiveConsistency's beta, its default; dirichlet, "
                               "entropy, majority, random; its-hub-beta: beta checked from 2 "
                               "answers on).", type=click.Choice(ADAPTIVE_RULES))
    adaptive_threshold: float | None = _knob(None, "adaptive-consistency: the rule's threshold "
                                             "(default the reference's: beta, dirichlet, "
                                             "its-hub-beta 0.95; entropy 0.75 (stop at or "
                                             "below); majority 0.8; random 0.1).",
                                             type=float)
    adaptive_batch: int = _knob(1, "adaptive-consistency: traces drawn per problem between "
                                "checks (the reference's step_size 1).", type=_POS)
    # deepconf (Deep Think with Confidence, arXiv 2508.15260; facebookresearch/deepconf)
    deepconf_mode: str = _knob("online", "deepconf: online (warm-up traces set a threshold; "
                               "later traces whose window confidence falls below it are "
                               "cancelled; consensus stop) or offline (n traces, keep the most "
                               "confident, weighted vote).", type=click.Choice(DEEPCONF_MODES))
    deepconf_variant: str = _knob("high", "deepconf: low keeps the top 10% by confidence (eta "
                                  "10), high the top 90% (eta 90; the reference's default).",
                                  type=click.Choice(DEEPCONF_VARIANTS))
    deepconf_warmup: int = _knob(16, "deepconf online: warm-up traces N_init that set the "
                                 "threshold (at most --n).", type=_POS)
    deepconf_round: int | None = _knob(None, "deepconf online: traces per prompt per round "
                                       "after the warm-up; the consensus is checked between "
                                       "rounds (default: --deepconf-warmup).", type=_POS)
    deepconf_window: int = _knob(2048, "deepconf: group size, the sliding window of token "
                                 "confidences (and the tail's length).", type=_POS)
    deepconf_top_k: int = _knob(20, "deepconf: k, the top log-probabilities each token's "
                                "confidence averages.", type=_POS)
    deepconf_consensus: float = _knob(0.95, "deepconf online: stop sampling once the weighted "
                                      "majority's share of the votes reaches tau (above 1: "
                                      "never, as the reference code).", type=_POSF)
    deepconf_measure: str = _knob("bottom10", "deepconf offline: the trace confidence that "
                                  "filters and weighs: lowest group, mean of the bottom 10% "
                                  "groups, or the tail (online always uses the lowest group).",
                                  type=click.Choice(DEEPCONF_MEASURES))
    # particle-filter / particle-gibbs (Puri et al. 2025; its_hub's ParticleGibbs: ttx.tts.particles)
    pf_temperature: float = _knob(1.0, "particle-filter/-gibbs: softmax temperature of the "
                                  "resampling weights, softmax(logit(score) / T) (the paper's "
                                  "softmax_temp; its_hub: 1).", type=_POSF)
    pf_select: str = _knob("argmax", "particle-filter/-gibbs: the answer: the highest-weight "
                           "particle of the last sweep (argmax) or one drawn by weight (sample).",
                           type=click.Choice(("argmax", "sample")))
    pg_sweeps: int = _knob(2, "particle-gibbs: sweeps; each after the first keeps reference "
                           "particles drawn from the previous one.", type=_POS)
    pg_ref_particles: int = _knob(1, "particle-gibbs: reference particles kept from one sweep "
                                  "to the next (fewer than --n).", type=_POS)
    # mcts (openr's vanila_mcts: openreasoner/openr reason/guided_search/tree.py)
    mcts_width: int = _knob(4, "mcts: steps sampled per expansion (openr's tree_max_width; its "
                            "vanila_mcts.sh uses 4); duplicates and cut-off steps are dropped.",
                            type=_POS)
    mcts_depth: int = _knob(50, "mcts: steps a path may take (openr's tree_max_depth; "
                            "vanila_mcts.sh: 50); a path that reaches it ends there.", type=_POS)
    mcts_c_puct: float = _knob(1.25, "mcts: PUCT exploration constant (openr's pb_c_init).",
                               type=click.FloatRange(min=0))
    mcts_c_base: float = _knob(19652.0, "mcts: PUCT base (openr's pb_c_base): the exploration "
                               "weight grows as log((N + base + 1) / base).", type=_POSF)
    mcts_answer: str = _knob("majority", "mcts: the answer from the --n paths: a majority vote, "
                             "the best scored path (max), or scores summed per answer (vote) "
                             "(openr's reranking: majority_vote, prm_*_max, prm_*_vote).",
                             type=click.Choice(MCTS_ANSWERS))
    # tot (Tree of Thoughts BFS, princeton-nlp/tree-of-thought-llm; defaults: scripts/game24/bfs.sh)
    tot_breadth: int = _knob(5, "tot: b, the states kept at each depth (n_select_sample).",
                             type=_POS)
    tot_evaluations: int = _knob(3, "tot: value prompts sampled per state (n_evaluate_sample).",
                                 type=_POS)
    tot_depth: int = _knob(4, "tot: depths (steps); the last runs to EOS.", type=_POS)
    tot_step_tokens: int = _knob(64, "tot: a step ends at a blank line or after this many "
                                 "tokens.", type=_POS)

    def validate(self, max_new_tokens: int) -> None:
        """Value checks common to every strategy; each error names the option."""
        for name in ("max_thinking_tokens", "answer_tokens", "beam_width", "step_tokens",
                     "max_steps", "turns", "reward_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TtxError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("num_ignore", "lookahead"):
            if getattr(self, name) < 0:
                raise TtxError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        top = self.max_thinking_tokens or max_new_tokens
        if self.min_thinking_tokens is not None and self.min_thinking_tokens > top:
            raise TtxError(f"--min-thinking-tokens {self.min_thinking_tokens} exceeds the maximum "
                           f"({top}: --max-thinking-tokens, else --max-new-tokens)")
        choices = {"agg": AGGREGATIONS, "turn_aggregate": TURN_AGGREGATES,
                   "budget_style": BUDGET_STYLES, "auto_budget": AUTO_BUDGETS,
                   "dora_rule": DORA_RULES, "lookahead_scoring": LOOKAHEAD_SCORING}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                               f"got {getattr(self, name)!r}")
        if self.beam_style is not None and self.beam_style not in BEAM_STYLES:
            raise TtxError(f"--beam-style must be one of {', '.join(BEAM_STYLES)}")
        optional = {"prm_format": PRM_FORMATS, "prm_input": PRM_INPUTS}
        for name, allowed in optional.items():
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise TtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.dora_tau <= 0 or self.dora_alpha <= 0:
            raise TtxError("--dora-tau and --dora-alpha must be positive")
        if self.mcts_answer not in MCTS_ANSWERS:
            raise TtxError(f"--mcts-answer must be one of {', '.join(MCTS_ANSWERS)}")
        if not (self.mcts_width >= 1 and self.mcts_depth >= 1 and self.mcts_c_puct >= 0
                and self.mcts_c_base > 0):
            raise TtxError("--mcts-width and --mcts-depth must be positive, --mcts-c-puct >= 0 "
                           "and --mcts-c-base > 0")
        prm = [k for k in ("prm_format", "prm_step_tag", "prm_good_token", "prm_bad_token",
                           "prm_input") if getattr(self, k) is not None]
        judge = bool(self.reward_model) and self.reward_model.startswith("judge:")
        if prm and not self.reward_model:
            raise TtxError(", ".join("--" + k.replace("_", "-") for k in prm)
                           + " set(s) how a process reward model is read: it needs --reward-model")
        if prm and judge:
            raise TtxError(", ".join("--" + k.replace("_", "-") for k in prm)
                           + " set(s) how a process reward model is read: a judge reads none")
        if self.judge_scale is not None and self.judge_scale not in JUDGE_SCALES:
            raise TtxError(f"--judge-scale must be one of {', '.join(JUDGE_SCALES)}, got "
                           f"{self.judge_scale!r}")
        if self.judge_scale is not None and not judge:
            raise TtxError("--judge-scale sets how an LLM judge answers: it needs --reward-model "
                           "judge:self|judge:FOLDER|judge:URL")
        if judge:
            from ttx.tts.judge import parse_spec

            parse_spec(self.reward_model)
        # particle-filter / particle-gibbs
        if not self.pf_temperature > 0:
            raise TtxError(f"--pf-temperature must be positive, got {self.pf_temperature}")
        if self.pf_select not in ("argmax", "sample"):
            raise TtxError(f"--pf-select must be one of argmax, sample, got {self.pf_select!r}")
        for name in ("pg_sweeps", "pg_ref_particles"):
            if getattr(self, name) < 1:
                raise TtxError(f"--{name.replace('_', '-')} must be positive, "
                               f"got {getattr(self, name)}")


def local_tokenizer(model: str, strategy: str) -> str:
    """The tokenizer folder that templates continued traces for --engine openai."""
    from ttx.models import resolve_model

    try:
        return str(resolve_model(model))
    except TtxError:
        raise TtxError(f"{strategy} continues traces as raw templated text, which needs the "
                       f"model's chat template: with --engine openai give --model the alias or "
                       f"a local folder of the served model, or use --no-chat") from None


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def tokenizer_of(engine, search: SearchConfig):
    """The policy's tokenizer: a local engine's own, else the local folder given for it."""
    from ttx.engines.base import local

    policy = local(engine)
    tokenizer = policy.tokenizer if policy else None
    if tokenizer is None:
        if not search.tokenizer:
            raise TtxError("continuing a trace needs the model's tokenizer: give --model the "
                           "alias or a local folder of the served model")
        tokenizer = _tokenizer(search.tokenizer)
    return tokenizer


def templated(engine, prompt: Prompt, search: SearchConfig) -> str:
    """The prompt as the raw text the model sees (a str prompt is that text already)."""
    if isinstance(prompt, str):
        return prompt
    from ttx.models import render_prompt

    return render_prompt(tokenizer_of(engine, search), prompt)


def question_of(prompt: Prompt) -> str:
    """The question text of a prompt (the last user message), for reward models."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def trace_record(text: str, completion_tokens: int, finish_reason: str, score=None,
                 **extra) -> dict:
    """One trace in the per-trace format of ttx.tts.strategies (what `ttx score` reads)."""
    return {"text": text, "pred": extract_answer(text), "completion_tokens": completion_tokens,
            "finish_reason": finish_reason, "finish_order": None, "score": score, **extra}


def mean(values) -> float | None:
    values = list(values or [])
    return sum(values) / len(values) if values else None


def step_score(trace: Trace, scorer: str) -> float | None:
    """A policy score of one generated segment: the geometric-mean token probability
    exp(mean log p) for `logprob` (so min/prod stay meaningful), mean KL(U || p) otherwise."""
    import math

    if scorer == "logprob":
        m = mean(trace.logprobs)
        return None if m is None else math.exp(m)
    return mean(trace.self_certainty)


def round_seed(seed: int | None, round_index: int) -> int | None:
    """The seed of one engine call within a search (repeatable, different per round)."""
    from ttx.seeds import call_seed

    return call_seed(seed, 7919 * (round_index + 1))


def think_end(engine, search: SearchConfig) -> tuple[str, bool]:
    """(end-of-thinking text, whether the model writes it itself) for budget forcing's ttx
    style.

    --think-end wins; otherwise "</think>" when the model's tokenizer knows it (Qwen3,
    DeepSeek-R1), else none: the thinking of a plain chat model is its whole answer and ends at
    EOS. (s1's own models bracket thinking with <|im_start|>think ... <|im_start|>answer: the s1
    style, ttx.tts.budget.)"""
    if search.think_end is not None:
        return search.think_end, bool(search.think_end.strip())
    from ttx.engines.base import local

    policy = local(engine)
    tokenizer = policy.tokenizer if policy else None
    if tokenizer is None and search.tokenizer:
        tokenizer = _tokenizer(search.tokenizer)
    if tokenizer is not None and "</think>" in tokenizer.get_vocab():
        return "</think>", True
    return "", False


@dataclass
class Account:
    """Token accounting of one problem over the rounds (engine calls) of a search."""

    prompt_tokens: int = 0          # the problem's own prompt, once
    completion: int = 0             # every generated token
    sequential: int = 0             # sum over rounds of the round's longest segment
    prefill: int = 0                # every prompt token of every call (continuations included)
    cached: int = 0                 # of those, the ones whose K/V the engine kept (not computed)
    rounds: int = 0

    def add(self, segments: list[int], prefill: int = 0, cached: int = 0) -> None:
        """One round: the tokens of this problem's segments generated in it, its prompt tokens
        (and how many of them the engine's prefix reuse did not compute again)."""
        self.prefill += prefill
        self.cached += cached
        if segments:
            self.completion += sum(segments)
            self.sequential += max(segments)
            self.rounds += 1

    def extra(self) -> dict:
        return {"prefill_tokens": self.prefill, "cached_prefill_tokens": self.cached,
                "rounds": self.rounds}
