"""PERK on a real (tiny) causal LM: segments, the outer gradient reaching every meta-learned part,
the saved folder loading back (PEFT adapter included), and the recall data generator."""

from __future__ import annotations

import json

import pytest
import torch

from ttx.data.recall import generate
from ttx.perk import module as pm
from ttx.perk.inner import adapt, answer_loss
from ttx.perk.segments import answer_example, context_segments, question_prompt


@pytest.fixture(autouse=True, scope="module")
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fresh(**kw):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = pm.PerkConfig(model=str(tiny_model_dir), **{"lora_r": 4, "inner_lr": 1e-2, **kw})
        return pm.build(base, cfg)

    return fresh, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_segments_are_prefixed_documents_with_the_prefix_masked(tiny):
    _, tok = tiny
    context = " ".join(f"word{i}" for i in range(60))
    seg = context_segments(tok, context, segment_tokens=16)
    ids = tok(context, add_special_tokens=False).input_ids
    assert seg.count == seg.input_ids.shape[0] == -(-len(ids) // 16)
    # each row: doc_i: prefix, then its 16 context tokens and <eos>; loss on those tokens only
    for i in range(seg.count):
        prefix = tok(f"doc_{i}:", add_special_tokens=False).input_ids
        body = ids[i * 16:(i + 1) * 16] + [tok.eos_token_id]
        row = seg.input_ids[i][seg.attention_mask[i].bool()].tolist()
        assert row == prefix + body
        assert seg.labels[i][seg.labels[i] != -100].tolist() == body
    assert seg.loss_tokens == len(ids) + seg.count
    parts = seg.split(3)
    assert sum(p.input_ids.shape[0] for p in parts) == seg.count
    input_ids, labels = answer_example(tok, "What is Mia's code?", "47", seg.count)
    prompt = tok(question_prompt("What is Mia's code?", seg.count)).input_ids
    assert input_ids[0, :len(prompt)].tolist() == prompt
    target = labels[0][labels[0] != -100].tolist()
    assert target == tok(" 47", add_special_tokens=False).input_ids + [tok.eos_token_id]


def test_outer_gradient_reaches_init_step_sizes_and_head(tiny):
    fresh, tok = tiny
    perk = fresh(inner_steps=3, unroll=2, lora_dropout=0.0)
    rec = generate(1, 40, seed=3)[0]
    seg = context_segments(tok, rec["context"], 16)
    ids, labels = answer_example(tok, rec["question"], rec["answer"], seg.count)
    params, history = adapt(perk, seg, unroll=2)
    answer_loss(perk, params, ids, labels).backward()
    assert len(history) == 3 and history[-1] < history[0]          # the inner loop memorises
    assert perk.inner_lrs.grad is not None
    assert (perk.inner_lrs.grad.abs().sum(1) > 0).all()            # every step's rates learn
    assert perk.weighting.out.weight.grad.abs().sum() > 0           # the head learns
    init_grads = [p.grad for p in perk.lora_init().values()]
    assert all(g is not None for g in init_grads) and sum(g.abs().sum() for g in init_grads) > 0
    # the base model stays frozen
    assert all(p.grad is None for n, p in perk.model.named_parameters() if "lora_" not in n)


def test_first_order_only_gives_the_head_no_gradient(tiny):
    fresh, tok = tiny
    perk = fresh(inner_steps=2, unroll=0, lora_dropout=0.0)
    rec = generate(1, 30, seed=4)[0]
    seg = context_segments(tok, rec["context"], 16)
    ids, labels = answer_example(tok, rec["question"], rec["answer"], seg.count)
    params, _ = adapt(perk, seg, unroll=0)
    answer_loss(perk, params, ids, labels).backward()
    assert perk.weighting.out.weight.grad is None
    assert (perk.inner_lrs.grad.abs().sum(1) > 0).all()


def test_saved_folder_loads_back_and_the_adapter_is_peft(tiny, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fresh, _ = tiny
    perk = fresh(inner_steps=3)
    with torch.no_grad():
        perk.inner_lrs.uniform_(0.1, 0.2)
        perk.weighting.out.bias.fill_(0.5)
        for t in perk.lora_init().values():
            t.add_(0.01)
    pm.save(perk, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "perk_config.json").read_text())["inner_steps"] == 3
    loaded = pm.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "p")
    assert torch.equal(loaded.inner_lrs, perk.inner_lrs)
    assert torch.equal(loaded.weighting.out.bias, perk.weighting.out.bias)
    for n, t in perk.lora_init().items():
        assert torch.equal(loaded.lora_init()[n], t)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                     tmp_path / "p" / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    perk.model.eval()
    with torch.no_grad():
        assert torch.allclose(peft(input_ids=ids).logits, perk.model(input_ids=ids).logits,
                              atol=1e-5)


def test_recall_records_hide_the_answer_among_distractors():
    records = generate(20, context_words=150, seed=2, facts=3)
    assert generate(20, context_words=150, seed=2, facts=3) == records
    for r in records:
        assert set(r) >= {"id", "context", "question", "answer"}
        name, attribute = r["question"][len("What is "):-1].split("'s ")
        assert f"{name}'s {attribute} is {r['answer']}." in r["context"]
        assert sum(ch.isdigit() for ch in r["context"]) == 6            # three 2-digit facts
        assert 150 <= len(r["context"].split()) < 170
    assert len({r["id"] for r in records}) == 20
