"""`--budget-style s1` against s1's harness, request for request, on a scripted vLLM.

simplescaling/s1@77272c6 eval/lm-evaluation-harness/lm_eval/models/vllm_causallms.py ("VC") is
written out below (`s1_harness`, lines cited) and driven on the same scripted world as ttx's
strategy: each problem's requests take that problem's next scripted segment of token ids, cut as
vLLM cuts them (an EOS or stop_token_ids entry ends the segment once min_tokens are out, its id
kept in token_ids and its text not, special tokens being skipped; max_tokens ends it with
"length"). The worlds put EOS and <|im_start|> into the ids, sample non-canonical splits (" " then
"Wait"; a blank line as two "\\n"), cut at a newline, and run K = 0. ttx must send the same
requests (prompt ids, max and min tokens, stop ids, stop strings) and grade the same text.
"""

from __future__ import annotations

import copy

import pytest

from ttx.engines.base import Generation, SamplingParams, TokenPrompt, Trace, per_prompt
from ttx.errors import TtxError
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig

EOS, IM_START = 2, 1                      # the default model's tokenizer
X, Y, B_, NL, NL2, SP, WAIT, SP_WAIT = 1792, 329, 278, 198, 1116, 216, 33359, 22297


@pytest.fixture(scope="module")
def tok(default_model_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(default_model_dir)
    assert (t.eos_token_id, t.convert_tokens_to_ids("<|im_start|>")) == (EOS, IM_START)
    assert t(" x\n", add_special_tokens=False).input_ids == [X, NL]
    return t


class World:
    """vLLM's generate on scripted segments: a request takes its problem's next segment."""

    def __init__(self, tok, prompts: list[list[int]], scripts: list[list[list[int]]]):
        self.tok, self.prompts = tok, prompts
        self.scripts = [list(s) for s in scripts]
        self.requests: list[list[tuple]] = [[] for _ in prompts]

    def serve(self, ids, max_tokens, min_tokens, stop_token_ids, stop):
        p = next(i for i, q in enumerate(self.prompts) if list(ids[:len(q)]) == q)
        self.requests[p].append((tuple(ids), max_tokens, min_tokens, tuple(stop_token_ids),
                                 tuple(stop or ())))
        segment, out = self.scripts[p].pop(0), []
        ends = {EOS, *stop_token_ids}
        for token in segment:
            out.append(token)
            if token in ends:
                assert len(out) > min_tokens, "the script samples a suppressed stop"
                return out, self.text(out[:-1], stop), "stop", token
            if len(out) == max_tokens:
                return out, self.text(out, stop), "length", None
        raise AssertionError(f"script segment {segment} ends before a stop or max_tokens")

    def text(self, ids, stop):
        text = self.tok.decode(ids, skip_special_tokens=True)
        for s in stop or ():
            assert s not in text or s == self.tok.decode([EOS]), "no stop strings in these worlds"
        return text


class Output:
    """vLLM's CompletionOutput, the fields the harness touches."""

    def __init__(self, ids, text, reason):
        self.token_ids, self.text, self.finish_reason = ids, text, reason


def s1_harness(world: World, tok, requests, max_tokens, stop, *, n_ignore, ignore_str,
               max_tokens_thinking="auto", min_tokens_thinking=None):
    """VC:230-414 and 461, n_ignore / min_tokens paths, transcribed; returns the graded texts."""
    until = list(stop) + [tok.decode(EOS)]                                  # VC:559-564
    enc = lambda s: tok(s, add_special_tokens=False).input_ids              # VC:196-217
    thinking_start, thinking_end = "<|im_start|>think", "<|im_start|>answer"   # VC:239-240
    ignore_tok = enc(ignore_str)                                            # VC:245
    until_thinking = ["<|im_start|>"] + until                               # VC:246-250
    start_tok, end_tok = enc(thinking_start), enc(thinking_end)             # VC:252-253
    end_max = thinking_end + "\nFinal Answer:"                              # VC:254
    end_max_tok, newline_tok = enc(end_max), enc("\n")                      # VC:255-256
    if max_tokens_thinking == "auto":                                       # VC:262-264
        mt = (max_tokens - max(len(x) for x in requests) - len(start_tok) - len(end_max_tok)
              - 100)
    else:
        mt = int(max_tokens_thinking)
    until_tok = [enc(s) for s in until_thinking]                            # VC:272
    min_tokens = 1 if n_ignore is not None else int(min_tokens_thinking)   # VC:273-277
    assert all(len(x) == 1 for x in until_tok)                              # VC:278
    stop_ids = [x[0] for x in until_tok]                                    # VC:280
    requests = [r + start_tok for r in requests]                            # VC:283

    def generate(reqs, max_t, min_t, stop_token_ids, stop_strings):
        return [Output(*world.serve(r, max_t, min_t, stop_token_ids, stop_strings)[:3])
                for r in reqs]

    outs = [None] * len(requests)
    rounds = int(n_ignore) + 1 if n_ignore is not None else 1               # VC:334
    tmp, indices = copy.deepcopy(requests), list(range(len(requests)))
    for i in range(rounds):                                                 # VC:338-380
        new_tmp, new_idx = [], []
        for j, o in enumerate(generate(tmp, mt, min_tokens, stop_ids, None)):
            idx, cont = indices[j], list(o.token_ids)
            if o.finish_reason == "length" or i == rounds - 1:
                if outs[idx] is not None:
                    outs[idx].text += o.text
                    outs[idx].token_ids += cont
                    outs[idx].finish_reason = o.finish_reason
                else:
                    outs[idx] = o
                    o.token_ids = cont
            else:
                for toks in until_tok:
                    if cont[-len(toks):] == toks:
                        cont = cont[:-len(toks)]
                cont += ignore_tok
                o.text += ignore_str
                if outs[idx] is not None:
                    outs[idx].text += o.text
                    outs[idx].token_ids += cont
                else:
                    outs[idx] = o
                    o.token_ids = cont
                new_tmp.append(tmp[j] + cont)
                new_idx.append(idx)
        tmp, indices = new_tmp, new_idx
    for o in outs:                                                          # VC:381-384
        if len(o.token_ids) > mt:
            o.token_ids = o.token_ids[:mt]
    for i, o in enumerate(outs):                                            # VC:393-412
        cont = list(o.token_ids)
        for toks in until_tok:
            if cont[-len(toks):] == toks:
                cont = cont[:-len(toks)]
        if o.finish_reason == "length":
            if o.text[-1] == "\n" or thinking_start[0] == "\n":
                requests[i] += cont + end_max_tok
                o.text = thinking_start + o.text + end_max
            else:
                requests[i] += cont + newline_tok + end_max_tok
                o.text = thinking_start + o.text + "\n" + end_max
        else:
            requests[i] += cont + end_tok
            o.text = thinking_start + o.text + thinking_end
    answers = generate(requests, max_tokens, 0, [], until)                  # VC:414
    return [t.text + a.text for t, a in zip(outs, answers)]                 # VC:461


class Engine:
    """ttx's engine interface over the world (token-id prompts only: s1 never sends text); a
    remote engine, so the strategy takes the tokenizer from SearchConfig.tokenizer."""

    name = model_name = "scripted"
    supports_constraints = False

    def __init__(self, world, tok):
        self.world = world

    def generate(self, prompts, n, params):
        counts, per = per_prompt(len(prompts), n, params)
        out = []
        for prompt, k, p in zip(prompts, counts, per):
            assert isinstance(prompt, TokenPrompt), prompt
            traces = []
            for _ in range(k):
                ids, text, reason, stop = self.world.serve(
                    list(prompt.ids), p.max_new_tokens, p.min_new_tokens, p.stop_token_ids,
                    p.stop)
                traces.append(Trace(text=text, completion_tokens=len(ids), finish_reason=reason,
                                    token_ids=ids, stop_token=stop if stop != EOS else None))
            out.append(Generation(traces=traces, prompt_tokens=len(prompt.ids)))
        return out


def _both(tok, questions, scripts, *, max_new_tokens, num_ignore, max_thinking=None,
          min_thinking=None, stop=()):
    """(harness requests, harness texts, ttx requests, ttx texts, ttx outcomes)."""
    from ttx.tts.budget import BudgetForcing

    cfg = StrategyConfig(strategy="budget-forcing", n=1,
                         params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                               stop=tuple(stop)),
                         search=SearchConfig(num_ignore=num_ignore,
                                             max_thinking_tokens=max_thinking,
                                             min_thinking_tokens=min_thinking,
                                             tokenizer=tok.name_or_path))
    prompt_ids = [tok(q, add_special_tokens=False).input_ids for q in questions]
    ref = World(tok, prompt_ids, scripts)
    texts = s1_harness(ref, tok, [list(p) for p in prompt_ids], max_new_tokens, list(stop),
                       n_ignore=None if min_thinking is not None else num_ignore,
                       ignore_str="Wait", max_tokens_thinking=max_thinking or "auto",
                       min_tokens_thinking=min_thinking)
    mine = World(tok, prompt_ids, scripts)
    outs = BudgetForcing(cfg).run(Engine(mine, tok), questions, cfg)
    assert all(not s for s in mine.scripts), "ttx left scripted segments unused"
    return ref.requests, texts, mine.requests, [o.traces[0]["text"] for o in outs], outs


