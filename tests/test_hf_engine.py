"""The hf engine against plain transformers on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from ttx.engines.base import SamplingParams
from ttx.engines.hf import HFEngine

PROMPTS = ["Tom has 3 apples and buys 5 more.", "Hi", "A much longer prompt, so that left padding "
           "matters when the prompts of a chunk share one batch."]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(model=str(tiny_model_dir), device="cpu")


def _reference_greedy(engine, prompt, max_new_tokens):
    ids = torch.tensor([engine.encode(prompt)])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=list(engine.eos_ids),
                                pad_token_id=engine.pad_id)
    return out[0, ids.shape[1]:].tolist()


def _assert_logprobs_of_a_full_forward(engine, prompt_ids, trace):
    """The trace's per-token log-probabilities equal re-encoding prompt + trace in one pass."""
    ids = torch.tensor([prompt_ids + trace.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids).logits[0].float(), -1)
    steps = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(trace.token_ids))
    want = [logp[pos, tok].item() for pos, tok in zip(steps, trace.token_ids)]
    assert trace.logprobs == pytest.approx(want, abs=1e-4)


def test_greedy_matches_transformers_generate_for_a_padded_batch(engine):
    gens = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=12))
    for prompt, gen in zip(PROMPTS, gens):
        want = _reference_greedy(engine, prompt, 12)
        assert gen.prompt_tokens == len(engine.encode(prompt))
        assert len(gen.traces) == 2
        for trace in gen.traces:            # both copies of the shared prefill decode alike
            assert trace.token_ids == want
            assert trace.completion_tokens == len(want)
            assert trace.finish_reason == ("length" if len(want) == 12 else "stop")


def test_sampled_logprobs_match_a_full_forward_pass(engine):
    """Sampled traces from the repeated KV cache score the same as re-encoding prompt + trace."""
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3, logprobs=True)
    gens = engine.generate(PROMPTS, 3, params)
    for prompt, gen in zip(PROMPTS, gens):
        prompt_ids = engine.encode(prompt)
        texts = {tuple(t.token_ids) for t in gen.traces}
        assert len(texts) > 1, "temperature 1 on a random model should give distinct traces"
        for trace in gen.traces:
            _assert_logprobs_of_a_full_forward(engine, prompt_ids, trace)
            assert all(c >= -1e-5 for c in trace.self_certainty)   # KL(U||p) is non-negative


def test_seed_makes_sampling_repeatable(engine):
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=11)
    first = engine.generate(PROMPTS[:2], 4, params)
    again = engine.generate(PROMPTS[:2], 4, params)
    other = engine.generate(PROMPTS[:2], 4, SamplingParams(max_new_tokens=8, temperature=0.9,
                                                         top_p=0.9, seed=12))
    ids = lambda gens: [[t.token_ids for t in g.traces] for g in gens]  # noqa: E731
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)


def test_stop_string_cuts_the_text_and_ends_the_trace(engine):
    free = engine.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=12))[0].traces[0]
    assert len(free.text) > 4
    stop = free.text[2:4]                       # a string the greedy trace is known to produce
    cut = engine.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=12, stop=(stop,)))
    trace = cut[0].traces[0]
    assert trace.finish_reason == "stop"
    assert trace.text == free.text[:free.text.find(stop)]
    assert trace.completion_tokens < free.completion_tokens or free.text.endswith(stop)


def test_first_finish_cancels_the_rest_of_that_prompt_only(engine):
    sampling = dict(max_new_tokens=12, temperature=1.0, seed=5)
    probe = engine.generate(PROMPTS[:2], 4, SamplingParams(**sampling))[0]
    extra_eos = probe.traces[0].token_ids[3]          # makes traces end early, at varied steps
    engine.eos_ids = set(engine.eos_ids) | {extra_eos}
    try:
        full = engine.generate(PROMPTS[:2], 4, SamplingParams(**sampling))
        ffs = engine.generate(PROMPTS[:2], 4, SamplingParams(**sampling, stop_after_finished=1))
    finally:
        engine.eos_ids -= {extra_eos}
    first = min(t.completion_tokens for t in full[0].traces)
    assert first <= 4
    # same seed, same steps until the first finish: the earliest traces finish, the rest stop there
    for trace in ffs[0].traces:
        assert trace.completion_tokens == first
        assert trace.finish_reason in ("stop", "cancelled")
    assert ffs[0].traces[0].finish_reason == "stop" and ffs[0].traces[0].finish_order == 0
    n_first = sum(t.completion_tokens == first for t in full[0].traces)
    assert sum(t.finish_reason == "cancelled" for t in ffs[0].traces) == 4 - n_first
    # the other prompt keeps its own schedule: its traces run until its own first finish
    second = min(t.completion_tokens for t in full[1].traces)
    assert all(t.completion_tokens == second for t in ffs[1].traces)


def test_finished_rows_leave_and_others_continue(engine, nan_for_uninitialized):
    """Rows of a prompt that finished early must not disturb the continuing prompts: each prompt
    decodes exactly as plain greedy decoding with the same stop tokens would, on its own (the
    middle row leaves first, so the last row moves into its place in the cache)."""
    first = _reference_greedy(engine, PROMPTS[1], 2)[1]
    engine.eos_ids = set(engine.eos_ids) | {first}
    try:
        gens = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=16))
        want = [_reference_greedy(engine, p, 16) for p in PROMPTS]
    finally:
        engine.eos_ids -= {first}
    assert gens[1].traces[0].completion_tokens <= 2       # prompt 1 left the batch early
    assert gens[2].traces[0].completion_tokens > 2
    for gen, ids in zip(gens, want):
        assert gen.traces[0].token_ids == ids


