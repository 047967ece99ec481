"""In-Place TTT: the parallel form against the recurrent definition, the generation cache, padding,
document resets, the engine, and exactness of the conversion."""

from __future__ import annotations

import pytest
import torch

from ttx.inplace_ttt.layer import InPlaceTTTMLP, TTTContext, reference_recurrent


def _tiny_ttt(chunk=4, layers=(0, 1), seed=0, ttt_input="hidden", dtype=torch.float32):
    """A converted random tiny Llama whose conv and W_target are NOT zero (TTT really acts)."""
    from ttx.inplace_ttt.modeling import CONFIGS, MODELS

    config = CONFIGS["llama"](vocab_size=97, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              ttt_layers=list(layers), ttt_chunk=chunk, ttt_lr=3.0,
                              ttt_input=ttt_input)
    torch.manual_seed(seed)
    model = MODELS["llama"](config).to(dtype).eval()
    _randomise_ttt(model, seed)
    return model


def _randomise_ttt(model, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mlp in model.ttt_mlps().values():
            w = mlp.ttt_conv.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype) * 0.5)
            t = mlp.ttt_target.weight
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * 0.3)


def _cached_logits(model, ids, pieces, mask=None):
    """Feed `ids` through the cache in pieces of the given sizes; concatenated logits."""
    from transformers import DynamicCache

    cache, out, start = DynamicCache(config=model.config), [], 0
    for size in pieces:
        part = ids[:, start:start + size]
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = mask[:, :start + size]
        out.append(model(input_ids=part, cache=cache, use_cache=True, **kwargs).logits)
        start += size
    return torch.cat(out, dim=1)


def test_parallel_form_matches_the_chunk_by_chunk_definition():
    """Exclusive prefix sum over chunks == the loop W_i = W_{i-1} + eta V_i^T Z_i (eq. 1), with a
    non-zero conv, a partial last chunk and a batch of two."""
    torch.manual_seed(0)
    model = _tiny_ttt(chunk=5, dtype=torch.float64)
    mlp = model.model.layers[0].mlp
    h = torch.randn(2, 23, 32, dtype=torch.float64)
    plain = mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    parallel, reference = mlp(h), reference_recurrent(mlp, h)
    assert (parallel - plain)[:, 5:].abs().max() > 1e-3      # the fast weight changes the output
    assert torch.equal(parallel[:, :5], plain[:, :5])        # the first chunk reads W_0
    torch.testing.assert_close(parallel, reference, rtol=1e-10, atol=1e-10)


def test_document_segments_restart_the_fast_weight():
    """Packed documents with segment ids compute what each document alone computes."""
    torch.manual_seed(1)
    mlp = _tiny_ttt(chunk=4, dtype=torch.float64).model.layers[1].mlp
    a, b = torch.randn(1, 9, 32, dtype=torch.float64), torch.randn(1, 7, 32, dtype=torch.float64)
    segments = torch.tensor([[0] * 9 + [1] * 7])
    mlp.ttt_context = TTTContext(segments=segments)
    packed = mlp(torch.cat([a, b], dim=1))
    mlp.ttt_context = None
    torch.testing.assert_close(packed, torch.cat([mlp(a), mlp(b)], dim=1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ttt_input", ["hidden", "embedding"])
def test_parallel_prefill_equals_token_by_token_generation(ttt_input):
    """The generation cache (partial chunk + current fast weight) reproduces the parallel form,
    token by token and in uneven pieces that straddle chunk boundaries."""
    model = _tiny_ttt(chunk=4, ttt_input=ttt_input)
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        one_by_one = _cached_logits(model, ids, [1] * 19)
        pieces = _cached_logits(model, ids, [6, 1, 1, 5, 2, 4])
    torch.testing.assert_close(one_by_one, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pieces, full, rtol=1e-4, atol=1e-5)


def test_left_padded_batch_equals_each_prompt_alone():
    """Chunks count from a row's first real token; padding adds nothing to the fast weight."""
    model = _tiny_ttt(chunk=4)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (11, 6, 3)]
    width, steps = 11, 7
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    follow = torch.randint(0, 97, (3, steps), generator=g)      # forced continuation tokens
    with torch.no_grad():
        batch = _cached_logits(model, torch.cat([ids, follow], 1),
                               [width] + [1] * steps,
                               mask=torch.cat([mask, torch.ones((3, steps), dtype=torch.long)], 1))
        for i, p in enumerate(prompts):
            alone = model(input_ids=torch.cat([p, follow[i]])[None]).logits
            torch.testing.assert_close(batch[i, width - len(p):], alone[0], rtol=1e-4, atol=1e-5)


def test_cache_rows_repeat_select_and_merge_with_their_fast_weights():
    """Row surgery the hf engine does (repeat, select, merge two batches) keeps each row's state."""
    from transformers import DynamicCache

    from ttx.engines.hf import _batch_rows, _merge

    model = _tiny_ttt(chunk=3)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 97, (1, 7), generator=g), torch.randint(0, 97, (1, 5), generator=g)
    nxt = torch.randint(0, 97, (3, 1), generator=g)
    with torch.no_grad():
        ca, cb = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(input_ids=a, cache=ca, use_cache=True)
        model(input_ids=b, cache=cb, use_cache=True)
        _batch_rows(ca, lambda t: t.repeat_interleave(2, dim=0))    # two traces of prompt a
        ma, mb = torch.ones((2, 7), dtype=torch.long), torch.ones((1, 5), dtype=torch.long)
        dummy = torch.zeros(2, 1)
        cache, _, mask, _ = _merge((ca, dummy, ma, dummy[:, 0]), (cb, dummy[:1], mb, dummy[:1, 0]))
        keep = torch.tensor([0, 2])                                  # drop one trace of a
        _batch_rows(cache, lambda t: t[keep])
        mask = torch.cat([mask[keep], torch.ones((2, 1), dtype=torch.long)], 1)
        pos = torch.tensor([[7], [5]])
        got = model(input_ids=nxt[:2], attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True).logits[:, -1]
        want_a = model(input_ids=torch.cat([a, nxt[:1]], 1)).logits[0, -1]
        want_b = model(input_ids=torch.cat([b, nxt[1:2]], 1)).logits[0, -1]
    torch.testing.assert_close(got, torch.stack([want_a, want_b]), rtol=1e-4, atol=1e-5)