Q1, Q2 = "Q: 1+1?", "Q: what is two plus three, in words?"
WORLDS = {
    # issue 32 (1): rounds end with EOS, K=1, B=2: EOS never enters the thinking ids
    "eos-rounds": dict(scripts=[[[X, EOS], [Y, EOS], [X, EOS]]], max_thinking=2, num_ignore=1),
    # (2): " " then <|im_start|>: [Ġ, Wait] (s1) not [ĠWait] (text encoded again)
    "space-then-stop": dict(scripts=[[[SP, IM_START], [X, Y, EOS], [Y, EOS]]], max_thinking=8,
                            num_ignore=1),
    # a blank line sampled as two "\n" (canonical: one token), then the budget runs out
    "split-blank-line": dict(scripts=[[[X, NL, NL, IM_START], [Y, X, Y, X, Y, X], [X, EOS]]],
                             max_thinking=6, num_ignore=2),
    # (3): the cut text ends in "\n" but the uncut text does not: s1 adds the newline
    "newline-on-uncut": dict(scripts=[[[X, EOS], [B_, NL, X, Y], [Y, EOS]]], max_thinking=4,
                             num_ignore=1),
    # the uncut text ends in "\n" although the cut ids do not: no newline
    "newline-at-end": dict(scripts=[[[X, Y, X, EOS], [B_, X, Y, NL], [Y, EOS]]], max_thinking=4,
                           num_ignore=1),
    # (6): K=0 still asks min_tokens 1; the single round is final with its EOS stripped
    "k0": dict(scripts=[[[X, Y, EOS], [X, EOS]]], max_thinking=16, num_ignore=0),
    # three rounds, the second ends by length: final at once, "Final Answer:"
    "length-in-round-2": dict(scripts=[[[X, IM_START], [Y, X, Y], [X, EOS]]], max_thinking=3,
                              num_ignore=3),
    # min_tokens_thinking without ignores: one round with that minimum (VC:276-277)
    "min-thinking": dict(scripts=[[[X, Y, X, EOS], [Y, EOS]]], max_thinking=8, num_ignore=0,
                         min_thinking=3),
}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_s1_requests_and_graded_text_match_the_harness(tok, world):
    w = dict(WORLDS[world])
    ref_req, ref_text, my_req, my_text, outs = _both(
        tok, [Q1], w.pop("scripts"), max_new_tokens=40, num_ignore=w.pop("num_ignore"),
        max_thinking=w.pop("max_thinking"), min_thinking=w.pop("min_thinking", None))
    assert my_req == ref_req
    assert my_text == ref_text