def test_top_p_keeps_only_the_nucleus():
    """With top-p 0.5 and one token holding 60% of the mass, only that token can be drawn."""
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, top_p=0.5)
    draws = torch.stack([HFEngine._sample(logits, params, g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {0}
    assert set(draws[:, 1].tolist()) == {1}     # 0.5 alone reaches p = 0.5
    free = torch.stack([HFEngine._sample(logits, SamplingParams(temperature=1.0), g)
                        for _ in range(400)])
    share = (free[:, 0] == 0).float().mean().item()
    assert 0.5 < share < 0.7                     # unrestricted: about 60% for token 0
    assert set(free[:, 0].tolist()) == {0, 1, 2}


def test_traces_come_back_in_sampling_order(engine):
    """Row order, not finishing order: maj@k over 'the first k traces' must not favour short ones.
    Until the first trace finishes, a run with a stop string draws what a run without one draws."""
    sampling = dict(max_new_tokens=12, temperature=1.0, seed=5)
    stopped = engine.generate(PROMPTS[:1], 6, SamplingParams(**sampling, stop=("e",)))[0]
    free = engine.generate(PROMPTS[:1], 6, SamplingParams(**sampling))[0]
    first = min(t.completion_tokens for t in stopped.traces)
    assert sorted(t.finish_order for t in stopped.traces) == list(range(6))
    assert len({tuple(t.token_ids[:first]) for t in free.traces}) > 1
    for a, b in zip(stopped.traces, free.traces):
        assert a.token_ids[:first] == b.token_ids[:first]


def test_prompts_joining_a_running_batch_decode_as_if_alone(tiny_model_dir, nan_for_uninitialized):
    """Continuous batching: with room for 2 rows, the third prompt joins mid-flight (left-padded
    to the running batch, stale padding trimmed when the long rows leave) and still decodes
    exactly as on its own."""
    from ttx.engines import hf

    calls = {"merge": 0, "trim": 0}
    merge, trim = hf._merge, hf._trim_left

    def counting_merge(*args):
        calls["merge"] += 1
        return merge(*args)

    def counting_trim(cache, mask):
        out = trim(cache, mask)
        calls["trim"] += out[1].shape[1] < mask.shape[1]
        return out

    small = HFEngine(model=str(tiny_model_dir), device="cpu", max_batch_rows=2)
    hf._merge, hf._trim_left = counting_merge, counting_trim
    try:
        for order in (PROMPTS, PROMPTS[::-1]):   # the early finisher: short, then long prompt
            stop_early = _reference_greedy(small, order[1], 3)[2]
            small.eos_ids = set(small.eos_ids) | {stop_early}
            try:
                gens = small.generate(order, 1, SamplingParams(max_new_tokens=10))
                for prompt, gen in zip(order, gens):
                    assert gen.traces[0].token_ids == _reference_greedy(small, prompt, 10)
            finally:
                small.eos_ids -= {stop_early}
    finally:
        hf._merge, hf._trim_left = merge, trim
    assert calls["merge"] >= 2 and calls["trim"] >= 1
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=2, logprobs=True)
    small.max_batch_rows = 3                       # one prompt's 2 rows + a row of the next
    for prompt, gen in zip(PROMPTS, small.generate(PROMPTS, 2, params)):
        for trace in gen.traces:
            _assert_logprobs_of_a_full_forward(small, small.encode(prompt), trace)


def test_sampling_at_a_temperature_draws_what_softmax_and_a_full_cumsum_draw():
    """The sampler's unnormalised weights exp((l - max) / T) give, for the same uniforms, the tokens
    a float64 cumsum over softmax(l / T) gives (EOS-suppressed -inf entries stay undrawable)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 49152, generator=g) * 3
    logits[:, :100] = -math.inf
    params = SamplingParams(temperature=0.7)
    got = HFEngine._sample(logits, params, torch.Generator().manual_seed(5))
    u = torch.rand((64, 1), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    full = torch.softmax(logits / 0.7, dim=-1).cumsum(-1, dtype=torch.float64)
    want = torch.searchsorted(full, u * full[:, -1:], right=True).squeeze(1)
    assert torch.equal(got, want)
    assert bool((got >= 100).all())


def test_two_level_inverse_cdf_draws_what_a_full_cumsum_draws():
    """The block-wise sampler picks, for the same uniform, the token a float64 cumsum over the
    whole vocabulary picks; masked tokens (probability zero) are never drawn, even at u -> 1."""
    from ttx.engines.hf import _inverse_cdf

    g = torch.Generator().manual_seed(0)
    for vocab in (49152, 1000, 7):                       # a multiple of the block, and not
        logits = torch.randn(16, vocab, generator=g) * 4
        logits[:, vocab // 2:] = -math.inf               # half the vocabulary masked
        probs = torch.softmax(logits, dim=-1)
        u = torch.rand((16, 1), generator=g, dtype=torch.float64)
        u[0] = 1 - 1e-16
        u[1] = 1.0                       # as if u * total rounded up to the total
        full = probs.cumsum(-1, dtype=torch.float64)
        want = torch.searchsorted(full, u * full[:, -1:], right=True).squeeze(1)
        got = _inverse_cdf(probs, u)
        assert torch.equal(got, want.clamp(max=vocab // 2 - 1))
        assert bool((probs.gather(1, got[:, None]) > 0).all())
