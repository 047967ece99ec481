"""The Llama-family forward on fused packed weights (ttx.engines.cpu.fused) computes transformers'
logits and K/V, and stands aside for every model it does not reimplement exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ttx.engines.cpu.fused import FusedDecoder, supported
from ttx.engines.cpu.packed import available, pack_linears
from ttx.engines.hf import HFEngine
from ttx.engines.kv import growing


def _tiny(family: str, dtype=torch.float32, **extra):
    """A 2-layer random model of the family: 4 query heads on 2 K/V heads (grouped queries)."""
    import transformers

    cls, config_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"),
                       "mistral": ("MistralForCausalLM", "MistralConfig"),
                       "qwen2": ("Qwen2ForCausalLM", "Qwen2Config")}[family]
    kwargs = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=family != "mistral")
    if family == "mistral":
        kwargs["sliding_window"] = None
    if family == "llama":
        kwargs["attention_bias"] = True            # biases on q, k, v and o
    kwargs.update(extra)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config_cls)(**kwargs))
    return model.to(dtype).eval()


def _steps(model, fused: bool, steps: int = 6):
    """Logits of a left-padded prefill (3 rows of 9, 5 and 2 tokens) and of `steps` decode steps
    feeding fixed tokens, and the cache's K/V at the end."""
    g = torch.Generator().manual_seed(1)
    lengths = (9, 5, 2)
    ids = torch.randint(0, 211, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    positions = torch.zeros(3, 9, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, 9 - n:] = 1
        positions[r, 9 - n:] = torch.arange(n)
    cache = DynamicCache(config=model.config)
    growing(cache)
    decoder = FusedDecoder(model) if fused else None

    def forward(x, m, p):
        if fused:
            return decoder.forward(x, m, p, cache)
        return model(input_ids=x, attention_mask=m, position_ids=p, cache=cache, use_cache=True,
                     logits_to_keep=1).logits[:, -1].float()

    out = []
    with torch.inference_mode():
        out.append(forward(ids, mask, positions))
        p = positions[:, -1:]
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
            p = p + 1
            out.append(forward(torch.randint(0, 211, (3, 1), generator=g), mask, p))
    real = mask.bool()
    kv = [(layer.keys.transpose(1, 2)[real], layer.values.transpose(1, 2)[real])
          for layer in cache.layers]
    return out, kv


def _assert_same(got, want, tol=1e-5):
    """Every step's logits and the cache's keys and values within `tol` (float32)."""
    (logits, kv), (want_logits, want_kv) = got, want
    assert len(logits) == len(want_logits) and len(kv) == len(want_kv)
    for a, b in zip(logits, want_logits):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for (k1, v1), (k2, v2) in zip(kv, want_kv):
        torch.testing.assert_close(k1, k2, rtol=tol, atol=tol)
        torch.testing.assert_close(v1, v2, rtol=tol, atol=tol)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_fused_forward_gives_transformers_logits_and_cache_in_float32(family):
    model = _tiny(family)
    assert supported(model)
    want = _steps(model, fused=False)
    pack_linears(model)          # the engine's setting; fused does not need it, but must match it
    _assert_same(_steps(model, fused=True), want)


def test_fused_forward_through_the_c_kernels_gives_transformers_logits_and_cache(monkeypatch):
    from ttx.engines.cpu import kernels

    if not kernels.serves_attention(64, 2):
        pytest.skip("no C compiler with AVX2/OpenMP, or a CPU without AVX2")
    model = _tiny("llama", hidden_size=256, num_attention_heads=4)   # heads of 64: the kernel's
    assert FusedDecoder(model).native_attention
    want = _steps(model, fused=False)
    _assert_same(_steps(model, fused=True), want)
    monkeypatch.setattr(kernels, "available", lambda: False)         # torch's ops instead
    assert not FusedDecoder(model).native
    _assert_same(_steps(model, fused=True), want)


def test_fused_forward_in_bfloat16_agrees_with_transformers_within_its_rounding():
    if not available("cpu", torch.bfloat16):
        pytest.skip("no oneDNN bfloat16 packing on this CPU")
    model = _tiny("llama", torch.bfloat16)
    want, _ = _steps(model, fused=False)
    got, _ = _steps(model, fused=True)
    for a, b in zip(got, want):
        # bfloat16 keeps 8 bits: logits of order 1 differ in the last bits of some entries
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
        assert (a.argmax(-1) == b.argmax(-1)).all()


def test_models_it_does_not_reimplement_keep_transformers_forward():
    from peft import LoraConfig, get_peft_model

    assert supported(_tiny("llama"))
    assert not supported(_tiny("mistral", sliding_window=4))
    assert not supported(_tiny("llama", hidden_act="gelu"))
    assert not supported(_tiny("llama", torch.float16))         # no packed kernel for it
    training = _tiny("llama").train()
    assert not supported(training)
    hooked = _tiny("llama")
    hooked.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert not supported(hooked)
    dora = get_peft_model(_tiny("llama"), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert not supported(dora) and not supported(dora.base_model.model)


def _lora(model, seed=3):
    """LoRA on all seven linear layers with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return lora.eval()


def test_a_lora_adapter_is_merged_into_the_fused_weights():
    lora = _lora(_tiny("llama"))
    assert supported(lora)
    want, want_kv = _steps(lora, fused=False)
    _assert_same(_steps(lora, fused=True), (want, want_kv))
    with lora.disable_adapter():           # switched off: the base model's logits
        base, _ = _steps(lora, fused=False)
        off, _ = _steps(lora, fused=True)
    assert not torch.allclose(base[0], want[0], atol=1e-3)              # the adapter really acts
    for a, b in zip(off, base):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_switching_an_adapter_off_and_on_re_packs_the_fused_weights():
    from ttx.engines.cpu.packed import packed_linear

    lora = _lora(_tiny("llama"))
    decoder = FusedDecoder(lora)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))

    def qkv(d):                             # what the first layer's fused matrix computes
        return packed_linear(x, d.layers[0].qkv, d.layers[0].qkv_bias)

    on = qkv(decoder)
    with lora.disable_adapter():
        decoder.refresh()
        assert torch.equal(qkv(decoder), qkv(FusedDecoder(lora)))
        assert not torch.allclose(qkv(decoder), on, atol=1e-3)
    decoder.refresh()
    assert torch.equal(qkv(decoder), on)


def test_the_engine_runs_an_adapter_on_the_fused_forward(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from ttx.engines.base import SamplingParams

    _lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).save_pretrained(tmp_path / "lora")
    fused = HFEngine(model=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "lora"),
                     prefix_cache_mb=0)
    plain = HFEngine(model=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "lora"),
                     prefix_cache_mb=0, packed_weights=False)
    assert fused.fused is not None and plain.fused is None
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True, logprobs=True)
    a = fused.generate(["Tom has 3 apples."], 1, params)[0].traces[0]
    b = plain.generate(["Tom has 3 apples."], 1, params)[0].traces[0]
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                               rtol=1e-5, atol=1e-5)


def test_in_place_ttt_models_keep_their_own_forward():
    from ttx.inplace_ttt.convert import convert

    assert not supported(convert(_tiny("llama", attention_bias=False), layers=[0]))


def test_the_engine_runs_fused_only_on_packed_weights(tiny_model_dir):
    assert HFEngine(model=str(tiny_model_dir), device="cpu").fused is not None
    plain = HFEngine(model=str(tiny_model_dir), device="cpu", packed_weights=False)
    assert plain.fused is None


def test_fused_engine_follows_weights_changed_between_calls(tiny_model_dir):
    """A stage that trains the model between calls (ttrl, tlm) gets logits of the new weights."""
    from ttx.engines.base import SamplingParams

    fused = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0)
    plain = HFEngine(loaded=(fused.model, fused.tokenizer), prefix_cache_mb=0)
    assert fused.fused is not None and plain.fused is None
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True, logprobs=True)
    prompt = "Tom has 3 apples and buys 5 more."

    def same():
        a = fused.generate([prompt], 1, params)[0].traces[0]
        b = plain.generate([prompt], 1, params)[0].traces[0]
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   rtol=1e-5, atol=1e-5)
        return a.token_ids

    before = same()
    with torch.no_grad():
        for p in fused.model.model.layers[0].mlp.parameters():
            p.mul_(-3.0)                                      # an in-place update
        fused.model.model.norm.weight.add_(0.5)
    assert same() != before


@pytest.mark.model
def test_fused_forward_on_the_default_model_gives_transformers_logits(default_model_dir):
    from ttx.models import load_model

    model, _, _ = load_model(str(default_model_dir), "cpu", "float32")
    pack_linears(model)     # the same matmul kernel on both sides: what differs is the forward
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=g)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :7] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    results = []
    for fused in (False, True):
        cache = DynamicCache(config=model.config)
        growing(cache)
        decoder = FusedDecoder(model) if fused else None
        m, p, x, out = mask, positions, ids, []
        with torch.inference_mode():
            for _ in range(4):
                if fused:
                    logits = decoder.forward(x, m, p, cache)
                else:
                    logits = model(input_ids=x, attention_mask=m, position_ids=p, cache=cache,
                                   use_cache=True, logits_to_keep=1).logits[:, -1].float()
                out.append(logits)
                x, p = logits.argmax(-1, keepdim=True), p[:, -1:] + 1
                m = torch.cat([m, m.new_ones(2, 1)], dim=1)
        results.append(out)
    (prefill, *decode), (want, *want_decode) = results
    # ttx's C kernels (RMSNorm's sum, SiLU's exp, decode attention; or decode attention's two
    # matmuls without them) round apart from torch's ops by an ulp here and there, which 30
    # layers amplify: logits of magnitude ~20 differ by up to ~1e-4 (either kernel alone does it)
    for a, b in zip([prefill, *decode], [want, *want_decode]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_traces_reading_their_prompts_k_v_from_one_row_decode_exactly_as_from_their_own(
        default_model_dir, tmp_path, monkeypatch, nan_for_uninitialized):
    """The decode attention kernel reads a prompt's K/V once for all its traces (hf._shared_prompt
    names the row and the columns). Through everything that reshapes the batch (prompts joining a
    running batch left-padded, traces finishing and rows moving into their holes, stale padding
    trimmed, a second call's prompts partly from the prefix store) tokens and log-probabilities
    are those of each row reading its own copy, to the bit."""
    from transformers import AutoTokenizer

    from ttx.engines import hf
    from ttx.engines.base import SamplingParams
    from ttx.engines.cpu import kernels

    if not kernels.serves_attention(64, 2):
        pytest.skip("no C kernels here")
    model = _tiny("llama", hidden_size=256, num_attention_heads=4,
                  vocab_size=len(AutoTokenizer.from_pretrained(default_model_dir)))
    model.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tmp_path / "m")
    prompts = ["Tom has 3 apples and buys 5 more. How many apples does he have now?",
               "A much longer prompt, so that left padding matters when the prompts of a "
               "chunk share one batch and the traces of each read the same K/V.", "Hi there"]
    params = SamplingParams(max_new_tokens=14, temperature=1.0, seed=4, logprobs=True)
    used = []
    shared_prompt = hf._shared_prompt

    def recording(*args):
        src, cols = shared_prompt(*args)
        used.append(bool(((src != torch.arange(len(src))) & (cols >= 8)).any()))
        return src, cols

    def run(share: bool):
        monkeypatch.setattr(hf, "_shared_prompt", recording if share else lambda *a: None)
        engine = HFEngine(model=str(tmp_path / "m"), device="cpu", max_batch_rows=7)
        assert engine.fused is not None and engine.fused.native_attention
        # EOS at a token some traces sample early: rows leave mid-way
        engine.eos_ids = set(engine.eos_ids) | {int(engine.encode("the")[-1])}
        out = [engine.generate(prompts, 3, params), engine.generate([p + " Then" for p in prompts],
                                                                    [2, 3, 1], params)]
        return [[(t.token_ids, t.logprobs) for g in gens for t in g.traces] for gens in out]

    assert run(True) == run(False)
    assert any(used)
