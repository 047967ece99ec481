"""Linear layers on oneDNN-packed weights (ttx.engines.cpu.packed) compute what nn.Linear computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ttx.engines.cpu.packed import PackedLinear, available, pack_linears, unpack_linears
from ttx.engines.hf import HFEngine

pytestmark = pytest.mark.skipif(not available("cpu", torch.float32), reason="no oneDNN")


def _packed(layer: nn.Linear) -> nn.Linear:
    holder = nn.Sequential(layer)
    assert pack_linears(holder) == 1
    return holder[0]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear_for_any_rows(dtype, tol, bias):
    if not available("cpu", dtype):
        pytest.skip(f"no oneDNN {dtype}")
    torch.manual_seed(0)
    layer = nn.Linear(96, 200, bias=bias).to(dtype)
    w, b = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    packed = _packed(layer)
    with torch.inference_mode():
        for shape in [(1, 96), (7, 96), (32, 96), (3, 301, 96), (2, 1, 96)]:
            x = torch.randn(*shape).to(dtype)
            want = F.linear(x.float(), w.float(), None if b is None else b.float())
            got = packed(x)
            assert got.shape == want.shape and got.dtype == dtype
            assert torch.allclose(got.float(), want, rtol=tol, atol=tol), shape


def test_a_changed_weight_is_packed_again():
    """An in-place update (an optimizer step) or a new tensor: the next call uses the new weight."""
    torch.manual_seed(0)
    packed = _packed(nn.Linear(32, 48, bias=False))
    x = torch.randn(5, 32)
    with torch.no_grad():
        first = packed(x)
        packed.weight.mul_(2)                      # in place: the version counter moves
        assert torch.allclose(packed(x), 2 * first, rtol=1e-5, atol=1e-5)
        packed.weight = nn.Parameter(torch.zeros(48, 32))   # another tensor
        assert torch.count_nonzero(packed(x)) == 0


def test_with_autograd_recording_the_plain_linear_runs_and_gradients_flow():
    torch.manual_seed(0)
    packed = _packed(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    packed(x).sum().backward()
    want = x.sum(0).expand(8, 16)
    assert torch.allclose(packed.weight.grad, want, atol=1e-6)


def test_only_plain_linears_are_swapped_and_unpack_restores_them():
    class Quantized(nn.Linear):                   # stands for bitsandbytes' Linear4bit
        pass

    with torch.inference_mode():
        made_in_inference = nn.Linear(8, 8)          # its tensors keep no version counter
    model = nn.Sequential(nn.Linear(8, 8), Quantized(8, 8), nn.Linear(8, 8).to(torch.float16),
                          made_in_inference)
    assert pack_linears(model) == 1
    assert type(model[3]) is nn.Linear
    assert type(model[0]) is PackedLinear and type(model[1]) is Quantized
    assert type(model[2]) is nn.Linear                 # float16 has no packed kernel here
    with torch.no_grad():
        model[0](torch.randn(2, 8))
    assert unpack_linears(model) == 1
    assert type(model[0]) is nn.Linear and "_packed" not in model[0].__dict__
    assert set(model.state_dict()) == {f"{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def test_engine_packs_the_model_it_loads_and_its_logits_match_the_plain_model(tiny_model_dir):
    packed = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0)
    plain = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0,
                     packed_weights=False)
    assert packed.packed_linears == 2 * 7 + 1          # 7 per layer and the head
    assert plain.packed_linears == 0
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    ids = torch.tensor([plain.encode("Tom has 3 apples and buys 5 more.")] * 3)
    with torch.inference_mode():
        want, got = plain.model(ids).logits, packed.model(ids).logits
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    # a model handed in (a stage that trains it) is left as it is unless asked
    loaded = HFEngine(loaded=(plain.model, plain.tokenizer), prefix_cache_mb=0)
    assert loaded.packed_linears == 0


def test_one_switch_turns_the_whole_fast_path_off(tiny_model_dir, monkeypatch):
    """TTX_CPU_FASTPATH=0: no packed linears, no fused forward, no C kernels, same tokens."""
    from ttx.engines.base import SamplingParams
    from ttx.engines.cpu import kernels
    from ttx.engines.cpu.fused import FusedDecoder

    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    fast = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0)
    want = fast.generate(["Tom has 3 apples."], 2, params)[0].traces
    monkeypatch.setenv("TTX_CPU_FASTPATH", "0")
    kernels._library.cache_clear()
    try:
        off = HFEngine(model=str(tiny_model_dir), device="cpu", prefix_cache_mb=0)
        assert off.packed_linears == 0 and off.fused is None
        assert FusedDecoder.build(fast.model) is None and kernels._library() is None
        assert not any(isinstance(m, PackedLinear) for m in off.model.modules())
        got = off.generate(["Tom has 3 apples."], 2, params)[0].traces
        assert [t.token_ids for t in got] == [t.token_ids for t in want]
    finally:
        kernels._library.cache_clear()
