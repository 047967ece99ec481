"""The cheatsheet style, `uses`, DELETE events, the tips item format, the embedding retriever and
tts-run --memory-update (online learning, resume) on tiny models."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.errors import TtxError
from ttx.memory import bank as mb
from ttx.memory.parse import parse_tips
from ttx.memory.retrieve import BM25Retriever

TIP = "Divide the total equally among all groups."


@pytest.fixture(autouse=True)
def text_formats(monkeypatch):
    """The tip model writes the text item formats, so these tests pin the path of engines without
    output constraints (the hf engine's schema-constrained one: tests/test_structured.py)."""
    from ttx.engines.hf import HFEngine

    monkeypatch.setattr(HFEngine, "supports_constraints", False)


@pytest.fixture(scope="session")
def tip_model_dir(tmp_path_factory, default_model_dir):
    """A 2-layer Llama whose weights make it answer every chat prompt with `Tip: <TIP>` and stop:
    attention and MLP outputs are zeroed and the unembedding maps each token of that line to the
    next one (a bigram chain), so greedy decoding writes it after any prompt. A real model that
    gives the extractor something to parse, where random weights give nothing."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    chain = tok(f"\nTip: {TIP}", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert len(set(chain)) == len(chain)                  # distinct tokens: the chain cannot loop
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for cur, nxt in zip(chain, chain[1:]):
            head[nxt] += 2 * emb[cur] / emb[cur].pow(2).mean().sqrt()
    folder = tmp_path_factory.mktemp("tip-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _item(text, title="t", kind="cheatsheet", sources=("p1",), outcome="success", meta=None):
    return mb.new_item(text, title=title, kind=kind, source_ids=list(sources), outcome=outcome,
                       meta=meta)


def _events(bank):
    return [json.loads(x) for x in mb.sidecar_paths(bank)[1].read_text().splitlines()]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_cheatsheet_rewrite_adds_updates_keeps_and_deletes(tmp_path):
    bank = tmp_path / "bank.jsonl"
    other = _item("Multiply the bags by the items in each bag.", kind="strategy", sources=["x"])
    keep = _item("Reread the question before answering.", title="Reread", sources=["p1"])
    change = _item("Write units next to numbers.", title="Units", sources=["p1"])
    gone = _item("Guess when unsure.", title="Guess", sources=["p1"])
    mb.add_items(bank, [other, keep, change, gone])
    new = [_item("Reread the question before answering.", title="Reread", sources=["p2"]),
           _item("Write the unit next to every number you use.", title="Units", sources=["p2"]),
           _item("Check the answer against the question.", title="Check", sources=["p2"])]
    events = mb.rewrite_items(bank, new, kind="cheatsheet", source_id="p2",
                              meta_updates={"extracted_from": ["p2"]})
    assert [e["event"] for e in events] == ["NOOP", "UPDATE", "ADD", "DELETE"]
    assert events[3]["id"] == gone["id"] and events[3]["text"] == "Guess when unsure."
    items = mb.load_bank(bank)
    assert items[0] == other                                   # other kinds are untouched
    sheet = [it for it in items if it["kind"] == "cheatsheet"]
    assert [it["title"] for it in sheet] == ["Reread", "Units", "Check"]
    assert sheet[0] == keep and sheet[1]["id"] == change["id"]  # an update keeps its id
    assert sheet[1]["text"].startswith("Write the unit") and sheet[1]["source_ids"] == ["p1", "p2"]
    assert [e["event"] for e in _events(bank)][-4:] == ["NOOP", "UPDATE", "ADD", "DELETE"]
    assert json.loads(mb.sidecar_paths(bank)[0].read_text())["extracted_from"] == ["p2"]
    # a rewrite cut by the token limit deletes nothing
    events = mb.rewrite_items(bank, new[2:], kind="cheatsheet", source_id="p3", keep_missing=True)
    assert [e["event"] for e in events] == ["NOOP"]
    assert len(mb.load_bank(bank)) == 4


def test_uses_count_problems_and_whether_they_were_solved(tmp_path):
    bank = tmp_path / "bank.jsonl"
    a, b = _item("Add the parts.", sources=["s"]), _item("Subtract the losses.", sources=["s"])
    mb.add_items(bank, [a, b])
    assert mb.record_uses(bank, [("q1", [a["id"]], 1.0), ("q2", [a["id"], b["id"]], 0.0),
                                 ("q3", [b["id"], "mem-unknown"], None)]) == 2
    once = {it["id"]: it for it in mb.load_bank(bank)}
    assert once[a["id"]]["uses"] == 2 and once[b["id"]]["uses"] == 2
    assert once[a["id"]]["meta"]["solved_by"] == ["q1"] and once[a["id"]]["meta"]["failed_by"] == ["q2"]
    assert once[b["id"]]["meta"] == {"used_by": ["q2", "q3"], "solved_by": [], "failed_by": ["q2"]}
    # the same records again change nothing: a resumed or repeated count is not a new use
    assert mb.record_uses(bank, [("q1", [a["id"]], 1.0), ("q2", [a["id"], b["id"]], 0.0)]) == 0
    assert {it["id"]: it for it in mb.load_bank(bank)} == once
    # re-scored: q2 now solved moves from failed_by to solved_by
    mb.record_uses(bank, [("q2", [a["id"]], 1.0)])
    [a2] = [it for it in mb.load_bank(bank) if it["id"] == a["id"]]
    assert a2["meta"]["solved_by"] == ["q1", "q2"] and a2["meta"]["failed_by"] == []
    assert sum(e["event"] == "UPDATE" for e in _events(bank)) == 5


def test_tips_format_parses_tip_lines_and_drops_the_copied_example():
    text = ("Here are tips:\n1. Tip: Add the amounts a person gets to what they have.\n"
            "Tip 2: **Check the answer against the question.**\n"
            "- Tip: When something is added to what a person has, add the two amounts.\n"
            "Tip: ok\nTip: Add the amounts a person gets to what they have.\nsome prose\n")
    parsed, copied = parse_tips(text, 3, "When something is added to what a person has, add the "
                                         "two amounts.")
    assert [b["content"] for b in parsed.blocks] == [
        "Add the amounts a person gets to what they have.", "Check the answer against the question."]
    assert parsed.blocks[0]["title"] == "Add the amounts a person gets to what"  # 8 words
    assert copied == 1 and parsed.malformed == 1             # "ok" is a fragment
    assert parse_tips("no tips here", 3)[0].malformed == 1
    assert parse_tips("", 3)[0].malformed == 0


def test_k_zero_gives_every_item_except_the_problems_own():
    items = [_item("Add.", sources=["p1"]), _item("Subtract.", sources=["p2"]),
             _item("Divide.", sources=["p3", "p1"])]
    assert BM25Retriever(items).retrieve("zebra", 0, exclude_source="p1") == [items[1]]
    assert BM25Retriever(items).retrieve("zebra", 0) == items


def test_embedding_retriever_ranks_an_identical_item_first(tiny_model_dir):
    import torch

    from ttx.memory.retrieve import Embedder, EmbeddingRetriever

    texts = [("Sharing", "Divide the total by the number of friends."),
             ("Change", "Change is the amount paid minus the price."),
             ("Boxes", "Multiply the boxes by the items in each box."),
             ("Losses", "Subtract what is given away from what one has.")]
    items = [_item(t, title=h, kind="strategy", sources=[f"p{i}"])
             for i, (h, t) in enumerate(texts)]
    embedder = Embedder(str(tiny_model_dir))
    vecs = embedder.embed([f"{h} {t}" for h, t in texts])
    assert embedder.dimension == 64 and vecs.shape == (4, 64)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (vecs @ vecs.T - torch.eye(4)).abs().max() > 1e-3    # distinct texts, distinct vectors
    r = EmbeddingRetriever(items, embedder)
    for i, (h, t) in enumerate(texts):
        assert r.retrieve(f"{h} {t}", k=2)[0] is items[i]
        got = r.retrieve(f"{h} {t}", k=3, exclude_source=f"p{i}")   # leave-one-out holds
        assert len(got) == 3 and items[i] not in got
    with pytest.raises(TtxError):
        Embedder(str(tiny_model_dir / "missing"))


def _tts(model, problems, out, *extra):
    return run_cli(["tts-run", "--model", model, "-i", problems, "-o", out, "--strategy", "greedy",
                    "--max-new-tokens", "16", "--no-progress", *extra])


def test_memory_update_learns_before_the_next_problem_and_resumes(tmp_path, tip_model_dir):
    problems = _write(tmp_path / "p.jsonl", generate(4, seed=3))
    ids = [p["id"] for p in generate(4, seed=3)]
    bank, out = tmp_path / "bank.jsonl", tmp_path / "out.jsonl"
    args = ["--memory", bank, "--memory-update", "--memory-item-format", "tips", "--memory-k", "0",
            "--memory-extract-tokens", "24"]
    r = _tts(tip_model_dir, problems, out, *args)
    assert r.exit_code == 0, r.output
    records = _records(out)
    [item] = mb.load_bank(bank)                      # one tip, learned from each problem in turn
    assert item["text"] == TIP and item["kind"] == "pitfall"     # the model never answers right
    assert item["source_ids"] == sorted(ids)
    # the first problem had an empty bank; each later one was given the tip learned before it
    assert [rec["memory_ids"] for rec in records] == [[]] + [[item["id"]]] * 3
    assert item["uses"] == 3 and item["meta"]["failed_by"] == sorted(ids[1:])
    assert json.loads(mb.sidecar_paths(bank)[0].read_text())["extracted_from"] == sorted(ids)
    summary = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["summary"]
    assert summary["memory_update"]["learned"] == 4 and summary["memory_problems_with_items"] == 3
    assert summary["memory_update"]["events"] == {"ADD": 1, "UPDATE": 3, "DELETE": 0, "NOOP": 0}

    # killed after two problems (a), or between writing the second record and learning it (b):
    # --resume gives the records and the bank of the uninterrupted run
    two, bank_a = tmp_path / "two.jsonl", tmp_path / "bank_a.jsonl"
    one, bank_b = tmp_path / "one.jsonl", tmp_path / "bank_b.jsonl"
    assert _tts(tip_model_dir, problems, two, *_swap(args, bank_a), "--limit", "2").exit_code == 0
    assert _tts(tip_model_dir, problems, one, *_swap(args, bank_b), "--limit", "1").exit_code == 0
    one.write_text(one.read_text() + two.read_text().splitlines()[1] + "\n")
    for part, part_bank in ((two, bank_a), (one, bank_b)):
        r = _tts(tip_model_dir, problems, part, *_swap(args, part_bank), "--resume")
        assert r.exit_code == 0, r.output
        resumed = _records(part)
        assert [x["memory_ids"] for x in resumed] == [x["memory_ids"] for x in records]
        assert [x["traces"] for x in resumed] == [x["traces"] for x in records]
        [again] = mb.load_bank(part_bank)
        assert {k: again[k] for k in ("id", "source_ids", "uses")} == \
            {k: item[k] for k in ("id", "source_ids", "uses")}
        assert again["meta"]["failed_by"] == item["meta"]["failed_by"]


def _swap(args, bank):
    return [str(bank) if a == args[1] else a for a in args]


def test_online_cheatsheet_with_self_judge_and_embedding_retrieval(tmp_path, tip_model_dir):
    problems = _write(tmp_path / "p.jsonl", [{k: v for k, v in p.items() if k != "answer"}
                                             for p in generate(3, seed=4)])
    bank, out = tmp_path / "sheet.jsonl", tmp_path / "out.jsonl"
    r = _tts(tip_model_dir, problems, out, "--memory", bank, "--memory-update",
             "--memory-style", "cheatsheet", "--memory-item-format", "tips", "--memory-k", "1",
             "--memory-retriever", "embedding", "--memory-embedder", tip_model_dir,
             "--memory-extract-tokens", "24")
    assert r.exit_code == 0, r.output
    [entry] = mb.load_bank(bank)
    assert entry["kind"] == "cheatsheet" and entry["text"] == TIP
    assert [rec["memory_ids"] for rec in _records(out)] == [[], [entry["id"]], [entry["id"]]]
    meta = json.loads(mb.sidecar_paths(bank)[0].read_text())
    assert meta["retriever"] == "embedding" and meta["dimension"] == 64
    assert meta["embedder"] == str(tip_model_dir) and meta["style"] == "cheatsheet"
    update = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["summary"]["memory_update"]
    assert update["judge_unparsed"] == 3          # no gold: the model judged (and said no verdict)
    assert update["events"] == {"ADD": 1, "UPDATE": 0, "DELETE": 0, "NOOP": 2}
    assert entry["uses"] == 2 and entry["meta"]["solved_by"] == []
    assert entry["meta"]["failed_by"] == sorted(str(p["id"]) for p in generate(3, seed=4)[1:])


def test_memory_extract_cheatsheet_offline_and_uses_from_scored_records(tmp_path, tip_model_dir):
    problems = generate(3, seed=6)
    records = [{**p, "pred": "1", "correct": float(i == 0), "memory_ids": ["mem-x"] if i else [],
                "traces": [{"text": f"attempt {i}", "pred": "1"}]} for i, p in enumerate(problems)]
    scored, bank = _write(tmp_path / "scored.jsonl", records), tmp_path / "bank.jsonl"
    mb.add_items(bank, [dict(_item("Seed note.", kind="strategy", sources=["elsewhere"]),
                             id="mem-x")])
    tiny = ["--model", tip_model_dir, "--no-progress", "--max-new-tokens", "24"]
    r = run_cli(["memory-extract", "-i", scored, "-o", bank, "--style", "cheatsheet", *tiny])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "bank.jsonl.manifest.json").read_text())["summary"]
    # blocks format: the tip line is no block, so every rewrite is malformed and the sheet kept
    assert s["rewrite_kept_old"] == 3 and s["malformed"] == 3 and s["items_parsed"] == 0
    assert s["uses_recorded"] == 1
    [seed] = mb.load_bank(bank)
    assert seed["uses"] == 2 and seed["meta"]["failed_by"] == sorted(str(p["id"])
                                                                     for p in problems[1:])
    r = run_cli(["memory-extract", "-i", scored, "-o", bank, "--style", "cheatsheet",
                 "--item-format", "tips", "--no-resume", *tiny])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "bank.jsonl.manifest.json").read_text())["summary"]
    assert s["events"] == {"ADD": 1, "UPDATE": 0, "DELETE": 0, "NOOP": 2} and s["uses_recorded"] == 0
    assert Counter(it["kind"] for it in mb.load_bank(bank)) == {"strategy": 1, "cheatsheet": 1}


def test_bad_memory_options_exit_2(tmp_path, tiny_model_dir):
    problems = _write(tmp_path / "p.jsonl", generate(2, seed=1))
    out = tmp_path / "o.jsonl"
    for extra, message in [(["--memory-update"], "--memory-update needs --memory"),
                           (["--memory", tmp_path / "none.jsonl"], "no such file"),
                           (["--memory", out, "--memory-update"], "the same file"),
                           (["--memory", tmp_path / "b.jsonl", "--memory-update",
                             "--memory-style", "concepts", "--memory-item-format", "tips"],
                            "concepts need their fields"),
                           (["--memory", tmp_path / "b.jsonl", "--memory-update", "--repeats-min",
                             "2"], "fixed number of repeats"),
                           (["--memory", tmp_path / "b.jsonl", "--memory-update",
                             "--memory-retriever", "embedding", "--memory-embedder",
                             tmp_path / "nowhere"], "no such model")]:
        r = _tts(tiny_model_dir, problems, out, *extra)
        assert r.exit_code == 2 and message in r.output, (extra, r.output)


def test_memory_update_recipe_runs_on_a_tiny_model(tmp_path, tip_model_dir):
    from tests.conftest import REPO

    problems = _write(tmp_path / "p.jsonl", generate(2, seed=8))
    bank, out = tmp_path / "bank.jsonl", tmp_path / "online.jsonl"
    r = run_cli(["tts-run", "--config", REPO / "recipes/tts-run-memory-update.yaml", "-i", problems,
                 "-o", out, "--memory", bank, "--model", tip_model_dir, "--max-new-tokens", "16",
                 "--memory-extract-tokens", "24", "--no-progress"])
    assert r.exit_code == 0, r.output
    [item] = mb.load_bank(bank)
    assert [rec["memory_ids"] for rec in _records(out)] == [[], [item["id"]]]


def test_the_loop_knows_nothing_of_memory_its_hook_says_what_decides_the_records(tmp_path):
    """RunConfig has no memory field: the hook (ttx.memory.online.Recall) gives its options to
    the resume fingerprint under the names they always had, and its bank as an input."""
    import dataclasses

    from ttx.memory.online import Recall
    from ttx.tts.options import MemoryOptions
    from ttx.tts.run import RunConfig

    assert not [f.name for f in dataclasses.fields(RunConfig) if "memory" in f.name]
    run = RunConfig(input=str(tmp_path / "p.jsonl"), output=str(tmp_path / "o.jsonl"))
    problems = [{"id": "1", "question": "q", "answer": "1"}]
    off = Recall(MemoryOptions(), run, problems, engine=None)
    assert off.before(problems[0]) == (None, []) and off.inputs() == [] and not off.one_at_a_time
    assert set(off.fingerprint()) == {f.name for f in dataclasses.fields(MemoryOptions)}
    bank = tmp_path / "bank.jsonl"
    bank.write_text("")
    on = Recall(MemoryOptions(memory=str(bank), memory_k=3), run, problems, engine=None)
    assert on.inputs() == [str(bank)] and on.fingerprint()["memory_k"] == 3
