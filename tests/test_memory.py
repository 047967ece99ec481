"""The memory bank, its parser and its retriever, without a model: schema, merges, events,
leave-one-out, BM25 ranking, malformed output, concurrent writers, bad lines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO
from ttx.errors import TtxError
from ttx.memory import bank as mb
from ttx.memory.extract import ExtractConfig, Problem, extraction_prompt, items_from_output
from ttx.memory.parse import parse_blocks
from ttx.memory.retrieve import PREAMBLE, BM25Retriever, memory_block


def _item(text, title="t", kind="strategy", sources=("p1",), outcome="success"):
    return mb.new_item(text, title=title, kind=kind, source_ids=list(sources), outcome=outcome)


def _events(bank):
    return [json.loads(line) for line in mb.sidecar_paths(bank)[1].read_text().splitlines()]


def test_schema_round_trip(tmp_path):
    bank = tmp_path / "bank.jsonl"
    items = [_item("Add the gains before subtracting the losses."),
             _item("Check the units of every quantity.", kind="pitfall", outcome="failure")]
    mb.add_items(bank, items)
    loaded = mb.load_bank(bank)
    assert loaded == items
    assert set(loaded[0]) == {"id", "text", "title", "kind", "source_ids", "outcome",
                              "created_at", "updated_at", "uses", "hash", "meta"}
    meta = json.loads(mb.sidecar_paths(bank)[0].read_text())
    assert meta["retriever"] == "bm25" and meta["near_duplicate"]["threshold"] == 0.7


def test_duplicates_merge_and_are_logged(tmp_path):
    bank = tmp_path / "bank.jsonl"
    first = _item("Multiply the number of boxes by the items in each box.", sources=["p1"])
    mb.add_items(bank, [first])
    exact = _item("multiply the number of boxes by the  items in each box.", sources=["p2"])
    again = _item("Multiply the number of boxes by the items in each box.", sources=["p1"])
    near = _item("Multiply the number of boxes by the items in each box first.", sources=["p3"])
    other = _item("Divide the total equally among the friends.", sources=["p4"])
    events = mb.add_items(bank, [exact, again, near, other])
    assert [e["event"] for e in events] == ["UPDATE", "NOOP", "UPDATE", "ADD"]
    loaded = mb.load_bank(bank)
    assert len(loaded) == 2
    assert loaded[0]["id"] == first["id"] and loaded[0]["source_ids"] == ["p1", "p2", "p3"]
    assert [e["event"] for e in _events(bank)] == ["ADD", "UPDATE", "NOOP", "UPDATE", "ADD"]


def test_concepts_merge_by_name(tmp_path):
    bank = tmp_path / "bank.jsonl"

    def concept(desc, cues, hints, src):
        text = mb.concept_text("Rate times time", desc, cues, hints)
        return mb.new_item(text, title="Rate times time", kind="concept", source_ids=[src],
                           outcome="success", meta={"description": desc, "cues": cues,
                                                    "hints": hints})

    mb.add_items(bank, [concept("first description", ["speed given"], ["multiply"], "a")])
    mb.add_items(bank, [concept("second description", ["speed given", "hours"],
                                ["multiply", "check units"], "b")])
    [c] = mb.load_bank(bank)
    assert c["meta"]["description"] == "first description"
    assert c["meta"]["cues"] == ["speed given", "hours"]
    assert c["meta"]["hints"] == ["multiply", "check units"]
    assert c["source_ids"] == ["a", "b"] and "check units" in c["text"]


BANK = [
    ("Sharing equally", "To share items equally among friends, divide the total by the number "
     "of friends.", "p1"),
    ("Making change", "Change is the amount paid minus the price times the count.", "p2"),
    ("Boxes of items", "Multiply the boxes by the items in each box, then add loose items.", "p3"),
    ("Giving away", "Subtract what is given away from what one has.", "p4"),
]


def _bank():
    return [_item(text, title=title, sources=[src]) for title, text, src in BANK]


def test_bm25_ranks_the_relevant_item_first():
    r = BM25Retriever(_bank())
    assert r.retrieve("Omar pays with 50 dollars for 3 pens at 4 dollars each; what change?",
                      k=1)[0]["title"] == "Making change"
    top = r.retrieve("Zoe shares 24 marbles equally among 6 friends.", k=2)
    assert top[0]["title"] == "Sharing equally" and len(top) <= 2
    assert r.retrieve("zebra quantum", k=3) == []      # nothing relevant: nothing injected


def test_leave_one_out_never_returns_the_problems_own_items():
    r = BM25Retriever(_bank())
    query = "Share items equally among friends: divide the total"
    assert r.retrieve(query, k=1)[0]["source_ids"] == ["p1"]
    got = r.retrieve(query, k=4, exclude_source="p1")
    assert got and all("p1" not in it["source_ids"] for it in got)


def test_memory_block_says_items_may_not_apply():
    block = memory_block(_bank()[:1])
    assert block.startswith(PREAMBLE) and "may or may not apply" in block
    assert memory_block([]) is None


def test_malformed_extractor_output_is_counted_not_fatal():
    text = ("Sure! Here you go.\nContent: a content line before any title\n"
            "1. **Title:** Add before subtracting\n"
            "**Description:** gains and losses in one problem\n"
            "**Content:** Add all gains first. Then subtract the losses.\n\n"
            "Title: No content here\n"
            "Description: this one is missing its content\n\n"
            "Title: " + "x" * 300 + "\nContent: too long a title\n"
            "- Title: Check the question\n  Content: Reread what is asked\n  before answering.\n")
    parsed = parse_blocks(text, "reasoningbank", max_items=5)
    assert [b["title"] for b in parsed.blocks] == ["Add before subtracting", "Check the question"]
    assert parsed.blocks[1]["content"] == "Reread what is asked before answering."
    assert parsed.malformed == 3       # stray field, missing content, over-long title
    assert parse_blocks("no blocks at all", "reasoningbank", 3).malformed == 1
    assert parse_blocks("", "concepts", 3).malformed == 0
    assert parse_blocks("\x00\x01 garbage ::: Title:", "reasoningbank", 3).malformed >= 1
    capped = parse_blocks("Title: a\nContent: b\n" * 5, "reasoningbank", max_items=3)
    assert len(capped.blocks) == 3 and capped.malformed == 2


def test_items_lose_the_problems_numbers_and_names():
    p = Problem("p9", "Tom has 12 apples. Tom gets 3 more. How many apples does Tom have now?",
                "15", "15", 1.0, [{"text": "12 + 3 = 15", "pred": "15", "success": True}])
    counts = Counter()
    out = ("Title: Add what Tom gets\nDescription: Tom receives 3 more\n"
           "Content: Add 12 and 3 to get 15. Keep it simple.\n")
    [item] = items_from_output(out, p, ExtractConfig(), "single", counts)
    for n in ("12", "15", "3", "Tom"):
        assert n not in item["text"] and n not in item["title"]
    assert counts["specifics_stripped"] == 1 and item["kind"] == "strategy"
    assert item["source_ids"] == ["p9"] and item["outcome"] == "success"


def test_several_traces_are_contrasted():
    traces = [{"text": "12+3=15", "pred": "15", "success": True},
              {"text": "12-3=9", "pred": "9", "success": False}]
    p = Problem("p1", "Tom has 12 apples. Tom gets 3 more. How many?", "15", "15", 1.0, traces)
    messages, mode = extraction_prompt(p, ExtractConfig())
    assert mode == "contrast" and "judged CORRECT" in messages[1]["content"]
    assert "judged WRONG" in messages[1]["content"] and "up to 5" in messages[1]["content"]
    single = Problem("p2", "q", "1", "2", 0.0, traces[1:])
    messages, mode = extraction_prompt(single, ExtractConfig())
    assert mode == "single" and "failed" in messages[1]["content"]


def test_a_bad_bank_line_names_file_line_and_field(tmp_path):
    bank = tmp_path / "bank.jsonl"
    mb.add_items(bank, [_item("A fine item about adding.")])
    bad = dict(mb.load_bank(bank)[0], kind="recipe")
    bank.write_text(bank.read_text() + json.dumps(bad) + "\n")
    with pytest.raises(TtxError) as exc:
        mb.load_bank(bank)
    assert str(exc.value).startswith(f"{bank}:2: field 'kind'")


_WRITER = """
import sys
from ttx.memory import bank as mb
path, tag = sys.argv[1], sys.argv[2]
for i in range(15):
    text = tag + " " + " ".join(chr(97 + i) * k for k in (1, 2, 3))   # distinct word sets
    mb.add_items(path, [mb.new_item(text, title=tag,
                                    kind="strategy", source_ids=[f"{tag}{i}"],
                                    outcome="success")])
"""


def test_concurrent_writers_leave_a_valid_bank(tmp_path):
    bank = tmp_path / "bank.jsonl"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(bank), tag], cwd=REPO)
             for tag in ("alpha", "beta")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    items = mb.load_bank(bank)
    assert Counter(it["title"] for it in items) == {"alpha": 15, "beta": 15}
    assert len(_events(bank)) == 30