def test_hf_engine_generates_what_the_parallel_form_predicts(tiny_model_dir):
    """Greedy decoding through ttx's engine (shared prefill, continuous batching, rows leaving)
    picks at every step the argmax of a full, cache-free forward over the text so far."""
    from transformers import AutoTokenizer

    from ttx.engines.base import SamplingParams
    from ttx.engines.hf import HFEngine
    from ttx.inplace_ttt.convert import convert
    from ttx.models import load_model

    base, tokenizer, _ = load_model(str(tiny_model_dir), device="cpu")
    model = convert(base, layers=[0, 1], chunk=4)
    _randomise_ttt(model, seed=5)
    engine = HFEngine(loaded=(model, AutoTokenizer.from_pretrained(tiny_model_dir)),
                      max_batch_rows=3)
    prompts = ["One two three four five six", "Hi", "The cat sat on the mat and then"]
    gens = engine.generate(prompts, n=1, params=SamplingParams(max_new_tokens=9, ignore_eos=True))
    for prompt, gen in zip(prompts, gens):
        ids = engine.encode(prompt)
        for tok in gen.traces[0].token_ids:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert tok == int(logits.argmax())
            ids.append(tok)
        assert len(gen.traces[0].token_ids) == 9   # 9 decode steps: two or more chunk updates


def test_conversion_is_exact_and_the_checkpoint_loads_back(tiny_model_dir, tmp_path):
    """Conv = 0: the converted model reproduces the original logits over several chunks and
    while generating; the saved folder loads through ttx and plain AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    from ttx.inplace_ttt.convert import convert, save_checkpoint_folder
    from ttx.models import load_model

    base, tokenizer, _ = load_model(str(tiny_model_dir), device="cpu")
    model = convert(base, layers=[1], chunk=4, lr=2.0)
    ids = torch.randint(0, 1000, (2, 21), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
        assert torch.equal(_cached_logits(model, ids, [5] + [1] * 16),
                           _cached_logits(base, ids, [5] + [1] * 16))
    _randomise_ttt(model, seed=7)
    save_checkpoint_folder(model, tokenizer, tmp_path / "ttt")
    reloaded, _, _ = load_model(str(tmp_path / "ttt"), device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ttt")
    assert type(plain).__name__ == "InPlaceTTTLlamaForCausalLM"
    assert (reloaded.config.ttt_layers, reloaded.config.ttt_chunk, reloaded.config.ttt_lr,
            reloaded.config.ttt_input) == ([1], 4, 2.0, "hidden")
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert (want - base(input_ids=ids).logits).abs().max() > 1e-3
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want, rtol=0, atol=0)
        torch.testing.assert_close(plain(input_ids=ids).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_other_gated_mlp_families_convert_exactly(family):
    from ttx.inplace_ttt.convert import convert
    from ttx.inplace_ttt.modeling import FAMILIES

    config_cls, model_cls = FAMILIES[family]
    config = config_cls(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(8)
    base = model_cls(config).eval()
    model = convert(base, layers=[0, 2], chunk=3)
    assert type(model).__name__ == f"InPlaceTTT{model_cls.__name__}"
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
        _randomise_ttt(model)
        torch.testing.assert_close(_cached_logits(model, ids, [4] + [1] * 6),
                                   model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_a_module_without_gated_mlp_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from ttx.errors import TtxError
    from ttx.inplace_ttt.convert import convert

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(TtxError, match="gated-MLP family"):
        convert(model)


def test_inplace_mlp_keeps_the_original_submodules():
    from transformers.models.llama.modeling_llama import LlamaMLP

    from ttx.inplace_ttt.modeling import CONFIGS

    config = CONFIGS["llama"](hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                              num_attention_heads=2)
    mlp = LlamaMLP(config)
    ttt = InPlaceTTTMLP(mlp, 16, chunk=4, lr=3.0)
    ttt.reset_ttt_parameters()
    assert ttt.down_proj is mlp.down_proj and not ttt.ttt_conv.weight.any()
    assert torch.count_nonzero(ttt.ttt_target.weight - torch.diag(torch.diag(ttt.ttt_target.weight))) == 0