def test_s1_first_worlds_by_hand(tok):
    """The issue's cases spelled out, so a wrong transcription cannot hide them."""
    ref_req, _, my_req, my_text, outs = _both(tok, [Q1], WORLDS["eos-rounds"]["scripts"],
                                              max_new_tokens=40, num_ignore=1, max_thinking=2)
    prompt = tok(Q1, add_special_tokens=False).input_ids + [IM_START, 17400]
    answer_ids = my_req[0][-1][0]
    assert answer_ids[len(prompt):len(prompt) + 2] == (X, WAIT)       # no EOS in the thinking
    bf = outs[0].traces[0]["budget_forcing"]
    assert bf["thinking_tokens"] == 2 and bf["cut"] and not bf["forced_end"]
    # the graded text holds the uncut thinking: both rounds and the "Wait"
    assert my_text[0].startswith("<|im_start|>think xWait y<|im_start|>answer")
    _, _, my_req, _, _ = _both(tok, [Q1], WORLDS["space-then-stop"]["scripts"],
                               max_new_tokens=40, num_ignore=1, max_thinking=8)
    assert my_req[0][1][0][len(prompt):] == (SP, WAIT)                # not [ĠWait]
    for request in my_req[0][:2]:
        assert request[1:4] == (8, 1, (IM_START, EOS))                # B, min 1, stop ids
    assert my_req[0][2][1:] == (40, 0, (), ("<|im_end|>",))            # the answer
    _, _, my_req, my_text, _ = _both(tok, [Q1], WORLDS["newline-on-uncut"]["scripts"],
                                     max_new_tokens=40, num_ignore=1, max_thinking=4)
    assert my_text[0].startswith("<|im_start|>think xWait b\n x y\n<|im_start|>answer\n")
    _, _, my_req, _, _ = _both(tok, [Q1], WORLDS["k0"]["scripts"], max_new_tokens=40,
                               num_ignore=0, max_thinking=16)
    assert my_req[0][0][2] == 1                                        # min_tokens 1 at K=0


