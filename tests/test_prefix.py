"""Prefix reuse in the hf engine: the radix store itself, and exactness — a continuation's
tokens and log-probabilities with reuse equal those without (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from ttx.engines.base import SamplingParams
from ttx.engines.prefix import PrefixStore


def _kv(n, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, n, 4, generator=g), torch.randn(2, n, 4, generator=g))
            for _ in range(layers)]


def test_store_matches_the_longest_prefix_and_splits_edges():
    store = PrefixStore(1 << 30)
    a = _kv(5)
    store.insert([1, 2, 3, 4, 5], a)
    m, kv = store.match([1, 2, 3, 9])
    assert m == 3 and torch.equal(kv[0][0], a[0][0][:, :3])
    b = _kv(2, seed=1)                           # [1, 2, 3] stored; add [7, 8] below it
    store.insert([1, 2, 3, 7, 8], b, start=3)
    m, kv = store.match([1, 2, 3, 7, 8, 9])
    assert m == 5
    assert torch.equal(kv[1][1], torch.cat([a[1][1][:, :3], b[1][1]], dim=1))
    m, kv = store.match([1, 2, 3, 4, 5], limit=4)
    assert m == 4 and kv[0][0].shape[1] == 4
    assert store.match([9])[0] == 0
    store.insert([5, 6], _kv(2), start=1)        # its prefix [5] was never stored: nothing kept
    assert store.match([5, 6])[0] == 0


def test_store_evicts_least_recently_used_leaves():
    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in _kv(4))
    store = PrefixStore(int(2.5 * one))
    store.insert([1, 1, 1, 1], _kv(4))
    store.insert([2, 2, 2, 2], _kv(4))
    store.match([1, 1, 1, 1])                    # used again: 2 is now the oldest
    store.insert([3, 3, 3, 3], _kv(4))
    assert store.bytes <= store.max_bytes
    assert store.match([1, 1, 1, 1])[0] == 4 and store.match([3, 3, 3, 3])[0] == 4
    assert store.match([2, 2, 2, 2])[0] == 0


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    from ttx.engines.hf import HFEngine

    return (HFEngine(model=str(tiny_model_dir), device="cpu"),
            HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0))


def _same(a, b):
    for ga, gb in zip(a, b):
        assert ga.prompt_tokens == gb.prompt_tokens
        for ta, tb in zip(ga.traces, gb.traces):
            assert ta.token_ids == tb.token_ids
            assert ta.logprobs == pytest.approx(tb.logprobs, abs=1e-5)


def test_a_continuation_equals_its_recomputation(engines):
    reuse, plain = engines
    params = SamplingParams(max_new_tokens=12, temperature=0.0, logprobs=True, ignore_eos=True)
    prompt = "<|im_start|>user\nTom has 3 apples and buys 5 more.<|im_end|>\n<|im_start|>assistant\n"
    first = [e.generate([prompt], 1, params) for e in engines]
    _same(*first)
    text = prompt + first[0][0].traces[0].text
    second = [e.generate([text + "\n\nSo", text], [2, 1],
                         SamplingParams(max_new_tokens=10, temperature=0.8, seed=3, logprobs=True))
              for e in engines]
    _same(*second)
    # the trace's own K/V was kept (its prompt and every token it fed); a continuation reuses
    # up to where its re-tokenised text first differs from those tokens (the join, at most)
    fed = reuse.encode(prompt) + first[0][0].traces[0].token_ids[:-1]
    assert reuse.prefix.match(fed)[0] == len(fed)
    joined = reuse.encode(text)
    common = next(i for i, (a, b) in enumerate(zip(joined + [-1], fed + [-2])) if a != b)
    with_reuse, without = second
    assert with_reuse[1].cached_prompt_tokens == min(common, len(joined) - 1)
    assert with_reuse[0].cached_prompt_tokens >= len(reuse.encode(prompt)) - 1
    assert all(g.cached_prompt_tokens == 0 for g in without)
    # a batch whose prompts reuse different lengths (and one that reuses nothing)
    third = [e.generate([text + " and more", "<|im_start|>user\nHi<|im_end|>\n", prompt + "Ok"], 1,
                        SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=True,
                                       ignore_eos=True))
             for e in engines]
    _same(*third)
    cached = [g.cached_prompt_tokens for g in third[0]]
    header = next(i for i, (a, b) in enumerate(zip(reuse.encode("<|im_start|>user\nHi<|im_end|>\n"),
                                                    reuse.encode(prompt))) if a != b)
    assert cached[0] >= cached[2] > 0 and cached[1] == header > 0     # the shared chat header


def test_recurrent_caches_turn_reuse_off(tmp_path, tiny_model_dir):
    """A Bamba hybrid's Mamba state cannot be cut at a prefix: the engine stops keeping K/V
    and gives the same tokens as without reuse."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttx.engines.hf import HFEngine
    from ttx.mamba.convert import convert

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    student, _ = convert(teacher, [1])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    a = HFEngine(loaded=(student, tokenizer))
    b = HFEngine(loaded=(student, tokenizer), prefix_cache_mb=0)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, logprobs=True, ignore_eos=True)
    outs = [[e.generate(["Once upon a time", "Once upon a time there"], 1, params)
             for _ in range(2)] for e in (a, b)]
    _same(outs[0][1], outs[1][1])
    assert a.prefix is None and all(g.cached_prompt_tokens == 0 for g in outs[0][1])
