"""`ttx report`: the page's data against score's own numbers, the search tree rebuild, bad
input, and (in headless Chromium, `make browser`) what the rendered page shows."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttx.cli import cli
from ttx.report import browser
from ttx.report.classes import problem_classes
from ttx.report.tree import search_tree
from ttx.score import ScoreConfig, load_run

DATA = Path(__file__).resolve().parent / "data" / "report"
SCRIPT = "</script><b>not bold</b>"
# per problem: right (1) or wrong (0) at levels n = 1, 2, 4, and the class that makes
CURVES = {"ac": ((1, 1, 1), "always_correct"), "aw": ((0, 0, 0), "always_wrong"),
          "up": ((0, 1, 1), "improved"), "dn1": ((1, 1, 0), "degraded"),
          "dn2": ((1, 0, 0), "degraded"), "mx": ((1, 0, 1), "mixed")}
OTHER = {"ac": (1, 1, 1), "aw": (0, 0, 1), "up": (0, 1, 1), "dn1": (1, 1, 1), "dn2": (0, 0, 0),
         "mx": (0, 1, 1)}


def _records(curves: dict, tag: str) -> list[dict]:
    """Majority-vote records whose traces are told apart by their text."""
    out = []
    for pid, (oks, *_) in curves.items():
        for level, (n, ok) in enumerate(zip((1, 2, 4), oks), start=1):
            preds = ["7" if ok else "5"] * n
            if n > 1:
                preds[-1] = "9"                      # a losing vote
            texts = [f"{tag} {pid} level {level} trace {t}: so the answer is {p}."
                     for t, p in enumerate(preds)]
            if pid == "mx" and level == 2:
                texts[0] = f"{SCRIPT} so the answer is {preds[0]}."
            traces = [{"text": x, "pred": p, "completion_tokens": 10 * level + t,
                       "finish_reason": "stop", "score": None}
                      for t, (x, p) in enumerate(zip(texts, preds))]
            out.append({"id": pid, "question": f"Question {pid}: what is 3 + 4?", "answer": "#### 7",
                        "strategy": "majority", "n": n, "level_key": "n", "level": level,
                        "repeat": 0, "traces": traces, "pred": preds[0],
                        "completion_tokens": sum(t["completion_tokens"] for t in traces),
                        "sequential_tokens": 10 * level, "prompt_tokens": 20, "wall_s": 0.5,
                        "model": "tiny", "memory_ids": []})
    return out


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _run(args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return result


def _blob(html: str, name: str):
    m = re.search(f'<script type="application/json" id="{name}">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("report")
    return {"classes": _write(d / "classes.jsonl", _records(CURVES, "first")),
            "other": _write(d / "other.jsonl", _records({k: (v,) for k, v in OTHER.items()},
                                                         "second")),
            "dir": d}


# ---------- classes and numbers ----------

def test_classes_are_score_s(runs):
    run = load_run("classes", [runs["classes"]], ScoreConfig())
    classes, correct = problem_classes(run)
    assert {pid: c["class"] for pid, c in classes.items()} == {k: v[1] for k, v in CURVES.items()}
    assert classes["dn1"]["a"] == [1.0, 1.0, 0.0]
    assert sum(correct) == sum(sum(v[0]) for v in CURVES.values())


def test_page_embeds_score_json_and_classes(runs, tmp_path):
    out = tmp_path / "r.html"
    r = _run(["report", "--compare", f"a={runs['classes']}", "--compare", f"b={runs['other']}",
              "-o", out, "--ci-samples", "50"])
    assert r.exit_code == 0, r.output
    s = _run(["score", "--compare", f"a={runs['classes']}", "--compare", f"b={runs['other']}",
              "--json", "--ci-samples", "50"])
    html = out.read_text(encoding="utf-8")
    assert _blob(html, "ttx-score") == json.loads(s.stdout)      # the very numbers of score
    index = _blob(html, "ttx-index")
    assert [r["name"] for r in index["runs"]] == ["a", "b"]       # the order given
    first = {p["id"]: p["c"][0] for p in index["problems"]}
    assert first == {k: v[1] for k, v in CURVES.items()}
    score_a = next(x for x in json.loads(s.stdout)["runs"] if x["name"] == "a")
    assert sum(c == "degraded" for c in first.values()) == score_a["arise"]["degraded"] == 2
    manifest = json.loads((tmp_path / "r.html.manifest.json").read_text())
    assert manifest["stage"] == "report" and len(manifest["inputs"]) == 2
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


def test_page_is_self_contained(runs, tmp_path):
    out = tmp_path / "r.html"
    assert _run(["report", "-i", runs["classes"], "-o", out]).exit_code == 0
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link\b|@import|url\(", html, re.I)
    assert not re.search(r"https?://", html.replace("http://www.w3.org", ""))
    assert html.count("</script>") == 4                 # index, details, score JSON, the script
    detail = _blob(html, "ttx-detail")
    texts = [t["text"] for p in detail["problems"] for rr in p["runs"] for rec in rr["recs"]
             for t in rec["traces"]]
    assert any(t.startswith(SCRIPT) for t in texts)     # kept whole, escaped only in the HTML


def test_votes_and_record_fields(runs, tmp_path):
    out = tmp_path / "r.html"
    assert _run(["report", "-i", runs["classes"], "-o", out]).exit_code == 0
    detail = _blob(out.read_text(encoding="utf-8"), "ttx-detail")
    rec = detail["problems"][0]["runs"][0]["recs"][2]           # "ac" at n = 4: 7, 7, 7, 9
    assert [(v["answer"], v["votes"], v["ok"], v["chosen"]) for v in rec["votes"]] == [
        ("7", 3, True, True), ("9", 1, False, False)]
    assert rec["votes"][0]["traces"] == [0, 1, 2]
    assert rec["at"].endswith("classes.jsonl:3") and rec["level_value"] == 4
    assert detail["problems"][0]["goldx"] == "7"


def test_real_strategy_records(tmp_path):
    """Beam, DORA, budget forcing and refine records as tts-run wrote them."""
    out = tmp_path / "r.html"
    args = ["report", "-o", out, "--ci-samples", "0"]
    for s in ("beam", "dora", "budget-forcing", "refine"):
        args += ["--compare", f"{s}={DATA / (s + '.jsonl')}"]
    r = _run(args)
    assert r.exit_code == 0, r.output
    detail = _blob(out.read_text(encoding="utf-8"), "ttx-detail")
    beam = detail["problems"][0]["runs"][0]["recs"][0]
    assert beam["search"][0]["kind"] == "beam" and "beam" not in beam["x"]
    assert beam["search"][0]["consistent"]
    bf = detail["problems"][0]["runs"][2]["recs"][0]
    assert bf["bf"]["ignored"] == 1 and bf["traces"][0]["x"]["budget_forcing"]["forced_end"]
    refine = detail["problems"][0]["runs"][3]["recs"][-1]
    assert [t["pred"] for t in refine["refine"]["turns"]] == ["51", "74", "8"]
    assert refine["x"] == {}                             # every field has its own place


def test_unknown_strategy_fields_are_kept(runs, tmp_path):
    """A later strategy's own fields show as a generic block; one with the beam log's shape
    gets its tree too (dvts)."""
    recs = [json.loads(x) for x in (DATA / "beam.jsonl").read_text().splitlines()]
    for r in recs:
        r["strategy"], r["dvts"] = "dvts", r.pop("beam")
        r["subtrees"] = [1, 2]
    path = _write(tmp_path / "dvts.jsonl", recs)
    out = tmp_path / "r.html"
    assert _run(["report", "-i", path, "-o", out, "--ci-samples", "0"]).exit_code == 0
    rec = _blob(out.read_text(encoding="utf-8"), "ttx-detail")["problems"][0]["runs"][0]["recs"][0]
    assert rec["search"][0]["kind"] == "dvts" and rec["x"] == {"subtrees": [1, 2]}


# ---------- the search tree ----------

def _beam_record():
    """n = 4, M = 2, three iterations. Depth 1: A .9, B .8, C .5, D .4; A and B survive.
    A -> A1 (ends) and A2; B -> B1 and B2; A2 and B1 survive, B2 is pruned; each gets 2."""
    traces = [{"step_scores": s} for s in ([.9, .85], [.9, .7, .6], [.9, .7, .65], [.8, .6, .5],
                                           [.8, .6, .55])]
    log = [{"step": 1, "candidates": 1, "survivors": 1, "rollouts": [4]},
           {"step": 2, "candidates": 4, "survivors": 2, "rollouts": [2, 2]},
           {"step": 3, "candidates": 3, "survivors": 2, "rollouts": [2, 2]}]
    return log, traces


def test_search_tree_counts_and_places_every_step():
    log, traces = _beam_record()
    tree = search_tree(log, traces, "last")
    nodes = tree["nodes"]
    assert tree["consistent"] and len(nodes) == 1 + 4 + 4 + 4
    status = [n["status"] for n in nodes]
    assert status.count("complete") == 5 and status.count("expanded") == 4
    assert status.count("pruned") == 3 and status.count("root") == 1
    by_score = {(n["depth"], n["score"]): i for i, n in enumerate(nodes) if n["score"] is not None}
    b = by_score[(1, .8)]
    kids = [n for n in nodes if n["parent"] == b]
    assert len(kids) == 2 and sorted(k["status"] for k in kids) == ["expanded", "pruned"]
    assert [n["trace"] for n in nodes if n["status"] == "complete"] == [0, 1, 2, 3, 4]
    root_kids = [n for n in nodes if n["parent"] == 0]
    assert len(root_kids) == 4 and sum(n["status"] == "pruned" for n in root_kids) == 2


def test_search_tree_refuses_a_log_that_does_not_cover_the_traces():
    log, traces = _beam_record()
    log[2]["rollouts"] = [1, 1]                 # A2 has two recorded children
    tree = search_tree(log, traces, "last")
    assert not tree["consistent"] and "iteration 3" in tree["note"]
    assert all(n["status"] != "pruned" for n in tree["nodes"])      # the recorded paths only
    assert search_tree(log, [{"text": "no scores"}]) is None
    assert search_tree("not a log", traces) is None


def test_search_tree_of_every_real_record():
    for kind in ("beam", "dora"):
        for line in (DATA / f"{kind}.jsonl").read_text().splitlines():
            r = json.loads(line)
            tree = search_tree(r[kind]["iterations"], r["traces"], r[kind]["agg"])
            assert tree["consistent"], tree["note"]
            assert len(tree["nodes"]) == 1 + sum(sum(i["rollouts"]) for i in r[kind]["iterations"])
            assert sum(n["status"] == "complete" for n in tree["nodes"]) == len(r["traces"])


# ---------- bad input, stdin ----------

def test_broken_line_is_named(runs, tmp_path):
    lines = Path(runs["classes"]).read_text().splitlines()
    lines[2] = lines[2][:40]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    r = _run(["report", "-i", bad, "-o", tmp_path / "r.html"])
    assert r.exit_code == 2 and f"{bad}:3: not valid JSON" in r.stderr
    assert not (tmp_path / "r.html").exists()
    recs = _records(CURVES, "x")
    del recs[4]["pred"]
    r = _run(["report", "-i", _write(tmp_path / "nopred.jsonl", recs), "-o", tmp_path / "r.html"])
    assert r.exit_code == 2 and "nopred.jsonl:5: field 'pred'" in r.stderr


def test_stdin(runs, tmp_path):
    text = Path(runs["classes"]).read_text()
    out = tmp_path / "r.html"
    r = _run(["report", "-i", "-", "-o", out, "--ci-samples", "0"], input=text)
    assert r.exit_code == 0, r.output
    html = out.read_text(encoding="utf-8")
    assert _blob(html, "ttx-score")["runs"][0]["inputs"] == ["-"]
    r = _run(["report", "-i", runs["classes"], "-o", "-", "--ci-samples", "0"])
    assert r.exit_code == 0 and r.stdout.startswith("<!doctype html>")
    assert r.stdout.rstrip().endswith("</html>") and _blob(r.stdout, "ttx-index")["problems"]
    first, *rest = text.splitlines(keepends=True)
    first = json.loads(first)
    del first["pred"]
    r = _run(["report", "-i", "-", "-o", out], input=json.dumps(first) + "\n" + "".join(rest))
    assert r.exit_code == 2 and "<stdin>:1: field 'pred'" in r.stderr


def test_memory_texts(runs, tmp_path):
    from ttx.memory.bank import add_items, load_bank, new_item

    bank = tmp_path / "bank.jsonl"
    add_items(bank, [new_item("Add before you subtract.", title="order", kind="strategy",
                              source_ids=["x"], outcome="success")])
    item = load_bank(bank)[0]
    recs = _records(CURVES, "m")
    recs[0]["memory_ids"] = [item["id"], "gone"]
    out = tmp_path / "r.html"
    r = _run(["report", "-i", _write(tmp_path / "m.jsonl", recs), "-o", out, "--memory", bank])
    assert r.exit_code == 0, r.output
    detail = _blob(out.read_text(encoding="utf-8"), "ttx-detail")
    assert detail["problems"][0]["runs"][0]["recs"][0]["memory"] == [item["id"], "gone"]
    assert detail["memory"] == {item["id"]: {"title": "order", "kind": "strategy",
                                             "outcome": "success",
                                             "text": "Add before you subtract."}}


# ---------- in the browser ----------

MISSING = browser.available()


@pytest.fixture(scope="module")
def page(runs):
    """A comparison of the hand-made runs and real beam / budget-forcing records, in Chromium."""
    if MISSING:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    from selenium.webdriver.common.by import By

    out = runs["dir"] / "page.html"
    r = _run(["report", "--compare", f"a={runs['classes']}", "--compare", f"b={runs['other']}",
              "--compare", f"beam={DATA / 'beam.jsonl'}",
              "--compare", f"bf={DATA / 'budget-forcing.jsonl'}", "-o", out, "--ci-samples", "100"])
    assert r.exit_code == 0, r.output
    html = out.read_text(encoding="utf-8")
    with browser.chromium(1300, 900) as driver:
        driver.get(out.as_uri())
        _wait(driver, lambda: driver.execute_script("return document.body.dataset.ready"))

        class Page:
            d, by = driver, By
            score = _blob(html, "ttx-score")
            detail = _blob(html, "ttx-detail")
            index = _blob(html, "ttx-index")

            def css(self, sel):
                return driver.find_elements(By.CSS_SELECTOR, sel)

            def go(self, fragment):
                driver.get(out.as_uri() + fragment)
                _wait(driver, lambda: driver.execute_script("return document.body.dataset.ready"))

            def listed(self):         # read in one go: the virtual list re-renders
                return driver.execute_script(
                    "return Array.from(document.querySelectorAll('#list .item'), e => e.dataset.id)")

            def selected(self):
                return driver.execute_script("return document.querySelector('#p-id').textContent")

        yield Page()


def _wait(driver, cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("the page did not get there in time")


def test_browser_summary_has_a_row_per_run(page):
    page.go("")
    rows = page.css("#summary-table tbody tr.run-row")
    assert [r.get_attribute("data-run") for r in rows] == [r["name"] for r in page.score["runs"]]
    assert len(page.css("svg.plot g.point")) == sum(len(r["level_means"]) for r in page.score["runs"])
    assert page.d.execute_script("return performance.getEntriesByType('resource').length") == 0
    errors = [e for e in page.d.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_browser_degraded_filter_lists_what_score_counts(page):
    page.go("")
    button = page.css('#summary-table button[data-run="0"][data-cls="degraded"]')[0]
    button.click()
    _wait(page.d, lambda: page.css("#tab-problems")[0].is_displayed())
    degraded = [k for k, v in CURVES.items() if v[1] == "degraded"]
    assert page.listed() == degraded
    a = next(r for r in page.score["runs"] if r["name"] == "a")
    assert len(page.listed()) == a["arise"]["degraded"]
    assert page.css("#count")[0].text == f"{len(degraded)} of {len(page.index['problems'])} problems"
    page.d.find_element(page.by.CSS_SELECTOR, "#f-run option[value='1']").click()   # run b
    assert page.listed() == []                           # b has no degraded problem


def test_browser_trace_panel_shows_every_trace(page):
    page.go("#problem/mx")
    assert page.selected() == "mx"
    i = next(k for k, p in enumerate(page.index["problems"]) if p["id"] == "mx")
    for j, rr in enumerate(page.detail["problems"][i]["runs"]):
        if rr is None:
            assert not page.css(f'.run-panel[data-run="{j}"]')
            continue
        shown = [e.get_attribute("textContent")
                 for e in page.css(f'.run-panel[data-run="{j}"] .trace pre.trace-text')]
        assert shown == [t["text"] for rec in rr["recs"] for t in rec["traces"]]
    assert any(t.startswith(SCRIPT) for t in (e.text for e in page.css("pre.trace-text")))
    assert not page.css("pre.trace-text b")              # trace text is text, never markup


def test_browser_beam_tree_has_a_node_per_step(page):
    j = [r["name"] for r in page.index["runs"]].index("beam")
    for i, p in enumerate(page.index["problems"]):
        rr = page.detail["problems"][i]["runs"][j]
        if rr is None:
            continue
        page.go("#problem/" + p["id"])
        trees = page.css(f'.run-panel[data-run="{j}"] svg.tree')
        assert len(trees) == len(rr["recs"])
        for svg, rec in zip(trees, rr["recs"]):
            iters = rec["search"][0]["iterations"]
            nodes = svg.find_elements(page.by.CSS_SELECTOR, "g.tree-node")
            assert len(nodes) == 1 + sum(sum(it["rollouts"]) for it in iters)
            done = [n.get_attribute("data-trace") for n in nodes
                    if n.get_attribute("data-status") == "complete"]
            assert sorted(int(t) for t in done) == list(range(len(rec["traces"])))


def test_browser_budget_forcing_marks(page):
    page.go("#problem/arith-0-0")
    j = [r["name"] for r in page.index["runs"]].index("bf")
    panel = page.css(f'.run-panel[data-run="{j}"]')[0]
    first = panel.find_elements(page.by.CSS_SELECTOR, ".trace")[0]
    assert first.find_elements(page.by.CSS_SELECTOR, "mark.ignore")[0].text == "Wait"
    assert first.find_elements(page.by.CSS_SELECTOR, "mark.forced")[0].text == "Final Answer:"
    assert "ignored ×1" in first.text and "forced end" in first.text


def test_browser_keys_and_search(page):
    page.go("#problem/ac")
    ids = [p["id"] for p in page.index["problems"]]
    body = page.d.find_element(page.by.TAG_NAME, "body")
    body.send_keys("j")
    assert page.selected() == ids[1]
    body.send_keys("\ue015")                              # arrow down
    assert page.selected() == ids[2]
    body.send_keys("k")
    assert page.selected() == ids[1]
    body.send_keys("/")
    box = page.d.switch_to.active_element
    assert box.get_attribute("id") == "q"
    box.send_keys("second dn2 level 3")                   # words of one trace's text only
    _wait(page.d, lambda: page.listed() == ["dn2"])
    assert page.selected() == "dn2"


def test_browser_manifest_tab(page):
    page.go("#manifest")
    sections = page.css("section.manifest")
    assert len(sections) == 4
    beam = next(s for s in sections if s.get_attribute("data-run") == "beam")
    assert "smollm2-135m-instruct" in beam.text and "tts-run" in beam.text
    assert "f1aee144f2319a9a" in beam.text               # its input's sha256, from the manifest