def test_s1_auto_budget_subtracts_the_longest_prompt(tok):
    """VC:262-264: max_gen_toks less the batch's longest prompt, the delimiters and 100."""
    from ttx.tts.budget import S1Rules

    scripts = [[[X, EOS], [Y, EOS]], [[X, EOS], [Y, EOS]]]
    ref_req, ref_text, my_req, my_text, outs = _both(tok, [Q1, Q2], scripts, max_new_tokens=400,
                                                     num_ignore=0)
    assert my_req == ref_req and my_text == ref_text
    longest = len(tok(Q2, add_special_tokens=False).input_ids)
    budget = 400 - longest - 2 - 6 - 100
    assert my_req[0][0][1] == budget and outs[0].extra["budget_forcing"]["thinking_budget"] == budget
    engine = Engine(World(tok, [], []), tok)
    cfg = StrategyConfig(strategy="budget-forcing", params=SamplingParams(max_new_tokens=100),
                         search=SearchConfig(tokenizer=tok.name_or_path))
    rules = S1Rules(engine, cfg)
    with pytest.raises(TtxError, match="auto thinking budget .* raise --max-new-tokens"):
        rules.begin([Q2])
    cfg.search = SearchConfig(auto_budget="cpu", tokenizer=tok.name_or_path)
    rules = S1Rules(engine, cfg)
    rules.begin([Q2])
    assert rules.maximum == 100 - (2 + 6 + 1) - 50                    # ttx's CPU rule


def test_s1_refuses_a_stop_of_several_tokens(tok):
    from ttx.tts.budget import S1Rules

    cfg = StrategyConfig(strategy="budget-forcing",
                         params=SamplingParams(max_new_tokens=64, stop=("Final Answer",)),
                         search=SearchConfig(max_thinking_tokens=8, tokenizer=tok.name_or_path))
    with pytest.raises(TtxError, match="single tokens .*'Final Answer' is 2 tokens"):
        S1Rules(Engine(World(tok, [], []), tok), cfg)


def test_s1_task_stop_of_one_token_joins_the_stop_ids(tok):
    ref_req, ref_text, my_req, my_text, _ = _both(tok, [Q1], [[[X, NL2], [Y, EOS], [X, EOS]]],
                                                  max_new_tokens=40, num_ignore=1,
                                                  max_thinking=8, stop=["\n\n"])
    assert my_req == ref_req and my_text == ref_text
    assert my_req[0][0][3] == (IM_START, NL2, EOS)


def test_s1_through_the_openai_engine_sends_token_ids(tok, default_model_dir):
    """On the openai engine the same requests go out as token-id prompts to /v1/completions
    with vLLM's return_token_ids, and the ids that come back are continued as they are."""
    import json

    import httpx

    from ttx.engines.openai import OpenAIEngine
    from ttx.tts.budget import BudgetForcing

    scripts = WORLDS["space-then-stop"]["scripts"]
    prompt_ids = [tok(Q1, add_special_tokens=False).input_ids]
    ref = World(tok, prompt_ids, scripts)
    ref_text = s1_harness(ref, tok, [list(prompt_ids[0])], 40, [], n_ignore=1, ignore_str="Wait",
                          max_tokens_thinking=8)
    world, bodies = World(tok, prompt_ids, scripts), []

    def answer(request):
        body = json.loads(request.content)
        bodies.append(body)
        ids, text, reason, stop = world.serve(body["prompt"], body["max_tokens"],
                                              body.get("min_tokens", 0),
                                              body.get("stop_token_ids", []), body.get("stop"))
        return httpx.Response(200, json={"usage": {"prompt_tokens": len(body["prompt"])},
                                         "choices": [{"index": 0, "text": text, "token_ids": ids,
                                                      "finish_reason": reason,
                                                      "stop_reason": stop if stop != EOS else None,
                                                      "logprobs": {"token_logprobs":
                                                                   [-0.5] * len(ids)}}]})

    engine = OpenAIEngine(base_url="http://stand-in/v1", model="m",
                          transport=httpx.MockTransport(answer))
    cfg = StrategyConfig(strategy="budget-forcing", n=1,
                         params=SamplingParams(max_new_tokens=40, temperature=0.0),
                         search=SearchConfig(num_ignore=1, max_thinking_tokens=8,
                                             tokenizer=str(default_model_dir)))
    [out] = BudgetForcing(cfg).run(engine, [Q1], cfg)
    assert world.requests == ref.requests and out.traces[0]["text"] == ref_text[0]
    assert all(b["return_token_ids"] and isinstance(b["prompt"], list) for b in bodies)
    assert "ids_from_text" not in out.extra["budget_forcing"]
